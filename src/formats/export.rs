//! Writing an export file (SPEC 4.2, export options), one patient at a time.
//!
//! Every format streams straight to the output, so memory does not grow with the number
//! of patients; XLSX through the zip stream of [`super::xlsx`], which also writes no
//! plaintext temporary file (no patient data may rest in plaintext outside the patients
//! table, SPEC 4.1).
//!
//! CSV and XLSX cells are spreadsheet-safe (OWASP CSV injection): text that a spreadsheet
//! could take for a formula gets a leading `'`. Valid E.164 phone numbers are the one
//! exception: they are `+` and digits only, cannot carry a formula, and must stay intact.
//! In CSV, phone cells are always quoted ("quoted as text, not mangled", SPEC 4.2).

use std::io::{self, BufWriter, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::patient::{Patient, SYSTEM_FIELDS, WRITABLE_FIELDS};
use crate::domain::FieldError;

use super::fhir;
use super::xlsx::{Cell, XlsxStream};

/// The file formats an export can be written in (the `format` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Csv,
    Json,
    /// FHIR R4 `Patient` resources, one per line.
    Ndjson,
    Xlsx,
}

impl ExportFormat {
    /// The file name extension, for download names.
    pub fn extension(self) -> &'static str {
        self.as_str()
    }

    /// The HTTP `Content-Type` of a download in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Json => "application/json",
            ExportFormat::Ndjson => "application/fhir+ndjson",
            ExportFormat::Xlsx => {
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            }
        }
    }

    /// The option value as the API spells it (`csv`, `json`, `ndjson`, `xlsx`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
            ExportFormat::Ndjson => "ndjson",
            ExportFormat::Xlsx => "xlsx",
        }
    }
}

/// The fields exported when the request names none: a minimal set, so an export shares no
/// more patient data than asked for.
pub const DEFAULT_EXPORT_FIELDS: [&str; 6] = [
    "id",
    "unhcr_number",
    "given_name",
    "family_name",
    "gender",
    "date_of_birth",
];

