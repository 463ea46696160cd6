//! `bench suite <sqlite|postgres|both> <rows>`: Haven's bulk paths through the HTTP API
//! of a real `target/release/haven serve` process, side by side with the database's own
//! bulk tools on a table with the same columns and indexes, in the same run.
//!
//! For each database it generates a deterministic CSV of `rows` rows with every import
//! field of SPEC 3 (about 160 bytes a row; 1 row in 100 is bad: an unknown gender, an
//! impossible date, a UNHCR number repeated from the row before, an unknown country),
//! starts `haven serve` on a fresh data dir and database, and runs, each timed from the
//! scheduling request to `completed`:
//!
//! | Haven (HTTP API) | reference, same rows |
//! |---|---|
//! | import (multipart upload) | PostgreSQL `COPY ref FROM STDIN (FORMAT csv)`; SQLite `sqlite3` `.import --csv` |
//! | export csv, ndjson, xlsx (id + the 22 fields) | `COPY (SELECT … ORDER BY id) TO STDOUT (FORMAT csv)`; `sqlite3 -csv` of the same SELECT |
//! | update `current_camp` of the patients of one camp | bare `UPDATE ref SET current_camp = …` of the same rows |
//! | its rollback | bare `UPDATE` back |
//! | delete the patients of the other camp | bare `UPDATE ref SET deleted_at = …` |
//! | its rollback | bare `UPDATE ref SET deleted_at = NULL` |
//! | rollback of the import | bare `DELETE FROM ref WHERE import_operation_id = …` |
//!
//! The reference table: on PostgreSQL `CREATE TABLE ref (LIKE patients INCLUDING ALL)`
//! in Haven's database (indexes, defaults and NOT NULLs), with `patients`' foreign key
//! to `organizations` (since issue 13's second pass; no row-level security policy,
//! which `COPY FROM` refuses); on SQLite a separate database file with Haven's `CREATE TABLE
//! patients` and `CREATE INDEX` statements, in WAL mode with `synchronous = NORMAL` as
//! Haven runs it. It is loaded with the valid rows only (the tools would stop at a bad
//! one), with the values Haven stores (lists as JSON text, an id, the organization,
//! timestamps, the import's id). SQLite's `.import` stores an empty cell as `''`, not
//! NULL, so there the unique index's `deleted_at IS NULL` reads `deleted_at = ''`.
//!
//! Peak RSS is the haven process's `VmHWM`, reset (`/proc/PID/clear_refs`) before each
//! step. `--perf DIR` records `perf record -g` of the haven process during the import,
//! the CSV export, the update, the delete and each rollback. `--out FILE` appends the printed tables to FILE.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use sqlx::Connection;

use crate::lag::{load_average, Backend, Run, PASSWORD};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Parser, Debug)]
#[command(
    name = "bench suite",
    about = "Haven's bulk paths against the database's own bulk tools"
)]
struct Args {
    which: Which,
    /// Rows of the generated CSV (1 in 100 of them invalid).
    rows: usize,
    /// `--workers` of the haven process.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Directory for `perf record -g` data of the import, the CSV export, the update,
    /// the delete and the rollbacks.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Appends the tables to this file as well.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The haven binary to measure (default `target/release/haven`), e.g. a copy of
    /// an earlier build for a before/after comparison.
    #[arg(long)]
    haven: Option<PathBuf>,
}

/// Rows of a sheet, the header included.
const XLSX_MAX_ROWS: usize = 1_048_576;

/// The 22 import fields of SPEC 3, in the CSV's column order.
const FIELDS: [&str; 22] = haven::domain::patient::WRITABLE_FIELDS;

/// The columns of `patients` in table order (the reference file's columns).
const TABLE_COLUMNS: &str = "id, organization_id, given_name, family_name, gender, \
    unhcr_number, middle_names, date_of_birth, estimated_birth_year, place_of_birth, \
    refugee_status, origin_country, current_camp, camp_section, phone_number, email, \
    primary_language, languages_spoken, blood_type, allergies, chronic_conditions, \
    emergency_contact_name, emergency_contact_phone, verification_status, created_at, \
    updated_at, version, deleted_at, import_operation_id";

