//! Reading an import CSV file (SPEC 4.2, import options): which column feeds which patient
//! field, and the rows one at a time.
//!
//! Streaming: [`CsvRecordReader`] holds one record at a time, so memory does not grow with
//! the number of rows. Nothing here echoes cell contents in an error: the cells are patient
//! data, and errors end up in results, logs and emails (SPEC 4.1).

use std::collections::BTreeMap;
use std::io::{self, Read};

use csv::{ByteRecord, StringRecord};

use crate::domain::patient::{RawValue, WRITABLE_FIELDS};
use crate::domain::FieldError;

/// Header spellings of other systems (the original portal among them), by the field they
/// mean. Compared after [`normalize`], so `firstName`, `first_name` and `First Name` are one
/// entry, and `phoneNumber` or `unhcrNumber` already match the field names themselves.
const ALIASES: [(&str, &[&str]); 16] = [
    ("given_name", &["firstName", "given", "forename"]),
    ("family_name", &["lastName", "surname", "family"]),
    ("middle_names", &["middleName"]),
    ("date_of_birth", &["dateOfBirth", "dob", "birth_date"]),
    ("gender", &["sex"]),
    ("unhcr_number", &["refugeeId", "unhcr_id", "unhcr"]),
    (
        "origin_country",
        &["country", "nationality", "country_of_origin"],
    ),
    ("phone_number", &["phone", "mobile", "telephone"]),
    ("email", &["email_address"]),
    ("current_camp", &["camp"]),
    ("camp_section", &["section", "block"]),
    ("primary_language", &["language"]),
    ("languages_spoken", &["languages"]),
    ("blood_type", &["bloodType", "blood_group"]),
    ("refugee_status", &["status"]),
    ("estimated_birth_year", &["birth_year", "year_of_birth"]),
];

/// The longest header row accepted, in bytes. The header is read whole and planned before
/// the schedule request answers, so it must be small whatever the upload limit is: a
/// registration spreadsheet's header is a few hundred bytes.
pub const MAX_HEADER_BYTES: u64 = 64 * 1024;

/// The most columns a file may have (the patient record has 22 writable fields; the rest
/// are ignored columns, listed in the result).
pub const MAX_COLUMNS: usize = 500;

/// The longest header name (and `field_mapping` column name), in characters.
pub const MAX_COLUMN_NAME_CHARS: usize = 200;

/// How the columns of one file feed patient fields, decided once from the header so every
/// row is read the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPlan {
    /// For each column by index, the writable field it feeds, or `None` if it feeds nothing.
    pub targets: Vec<Option<&'static str>>,
    /// Header names of columns that feed nothing, reported to the user as ignored (not an
    /// error) so a misspelt column does not silently lose data. An unnamed column is listed
    /// as `column N` (1-based).
    pub ignored: Vec<String>,
}

/// Lower-cases and drops `_`, `-` and spaces, so header spellings of one name compare equal.
fn normalize(name: &str) -> String {
    name.trim()
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The field a header cell names by itself (field name or alias), if any.
fn auto_target(cell: &str) -> Option<&'static str> {
    let key = normalize(cell);
    if key.is_empty() {
        return None;
    }
    WRITABLE_FIELDS
        .iter()
        .copied()
        .find(|f| normalize(f) == key)
        .or_else(|| {
            ALIASES
                .iter()
                .find(|(_, aliases)| aliases.iter().any(|a| normalize(a) == key))
                .map(|(field, _)| *field)
        })
}

/// The writable field an explicit mapping target names (trimmed, any case).
fn writable_field(target: &str) -> Option<&'static str> {
    let wanted = target.trim();
    WRITABLE_FIELDS
        .iter()
        .copied()
        .find(|f| f.eq_ignore_ascii_case(wanted))
}

/// Keeps error messages short even when a request carries a very long name.
fn short(name: &str) -> String {
    name.chars().take(64).collect()
}

/// A `field_mapping` too large to plan cheaply: more entries than a file may have columns,
/// or names longer than a header name may be.
fn mapping_problem(map: &BTreeMap<String, String>) -> Option<(&'static str, String)> {
    if map.len() > MAX_COLUMNS {
        return Some((
            "too_many",
            format!("at most {MAX_COLUMNS} entries (a file has at most {MAX_COLUMNS} columns)"),
        ));
    }
    let too_long = |s: &String| s.chars().count() > MAX_COLUMN_NAME_CHARS;
    map.iter()
        .any(|(source, target)| too_long(source) || too_long(target))
        .then(|| {
            (
                "too_long",
                format!(
                    "column and field names must be at most {MAX_COLUMN_NAME_CHARS} characters"
                ),
            )
        })
}