/// Validates the `fields` option at schedule time, so a bad name is a 422 and not a failed
/// export hours later. Collects every problem.
pub fn check_fields(fields: &[String]) -> Result<(), Vec<FieldError>> {
    if fields.is_empty() {
        return Err(vec![FieldError::new(
            "fields",
            "required",
            "at least one field is required",
        )]);
    }
    let mut errors = Vec::new();
    // At most one entry per known field, so the duplicate check stays linear.
    let mut seen: Vec<&str> = Vec::new();
    for field in fields {
        let name: String = field.chars().take(64).collect();
        let known =
            SYSTEM_FIELDS.contains(&field.as_str()) || WRITABLE_FIELDS.contains(&field.as_str());
        let (code, message) = if !known {
            ("unknown_field", format!("'{name}' is not a patient field"))
        } else if seen.contains(&field.as_str()) {
            ("duplicate", format!("'{name}' is listed more than once"))
        } else {
            seen.push(field);
            continue;
        };
        errors.push(FieldError::new("fields", code, &message));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A file being written: the engine feeds it patients one by one, then finishes it. `Send`
/// so an export can run on any worker thread.
pub trait ExportWriter: Send {
    /// Appends one patient.
    fn write_patient(&mut self, patient: &Patient) -> io::Result<()>;
    /// Completes the file (closing brackets, XLSX body) and flushes the output.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// Starts a file in `format` with the columns `fields` (in that order) on `out`. The CSV
/// header row and the JSON `[` are written at once. `fields` is checked with
/// [`check_fields`] (an invalid list is `InvalidInput`), except for NDJSON, whose FHIR
/// resources have a fixed shape and ignore `fields`.
pub fn new_writer<W: Write + Send + 'static>(
    format: ExportFormat,
    fields: Vec<String>,
    out: W,
) -> io::Result<Box<dyn ExportWriter>> {
    if format != ExportFormat::Ndjson {
        check_fields(&fields).map_err(|errors| {
            let codes: Vec<String> = errors.into_iter().map(|e| e.message).collect();
            io::Error::new(io::ErrorKind::InvalidInput, codes.join("; "))
        })?;
    }
    Ok(match format {
        ExportFormat::Csv => {
            let mut out = BufWriter::new(out);
            write_csv_record(&mut out, fields.iter().map(|f| (f, false)))?;
            Box::new(CsvExport {
                out,
                fields,
                cell: String::new(),
            })
        }
        ExportFormat::Json => {
            let mut out = BufWriter::new(out);
            out.write_all(b"[")?;
            Box::new(JsonExport {
                out,
                fields,
                first: true,
            })
        }
        ExportFormat::Ndjson => Box::new(NdjsonExport {
            out: BufWriter::new(out),
        }),
        ExportFormat::Xlsx => Box::new(XlsxExport::new(fields, out)?),
    })
}

/// Whether `field` holds a phone number (exempt from neutralising when valid E.164).
fn is_phone_field(field: &str) -> bool {
    matches!(field, "phone_number" | "emergency_contact_phone")
}

/// `+` then 7 to 15 digits: the only shape a stored phone number has.
fn is_e164(text: &str) -> bool {
    text.strip_prefix('+')
        .is_some_and(|d| (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// A JSON value as cell text: strings as is, numbers as digits, null as empty, lists
/// joined with `;` (the import's list separator, so an export can be re-imported).
fn render(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(render).collect::<Vec<_>>().join(";"),
        other => other.to_string(),
    }
}

/// Characters a reader does not see: spaces, control characters and Unicode format
/// characters (zero-width spaces and joiners, direction marks, the BOM, soft hyphen).
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Whether a spreadsheet could read the text as a formula: it starts with `=`, `+`, `-`,
/// `@`, their full-width forms (`＝＋－＠`, which some spreadsheets fold to ASCII), tab,
/// carriage return or line feed, or with invisible characters before one of those signs.
pub fn formula_risk(text: &str) -> bool {
    if text.starts_with(['\t', '\r', '\n']) {
        return true;
    }
    matches!(
        text.chars().find(|c| !is_invisible(*c)),
        Some('=' | '+' | '-' | '@' | '\u{FF1D}' | '\u{FF0B}' | '\u{FF0D}' | '\u{FF20}')
    )
}

/// Prefixes `'` to text a spreadsheet would read as a formula (OWASP CSV injection),
/// except valid phone numbers of phone fields. Used for every CSV and XLSX cell Haven
/// writes: exports and error reports.
pub fn spreadsheet_safe(field: &str, text: String) -> String {
    if !formula_risk(&text) || (is_phone_field(field) && is_e164(&text)) {
        text
    } else {
        format!("'{text}")
    }
}

/// Appends the text of one field of one patient as [`render`] writes its JSON value
/// (null and unknown fields as nothing, lists joined with `;`), without building the
/// JSON value: the CSV export calls this for every cell.
fn push_text(patient: &Patient, field: &str, out: &mut String) {
    use std::fmt::Write as _;
    let f = &patient.fields;
    let some = |value: &Option<String>, out: &mut String| {
        if let Some(v) = value {
            out.push_str(v);
        }
    };
    let list = |items: &[String], out: &mut String| {
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(';');
            }
            out.push_str(item);
        }
    };
    match field {
        "id" => {
            let _ = write!(out, "{}", patient.id);
        }
        "organization_id" => {
            let _ = write!(out, "{}", patient.organization_id);
        }
        "created_at" => out.push_str(&crate::domain::rfc3339(&patient.created_at)),
        "updated_at" => out.push_str(&crate::domain::rfc3339(&patient.updated_at)),
        "version" => {
            let _ = write!(out, "{}", patient.version);
        }
        "deleted_at" => {
            if let Some(t) = &patient.deleted_at {
                out.push_str(&crate::domain::rfc3339(t));
            }
        }
        "given_name" => out.push_str(&f.given_name),
        "family_name" => out.push_str(&f.family_name),
        "gender" => out.push_str(&f.gender),
        "unhcr_number" => some(&f.unhcr_number, out),
        "middle_names" => some(&f.middle_names, out),
        "date_of_birth" => {
            if let Some(d) = f.date_of_birth {
                let _ = write!(out, "{}", d.format("%Y-%m-%d"));
            }
        }
        "estimated_birth_year" => {
            if let Some(y) = f.estimated_birth_year {
                let _ = write!(out, "{y}");
            }
        }
        "place_of_birth" => some(&f.place_of_birth, out),
        "refugee_status" => some(&f.refugee_status, out),
        "origin_country" => some(&f.origin_country, out),
        "current_camp" => some(&f.current_camp, out),
        "camp_section" => some(&f.camp_section, out),
        "phone_number" => some(&f.phone_number, out),
        "email" => some(&f.email, out),
        "primary_language" => some(&f.primary_language, out),
        "languages_spoken" => list(&f.languages_spoken, out),
        "blood_type" => some(&f.blood_type, out),
        "allergies" => list(&f.allergies, out),
        "chronic_conditions" => list(&f.chronic_conditions, out),
        "emergency_contact_name" => some(&f.emergency_contact_name, out),
        "emergency_contact_phone" => some(&f.emergency_contact_phone, out),
        "verification_status" => out.push_str(&f.verification_status),
        _ => {}
    }
}

/// Writes one CSV record (RFC 4180 quoting, `\n` line ends). Each cell comes with whether
/// it is always quoted; any other cell is quoted only when it holds a comma, a quote, CR or
/// LF, so it reads back exactly as written.
///
/// Quoting is per cell, which the csv crate's writer cannot do (its `QuoteStyle` is per
/// writer): phone cells are always quoted, because SPEC 4.2 wants phone numbers "quoted as
/// text, not mangled". A quoted `"+254711000301"` keeps every byte, and readers that take
/// quotes as a text marker (LibreOffice's "format quoted field as text", Python's
/// `QUOTE_NONNUMERIC`) keep it as text instead of a number that loses its `+`. Prefixing
/// `'` instead would corrupt the number. Excel ignores the quotes when it opens a CSV,
/// which is why the XLSX export stores phones as typed text cells. Every other cell keeps
/// minimal quoting, and the header row (field names) is never quoted.
fn write_csv_record<W: Write, S: AsRef<str>>(
    out: &mut W,
    cells: impl IntoIterator<Item = (S, bool)>,
) -> io::Result<()> {
    let mut count = 0;
    let mut bare_empty = false;
    for (text, always_quote) in cells {
        let text = text.as_ref();
        if count > 0 {
            out.write_all(b",")?;
        }
        count += 1;
        bare_empty = write_csv_cell(out, "", text, always_quote)?;
    }
    if count == 1 && bare_empty {
        // A record of one empty cell would be a blank line, which readers skip.
        out.write_all(b"\"\"")?;
    }
    out.write_all(b"\n")
}

/// Writes `prefix` and `text` as one CSV cell, quoted when `always_quote` or when the
/// text holds a comma, a quote, CR or LF; returns whether it was written as a bare
/// empty cell.
fn write_csv_cell<W: Write>(
    out: &mut W,
    prefix: &str,
    text: &str,
    always_quote: bool,
) -> io::Result<bool> {
    if always_quote || text.contains([',', '"', '\r', '\n']) {
        out.write_all(b"\"")?;
        out.write_all(prefix.as_bytes())?;
        for (i, part) in text.split('"').enumerate() {
            if i > 0 {
                out.write_all(b"\"\"")?;
            }
            out.write_all(part.as_bytes())?;
        }
        out.write_all(b"\"")?;
        Ok(false)
    } else {
        out.write_all(prefix.as_bytes())?;
        out.write_all(text.as_bytes())?;
        Ok(prefix.is_empty() && text.is_empty())
    }
}

struct CsvExport<W: Write> {
    out: BufWriter<W>,
    fields: Vec<String>,
    /// The cell being written (reused: no allocation per cell).
    cell: String,
}

impl<W: Write + Send> ExportWriter for CsvExport<W> {
    /// Writes what [`write_csv_record`] writes for the spreadsheet-safe cells
    /// ([`spreadsheet_safe`]), phone cells always quoted, without a `String` per cell.
    fn write_patient(&mut self, patient: &Patient) -> io::Result<()> {
        let CsvExport { out, fields, cell } = self;
        let mut bare_empty = false;
        for (k, field) in fields.iter().enumerate() {
            if k > 0 {
                out.write_all(b",")?;
            }
            cell.clear();
            push_text(patient, field, cell);
            let phone = is_phone_field(field);
            let prefix = if formula_risk(cell) && !(phone && is_e164(cell)) {
                "'"
            } else {
                ""
            };
            bare_empty = write_csv_cell(out, prefix, cell, phone)?;
        }
        if fields.len() == 1 && bare_empty {
            // A record of one empty cell would be a blank line, which readers skip.
            out.write_all(b"\"\"")?;
        }
        out.write_all(b"\n")
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.out.flush()
    }
}

struct JsonExport<W: Write> {
    out: BufWriter<W>,
    fields: Vec<String>,
    first: bool,
}

impl<W: Write + Send> ExportWriter for JsonExport<W> {
    fn write_patient(&mut self, patient: &Patient) -> io::Result<()> {
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        // Written key by key: serde_json's Map would sort the keys, and the order of
        // `fields` is part of the request.
        self.out.write_all(b"{")?;
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                self.out.write_all(b",")?;
            }
            serde_json::to_writer(&mut self.out, field)?;
            self.out.write_all(b":")?;
            let value = patient.get_json(field).unwrap_or(Value::Null);
            serde_json::to_writer(&mut self.out, &value)?;
        }
        self.out.write_all(b"}")
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.out.write_all(b"]\n")?;
        self.out.flush()
    }
}