const CAMPS: [&str; 2] = ["Kakuma", "Dadaab"];

/// Row `i` of the generated data as the 22 cells of `FIELDS`, and whether it is one of
/// the rows that are bad on purpose.
fn row_cells(i: usize) -> ([String; 22], bool) {
    const GIVEN: [&str; 8] = [
        "Amina", "Hassan", "Fatuma", "Abdi", "Nyabol", "Deng", "Halima", "Omar",
    ];
    const FAMILY: [&str; 8] = [
        "Mohamed", "Ali", "Garang", "Achieng", "Osman", "Kuol", "Yusuf", "Wani",
    ];
    const BLOOD: [&str; 8] = ["A+", "A-", "B+", "B-", "AB+", "AB-", "O+", "O-"];
    let bad = i % 100 == 99;
    let mut cells = [
        format!("UNH-{i:08}"),
        GIVEN[i % 8].to_string(),
        FAMILY[(i / 8) % 8].to_string(),
        if i.is_multiple_of(3) {
            "Noor".into()
        } else {
            String::new()
        },
        ["female", "male", "other", "unknown"][i % 4].to_string(),
        format!("19{:02}-{:02}-{:02}", 50 + i % 50, 1 + i % 12, 1 + i % 28),
        String::new(),
        ["Mogadishu", "Kismayo", "Juba", "Bor"][i % 4].to_string(),
        ["refugee", "asylum_seeker", "returnee"][i % 3].to_string(),
        ["SO", "SS", "ET", "CD"][i % 4].to_string(),
        CAMPS[i % 2].to_string(),
        format!("B{}", i % 40),
        format!("+2547{:08}", i % 100_000_000),
        format!("p{i}@ex.org"),
        ["so", "en", "sw", "ar"][i % 4].to_string(),
        "so;sw".to_string(),
        BLOOD[i % 8].to_string(),
        if i.is_multiple_of(5) {
            "penicillin".into()
        } else {
            String::new()
        },
        if i.is_multiple_of(7) {
            "asthma;diabetes".into()
        } else {
            String::new()
        },
        format!("Kin {}", GIVEN[(i + 3) % 8]),
        format!("+2547{:08}", (i + 1) % 100_000_000),
        ["unverified", "pending", "verified"][i % 3].to_string(),
    ];
    if bad {
        match (i / 100) % 4 {
            0 => cells[4] = "robot".into(),
            1 => cells[5] = "2001-13-45".into(),
            2 => cells[0] = format!("UNH-{:08}", i - 1),
            _ => cells[9] = "XX".into(),
        }
    }
    (cells, bad)
}

fn csv_cell(out: &mut String, cell: &str) {
    if cell.contains([',', '"', '\n']) {
        out.push('"');
        out.push_str(&cell.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(cell);
    }
}

/// The upload (every row) and the reference file (the valid rows, as Haven stores them).
fn generate(rows: usize, org: &str, import_id: &str, now: &str) -> (String, String, usize) {
    let mut upload = FIELDS.join(",");
    upload.push('\n');
    let mut reference = TABLE_COLUMNS.replace(' ', "");
    reference.push('\n');
    let mut valid = 0;
    let list = |cell: &str| {
        let items: Vec<&str> = cell.split(';').filter(|s| !s.is_empty()).collect();
        serde_json::to_string(&items).unwrap_or_else(|_| "[]".into())
    };
    for i in 0..rows {
        let (cells, bad) = row_cells(i);
        for (k, cell) in cells.iter().enumerate() {
            if k > 0 {
                upload.push(',');
            }
            csv_cell(&mut upload, cell);
        }
        upload.push('\n');
        if bad {
            continue;
        }
        valid += 1;
        let id = uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | i as u128);
        let c = |name: &str| -> String {
            let k = FIELDS.iter().position(|f| *f == name).unwrap_or(0);
            cells[k].clone()
        };
        let record = [
            id.to_string(),
            org.to_string(),
            c("given_name"),
            c("family_name"),
            c("gender"),
            c("unhcr_number"),
            c("middle_names"),
            c("date_of_birth"),
            c("estimated_birth_year"),
            c("place_of_birth"),
            c("refugee_status"),
            c("origin_country"),
            c("current_camp"),
            c("camp_section"),
            c("phone_number"),
            c("email"),
            c("primary_language"),
            list(&c("languages_spoken")),
            c("blood_type"),
            list(&c("allergies")),
            list(&c("chronic_conditions")),
            c("emergency_contact_name"),
            c("emergency_contact_phone"),
            c("verification_status"),
            now.to_string(),
            now.to_string(),
            "1".to_string(),
            String::new(),
            import_id.to_string(),
        ];
        for (k, cell) in record.iter().enumerate() {
            if k > 0 {
                reference.push(',');
            }
            csv_cell(&mut reference, cell);
        }
        reference.push('\n');
    }
    (upload, reference, valid)
}