/// Decides which column feeds which field: first the explicit `field_mapping`, then the
/// automatic matching of the remaining header names. Errors are meant for a 422 at schedule
/// time, before any row is read.
pub fn plan_columns(
    header: &[String],
    mapping: Option<&BTreeMap<String, String>>,
) -> Result<ColumnPlan, Vec<FieldError>> {
    let mut targets: Vec<Option<&'static str>> = vec![None; header.len()];
    let mut claimed: Vec<&'static str> = Vec::new();
    let mut errors = Vec::new();
    let explicit = mapping.filter(|m| !m.is_empty());

    if let Some(map) = explicit {
        let err = |code: &str, message: String| FieldError::new("field_mapping", code, &message);
        if let Some(problem) = mapping_problem(map) {
            return Err(vec![err(problem.0, problem.1)]);
        }
        let mut first_source: BTreeMap<&'static str, &str> = BTreeMap::new();
        for (source, target) in map {
            let Some(field) = writable_field(target) else {
                let name = short(target);
                errors.push(err(
                    "unknown_field",
                    format!("'{name}' is not a patient field that can be imported"),
                ));
                continue;
            };
            if let Some(first) = first_source.get(field) {
                let (a, b) = (short(first), short(source));
                errors.push(err(
                    "duplicate",
                    format!(
                        "columns '{a}' and '{b}' both map to {field}; map one column per field"
                    ),
                ));
                continue;
            }
            first_source.insert(field, source);
            // The column of that exact name, else the first of that name in any case.
            let free = |i: &usize| targets[*i].is_none();
            let wanted = source.trim();
            let col = (0..header.len())
                .filter(free)
                .find(|&i| header[i].trim() == wanted)
                .or_else(|| {
                    (0..header.len())
                        .filter(free)
                        .find(|&i| header[i].trim().to_lowercase() == wanted.to_lowercase())
                });
            match col {
                Some(i) => targets[i] = Some(field),
                None => errors.push(err(
                    "unknown_column",
                    format!("column '{}' is not in the header row", short(source)),
                )),
            }
        }
        claimed.extend(targets.iter().flatten().copied());
    }

    let mut ignored = Vec::new();
    for (i, cell) in header.iter().enumerate() {
        if targets[i].is_some() {
            continue;
        }
        match auto_target(cell) {
            Some(field) if !claimed.contains(&field) => {
                targets[i] = Some(field);
                claimed.push(field);
            }
            _ => {
                let name = cell.trim();
                ignored.push(if name.is_empty() {
                    format!("column {}", i + 1)
                } else {
                    name.to_string()
                });
            }
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    if explicit.is_none() && claimed.is_empty() {
        return Err(vec![FieldError::new(
            "file",
            "missing_header",
            "the first row must be a header naming the columns (for example given_name,family_name,gender)",
        )]);
    }
    // One error per required field without a column (gender may be missing: per-row error).
    let missing: Vec<FieldError> = ["given_name", "family_name"]
        .into_iter()
        .filter(|f| !claimed.contains(f))
        .map(|f| {
            let message = format!(
                "no column feeds {f}: give that column the header {f}, or map it with field_mapping, for example {{\"<your column>\": \"{f}\"}}"
            );
            FieldError::new("file", "missing_required_column", &message)
        })
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok(ColumnPlan { targets, ignored })
}

/// A problem with the file as a whole: reading stops, and the operation reports it with
/// [`ImportFileError::code`]. Messages never contain cell contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportFileError {
    /// No header row at all: there is nothing to map.
    #[error("the file is empty: a header row is required")]
    Empty,
    /// Bytes that are not UTF-8 (typically a legacy-encoded spreadsheet export).
    #[error("the file is not UTF-8 text (row {row}); save it as CSV UTF-8")]
    NotUtf8 { row: u64 },
    /// The CSV structure is broken; `message` names no patient data.
    #[error("the file could not be read as CSV (row {row}): {message}")]
    Malformed { row: u64, message: String },
    /// Reading the stored file failed (a disk or file-store error, or a file that
    /// does not decrypt: kind `InvalidData`). Not the data's fault unless decrypting.
    #[error("the stored file could not be read (row {row}): {kind}")]
    Unreadable { row: u64, kind: std::io::ErrorKind },
    /// The header row is longer than [`MAX_HEADER_BYTES`] (reading stopped there).
    #[error("the header row is longer than {MAX_HEADER_BYTES} bytes; a header names the columns, one short name each")]
    HeaderTooLong,
    /// The header has more than [`MAX_COLUMNS`] columns.
    #[error("the file has {columns} columns; at most {MAX_COLUMNS} are accepted")]
    TooManyColumns { columns: usize },
    /// A header name is longer than [`MAX_COLUMN_NAME_CHARS`] or holds a control character.
    #[error("the header name of column {column} is longer than {MAX_COLUMN_NAME_CHARS} characters or holds a control character")]
    BadColumnName { column: usize },
}

impl ImportFileError {
    /// The stable machine-readable code of the error, for API details and reports.
    pub fn code(&self) -> &'static str {
        match self {
            ImportFileError::Empty => "empty_file",
            ImportFileError::NotUtf8 { .. } => "not_utf8",
            ImportFileError::Malformed { .. } => "malformed_csv",
            ImportFileError::Unreadable { .. } => "unreadable_file",
            ImportFileError::HeaderTooLong => "header_too_long",
            ImportFileError::TooManyColumns { .. } => "too_many_columns",
            ImportFileError::BadColumnName { .. } => "invalid_column_name",
        }
    }

    /// The error as a `details` entry (field `file`), the shape the API answers with.
    pub fn to_field_error(&self) -> FieldError {
        FieldError::new("file", self.code(), &self.to_string())
    }
}