/// FHIR resources have a fixed shape, so NDJSON ignores the `fields` option.
struct NdjsonExport<W: Write> {
    out: BufWriter<W>,
}

impl<W: Write + Send> ExportWriter for NdjsonExport<W> {
    fn write_patient(&mut self, patient: &Patient) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, &fhir::patient_resource(patient))?;
        self.out.write_all(b"\n")
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.out.flush()
    }
}

/// The whole sheet is kept in memory on purpose (see the module comment).
struct XlsxExport<W: Write> {
    sheet: XlsxStream<W>,
    fields: Vec<String>,
}

impl<W: Write> XlsxExport<W> {
    fn new(fields: Vec<String>, out: W) -> io::Result<Self> {
        let header: Vec<&str> = fields.iter().map(String::as_str).collect();
        Ok(XlsxExport {
            sheet: XlsxStream::new(out, &header)?,
            fields,
        })
    }
}

impl<W: Write + Send> ExportWriter for XlsxExport<W> {
    fn write_patient(&mut self, patient: &Patient) -> io::Result<()> {
        let values: Vec<Value> = self
            .fields
            .iter()
            .map(|field| patient.get_json(field).unwrap_or(Value::Null))
            .collect();
        let texts: Vec<Option<String>> = self
            .fields
            .iter()
            .zip(&values)
            .map(|(field, value)| match value {
                Value::Null | Value::Number(_) => None,
                other => Some(spreadsheet_safe(field, render(other))),
            })
            .collect();
        let cells: Vec<Cell> = values
            .iter()
            .zip(&texts)
            .map(|(value, text)| match (value, text) {
                // Only `version` and `estimated_birth_year` are numbers: number cells.
                (Value::Number(n), _) => Cell::Number(n.as_f64().unwrap_or_default()),
                (_, Some(text)) => Cell::Text(text),
                _ => Cell::Empty,
            })
            .collect();
        self.sheet.write_row(&cells)
    }