/// Resets the process's peak RSS to its current RSS (Linux 4.0+).
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn schedule(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        ensure!(status.is_success(), "{path}: {status} {v}");
        Ok(v)
    }

    /// Polls the operation's status until it ends; returns it with the latencies (ms)
    /// of the status requests.
    async fn wait(&self, op: &Value) -> anyhow::Result<(Value, Vec<f64>)> {
        let id = op["id"].as_str().context("no id")?;
        let mut latencies = Vec::new();
        loop {
            let asked = Instant::now();
            let v: Value = self
                .http
                .get(format!("{}/api/v2/bulk-operations/{id}/status", self.base))
                .bearer_auth(&self.token)
                .send()
                .await?
                .json()
                .await?;
            latencies.push(asked.elapsed().as_secs_f64() * 1000.0);
            let status = v["status"].as_str().unwrap_or("");
            if !["scheduled", "processing"].contains(&status) {
                ensure!(status == "completed", "operation ended {status}: {v}");
                return Ok((v, latencies));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One line of the table.
struct Line {
    path: String,
    rows: i64,
    haven: Duration,
    reference: String,
    reference_time: Duration,
    peak_kib: u64,
    note: String,
}

/// A reference measurement on either database.
enum RefDb {
    Postgres(sqlx::PgConnection),
    Sqlite { file: PathBuf },
}

impl RefDb {
    /// Runs one SQL statement (SQLite: through the `sqlite3` shell), timed.
    async fn exec(&mut self, sql: &str) -> anyhow::Result<Duration> {
        let start = Instant::now();
        match self {
            RefDb::Postgres(conn) => {
                sqlx::query(sql).execute(&mut *conn).await?;
            }
            RefDb::Sqlite { file } => {
                let script = format!("PRAGMA synchronous = NORMAL;\n{sql};\n");
                sqlite3(file, &[], &script, None).await?;
            }
        }
        Ok(start.elapsed())
    }
}

/// Runs the `sqlite3` shell on `file` with `script` on stdin; stdout goes to `out`.
async fn sqlite3(
    file: &Path,
    args: &[&str],
    script: &str,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let stdout = match out {
        Some(path) => Stdio::from(std::fs::File::create(path)?),
        None => Stdio::null(),
    };
    let mut child = tokio::process::Command::new("sqlite3")
        .args(args)
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running the sqlite3 shell")?;
    let mut stdin = child.stdin.take().context("sqlite3 stdin")?;
    stdin.write_all(script.as_bytes()).await?;
    drop(stdin);
    let done = child.wait_with_output().await?;
    ensure!(
        done.status.success() && done.stderr.is_empty(),
        "sqlite3: {} {}",
        done.status,
        String::from_utf8_lossy(&done.stderr)
    );
    Ok(())
}

/// `perf record -g` of a process until `stop`.
struct Perf(Option<tokio::process::Child>);

impl Perf {
    fn start(dir: Option<&Path>, pid: u32, name: &str) -> anyhow::Result<Perf> {
        let Some(dir) = dir else {
            return Ok(Perf(None));
        };
        std::fs::create_dir_all(dir)?;
        let child = tokio::process::Command::new("perf")
            .args(["record", "-g", "-F", "499", "-p", &pid.to_string(), "-o"])
            .arg(dir.join(format!("{name}.data")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("running perf")?;
        Ok(Perf(Some(child)))
    }

    async fn stop(self) -> anyhow::Result<()> {
        if let Some(mut child) = self.0 {
            if let Some(pid) = child.id() {
                tokio::process::Command::new("kill")
                    .args(["-INT", &pid.to_string()])
                    .status()
                    .await?;
            }
            child.wait().await?;
        }
        Ok(())
    }
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

pub async fn main(args: &[String]) -> anyhow::Result<()> {
    let args = Args::try_parse_from(
        std::iter::once("bench suite".to_string()).chain(args.iter().cloned()),
    )?;
    ensure!(args.rows >= 100, "at least 100 rows");
    let backends = match args.which {
        Which::Sqlite => vec![Backend::Sqlite],
        Which::Postgres => vec![Backend::Postgres],
        Which::Both => vec![Backend::Sqlite, Backend::Postgres],
    };
    let mut text = format!(
        "Command: `{}`; machine: {} cores, {} MiB memory, `{}`; commit {}.\n",
        std::env::args().collect::<Vec<_>>().join(" "),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        meminfo_mib(),
        std::process::Command::new("uname")
            .arg("-srm")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        git_commit(),
    );
    println!("{text}");
    for backend in backends {
        let mut run = Run::new(backend, "haven_bench_suite").await?;
        if let Some(bin) = &args.haven {
            run.bin = bin.clone();
        }
        let outcome = measure(&args, backend, &mut run).await;
        let warnings = run.warnings("serve");
        let cleaned = run.cleanup().await;
        let table = outcome?;
        cleaned?;
        println!("{table}");
        if !warnings.is_empty() {
            println!("haven's WARN/ERROR lines: {}", warnings.len());
            for w in warnings.iter().take(10) {
                println!("  {w}");
            }
        }
        text.push('\n');
        text.push_str(&table);
    }
    if let Some(out) = &args.out {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)?;
        writeln!(file, "{text}")?;
    }
    Ok(())
}

fn meminfo_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|n| n.parse::<u64>().ok())
                })
        })
        .unwrap_or(0)
        / 1024
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

