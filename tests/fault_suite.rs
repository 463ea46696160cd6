//! The fault-injection suite of issue 12: real `haven worker` processes killed
//! (SIGKILL), paused past their lease (SIGSTOP, SIGCONT), stopped (SIGTERM), and the
//! PostgreSQL server itself restarted under a running import. Every scenario asserts
//! the data (the patients rows, the lines of each export, how many times each
//! operation started), not only the status, and reports its figures through
//! `faults::report` (printed, and collected in `target/tmp/fault-suite.txt`, which
//! `.ci/run` prints).
//!
//! The API runs in the test process with no workers (`--workers 0`), so every
//! operation is run by the worker processes under test.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::faults::*;
use common::{Backend, TestApp, TestDb};
use haven::domain::permission::Role;
use serde_json::{json, Value};

const NO_WORKERS: &[&str] = &["--workers", "0"];

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// How many times each started operation of the database was started (from its
/// `operation.start` audit entries), one count per operation.
async fn starts_per_operation(app: &TestApp) -> Vec<i64> {
    let sql = "SELECT COUNT(*) FROM audit_events WHERE action = 'operation.start' \
               GROUP BY operation_id";
    match app.backend {
        Backend::Sqlite => {
            let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&app.db.url)
                .await
                .expect("connect");
            sqlx::query_scalar(sql)
                .fetch_all(&mut conn)
                .await
                .expect("starts")
        }
        Backend::Postgres => {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&app.db.url)
                .await
                .expect("connect");
            sqlx::query_scalar(sql)
                .fetch_all(&mut conn)
                .await
                .expect("starts")
        }
    }
}

