//! Helpers of the tests that start real `haven worker` processes and inject faults
//! (tests/engine_faults.rs, tests/fault_suite.rs): signals, generated files, waiting on
//! progress, and checks of the data itself.

use std::collections::BTreeSet;
use std::time::Duration;

use haven::domain::permission::Role;
use serde_json::Value;
use uuid::Uuid;

use super::TestApp;

/// Sends a signal (`STOP`, `CONT`, `TERM`) to a child process.
pub fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("the worker is running");
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

pub fn csv(prefix: &str, rows: usize) -> String {
    let mut csv = String::from("unhcr_number,given_name,family_name,gender,current_camp\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "{prefix}-{i:07},Given{i},Family{i},female,Kakuma\n"
        ));
    }
    csv
}

pub async fn organization(app: &TestApp, name: &str) -> (Uuid, String) {
    let org = app.create_org(name).await;
    (org, app.user_token(org, Role::DataManager).await)
}

pub fn id_of(op: &Value) -> String {
    op["id"].as_str().expect("operation id").to_string()
}

pub async fn schedule(app: &TestApp, token: &str, kind: &str, body: Value) -> String {
    let response = app
        .post_json(token, &format!("/api/v2/bulk/{kind}/schedule"), &body)
        .await;
    assert_eq!(response.status(), 201, "schedule {kind}");
    id_of(&response.json().await.expect("operation"))
}

pub async fn schedule_import(app: &TestApp, token: &str, csv: &str, options: Value) -> String {
    let response = app.schedule_import(token, csv, options).await;
    assert_eq!(response.status(), 201, "schedule import");
    id_of(&response.json().await.expect("operation"))
}

pub async fn progress(app: &TestApp, org: Uuid, id: &str) -> haven::domain::operation::Operation {
    app.store
        .get_operation(org, Uuid::parse_str(id).expect("uuid"))
        .await
        .expect("read")
        .expect("operation")
}

/// Waits until operation `id` has committed at least `rows`.
pub async fn wait_for_progress(app: &TestApp, org: Uuid, id: &str, rows: i64) {
    for _ in 0..60_000 {
        let op = progress(app, org, id).await;
        assert!(
            !op.status.is_final(),
            "ended before reaching {rows}: {op:?}"
        );
        if op.progress_processed >= rows {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("operation {id} never reached {rows} rows");
}

/// The UNHCR numbers of the organization's live patients.
pub async fn unhcr_numbers(app: &TestApp, org: Uuid) -> BTreeSet<String> {
    app.all_patients(org)
        .await
        .into_iter()
        .filter_map(|p| p.fields.unhcr_number)
        .collect()
}

/// The downloaded CSV, checked line for line against the organization's patients.
pub async fn assert_download_matches(app: &TestApp, token: &str, org: Uuid, id: &str, rows: usize) {
    let response = app
        .get(token, &format!("/api/v2/bulk-operations/{id}/download"))
        .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("download");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), rows + 1, "the header and one line per patient");
    let header: Vec<&str> = lines[0].split(',').collect();
    let column = header
        .iter()
        .position(|h| *h == "unhcr_number")
        .expect("unhcr_number column");
    let in_file: Vec<String> = lines[1..]
        .iter()
        .map(|l| l.split(',').nth(column).expect("cell").to_string())
        .collect();
    let unique: BTreeSet<String> = in_file.iter().cloned().collect();
    assert_eq!(unique.len(), rows, "no line twice");
    assert_eq!(
        unique,
        unhcr_numbers(app, org).await,
        "exactly the patients"
    );
}

/// Prints one line of a scenario's report and appends it to
/// `target/tmp/fault-suite.txt`, which `.ci/run` prints after the tests.
pub fn report(scenario: &str, line: &str) {
    use std::io::Write;
    let text = format!("[{scenario}] {line}");
    eprintln!("{text}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-suite.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{text}");
    }
}

/// Waits (up to `limit`) until the operation has ended; returns it as the API shows it.
pub async fn wait_until_final(app: &TestApp, token: &str, id: &str, limit: Duration) -> Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let response = app
            .get(token, &format!("/api/v2/bulk-operations/{id}/status"))
            .await;
        if response.status() == 200 {
            let op: Value = response.json().await.expect("status json");
            if !["scheduled", "processing"].contains(&op["status"].as_str().unwrap_or("")) {
                return op;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "operation {id} did not end within {limit:?}: {op}"
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "operation {id} did not end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until operation `id` is at attempt `attempt` or later; returns when it saw it.
pub async fn wait_for_attempt(
    app: &TestApp,
    org: Uuid,
    id: &str,
    attempt: i64,
) -> std::time::Instant {
    for _ in 0..12_000 {
        if progress(app, org, id).await.attempt >= attempt {
            return std::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("operation {id} never reached attempt {attempt}");
}

/// Live patients, and distinct UNHCR numbers among them, of the whole database.
pub async fn patient_counts(app: &TestApp) -> (i64, i64) {
    (
        app.count("SELECT COUNT(*) FROM patients WHERE deleted_at IS NULL")
            .await,
        app.count("SELECT COUNT(DISTINCT unhcr_number) FROM patients WHERE deleted_at IS NULL")
            .await,
    )
}