async fn measure(args: &Args, backend: Backend, run: &mut Run) -> anyhow::Result<String> {
    let load_before = load_average();
    let org = run.admin(&["admin", "create-org", "Bench"]).await?;
    uuid::Uuid::parse_str(&org).with_context(|| format!("create-org printed `{org}`"))?;
    run.admin(&[
        "admin",
        "create-user",
        "--org",
        &org,
        "--email",
        "bench@example.org",
        "--role",
        "admin",
    ])
    .await?;
    let workers = args.workers.to_string();
    let base = run
        .serve(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-bootstrap",
            "--workers",
            &workers,
        ])
        .await?;
    let pid = run
        .children
        .first()
        .and_then(|(_, c)| c.id())
        .context("no haven pid")?;
    let http = reqwest::Client::new();
    let token = crate::login(&http, &base, "bench@example.org", PASSWORD).await?;
    let api = Api { http, base, token };

    let import_ref_id = uuid::Uuid::new_v4().to_string();
    let now_text = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (upload, reference, valid) = generate(args.rows, &org, &import_ref_id, &now_text);
    let upload_bytes = upload.len();
    let ref_csv = run.dir.path().join("reference.csv");
    std::fs::write(&ref_csv, &reference)?;
    drop(reference);

    // The reference table.
    let mut refdb = match backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&run.db_url).await?;
            sqlx::query("CREATE TABLE ref (LIKE patients INCLUDING ALL)")
                .execute(&mut conn)
                .await?;
            // `LIKE` copies no foreign key: without it the reference skipped the
            // per-row check that every row of `patients` gets.
            sqlx::query(
                "ALTER TABLE ref ADD FOREIGN KEY (organization_id) REFERENCES organizations (id)",
            )
            .execute(&mut conn)
            .await?;
            RefDb::Postgres(conn)
        }
        Backend::Sqlite => {
            let file = run.dir.path().join("reference.db");
            let haven_db = run.dir.path().join("haven.db");
            let schema = tokio::process::Command::new("sqlite3")
                .arg("-readonly")
                .arg(&haven_db)
                .arg("SELECT sql || ';' FROM sqlite_master WHERE tbl_name = 'patients' AND sql IS NOT NULL")
                .output()
                .await?;
            let ddl = String::from_utf8_lossy(&schema.stdout)
                .replace("patients", "ref")
                .replace("deleted_at IS NULL", "deleted_at = ''");
            ensure!(
                ddl.contains("CREATE TABLE ref"),
                "no patients table in {ddl}"
            );
            sqlite3(
                &file,
                &[],
                &format!("PRAGMA journal_mode = WAL;\n{ddl}\n"),
                None,
            )
            .await?;
            RefDb::Sqlite { file }
        }
    };
    let null = match backend {
        Backend::Postgres => "NULL",
        Backend::Sqlite => "''",
    };
    let ts = format!("'{now_text}'");

    let mut lines = Vec::new();
    let mut status_p99 = f64::NAN;
    let rows = args.rows as i64;

    // Import.
    let ref_import = match &mut refdb {
        RefDb::Postgres(conn) => {
            let data = std::fs::read(&ref_csv)?;
            let start = Instant::now();
            let mut copy = conn
                .copy_in_raw(&format!(
                    "COPY ref ({TABLE_COLUMNS}) FROM STDIN WITH (FORMAT csv, HEADER true)"
                ))
                .await?;
            for piece in data.chunks(1 << 20) {
                copy.send(piece).await?;
            }
            copy.finish().await?;
            start.elapsed()
        }
        RefDb::Sqlite { file } => {
            let script = format!(
                "PRAGMA synchronous = NORMAL;\n.import --csv --skip 1 {} ref\n",
                ref_csv.display()
            );
            let start = Instant::now();
            sqlite3(file, &[], &script, None).await?;
            start.elapsed()
        }
    };
    let reference_name = match backend {
        Backend::Postgres => "COPY FROM STDIN (csv)",
        Backend::Sqlite => "sqlite3 .import --csv",
    };
    reset_peak(pid);
    let perf = Perf::start(
        args.perf.as_deref(),
        pid,
        &format!("{}-import", backend.name()),
    )?;
    let start = Instant::now();
    let op = crate::upload(&api.http, &api.base, &api.token, upload, false).await?;
    let (import, latencies) = api.wait(&op).await?;
    let import_wall = start.elapsed();
    perf.stop().await?;
    status_p99 = status_p99.max(percentile(latencies, 99.0));
    let result = &import["result"];
    ensure!(
        result["rows_imported"].as_i64() == Some(valid as i64),
        "imported {} rows, {valid} expected",
        result["rows_imported"]
    );
    lines.push(Line {
        path: "import".into(),
        rows,
        haven: import_wall,
        reference: reference_name.into(),
        reference_time: ref_import,
        peak_kib: crate::peak_kib(pid),
        note: format!(
            "{} imported, {} failed, {:.1} MB",
            result["rows_imported"],
            result["rows_failed"],
            upload_bytes as f64 / 1e6
        ),
    });
    let import_id = id_of(&import)?;

    // Exports: id and every field, in the reference's order.
    let mut fields = vec!["id"];
    fields.extend(FIELDS);
    let live = if backend == Backend::Postgres {
        "deleted_at IS NULL"
    } else {
        "deleted_at = ''"
    };
    let select = format!(
        "SELECT {} FROM ref WHERE organization_id = '{org}' AND {live} ORDER BY id",
        fields.join(", ")
    );
    let ref_export = match &mut refdb {
        RefDb::Postgres(conn) => {
            let start = Instant::now();
            let bytes = crate::copy_out(
                conn,
                &format!("COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER true)"),
            )
            .await?;
            ensure!(bytes > 0, "empty COPY TO");
            start.elapsed()
        }
        RefDb::Sqlite { file } => {
            let out = run.dir.path().join("reference-out.csv");
            let start = Instant::now();
            sqlite3(
                file,
                &["-csv", "-header"],
                &format!("{select};\n"),
                Some(&out),
            )
            .await?;
            let took = start.elapsed();
            let _ = std::fs::remove_file(&out);
            took
        }
    };
    let export_reference = match backend {
        Backend::Postgres => "COPY (SELECT …) TO STDOUT (csv)",
        Backend::Sqlite => "sqlite3 -csv",
    };
    // A sheet holds 1,048,576 rows with the header: Haven refuses a larger XLSX
    // export (DECISIONS.md), so a run of more rows measures CSV and NDJSON only.
    let formats: &[&str] = if valid < XLSX_MAX_ROWS {
        &["csv", "ndjson", "xlsx"]
    } else {
        &["csv", "ndjson"]
    };
    for &format in formats {
        reset_peak(pid);
        let perf = if format == "csv" {
            Perf::start(
                args.perf.as_deref(),
                pid,
                &format!("{}-export", backend.name()),
            )?
        } else {
            Perf(None)
        };
        let start = Instant::now();
        let op = api
            .schedule(
                "/api/v2/bulk/export/schedule",
                json!({"format": format, "fields": fields, "email_notification": false}),
            )
            .await?;
        let (export, _) = api.wait(&op).await?;
        let wall = start.elapsed();
        perf.stop().await?;
        lines.push(Line {
            path: format!("export {format}"),
            rows: export["result"]["rows_exported"].as_i64().unwrap_or(0),
            haven: wall,
            reference: export_reference.into(),
            reference_time: ref_export,
            peak_kib: crate::peak_kib(pid),
            note: format!(
                "{:.1} MB",
                export["result"]["bytes"].as_f64().unwrap_or(0.0) / 1e6
            ),
        });
    }

    // Update of one camp's patients, its rollback, the delete of the other camp's
    // patients, its rollback, and the rollback of the import: each after the bare SQL
    // that does the same to the reference table.
    let set = |what: &str, filter: &str| {
        format!(
            "UPDATE ref SET {what}, version = version + 1, updated_at = {ts} \
             WHERE organization_id = '{org}' AND {filter}"
        )
    };
    let (update, line) = paired(
        &api,
        pid,
        &mut refdb,
        &set(
            "current_camp = 'Kalobeyei'",
            &format!("{live} AND current_camp = '{}'", CAMPS[0]),
        ),
        "/api/v2/bulk/update/schedule",
        json!({"filters": {"current_camp": CAMPS[0]}, "changes": {"current_camp": "Kalobeyei"},
            "email_notification": false}),
        args.perf.as_deref(),
        &format!("{}-update", backend.name()),
    )
    .await?;
    let updated = update["result"]["patients_updated"].as_i64().unwrap_or(0);
    lines.push(line.named(
        format!("update current_camp ({} camp)", CAMPS[0]),
        updated,
        "bare UPDATE",
        format!("{updated} updated"),
    ));
    let (rollback, line) = paired(
        &api,
        pid,
        &mut refdb,
        &set(
            &format!("current_camp = '{}'", CAMPS[0]),
            &format!("{live} AND current_camp = 'Kalobeyei'"),
        ),
        &format!("/api/v2/bulk/update/rollback/{}", id_of(&update)?),
        json!({}),
        args.perf.as_deref(),
        &format!("{}-update-rollback", backend.name()),
    )
    .await?;
    let restored = format!("{} restored", rollback["result"]["patients_restored"]);
    lines.push(line.named(
        "rollback of the update".into(),
        updated,
        "bare UPDATE",
        restored,
    ));
    let (delete, line) = paired(
        &api,
        pid,
        &mut refdb,
        &set(
            &format!("deleted_at = {ts}"),
            &format!("{live} AND current_camp = '{}'", CAMPS[1]),
        ),
        "/api/v2/bulk/delete/schedule",
        json!({"filters": {"current_camp": CAMPS[1]}, "confirm": true, "email_notification": false}),
        args.perf.as_deref(),
        &format!("{}-delete", backend.name()),
    )
    .await?;
    let deleted = delete["result"]["patients_deleted"].as_i64().unwrap_or(0);
    let what = "bare UPDATE deleted_at";
    lines.push(line.named(
        format!("delete ({} camp)", CAMPS[1]),
        deleted,
        what,
        format!("{deleted} deleted"),
    ));
    let (rollback, line) = paired(
        &api,
        pid,
        &mut refdb,
        &set(
            &format!("deleted_at = {null}"),
            &format!("deleted_at = {ts}"),
        ),
        &format!("/api/v2/bulk/delete/rollback/{}", id_of(&delete)?),
        json!({}),
        args.perf.as_deref(),
        &format!("{}-delete-rollback", backend.name()),
    )
    .await?;
    let restored = format!("{} restored", rollback["result"]["patients_restored"]);
    lines.push(line.named("rollback of the delete".into(), deleted, what, restored));
    let (rollback, line) = paired(
        &api,
        pid,
        &mut refdb,
        &format!(
            "DELETE FROM ref WHERE organization_id = '{org}' AND import_operation_id = '{import_ref_id}'"
        ),
        &format!("/api/v2/bulk/import/rollback/{import_id}"),
        json!({"force": true}),
        args.perf.as_deref(),
        &format!("{}-import-rollback", backend.name()),
    )
    .await?;
    let removed = format!("{} removed", rollback["result"]["patients_removed"]);
    lines.push(line.named(
        "rollback of the import".into(),
        valid as i64,
        "bare DELETE",
        removed,
    ));
    let mut analyzed = String::new();
    if let RefDb::Postgres(mut conn) = refdb {
        // Statistics refreshes of `patients` during the run (issue 13: never a full
        // ANALYZE from the hot loop).
        let (manual, auto): (i64, i64) = sqlx::query_as(
            "SELECT analyze_count, autoanalyze_count FROM pg_stat_user_tables WHERE relname = 'patients'",
        )
        .fetch_one(&mut conn)
        .await?;
        analyzed = format!(
            " `ANALYZE` of `patients` during the run: {manual} by Haven, {auto} by autovacuum."
        );
        conn.close().await?;
    }
    let load_after = load_average();

    let per_sec = |n: i64, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let mut table = format!(
        "### {}, {} rows ({valid} valid), load average {load_before} before, {load_after} after\n\n\
         | path | rows | Haven | Haven rows/s | reference | reference time | reference rows/s | ratio | haven peak RSS | |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        match backend {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        },
        args.rows,
    );
    for l in &lines {
        table.push_str(&format!(
            "| {} | {} | {:.2} s | {:.0} | {} | {:.2} s | {:.0} | {:.0}% | {} MiB | {} |\n",
            l.path,
            l.rows,
            l.haven.as_secs_f64(),
            per_sec(l.rows, l.haven),
            l.reference,
            l.reference_time.as_secs_f64(),
            per_sec(l.rows, l.reference_time),
            100.0 * l.reference_time.as_secs_f64() / l.haven.as_secs_f64().max(1e-9),
            l.peak_kib / 1024,
            l.note,
        ));
    }
    table.push_str(&format!(
        "\n`GET /api/v2/bulk-operations/{{id}}/status` during the import: p99 {status_p99:.1} ms.{analyzed}\n"
    ));
    Ok(table)
}

