//! Benchmark harness: imports, exports, updates and rolls back N rows through the HTTP
//! API of an in-process Haven, on SQLite or PostgreSQL, and times PostgreSQL's own
//! `COPY` on the same data in the same run as the reference.
//!
//! cargo run --release --example bench -- sqlite 100000
//! cargo run --release --example bench -- postgres 100000   (HAVEN_TEST_POSTGRES_URL)
//! cargo build --release && cargo run --release --example bench -- memory
//!   (peak memory of a separate `haven serve` process importing and exporting 10,000,
//!   100,000 and 1,000,000 rows, SQLite)
//! cargo build --release --bin haven --example bench
//! target/release/examples/bench lag <sqlite|postgres> <count> <processes>
//!   (scheduling lag of `count` dry-run exports due together, run by `processes`
//!   separate `haven` processes; see `bench/lag.rs`)
//! target/release/examples/bench suite <sqlite|postgres|both> <rows> [--perf DIR] [--out FILE]
//!   (import, exports, update, delete and their rollbacks through the API of a real
//!   `haven serve`, side by side with the database's own bulk tools; see `bench/suite.rs`)

#[path = "bench/lag.rs"]
mod lag;
#[path = "bench/suite.rs"]
mod suite;

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

/// A `KiB` line (`VmRSS:`, `VmHWM:`) of `/proc/<process>/status`.
fn status_kib(process: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn rss_kib(field: &str) -> u64 {
    status_kib("self", field)
}

fn admin_url() -> String {
    std::env::var("HAVEN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn csv_rows(rows: usize) -> String {
    let mut csv = String::from(
        "unhcr_number,given_name,family_name,gender,date_of_birth,refugee_status,origin_country,current_camp,camp_section,phone_number,languages_spoken\n",
    );
    for i in 0..rows {
        csv.push_str(&format!(
            "BEN-{i:07},Given{i},Family{i},{},19{:02}-0{}-1{},refugee,SO,Kakuma,B{},+2547{:08},so;sw\n",
            ["female", "male", "other"][i % 3],
            50 + i % 50,
            1 + i % 9,
            i % 10,
            i % 40,
            i
        ));
    }
    csv
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("post");
        let status = r.status();
        let v: Value = r.json().await.expect("json");
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    /// Waits for the end of an operation; returns it and the wall time since `start`.
    async fn wait(&self, op: &Value, start: Instant) -> (Value, Duration) {
        let id = op["id"].as_str().expect("id");
        loop {
            let v: Value = self
                .http
                .get(format!("{}/api/v2/bulk-operations/{id}/status", self.base))
                .bearer_auth(&self.token)
                .send()
                .await
                .expect("status")
                .json()
                .await
                .expect("json");
            if !["scheduled", "processing"].contains(&v["status"].as_str().unwrap_or("")) {
                assert_eq!(v["status"], "completed", "{v}");
                return (v, start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn timed(&self, path: &str, body: Value) -> (Value, Duration) {
        let start = Instant::now();
        let op = self.post(path, body).await;
        self.wait(&op, start).await
    }
}

/// Logs in through the API and returns the bearer token.
async fn login(
    http: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let answer: Value = http
        .post(format!("{base}/api/v2/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?
        .json()
        .await?;
    answer["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no token in the login answer"))
}

/// Schedules an import of `csv` as a multipart upload; returns the operation.
async fn upload(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    csv: String,
    email_notification: bool,
) -> anyhow::Result<Value> {
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(csv.into_bytes()).file_name("bench.csv"),
        )
        .text("email_notification", email_notification.to_string());
    Ok(http
        .post(format!("{base}/api/v2/bulk/import/schedule"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await?
        .json()
        .await?)
}

/// Runs a `COPY … TO STDOUT` and returns the bytes it sent.
async fn copy_out(conn: &mut sqlx::PgConnection, sql: &str) -> anyhow::Result<usize> {
    use futures::StreamExt;
    let mut out = conn.copy_out_raw(sql).await?;
    let mut bytes = 0usize;
    while let Some(chunk) = out.next().await {
        bytes += chunk?.len();
    }
    Ok(bytes)
}

/// Peak resident memory (KiB) of another process.
fn peak_kib(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmHWM:")
}

/// Starts `target/release/haven serve` on a fresh data dir, imports and exports `rows`
/// rows through its API, and reports the server's peak memory after each step.
async fn memory_run(rows: usize) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir()?;
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/haven");
    let mut child = tokio::process::Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let mut lines = tokio::io::BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .lines();
    let (mut password, mut base) = (String::new(), String::new());
    while let Some(line) = lines.next_line().await? {
        if let Some(rest) = line.strip_prefix("login: admin@demo.local password: ") {
            password = rest.to_string();
        }
        if let Some(start) = line.find("http://") {
            base = line[start..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches('/')
                .to_string();
            break;
        }
    }
    let http = reqwest::Client::new();
    let token = login(&http, &base, "admin@demo.local", &password).await?;
    let client = Client { http, base, token };
    let idle = peak_kib(pid);
    let csv = csv_rows(rows);
    let bytes = csv.len();
    let start = Instant::now();
    let op = upload(&client.http, &client.base, &client.token, csv, true).await?;
    let (_, import_wall) = client.wait(&op, start).await;
    let after_import = peak_kib(pid);
    let (_, export_wall) = client
        .timed("/api/v2/bulk/export/schedule", json!({"format": "csv"}))
        .await;
    let after_export = peak_kib(pid);
    println!(
        "| {rows} | {:.1} MB | {:.2} s | {} MiB | {} MiB | {:.2} s | {} MiB |",
        bytes as f64 / 1e6,
        import_wall.as_secs_f64(),
        idle / 1024,
        after_import / 1024,
        export_wall.as_secs_f64(),
        after_export / 1024
    );
    let _ = child.kill().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("lag") {
        return lag::main(&args[2..]).await;
    }
    if args.get(1).map(String::as_str) == Some("suite") {
        return suite::main(&args[2..]).await;
    }
    if args.get(1).map(String::as_str) == Some("memory") {
        println!("| rows | CSV size | import (multipart upload → completed) | server peak RSS idle | after import | export csv | after export |");
        println!("|---|---|---|---|---|---|---|");
        for rows in [10_000, 100_000, 1_000_000] {
            memory_run(rows).await?;
        }
        return Ok(());
    }
    let backend = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("sqlite")
        .to_string();
    let rows: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let mut pg_name = None;
    let db_url = if backend == "postgres" {
        let name = format!("haven_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url()).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let base = admin_url()
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap_or_default();
        pg_name = Some(name.clone());
        format!("{base}/{name}")
    } else {
        format!("sqlite://{}", dir.path().join("haven.db").display())
    };
    let config = haven::cli::Cli::try_parse_from([
        "haven",
        "--data-dir",
        &dir.path().display().to_string(),
        "--database-url",
        &db_url,
        "--workers",
        "2",
    ])?
    .config;
    let config = std::sync::Arc::new(config);
    let store = haven::app::open_store(&config).await?;
    let keyring = haven::app::load_keyring(&config)?;
    let engine = haven::app::start_engine(store.clone(), keyring, &config)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(haven::app::serve(
        store.clone(),
        config.clone(),
        engine,
        listener,
        std::future::pending(),
    ));
    let org = haven::app::create_organization(store.as_ref(), "Bench").await?;
    haven::app::create_user(
        store.as_ref(),
        org.id,
        "bench@example.org",
        haven::domain::permission::Role::Admin,
        "bench-password-long",
    )
    .await?;
    let http = reqwest::Client::new();
    let token = login(&http, &base, "bench@example.org", "bench-password-long").await?;
    let client = Client { http, base, token };

    let csv = csv_rows(rows);
    let rss_before = rss_kib("VmRSS:");
    let (import, import_wall) = client
        .timed(
            "/api/v2/bulk/import/schedule",
            json!({"csv_data": csv, "file_name": "bench.csv"}),
        )
        .await;
    drop(csv);
    let (export, export_wall) = client
        .timed("/api/v2/bulk/export/schedule", json!({"format": "csv"}))
        .await;
    let (update, update_wall) = client
        .timed(
            "/api/v2/bulk/update/schedule",
            json!({"filters": {"current_camp": "Kakuma"}, "changes": {"current_camp": "Dadaab"}}),
        )
        .await;
    let update_id = update["id"].as_str().unwrap_or_default().to_string();
    let import_id = import["id"].as_str().unwrap_or_default().to_string();
    let (_, update_rb_wall) = client
        .timed(
            &format!("/api/v2/bulk/update/rollback/{update_id}"),
            json!({}),
        )
        .await;
    let (import_rb, import_rb_wall) = client
        .timed(
            &format!("/api/v2/bulk/import/rollback/{import_id}"),
            json!({"force": true}),
        )
        .await;
    let peak = rss_kib("VmHWM:");

    let per_sec = |n: usize, d: Duration| (n as f64 / d.as_secs_f64()).round();
    println!("## {backend}, {rows} rows");
    println!();
    println!("| step | wall time | rows/s | engine result |");
    println!("|---|---|---|---|");
    println!(
        "| import (schedule → completed) | {:.2} s | {} | duration_ms {} |",
        import_wall.as_secs_f64(),
        per_sec(rows, import_wall),
        import["result"]["duration_ms"]
    );
    println!(
        "| export csv | {:.2} s | {} | duration_ms {}, {} bytes |",
        export_wall.as_secs_f64(),
        per_sec(rows, export_wall),
        export["result"]["duration_ms"],
        export["result"]["bytes"]
    );
    println!(
        "| update current_camp | {:.2} s | {} | patients_updated {} |",
        update_wall.as_secs_f64(),
        per_sec(rows, update_wall),
        update["result"]["patients_updated"]
    );
    println!(
        "| rollback of the update | {:.2} s | {} | |",
        update_rb_wall.as_secs_f64(),
        per_sec(rows, update_rb_wall)
    );
    println!(
        "| rollback of the import | {:.2} s | {} | patients_removed {} |",
        import_rb_wall.as_secs_f64(),
        per_sec(rows, import_rb_wall),
        import_rb["result"]["patients_removed"]
    );

    // The reference, same data, same run: PostgreSQL's own COPY in and out.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url()).await?;
    let table = format!("bench_copy_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!(
        "CREATE TEMP TABLE {table} (unhcr_number text, given_name text, family_name text, gender text, date_of_birth date, \
         refugee_status text, origin_country text, current_camp text, camp_section text, phone_number text, languages_spoken text)"
    ))
    .execute(&mut conn)
    .await?;
    let data = csv_rows(rows);
    let start = Instant::now();
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} FROM STDIN WITH (FORMAT csv, HEADER true)"
        ))
        .await?;
    copy.send(data.as_bytes()).await?;
    copy.finish().await?;
    let copy_in = start.elapsed();
    let start = Instant::now();
    let bytes = copy_out(
        &mut conn,
        &format!("COPY {table} TO STDOUT WITH (FORMAT csv, HEADER true)"),
    )
    .await?;
    let copy_out = start.elapsed();
    println!("| reference: PostgreSQL COPY FROM STDIN (csv, same rows, no validation) | {:.2} s | {} | |", copy_in.as_secs_f64(), per_sec(rows, copy_in));
    println!(
        "| reference: PostgreSQL COPY TO STDOUT (csv, {bytes} bytes) | {:.2} s | {} | |",
        copy_out.as_secs_f64(),
        per_sec(rows, copy_out)
    );
    println!();
    println!("Memory: RSS before the import {} MiB, peak RSS of the whole run {} MiB (the process also holds the {rows}-row CSV it sends).", rss_before / 1024, peak / 1024);
    drop(conn);
    if let Some(name) = pg_name {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url()).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await?;
    }
    Ok(())
}
