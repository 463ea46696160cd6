//! A streaming XLSX writer: the workbook's parts are written into a zip stream as the
//! rows arrive, so memory stays constant whatever the number of patients. rust_xlsxwriter
//! builds the whole sheet in memory (about 5 KB a row: 1 GB for 200,000 patients), and
//! its constant-memory mode spills plaintext temporary files to disk, which no patient
//! data may do; this writer needs neither.
//!
//! One sheet, `patients`: the header row in bold, then one row a patient. Text cells are
//! inline strings (`t="inlineStr"`), so no shared-string table has to be held back until
//! the end; numbers are number cells.

use std::io::{self, Write};

use zip::write::{SimpleFileOptions, StreamWriter};
use zip::{CompressionMethod, ZipWriter};

/// Excel's limits: rows a sheet holds, and characters a cell holds.
pub const MAX_ROWS: u32 = 1_048_576;
pub const MAX_CELL_CHARS: usize = 32_767;

const MAIN_NS: &str = "http://schemas.openxmlformats.org/spreadsheetml/2006/main";
const REL_NS: &str = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
const PKG_REL_NS: &str = "http://schemas.openxmlformats.org/package/2006/relationships";

const CONTENT_TYPES: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
    r#"<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">"#,
    r#"<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>"#,
    r#"<Default Extension="xml" ContentType="application/xml"/>"#,
    r#"<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>"#,
    r#"<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>"#,
    r#"<Override PartName="/xl/styles.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>"#,
    r#"</Types>"#
);

/// Style 1 is the header's bold font; style 0 the default.
const STYLES: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
    r#"<styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">"#,
    r#"<fonts count="2"><font><sz val="11"/><name val="Calibri"/></font>"#,
    r#"<font><b/><sz val="11"/><name val="Calibri"/></font></fonts>"#,
    r#"<fills count="2"><fill><patternFill patternType="none"/></fill>"#,
    r#"<fill><patternFill patternType="gray125"/></fill></fills>"#,
    r#"<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>"#,
    r#"<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>"#,
    r#"<cellXfs count="2"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>"#,
    r#"<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/></cellXfs>"#,
    r#"<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>"#,
    r#"</styleSheet>"#
);

/// A cell of a row.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    Empty,
    Text(&'a str),
    Number(f64),
}

/// Writes one sheet row by row into a zip stream over `W`.
pub struct XlsxStream<W: Write> {
    zip: ZipWriter<StreamWriter<W>>,
    rows: u32,
    line: String,
}

fn io_error(e: zip::result::ZipError) -> io::Error {
    match e {
        zip::result::ZipError::Io(io) => io,
        other => io::Error::other(format!("XLSX export: {other}")),
    }
}

impl<W: Write> XlsxStream<W> {
    /// Writes the workbook's fixed parts and the header row (bold).
    pub fn new(out: W, header: &[&str]) -> io::Result<Self> {
        let mut zip = ZipWriter::new_stream(out);
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        let fixed = [
            ("[Content_Types].xml", CONTENT_TYPES.to_string()),
            (
                "_rels/.rels",
                format!(
                    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="{PKG_REL_NS}"><Relationship Id="rId1" Type="{REL_NS}/officeDocument" Target="xl/workbook.xml"/></Relationships>"#
                ),
            ),
            (
                "xl/workbook.xml",
                format!(
                    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><workbook xmlns="{MAIN_NS}" xmlns:r="{REL_NS}"><sheets><sheet name="patients" sheetId="1" r:id="rId1"/></sheets></workbook>"#
                ),
            ),
            (
                "xl/_rels/workbook.xml.rels",
                format!(
                    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="{PKG_REL_NS}"><Relationship Id="rId1" Type="{REL_NS}/worksheet" Target="worksheets/sheet1.xml"/><Relationship Id="rId2" Type="{REL_NS}/styles" Target="styles.xml"/></Relationships>"#
                ),
            ),
            ("xl/styles.xml", STYLES.to_string()),
        ];
        for (name, text) in fixed {
            zip.start_file(name, options).map_err(io_error)?;
            zip.write_all(text.as_bytes())?;
        }
        zip.start_file("xl/worksheets/sheet1.xml", options)
            .map_err(io_error)?;
        write!(
            zip,
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet xmlns="{MAIN_NS}"><sheetData>"#
        )?;
        let mut stream = XlsxStream {
            zip,
            rows: 0,
            line: String::new(),
        };
        let header: Vec<Cell> = header.iter().map(|h| Cell::Text(h)).collect();
        stream.write_row_styled(&header, true)?;
        Ok(stream)
    }

    /// Appends one row.
    pub fn write_row(&mut self, cells: &[Cell]) -> io::Result<()> {
        self.write_row_styled(cells, false)
    }