/// Describes a reader error without its text, which could quote the input.
fn malformed(err: &csv::Error, row: u64) -> ImportFileError {
    match err.kind() {
        csv::ErrorKind::Io(io) => ImportFileError::Unreadable {
            row,
            kind: io.kind(),
        },
        _ => ImportFileError::Malformed {
            row,
            message: "the CSV structure is invalid".to_string(),
        },
    }
}

/// The file under the CSV reader. While the header is read it hands out at most `budget`
/// bytes in all, then reports the end of input; after the header there is no limit.
struct HeaderLimit<R> {
    inner: R,
    budget: Option<u64>,
}

impl<R: Read> Read for HeaderLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.budget else {
            return self.inner.read(buf);
        };
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if max == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..max])?;
        self.budget = Some(left - n as u64);
        Ok(n)
    }
}

/// One data record and the spreadsheet row it came from (header = row 1), so row errors
/// point where the user looks in their spreadsheet.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRow {
    /// Spreadsheet row number: the header is row 1, the first record row 2. A multi-line
    /// quoted cell is still one row; records are counted, blank lines are not.
    pub row: u64,
    /// The cells, as many as the row has (ragged rows are the caller's to report).
    pub record: StringRecord,
}

/// Streams the records of an import file after its header, one at a time.
pub struct CsvRecordReader<R: Read> {
    inner: csv::Reader<HeaderLimit<R>>,
    header: Vec<String>,
    /// Reused read buffer; each returned row is one copy of it.
    buf: ByteRecord,
    /// Records read after the header, skipped blank ones included.
    records: u64,
    /// Set after the end or an error: a failed reader is not read further.
    done: bool,
}

/// Opens an import file: RFC 4180, UTF-8 with or without BOM, header row required. Ragged
/// rows are allowed here (`flexible`) so the caller can report them per row.
///
/// The header is bounded before it is read: at most [`MAX_HEADER_BYTES`] bytes are read
/// until it ends, and it may have at most [`MAX_COLUMNS`] names of at most
/// [`MAX_COLUMN_NAME_CHARS`] characters, so opening a file costs a small constant whatever
/// the file holds.
pub fn open<R: Read>(reader: R) -> Result<CsvRecordReader<R>, ImportFileError> {
    let mut inner = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(HeaderLimit {
            inner: reader,
            budget: Some(MAX_HEADER_BYTES),
        });
    let mut buf = ByteRecord::new();
    let read = inner.read_byte_record(&mut buf);
    if inner.get_ref().budget == Some(0) && inner.position().byte() >= MAX_HEADER_BYTES {
        return Err(ImportFileError::HeaderTooLong);
    }
    inner.get_mut().budget = None;
    match read {
        Ok(true) => {}
        Ok(false) => return Err(ImportFileError::Empty),
        Err(e) => return Err(malformed(&e, 1)),
    }
    if buf.len() > MAX_COLUMNS {
        return Err(ImportFileError::TooManyColumns { columns: buf.len() });
    }
    let mut header = Vec::with_capacity(buf.len());
    for (i, cell) in buf.iter().enumerate() {
        let cell = if i == 0 {
            cell.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(cell)
        } else {
            cell
        };
        let text = std::str::from_utf8(cell).map_err(|_| ImportFileError::NotUtf8 { row: 1 })?;
        if text.chars().count() > MAX_COLUMN_NAME_CHARS || text.contains(char::is_control) {
            return Err(ImportFileError::BadColumnName { column: i + 1 });
        }
        header.push(text.to_string());
    }
    if header.len() == 1 && header[0].trim().is_empty() {
        // Only a BOM or blanks on the first line: there is no header to map.
        return Err(ImportFileError::Empty);
    }
    Ok(CsvRecordReader {
        inner,
        header,
        buf,
        records: 0,
        done: false,
    })
}