/// p50, p99 and max of a list of seconds.
fn percentiles(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| values[((values.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    (at(0.50), at(0.99), at(1.0))
}

fn seconds_between(from: &Value, to: &Value) -> f64 {
    let parse = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a timestamp")).expect("rfc3339")
    };
    (parse(to) - parse(from)).num_microseconds().unwrap_or(0) as f64 / 1e6
}

/// Scenario 1: 200 small imports and exports across 4 worker processes. Each
/// organization's exports depend on all its imports, so each export file must hold
/// exactly that organization's imported patients.
async fn many_small_operations_on_four_processes(app: TestApp) {
    let name = backend_name(app.backend);
    const ORGS: usize = 5;
    const IMPORTS: usize = 20; // per organization
    const EXPORTS: usize = 20; // per organization
    const ROWS: usize = 10; // per import
    let flags = ["--workers", "2", "--lease-duration", "5s"];
    let workers: Vec<_> = (0..4).map(|_| app.spawn_worker(&flags)).collect();
    let started = Instant::now();
    let mut orgs = Vec::new();
    for o in 0..ORGS {
        let (org, token) = organization(&app, &format!("Camp {o}")).await;
        let mut imports = Vec::new();
        for i in 0..IMPORTS {
            let file = csv(&format!("S1-{o}-{i}"), ROWS);
            imports.push(schedule_import(&app, &token, &file, json!({})).await);
        }
        let mut exports = Vec::new();
        for e in 0..EXPORTS {
            let format = if e % 2 == 0 { "csv" } else { "json" };
            exports.push(
                schedule(
                    &app,
                    &token,
                    "export",
                    json!({"format": format, "depends_on": imports}),
                )
                .await,
            );
        }
        orgs.push((org, token, imports, exports));
    }
    for (org, token, imports, exports) in &orgs {
        for id in imports.iter().chain(exports) {
            let done = wait_until_final(&app, token, id, Duration::from_secs(300)).await;
            assert_eq!(done["status"], "completed", "{done}");
            assert_eq!(done["attempt"], 1, "ran once: {done}");
        }
        let expected = unhcr_numbers(&app, *org).await;
        assert_eq!(
            expected.len(),
            IMPORTS * ROWS,
            "the organization's patients"
        );
        for (e, id) in exports.iter().enumerate() {
            let response = app
                .get(token, &format!("/api/v2/bulk-operations/{id}/download"))
                .await;
            assert_eq!(response.status(), 200);
            let text = response.text().await.expect("download");
            let numbers: Vec<String> = if e % 2 == 0 {
                let mut lines = text.lines();
                let header: Vec<&str> = lines.next().expect("header").split(',').collect();
                let column = header
                    .iter()
                    .position(|h| *h == "unhcr_number")
                    .expect("unhcr_number column");
                lines
                    .map(|l| l.split(',').nth(column).expect("cell").to_string())
                    .collect()
            } else {
                let patients: Value = serde_json::from_str(&text).expect("a JSON export");
                patients
                    .as_array()
                    .expect("an array of patients")
                    .iter()
                    .map(|p| {
                        p["unhcr_number"]
                            .as_str()
                            .expect("unhcr_number")
                            .to_string()
                    })
                    .collect()
            };
            assert_eq!(numbers.len(), IMPORTS * ROWS, "one line per patient");
            assert_eq!(
                numbers
                    .into_iter()
                    .collect::<std::collections::BTreeSet<_>>(),
                expected,
                "exactly the organization's patients, none twice"
            );
        }
    }
    let elapsed = started.elapsed();
    let operations = ORGS * (IMPORTS + EXPORTS);
    let starts = starts_per_operation(&app).await;
    assert_eq!(starts.len(), operations, "every operation started");
    assert!(starts.iter().all(|n| *n == 1), "none started twice");
    assert_eq!(
        patient_counts(&app).await,
        (
            (ORGS * IMPORTS * ROWS) as i64,
            (ORGS * IMPORTS * ROWS) as i64
        )
    );
    report(
        &format!("1 {name}"),
        &format!(
            "{operations} operations ({} imports of {ROWS} rows, {} exports) on 4 worker \
             processes: each started once (audit), {} patients exactly, every export file \
             exactly its organization's {} lines; {:.1} s from the first schedule",
            ORGS * IMPORTS,
            ORGS * EXPORTS,
            ORGS * IMPORTS * ROWS,
            IMPORTS * ROWS,
            elapsed.as_secs_f64()
        ),
    );
    drop(workers);
}

dual_test!(
    many_small_operations_on_four_processes,
    flags = NO_WORKERS,
    |app: TestApp| many_small_operations_on_four_processes(app)
);

/// Scenario 2: SIGKILL of the worker in the middle of a 200,000-row import; an idle
/// second worker takes over when the lease (2 s) ends.
async fn sigkill_in_the_middle_of_a_large_import(app: TestApp) {
    let name = backend_name(app.backend);
    const ROWS: usize = 200_000;
    let (org, token) = organization(&app, "Kakuma Clinic").await;
    let import = schedule_import(&app, &token, &csv("S2", ROWS), json!({})).await;
    let flags = ["--workers", "1", "--lease-duration", "2s"];
    let mut first = app.spawn_worker(&flags);
    wait_for_attempt(&app, org, &import, 1).await;
    let second = app.spawn_worker(&flags);
    wait_for_progress(&app, org, &import, (ROWS / 4) as i64).await;
    first.start_kill().expect("SIGKILL");
    let killed = Instant::now();
    let _ = first.wait().await;
    let at_kill = progress(&app, org, &import).await.progress_processed;
    let taken_over = wait_for_attempt(&app, org, &import, 2).await;
    let takeover = taken_over.duration_since(killed);
    let done = wait_until_final(&app, &token, &import, Duration::from_secs(900)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 2, "one takeover: {done}");
    assert_eq!(done["result"]["rows_imported"], ROWS, "{done}");
    assert_eq!(
        patient_counts(&app).await,
        (ROWS as i64, ROWS as i64),
        "exactly the file's patients, no UNHCR number twice"
    );
    assert_eq!(unhcr_numbers(&app, org).await.len(), ROWS);
    report(
        &format!("2 {name}"),
        &format!(
            "SIGKILL at {at_kill} of {ROWS} rows committed; takeover {:.2} s after the kill \
             (lease 2 s); completed at attempt 2 with exactly {ROWS} patients, no UNHCR \
             number twice; import took {} ms",
            takeover.as_secs_f64(),
            done["result"]["duration_ms"]
        ),
    );
    drop(second);
}

dual_test!(
    sigkill_in_the_middle_of_a_large_import,
    flags = NO_WORKERS,
    |app: TestApp| sigkill_in_the_middle_of_a_large_import(app)
);

/// Scenario 3 (PostgreSQL: a process paused inside an SQLite write transaction holds
/// the file's one write lock, docs/DECISIONS.md): SIGSTOP past the lease, takeover,
/// SIGCONT. The woken worker's commits are refused by the fence: after it wakes,
/// nothing changes in the database, and its log says it lost the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_past_the_lease_then_sigcont_commits_nothing() {
    let app = TestApp::spawn_with(Backend::Postgres, NO_WORKERS).await;
    const ROWS: usize = 60_000;
    let (org, token) = organization(&app, "Kakuma Clinic").await;
    let import = schedule_import(&app, &token, &csv("S3", ROWS), json!({})).await;
    let flags = ["--workers", "1", "--lease-duration", "2s"];
    let log = app.dir.path().join("paused-worker.log");
    let first = app.spawn_worker_logging(&flags, Some(&log));
    wait_for_progress(&app, org, &import, 10_000).await;
    signal(&first, "STOP");
    let paused = Instant::now();
    let at_pause = progress(&app, org, &import).await.progress_processed;
    let second = app.spawn_worker(&flags);
    let taken_over = wait_for_attempt(&app, org, &import, 2).await;
    let done = wait_until_final(&app, &token, &import, Duration::from_secs(600)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let audit_before = app.count("SELECT COUNT(*) FROM audit_events").await;
    let patients_before = patient_counts(&app).await;
    let versions_before = app
        .count("SELECT CAST(COALESCE(SUM(version), 0) AS BIGINT) FROM patients")
        .await;

    signal(&first, "CONT");
    let mut lost = false;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("lease lost") {
            lost = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Whatever the woken worker still tries, give it time to fail.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(lost, "the woken worker found its lease gone");
    assert_eq!(patient_counts(&app).await, patients_before);
    assert_eq!(patients_before, (ROWS as i64, ROWS as i64));
    assert_eq!(
        app.count("SELECT CAST(COALESCE(SUM(version), 0) AS BIGINT) FROM patients")
            .await,
        versions_before,
        "no patient changed after it woke"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_events").await,
        audit_before,
        "no audit entry written after it woke"
    );
    let op = progress(&app, org, &import).await;
    assert_eq!(op.attempt, 2, "still the takeover's attempt");
    assert_eq!(done["result"]["rows_imported"], ROWS);
    report(
        "3 postgres",
        &format!(
            "SIGSTOP at {at_pause} of {ROWS} rows; takeover {:.2} s after the pause (lease \
             2 s, plus the server ending the paused transaction); after SIGCONT the worker \
             logged `lease lost` and changed nothing: {ROWS} patients, versions and audit \
             entries the same",
            taken_over.duration_since(paused).as_secs_f64()
        ),
    );
    drop((first, second));
}

/// A PostgreSQL server of the test's own, in a temporary directory, that the test can
/// stop and start again.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("the PostgreSQL server is installed under /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max_by_key(|p| {
                p.parent()
                    .and_then(|v| v.file_name())
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .expect("an initdb");
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            // The server refuses to run as root: its directory belongs to postgres.
            let status = Command::new("chown")
                .args(["postgres:postgres", &dir.path().display().to_string()])
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = PrivatePostgres { dir, bin, port };
        let data = server.data().display().to_string();
        server.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        );
        server.pg_ctl_start();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run a PostgreSQL tool");
        assert!(
            output.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let data = self.data().display().to_string();
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
        );
    }

    fn stop(&self) {
        let data = self.data().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

async fn readyz(app: &TestApp) -> u16 {
    match app
        .client
        .get(app.url("/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// Scenario 4: the PostgreSQL server is stopped during a running import and started
/// again 5 s later (longer than the lease): `/readyz` says not ready meanwhile, and
/// the import completes with exactly its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_during_an_import() {
    let server = PrivatePostgres::start();
    {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&server.url("postgres"))
            .await
            .expect("connect to the test's own server");
        sqlx::query("CREATE DATABASE haven")
            .execute(&mut conn)
            .await
            .expect("create database");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let app = TestApp::spawn_on(
        Backend::Postgres,
        TestDb::existing(&server.url("haven")),
        dir,
        NO_WORKERS,
    )
    .await;
    const ROWS: usize = 60_000;
    let (org, token) = organization(&app, "Kakuma Clinic").await;
    let import = schedule_import(&app, &token, &csv("S4", ROWS), json!({})).await;
    let log = app.dir.path().join("worker.log");
    let worker =
        app.spawn_worker_logging(&["--workers", "1", "--lease-duration", "2s"], Some(&log));
    wait_for_progress(&app, org, &import, 10_000).await;
    assert_eq!(readyz(&app).await, 200);

    server.stop();
    let stopped = Instant::now();
    let while_down = readyz(&app).await;
    assert!(
        while_down >= 500,
        "/readyz says not ready while the database is away: {while_down}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.pg_ctl_start();
    let down = stopped.elapsed();
    let mut ready_again = None;
    for _ in 0..300 {
        if readyz(&app).await == 200 {
            ready_again = Some(stopped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_again = ready_again.expect("/readyz ready again after the restart");

    let done = wait_until_final(&app, &token, &import, Duration::from_secs(600)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["rows_imported"], ROWS, "{done}");
    assert_eq!(patient_counts(&app).await, (ROWS as i64, ROWS as i64));
    assert_eq!(unhcr_numbers(&app, org).await.len(), ROWS);
    let worker_log = std::fs::read_to_string(&log).unwrap_or_default();
    report(
        "4 postgres",
        &format!(
            "server stopped at >= 10,000 of {ROWS} rows for {:.1} s; /readyz answered \
             {while_down} while it was away and 200 again {:.1} s after the stop; the import \
             completed at attempt {} (failures {}) with exactly {ROWS} patients, no UNHCR \
             number twice; the worker logged {} warnings",
            down.as_secs_f64(),
            ready_again.as_secs_f64(),
            done["attempt"],
            done["failures"],
            worker_log.matches("WARN").count()
        ),
    );
    drop(worker);
    drop(app);
    drop(server);
}

/// Scenario 5: cancel an operation while the process running it is killed. On
/// PostgreSQL the worker is paused, the cancel accepted, then the worker killed before
/// it could see it; on SQLite (a paused process may hold the write lock) the worker is
/// killed and the operation cancelled while its lease still stands. Either way it must
/// never run on: the next worker undoes the partial import and ends it cancelled.
async fn cancel_while_the_running_process_is_killed(app: TestApp) {
    let name = backend_name(app.backend);
    const ROWS: usize = 100_000;
    let (org, token) = organization(&app, "Kakuma Clinic").await;
    let import = schedule_import(&app, &token, &csv("S5", ROWS), json!({})).await;
    let flags = ["--workers", "1", "--lease-duration", "2s"];
    let mut first = app.spawn_worker(&flags);
    wait_for_progress(&app, org, &import, 5_000).await;
    let cancel = || async {
        let response = app
            .post_json(
                &token,
                &format!("/api/v2/bulk-operations/{import}/cancel"),
                &json!({}),
            )
            .await;
        assert_eq!(response.status(), 200, "cancel accepted");
    };
    if app.backend == Backend::Postgres {
        signal(&first, "STOP");
        cancel().await;
        first.start_kill().expect("SIGKILL");
    } else {
        first.start_kill().expect("SIGKILL");
        let _ = first.wait().await;
        cancel().await;
    }
    let _ = first.wait().await;
    let partial = patient_counts(&app).await.0;
    assert!(partial > 0, "the killed worker had committed rows");
    let second = app.spawn_worker(&flags);
    let done = wait_until_final(&app, &token, &import, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(
        patient_counts(&app).await,
        (0, 0),
        "its partial work is undone"
    );
    // It stays cancelled: the live worker never picks it up again.
    let attempt = done["attempt"].clone();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = wait_until_final(&app, &token, &import, Duration::from_secs(5)).await;
    assert_eq!(later["status"], "cancelled");
    assert_eq!(later["attempt"], attempt, "never started again");
    assert_eq!(patient_counts(&app).await, (0, 0));
    report(
        &format!("5 {name}"),
        &format!(
            "cancelled and SIGKILLed at {partial} of {ROWS} rows committed; the next worker \
             undid them: cancelled at attempt {attempt}, 0 patients, not started again in 4 s"
        ),
    );
    drop(second);
}

dual_test!(
    cancel_while_the_running_process_is_killed,
    flags = NO_WORKERS,
    |app: TestApp| cancel_while_the_running_process_is_killed(app)
);

/// Scenario 6: 1,000 operations (dry-run exports) due in the same second, run by 3
/// worker processes: none ran twice, none was left behind; reports the start lag.
async fn a_thousand_operations_due_together_on_three_processes(app: TestApp) {
    let name = backend_name(app.backend);
    const COUNT: usize = 1_000;
    const ORGS: usize = 10;
    const USERS: usize = 2; // per organization: the limit is 60 schedules a minute a user
    let mut tokens = Vec::new();
    for o in 0..ORGS {
        let org = app.create_org(&format!("Camp {o}")).await;
        for _ in 0..USERS {
            tokens.push(app.user_token(org, Role::DataManager).await);
        }
    }
    let due = chrono::Utc::now() + chrono::Duration::seconds(25);
    let due = due - chrono::Duration::nanoseconds(due.timestamp_subsec_nanos() as i64);
    let scheduled_at = due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut ids = Vec::with_capacity(COUNT);
    for chunk in (0..COUNT).collect::<Vec<_>>().chunks(8) {
        let requests = chunk.iter().map(|i| {
            let token = tokens[i % tokens.len()].clone();
            let body = json!({"format": "csv", "dry_run": true, "email_notification": false,
                "scheduled_at": scheduled_at});
            let app = &app;
            async move {
                let response = app
                    .post_json(&token, "/api/v2/bulk/export/schedule", &body)
                    .await;
                assert_eq!(response.status(), 201);
                let op: Value = response.json().await.expect("operation");
                (token, id_of(&op))
            }
        });
        ids.extend(futures::future::join_all(requests).await);
    }
    assert!(
        chrono::Utc::now() < due,
        "scheduled all before they were due"
    );
    let flags = ["--workers", "2", "--lease-duration", "10s"];
    let workers: Vec<_> = (0..3).map(|_| app.spawn_worker(&flags)).collect();
    let mut lags = Vec::with_capacity(COUNT);
    let mut drain: f64 = 0.0;
    for (token, id) in &ids {
        let done = wait_until_final(&app, token, id, Duration::from_secs(300)).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["attempt"], 1, "{done}");
        lags.push(seconds_between(&done["scheduled_at"], &done["started_at"]));
        drain = drain.max(seconds_between(
            &done["scheduled_at"],
            &done["completed_at"],
        ));
    }
    let starts = starts_per_operation(&app).await;
    assert_eq!(starts.len(), COUNT, "none left behind");
    assert!(starts.iter().all(|n| *n == 1), "none ran twice");
    let (p50, p99, max) = percentiles(lags);
    report(
        &format!("6 {name}"),
        &format!(
            "{COUNT} dry-run exports due at the same second, 3 worker processes × 2 workers: \
             all completed, each started exactly once (audit); start lag p50 {p50:.2} s, p99 \
             {p99:.2} s, max {max:.2} s; all done {drain:.2} s after the due time (debug build)"
        ),
    );
    drop(workers);
}

dual_test!(
    a_thousand_operations_due_together_on_three_processes,
    flags = NO_WORKERS,
    |app: TestApp| a_thousand_operations_due_together_on_three_processes(app)
);

/// Scenario 7: SIGTERM during an import: the process exits within its shutdown timeout,
/// and the idle second process takes over at once, not after the (10 minute) lease.
async fn sigterm_during_an_import(app: TestApp) {
    let name = backend_name(app.backend);
    const ROWS: usize = 60_000;
    let (org, token) = organization(&app, "Kakuma Clinic").await;
    let import = schedule_import(&app, &token, &csv("S7", ROWS), json!({})).await;
    let flags = [
        "--workers",
        "1",
        "--lease-duration",
        "600s",
        "--shutdown-timeout",
        "10s",
    ];
    let mut first = app.spawn_worker(&flags);
    wait_for_attempt(&app, org, &import, 1).await;
    let second = app.spawn_worker(&flags);
    wait_for_progress(&app, org, &import, 10_000).await;
    signal(&first, "TERM");
    let termed = Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(10), first.wait())
        .await
        .expect("the worker exits within --shutdown-timeout 10s")
        .expect("exit status");
    let exited = termed.elapsed();
    assert!(exit.success(), "a clean exit: {exit}");
    let taken_over = wait_for_attempt(&app, org, &import, 2).await;
    let takeover = taken_over.duration_since(termed);
    assert!(
        takeover < Duration::from_secs(60),
        "taken over long before the 600 s lease: {takeover:?}"
    );
    let done = wait_until_final(&app, &token, &import, Duration::from_secs(600)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["failures"], 0, "a release is no failure: {done}");
    assert_eq!(done["result"]["rows_imported"], ROWS);
    assert_eq!(patient_counts(&app).await, (ROWS as i64, ROWS as i64));
    report(
        &format!("7 {name}"),
        &format!(
            "SIGTERM mid-import: exit {:.2} s after the signal (timeout 10 s), takeover by \
             the idle process {:.2} s after it (lease 600 s); completed at attempt {} with \
             0 failures and exactly {ROWS} patients",
            exited.as_secs_f64(),
            takeover.as_secs_f64(),
            done["attempt"]
        ),
    );
    drop(second);
}

dual_test!(
    sigterm_during_an_import,
    flags = NO_WORKERS,
    |app: TestApp| sigterm_during_an_import(app)
);

/// Scenario 7, the server's side: SIGTERM to `haven serve` while a request is still
/// uploading. The server stops accepting connections, lets the upload finish (201, the
/// import is scheduled) and exits within its shutdown timeout.
async fn sigterm_lets_an_upload_in_flight_finish(app: TestApp) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let name = backend_name(app.backend);
    let (_, token) = organization(&app, "Kakuma Clinic").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut server = tokio::process::Command::new(common::haven_bin())
        .args(["serve", "--no-bootstrap", "--workers", "0"])
        .args(["--listen", &address, "--shutdown-timeout", "5s"])
        .args(["--database-url", &app.db.url])
        .arg("--data-dir")
        .arg(app.dir.path())
        .env(
            "HAVEN_MASTER_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start haven serve");
    let mut connection = None;
    for _ in 0..300 {
        if let Ok(c) = tokio::net::TcpStream::connect(&address).await {
            connection = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut connection = connection.expect("haven serve listens");
    const ROWS: usize = 20_000;
    let body = serde_json::to_vec(&json!({"csv_data": csv("S7H", ROWS), "file_name": "camp.csv"}))
        .expect("body");
    let head = format!(
        "POST /api/v2/bulk/import/schedule HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    connection.write_all(head.as_bytes()).await.expect("send");
    let (first, rest) = body.split_at(body.len() / 2);
    connection.write_all(first).await.expect("send");
    // A second client that stops sending half-way: it must not hold the process
    // beyond the shutdown timeout.
    let mut stalled = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    stalled.write_all(head.as_bytes()).await.expect("send");
    stalled.write_all(first).await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&server, "TERM");
    let termed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        tokio::net::TcpStream::connect(&address).await.is_err(),
        "no new connection is accepted once stopping"
    );
    for piece in rest.chunks(64 * 1024) {
        connection.write_all(piece).await.expect("send the rest");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut response = String::new();
    connection
        .read_to_string(&mut response)
        .await
        .expect("the response");
    assert!(
        response.starts_with("HTTP/1.1 201"),
        "the upload in flight was accepted: {}",
        response.lines().next().unwrap_or("")
    );
    let exit = tokio::time::timeout(Duration::from_secs(15), server.wait())
        .await
        .expect("haven serve exits soon after --shutdown-timeout 5s")
        .expect("exit status");
    let exited = termed.elapsed();
    assert!(exit.success(), "a clean exit: {exit}");
    let mut cut_off = Vec::new();
    let _ = stalled.read_to_end(&mut cut_off).await;
    assert!(
        !String::from_utf8_lossy(&cut_off).contains("201"),
        "the stalled upload was not accepted"
    );
    let scheduled = app
        .count("SELECT COUNT(*) FROM bulk_operations WHERE status = 'scheduled'")
        .await;
    assert_eq!(scheduled, 1, "the import was scheduled");
    report(
        &format!("7 {name} serve"),
        &format!(
            "SIGTERM to haven serve mid-upload ({} bytes, half sent): new connections refused, \
             the upload finished with 201; a client stalled mid-body was cut off and the \
             process exited {:.2} s after the signal (shutdown timeout 5 s)",
            body.len(),
            exited.as_secs_f64()
        ),
    );
}

dual_test!(
    sigterm_lets_an_upload_in_flight_finish,
    flags = NO_WORKERS,
    |app: TestApp| sigterm_lets_an_upload_in_flight_finish(app)
);

/// Pickup by another process: the API (this process, no workers) schedules dry-run
/// exports to run now, one at a time, and an idle `haven worker` process starts them.
/// On SQLite the worker learns of them from `PRAGMA data_version` (issue 12 asks for at
/// most 100 ms); on PostgreSQL from `NOTIFY`.
async fn pickup_by_another_process(app: TestApp) {
    let name = backend_name(app.backend);
    let (org, token) = organization(&app, "Kakuma Clinic").await;
    let worker = app.spawn_worker(&["--workers", "1"]);
    // The worker is up once it has run a first operation.
    let first = schedule(&app, &token, "export", json!({"dry_run": true})).await;
    wait_until_final(&app, &token, &first, Duration::from_secs(60)).await;
    let mut delays = Vec::new();
    for _ in 0..20 {
        // Idle long enough for every wake-up of the worker to have gone quiet.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let id = schedule(&app, &token, "export", json!({"dry_run": true})).await;
        let done = wait_until_final(&app, &token, &id, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "completed", "{done}");
        let op = progress(&app, org, &id).await;
        let started = op.started_at.expect("started");
        delays.push((started - op.created_at).num_microseconds().unwrap_or(0) as f64 / 1e3);
    }
    let (p50, p99, max) = percentiles(delays);
    report(
        &format!("8 {name}"),
        &format!(
            "pickup by an idle worker process of an operation scheduled by another process, \
             20 one at a time: created_at to started_at p50 {p50:.0} ms, p99 {p99:.0} ms, \
             max {max:.0} ms (debug build)"
        ),
    );
    drop(worker);
}

dual_test!(
    pickup_by_another_process,
    flags = NO_WORKERS,
    |app: TestApp| pickup_by_another_process(app)
);