    fn write_row_styled(&mut self, cells: &[Cell], bold: bool) -> io::Result<()> {
        if self.rows >= MAX_ROWS {
            return Err(io::Error::other(format!(
                "XLSX export: a sheet holds at most {MAX_ROWS} rows; export as CSV or narrow the filters"
            )));
        }
        self.rows += 1;
        let row = self.rows;
        let style = if bold { r#" s="1""# } else { "" };
        self.line.clear();
        self.line.push_str(&format!(r#"<row r="{row}">"#));
        for (col, cell) in cells.iter().enumerate() {
            let reference = format!("{}{row}", column_name(col));
            match cell {
                Cell::Empty => {}
                Cell::Number(n) if n.is_finite() => {
                    self.line
                        .push_str(&format!(r#"<c r="{reference}"{style}><v>{n}</v></c>"#));
                }
                Cell::Number(_) => {}
                Cell::Text(text) => {
                    if text.chars().count() > MAX_CELL_CHARS {
                        return Err(io::Error::other(format!(
                            "XLSX export: a cell holds at most {MAX_CELL_CHARS} characters"
                        )));
                    }
                    self.line.push_str(&format!(
                        r#"<c r="{reference}"{style} t="inlineStr"><is><t xml:space="preserve">"#
                    ));
                    push_escaped(&mut self.line, text);
                    self.line.push_str("</t></is></c>");
                }
            }
        }
        self.line.push_str("</row>");
        self.zip.write_all(self.line.as_bytes())
    }

    /// Closes the sheet and the zip; returns the writer it wrote to.
    pub fn finish(mut self) -> io::Result<W> {
        self.zip.write_all(b"</sheetData></worksheet>")?;
        let inner = self.zip.finish().map_err(io_error)?;
        Ok(inner.into_inner())
    }
}

/// `A`, `B`, …, `Z`, `AA`, … for a 0-based column.
fn column_name(mut col: usize) -> String {
    let mut name = Vec::new();
    loop {
        name.push(b'A' + (col % 26) as u8);
        if col < 26 {
            break;
        }
        col = col / 26 - 1;
    }
    name.reverse();
    String::from_utf8_lossy(&name).into_owned()
}

/// XML text: markup characters as entities; control characters XML cannot carry as
/// Excel's `_xHHHH_` escapes (as rust_xlsxwriter writes them).
fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => out.push_str(&format!("_x{:04X}_", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn entry(bytes: &[u8], name: &str) -> String {
        let mut archive = zip::ZipArchive::new(io::Cursor::new(bytes)).expect("a zip");
        let mut text = String::new();
        archive
            .by_name(name)
            .expect("the part")
            .read_to_string(&mut text)
            .expect("UTF-8");
        text
    }

    #[test]
    fn rows_stream_into_a_readable_workbook() {
        let mut sheet = XlsxStream::new(Vec::new(), &["given_name", "version"]).expect("new");
        sheet
            .write_row(&[Cell::Text("Amina & <Bo>"), Cell::Number(3.0)])
            .expect("row");
        sheet
            .write_row(&[Cell::Empty, Cell::Text("a\u{1}b")])
            .expect("row");
        let bytes = sheet.finish().expect("finish");
        let xml = entry(&bytes, "xl/worksheets/sheet1.xml");
        assert!(xml.contains(
            r#"<c r="A1" s="1" t="inlineStr"><is><t xml:space="preserve">given_name</t>"#
        ));
        assert!(xml.contains("Amina &amp; &lt;Bo&gt;"));
        assert!(xml.contains(r#"<c r="B2"><v>3</v></c>"#));
        assert!(xml.contains("a_x0001_b"));
        assert!(!xml.contains(r#"r="A3""#), "an empty cell is left out");
        assert!(entry(&bytes, "[Content_Types].xml").contains("worksheet+xml"));
        assert!(entry(&bytes, "xl/workbook.xml").contains(r#"name="patients""#));
    }

    #[test]
    fn columns_are_named_like_excel() {
        assert_eq!(column_name(0), "A");
        assert_eq!(column_name(25), "Z");
        assert_eq!(column_name(26), "AA");
        assert_eq!(column_name(27), "AB");
        assert_eq!(column_name(701), "ZZ");
        assert_eq!(column_name(702), "AAA");
    }

    #[test]
    fn too_long_a_cell_is_refused() {
        let mut sheet = XlsxStream::new(Vec::new(), &["note"]).expect("new");
        let long = "x".repeat(MAX_CELL_CHARS + 1);
        assert!(sheet.write_row(&[Cell::Text(&long)]).is_err());
    }
}