impl<R: Read> CsvRecordReader<R> {
    /// Bytes of the file consumed so far (for a progress estimate).
    pub fn bytes_read(&self) -> u64 {
        self.inner.position().byte()
    }

    /// The header cells (BOM removed, otherwise as written), for [`plan_columns`].
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The next record that has at least one non-blank cell, or `None` at the end. After an
    /// error the reader yields `None`: a file-level error ends the import.
    pub fn next_record(&mut self) -> Option<Result<CsvRow, ImportFileError>> {
        while !self.done {
            let row = self.records + 2;
            match self.inner.read_byte_record(&mut self.buf) {
                Ok(false) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(malformed(&e, row)));
                }
                Ok(true) => {
                    self.records += 1;
                    if self
                        .buf
                        .iter()
                        .all(|c| c.iter().all(u8::is_ascii_whitespace))
                    {
                        continue;
                    }
                    return Some(match StringRecord::from_byte_record(self.buf.clone()) {
                        Ok(record) => Ok(CsvRow { row, record }),
                        Err(_) => {
                            self.done = true;
                            Err(ImportFileError::NotUtf8 { row })
                        }
                    });
                }
            }
        }
        None
    }
}

/// The raw values one record gives its mapped fields, ready for `PatientFields::set`.
/// Missing trailing cells count as empty; cells beyond the header are not read.
pub fn row_values(plan: &ColumnPlan, record: &StringRecord) -> Vec<(&'static str, RawValue)> {
    plan.targets
        .iter()
        .enumerate()
        .filter_map(|(i, target)| {
            target.map(|field| {
                (
                    field,
                    RawValue::from_cell(field, record.get(i).unwrap_or("")),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIASES_FILE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/samples/patients-aliases-ddmmyyyy-bom-crlf.csv"
    ));
    const CANONICAL: [&str; 3] = [
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/samples/patients-basic.csv"
        )),
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/samples/patients-bad-rows.csv"
        )),
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/samples/patients-formula-injection.csv"
        )),
    ];

    fn strings(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    fn header_of(text: &str) -> Vec<String> {
        open(text.as_bytes()).expect("open").header().to_vec()
    }

    /// The targets of a plan, `-` for a column that feeds nothing.
    fn targets(plan: &ColumnPlan) -> Vec<&str> {
        plan.targets.iter().map(|t| t.unwrap_or("-")).collect()
    }

    fn codes(errors: &[FieldError]) -> Vec<(&str, &str)> {
        errors
            .iter()
            .map(|e| (e.field.as_str(), e.code.as_str()))
            .collect()
    }

    #[test]
    fn canonical_headers_map_every_column() {
        for text in CANONICAL {
            let header = header_of(text);
            let plan = plan_columns(&header, None).expect("plan");
            assert!(plan.ignored.is_empty());
            assert_eq!(targets(&plan), header);
        }
    }

    #[test]
    fn portal_aliases_are_recognised_and_extra_column_ignored() {
        let header = header_of(ALIASES_FILE);
        assert_eq!(header[0], "refugeeId", "BOM stripped");
        let plan = plan_columns(&header, None).expect("plan");
        let fields = "unhcr_number given_name family_name gender date_of_birth origin_country";
        assert_eq!(targets(&plan).join(" "), format!("{fields} phone_number -"));
        assert_eq!(plan.ignored, ["notes_ignored"]);
    }

    #[test]
    fn spelling_variants_and_duplicates() {
        let header = strings(&[
            " First Name ",
            "SURNAME",
            "given-name",
            "Blood_Group",
            "",
            "dob",
        ]);
        let plan = plan_columns(&header, None).expect("plan");
        let expected = [
            "given_name",
            "family_name",
            "-",
            "blood_type",
            "-",
            "date_of_birth",
        ];
        assert_eq!(targets(&plan), expected);
        assert_eq!(plan.ignored, ["given-name", "column 5"]);
    }

    #[test]
    fn headerless_file_is_missing_header() {
        let text = CANONICAL[0].split_once('\n').expect("two lines").1;
        let errors = plan_columns(&header_of(text), None).expect_err("no header");
        assert_eq!(codes(&errors), [("file", "missing_header")]);
    }

    #[test]
    fn header_without_family_name_is_missing_required_column() {
        let errors = plan_columns(&strings(&["given_name", "gender"]), None).expect_err("family");
        assert_eq!(codes(&errors), [("file", "missing_required_column")]);
        assert!(errors[0].message.contains("family_name"));
        assert!(errors[0].message.contains("field_mapping"));
    }

    #[test]
    fn explicit_mapping_wins_and_is_checked() {
        let header = strings(&["Vorname", "Nachname", "firstName"]);
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let mapping = map(&[("vorname", "given_name"), ("Nachname", "family_name")]);
        let plan = plan_columns(&header, Some(&mapping)).expect("plan");
        assert_eq!(targets(&plan), ["given_name", "family_name", "-"]);
        assert_eq!(plan.ignored, ["firstName"]);

        let bad = map(&[
            ("Vorname", "favourite_colour"),
            ("Nachname", "family_name"),
            ("Spitzname", "given_name"),
            ("firstName", "family_name"),
        ]);
        // Reported in the mapping's key order: Nachname, Spitzname, Vorname, firstName.
        let errors = plan_columns(&header, Some(&bad)).expect_err("bad mapping");
        let expected =
            ["unknown_column", "unknown_field", "duplicate"].map(|c| ("field_mapping", c));
        assert_eq!(codes(&errors), expected);
        assert!(errors[1].message.contains("favourite_colour"));
    }

    #[test]
    fn bom_crlf_multiline_rows_are_numbered_by_record() {
        let mut reader = open(ALIASES_FILE.as_bytes()).expect("open");
        let rows: Vec<CsvRow> = std::iter::from_fn(|| reader.next_record())
            .map(|r| r.expect("row"))
            .collect();
        assert_eq!(rows.iter().map(|r| r.row).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(&rows[1].record[7], "line one\nline two");
        assert_eq!(&rows[0].record[0], "KEN-24-000101");
        let plan = plan_columns(reader.header(), None).expect("plan");
        let values = row_values(&plan, &rows[2].record);
        assert_eq!(values.len(), 7);
        assert_eq!(values[3], ("gender", RawValue::Text("male".into())));
    }

    #[test]
    fn blank_records_are_skipped_but_counted_and_short_rows_padded() {
        let text = "given_name,family_name,languages_spoken\n , ,\nAmina\n,,\nA,B,fr;sw\n";
        let mut reader = open(text.as_bytes()).expect("open");
        let plan = plan_columns(reader.header(), None).expect("plan");
        let first = reader.next_record().expect("row").expect("ok");
        assert_eq!(first.row, 3);
        let values = row_values(&plan, &first.record);
        assert_eq!(
            values[1..],
            [
                ("family_name", RawValue::Null),
                ("languages_spoken", RawValue::Null)
            ]
        );
        let second = reader.next_record().expect("row").expect("ok");
        assert_eq!(second.row, 5);
        let list = RawValue::List(strings(&["fr", "sw"]));
        assert_eq!(
            row_values(&plan, &second.record)[2],
            ("languages_spoken", list)
        );
        assert!(reader.next_record().is_none());
    }

    #[test]
    fn invalid_utf8_names_its_row_and_ends_reading() {
        let bytes = b"given_name,family_name\nAmina,Abdi\nX,\xff\xfe\nLast,Row\n";
        let mut reader = open(&bytes[..]).expect("open");
        assert!(reader.next_record().expect("row").is_ok());
        let err = reader.next_record().expect("row").expect_err("not utf-8");
        assert_eq!(
            (err.clone(), err.code()),
            (ImportFileError::NotUtf8 { row: 3 }, "not_utf8")
        );
        assert!(reader.next_record().is_none());
        let err = open(&b"a\xff\n"[..]).err().expect("bad header");
        assert_eq!(err, ImportFileError::NotUtf8 { row: 1 });
    }

    #[test]
    fn empty_input_is_empty() {
        for text in ["", "\u{feff}", "\n\n"] {
            let err = open(text.as_bytes()).err().expect("empty");
            assert_eq!(
                (err.clone(), err.code()),
                (ImportFileError::Empty, "empty_file")
            );
        }
    }
}