fn id_of(op: &Value) -> anyhow::Result<String> {
    op["id"]
        .as_str()
        .map(str::to_string)
        .context("no operation id")
}

impl Line {
    fn named(self, path: String, rows: i64, reference: &str, note: String) -> Line {
        Line {
            path,
            rows,
            reference: reference.into(),
            note,
            ..self
        }
    }
}

/// Runs `reference_sql` on the reference table, then schedules one operation and waits
/// for it: the operation, and a line with both times and the haven process's peak RSS
/// (KiB) during the operation (to be named with [`Line::named`]).
#[allow(clippy::too_many_arguments)]
async fn paired(
    api: &Api,
    pid: u32,
    refdb: &mut RefDb,
    reference_sql: &str,
    path: &str,
    body: Value,
    perf_dir: Option<&Path>,
    perf_name: &str,
) -> anyhow::Result<(Value, Line)> {
    let reference_time = refdb.exec(reference_sql).await?;
    reset_peak(pid);
    let perf = Perf::start(perf_dir, pid, perf_name)?;
    let start = Instant::now();
    let op = api.schedule(path, body).await?;
    let (done, _) = api.wait(&op).await?;
    perf.stop().await?;
    let line = Line {
        path: String::new(),
        rows: 0,
        haven: start.elapsed(),
        reference: String::new(),
        reference_time,
        peak_kib: crate::peak_kib(pid),
        note: String::new(),
    };
    Ok((done, line))
}