    fn finish(self: Box<Self>) -> io::Result<()> {
        let mut out = self.sheet.finish()?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::patient::PatientFields;
    use chrono::{NaiveDate, TimeZone, Utc};
    use std::sync::{Arc, Mutex};
    use uuid::Uuid;

    /// A `Write` whose bytes the test can read after the writer is finished.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn patient(n: u128, given: &str, phone: &str) -> Patient {
        let t = Utc.timestamp_opt(1_795_941_000, 0).single().expect("time");
        Patient {
            id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n),
            organization_id: Uuid::from_u128(0xaa),
            fields: PatientFields {
                unhcr_number: Some(format!("KEN-24-{n:06}")),
                given_name: given.to_string(),
                family_name: "Ali".into(),
                gender: "male".into(),
                date_of_birth: NaiveDate::from_ymd_opt(1990, 1, 1),
                phone_number: Some(phone.to_string()),
                languages_spoken: vec!["so".into(), "sw".into(), "en".into()],
                estimated_birth_year: Some(1990),
                ..PatientFields::new_draft()
            },
            created_at: t,
            updated_at: t,
            version: 2,
            deleted_at: None,
            import_operation_id: None,
        }
    }

    /// The given names of the formula-injection sample, read with the import reader.
    fn injection_patients() -> Vec<Patient> {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/samples/patients-formula-injection.csv"
        ));
        let mut reader = super::super::csv_import::open(text.as_bytes()).expect("open");
        let mut patients = Vec::new();
        while let Some(row) = reader.next_record() {
            let record = row.expect("row").record;
            let n = patients.len() as u128 + 301;
            patients.push(patient(n, &record[1], &record[10]));
        }
        patients
    }

    /// Exports `patients` with the space-separated `fields`.
    fn export(format: ExportFormat, fields: &str, patients: &[Patient]) -> String {
        let sink = Sink::default();
        let fields = fields.split_whitespace().map(String::from).collect();
        let mut writer = new_writer(format, fields, sink.clone()).expect("writer");
        for p in patients {
            writer.write_patient(p).expect("write");
        }
        writer.finish().expect("finish");
        let bytes = sink.0.lock().expect("lock").clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The CSV writer renders cells itself; it must write exactly what the generic
    /// path (JSON value, `render`, `spreadsheet_safe`, `write_csv_record`) writes, for
    /// every field, with empty, risky, quoted and one-column records.
    #[test]
    fn csv_cells_match_the_json_rendering_for_every_field() {
        let mut patients = injection_patients();
        let mut full = patient(7, "Amina, \"Ami\"", "+254711000301");
        full.deleted_at = Some(full.created_at);
        full.fields.middle_names = Some("=1+2".into());
        full.fields.allergies = vec!["-dust".into(), "pollen".into()];
        full.fields.email = Some("a@b.org".into());
        full.fields.emergency_contact_phone = Some("+25471100".into());
        full.fields.place_of_birth = Some("line\nbreak".into());
        patients.push(full);
        let mut empty = patient(8, "x", "");
        empty.fields = PatientFields::new_draft();
        patients.push(empty);
        let all: Vec<&str> = SYSTEM_FIELDS
            .iter()
            .chain(WRITABLE_FIELDS.iter())
            .copied()
            .collect();
        let mut field_sets: Vec<Vec<&str>> = all.iter().map(|f| vec![*f]).collect();
        field_sets.push(all.clone());
        for fields in field_sets {
            let fast = export(ExportFormat::Csv, &fields.join(" "), &patients);
            let mut generic = Vec::new();
            write_csv_record(&mut generic, fields.iter().map(|f| (*f, false))).expect("header");
            for p in &patients {
                let cells = fields.iter().map(|f| {
                    let value = p.get_json(f).unwrap_or(Value::Null);
                    (spreadsheet_safe(f, render(&value)), is_phone_field(f))
                });
                write_csv_record(&mut generic, cells).expect("record");
            }
            assert_eq!(fast, String::from_utf8_lossy(&generic), "{fields:?}");
        }
    }

    #[test]
    fn csv_neutralises_formulas_but_keeps_phone_numbers() {
        let fields = "given_name phone_number languages_spoken version";
        let out = export(ExportFormat::Csv, fields, &injection_patients());
        assert!(out.starts_with("given_name,phone_number,languages_spoken,version\n"));
        let mut reader = csv::Reader::from_reader(out.as_bytes());
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();
        let given: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
        let expected = [
            "'=HYPERLINK(\"http://x\",\"click\")",
            "'+SUM(1+1)",
            "'-2+3",
            "'@cmd",
        ];
        assert_eq!(given, [&expected[..], &["'\tTab"]].concat());
        assert_eq!(&rows[0][1], "+254711000301");
        assert!(
            out.contains(",\"+254711000301\","),
            "phone cells are quoted: {out}"
        );
        assert_eq!((&rows[0][2], &rows[0][3]), ("so;sw;en", "2"));
    }

    #[test]
    fn csv_quotes_phone_cells_and_only_cells_that_need_it_otherwise() {
        let fields = "unhcr_number given_name phone_number emergency_contact_phone family_name";
        let mut quoted = patient(1, "Ali, \"Jr\"", "+254711000301");
        quoted.fields.emergency_contact_phone = Some("+254711000999".into());
        quoted.fields.family_name = "Line\r\nTwo".into();
        let mut bare = patient(2, "Amina", "+1+cmd|x");
        bare.fields.family_name = String::new();
        let out = export(ExportFormat::Csv, fields, &[quoted, bare]);
        let expected = [
            "unhcr_number,given_name,phone_number,emergency_contact_phone,family_name",
            "KEN-24-000001,\"Ali, \"\"Jr\"\"\",\"+254711000301\",\"+254711000999\",\"Line\r\nTwo\"",
            "KEN-24-000002,Amina,\"'+1+cmd|x\",\"\",",
            "",
        ];
        assert_eq!(out, expected.join("\n"));

        // It reads back cell for cell (RFC 4180).
        let mut reader = csv::Reader::from_reader(out.as_bytes());
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();
        let cells = |row: usize| -> Vec<&str> { rows[row].iter().collect() };
        assert_eq!(
            cells(0),
            [
                "KEN-24-000001",
                "Ali, \"Jr\"",
                "+254711000301",
                "+254711000999",
                "Line\r\nTwo"
            ]
        );
        assert_eq!(cells(1), ["KEN-24-000002", "Amina", "'+1+cmd|x", "", ""]);

        // A one-column row with an empty cell is `""`, not a blank line readers would skip.
        let single = export(ExportFormat::Csv, "middle_names", &[patient(3, "A", "")]);
        assert_eq!(single, "middle_names\n\"\"\n");
    }

    #[test]
    fn full_width_signs_and_invisible_prefixes_are_neutralised() {
        for risky in [
            "\u{FF1D}1+1",
            "\u{FF0B}1",
            "\u{FF0D}1",
            "\u{FF20}SUM(A1)",
            "\u{200B}=1+1",
            "\u{FEFF}=1+1",
            " =1+1",
            "\u{00A0}\u{2060}@x",
            "\n=1",
        ] {
            assert!(
                spreadsheet_safe("given_name", risky.to_string()).starts_with('\''),
                "{risky:?}"
            );
        }
        for safe in ["Amina", "1+1", "a=b", "\u{200B}Amina"] {
            assert_eq!(spreadsheet_safe("given_name", safe.to_string()), safe);
        }
        assert_eq!(
            spreadsheet_safe("phone_number", "+254711000301".into()),
            "+254711000301"
        );
    }

    #[test]
    fn invalid_phone_text_is_neutralised_like_any_cell() {
        let safe = |field: &str, text: &str| spreadsheet_safe(field, text.to_string());
        assert_eq!(safe("phone_number", "+1+cmd|x"), "'+1+cmd|x");
        assert_eq!(safe("email", "+254711000301"), "'+254711000301");
        assert_eq!(
            safe("emergency_contact_phone", "+254711000301"),
            "+254711000301"
        );
        assert_eq!(safe("given_name", "Amina"), "Amina");
    }

    #[test]
    fn json_is_an_array_of_objects_in_field_order() {
        let fields = "unhcr_number id languages_spoken middle_names version";
        let text = export(ExportFormat::Json, fields, &injection_patients());
        assert!(text.ends_with("]\n"));
        let parsed: Value = serde_json::from_str(&text).expect("json");
        let items = parsed.as_array().expect("array");
        assert_eq!(items.len(), 5);
        assert_eq!(items[0]["unhcr_number"], "KEN-24-000301");
        assert_eq!(
            items[0]["languages_spoken"],
            serde_json::json!(["so", "sw", "en"])
        );
        assert_eq!(
            (&items[0]["middle_names"], &items[0]["version"]),
            (&Value::Null, &2.into())
        );
        let first_line = text.lines().next().expect("line");
        let order: Vec<usize> = fields
            .split_whitespace()
            .map(|f| first_line.find(&format!("\"{f}\":")).expect("key"))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "keys in field order");
        assert_eq!(export(ExportFormat::Json, fields, &[]), "[]\n");
    }

    #[test]
    fn ndjson_is_one_fhir_patient_per_line() {
        let patients = injection_patients();
        let out = export(ExportFormat::Ndjson, "", &patients);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5);
        for (line, p) in lines.iter().zip(&patients) {
            let r: Value = serde_json::from_str(line).expect("json line");
            assert_eq!(r["resourceType"], "Patient");
            let unhcr = p.fields.unhcr_number.as_deref().expect("unhcr");
            assert_eq!(r["identifier"][0]["value"], unhcr);
            assert_eq!(
                (&r["name"][0]["family"], &r["gender"]),
                (&"Ali".into(), &"male".into())
            );
            assert_eq!(r["birthDate"], "1990-01-01");
            let org = format!("Organization/{}", p.organization_id);
            assert_eq!(r["managingOrganization"]["reference"], org);
        }
    }

    #[test]
    fn xlsx_is_a_zip_workbook() {
        let fields = "id given_name phone_number version estimated_birth_year email";
        // Lossy text of the zip bytes: its ASCII magic survives the conversion.
        let out = export(ExportFormat::Xlsx, fields, &injection_patients());
        assert!(out.starts_with("PK\u{3}\u{4}"));
        assert!(out.len() > 1000);
    }

    #[test]
    fn fields_are_checked() {
        let names = |v: &str| v.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert!(check_fields(&DEFAULT_EXPORT_FIELDS.map(String::from)).is_ok());
        assert!(check_fields(&names("version allergies deleted_at")).is_ok());
        let codes = |r: Result<(), Vec<FieldError>>| -> Vec<String> {
            r.expect_err("invalid")
                .into_iter()
                .map(|e| e.code)
                .collect()
        };
        assert_eq!(codes(check_fields(&[])), ["required"]);
        assert_eq!(
            codes(check_fields(&names("id colour id"))),
            ["unknown_field", "duplicate"]
        );
        let err = check_fields(&names("colour")).expect_err("unknown");
        assert!(err[0].message.contains("colour"));
        assert!(new_writer(ExportFormat::Csv, names("colour"), Sink::default()).is_err());
    }

    #[test]
    fn format_names_and_types() {
        let f: ExportFormat = serde_json::from_str("\"ndjson\"").expect("format");
        assert_eq!(
            (f, f.content_type()),
            (ExportFormat::Ndjson, "application/fhir+ndjson")
        );
        assert_eq!(ExportFormat::Xlsx.extension(), "xlsx");
        assert_eq!(
            serde_json::to_string(&ExportFormat::Csv).expect("json"),
            "\"csv\""
        );
    }
}
