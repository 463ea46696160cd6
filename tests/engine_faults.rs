//! The engine under faults, with real `haven worker` processes paused (SIGSTOP), resumed
//! (SIGCONT), stopped (SIGTERM): what is asserted is the data (the rows, the bytes of
//! the download), not only the status.
//!
//! The SIGSTOP scenarios run on PostgreSQL only: SQLite has one write lock for the
//! whole file, so a process paused while holding it stops every writer of that file
//! until it resumes; no engine design can change that (docs/DECISIONS.md).

mod common;

use std::time::Duration;

use common::faults::*;
use common::{Backend, TestApp};
use haven::engine::Ran;
use serde_json::{json, Value};
use uuid::Uuid;

fn spawn_worker(app: &TestApp, extra: &[&str]) -> tokio::process::Child {
    app.spawn_worker(extra)
}

/// Imports `rows` patients with this process's engine (the app runs no workers).
async fn import_here(app: &TestApp, token: &str, prefix: &str, rows: usize) {
    let id = schedule_import(app, token, &csv(prefix, rows), json!({})).await;
    while app.engine.run_once().await.expect("run") != Ran::Empty {}
    let done = app.wait_until_done(token, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
}

/// Files of the export directory (encrypted exports of every attempt).
fn export_files(app: &TestApp) -> Vec<String> {
    std::fs::read_dir(app.dir.path().join("blobs/exports"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Defect 1: a worker paused in the middle of an export, taken over, then resumed,
/// must not touch the file the takeover completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_export_worker_resumed_after_a_takeover_cannot_corrupt_the_file() {
    let app = TestApp::spawn_with(Backend::Postgres, &["--workers", "0"]).await;
    let (org, token) = organization(&app, "Kakuma Clinic").await;
    const ROWS: usize = 30_000;
    import_here(&app, &token, "EXP", ROWS).await;
    let export = schedule(&app, &token, "export", json!({"format": "csv"})).await;
    let flags = ["--workers", "1", "--lease-duration", "2s"];
    let first = spawn_worker(&app, &flags);
    wait_for_progress(&app, org, &export, 3_000).await;
    signal(&first, "STOP");
    let second = spawn_worker(&app, &flags);
    let done = app.wait_until_done(&token, &export).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["attempt"].as_i64().unwrap() >= 2, "taken over: {done}");
    assert_eq!(done["result"]["rows_exported"], ROWS);
    assert_download_matches(&app, &token, org, &export, ROWS).await;

    // The paused worker wakes up, writes its next pages, finds its lease gone.
    signal(&first, "CONT");
    let published = export_files(&app);
    for _ in 0..200 {
        if export_files(&app).len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_download_matches(&app, &token, org, &export, ROWS).await;
    let left = export_files(&app);
    assert_eq!(
        left.len(),
        1,
        "only the published file stays: {left:?} (was {published:?})"
    );
    drop((first, second));
}

/// Defect 2: a worker paused inside a chunk transaction holds row locks; claims of
/// other work skip them, and its own operation is taken over once the server ends the
/// paused transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_inside_a_transaction_stalls_no_claim() {
    let app = TestApp::spawn_with(Backend::Postgres, &["--workers", "0"]).await;
    let (org, token) = organization(&app, "Kakuma Clinic").await;
    let (other_org, other_token) = organization(&app, "Zaatari Clinic").await;
    const ROWS: usize = 40_000;
    let import = schedule_import(&app, &token, &csv("PAU", ROWS), json!({})).await;
    let flags = ["--workers", "2", "--lease-duration", "2s"];
    let first = spawn_worker(&app, &flags);
    wait_for_progress(&app, org, &import, 2_000).await;
    // Pause it at a moment when it holds a transaction open.
    let mut paused_in_transaction = false;
    for _ in 0..2_000 {
        signal(&first, "STOP");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let idle_in_transaction = app
            .count(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND state = 'idle in transaction'",
            )
            .await;
        if idle_in_transaction > 0 {
            paused_in_transaction = true;
            break;
        }
        signal(&first, "CONT");
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    assert!(
        paused_in_transaction,
        "never caught the worker inside a transaction"
    );
    assert!(
        !progress(&app, org, &import).await.status.is_final(),
        "still running when paused"
    );

    // Another organization's due export runs meanwhile, on another process.
    let second = spawn_worker(&app, &flags);
    let export = schedule(&app, &other_token, "export", json!({"dry_run": true})).await;
    let done = app.wait_until_done(&other_token, &export).await;
    assert_eq!(done["status"], "completed", "{done}");
    // The paused worker's import is taken over and completes, exactly once.
    let imported = app.wait_until_done(&token, &import).await;
    assert_eq!(imported["status"], "completed", "{imported}");
    assert!(imported["attempt"].as_i64().unwrap() >= 2, "{imported}");
    signal(&first, "CONT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(unhcr_numbers(&app, org).await.len(), ROWS);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM patients").await,
        ROWS as i64,
        "no row twice"
    );
    assert!(unhcr_numbers(&app, other_org).await.is_empty());
    drop((first, second));
}

/// Defect 4: SIGTERM releases the operation; the next process takes it over at once,
/// and rolling restarts never use up the failure budget (`--max-attempts 1` here).
async fn rolling_restarts_never_count_as_failed_attempts(app: TestApp) {
    let (org, token) = organization(&app, "Kakuma Clinic").await;
    const ROWS: usize = 40_000;
    let import = schedule_import(&app, &token, &csv("RST", ROWS), json!({})).await;
    // A long lease: a takeover before it ends can only come from a release.
    let flags = [
        "--workers",
        "1",
        "--lease-duration",
        "600s",
        "--max-attempts",
        "1",
    ];
    let mut worker = spawn_worker(&app, &flags);
    for restart in 1..=3 {
        wait_for_progress(&app, org, &import, restart * 5_000).await;
        signal(&worker, "TERM");
        let exit = tokio::time::timeout(Duration::from_secs(60), worker.wait())
            .await
            .expect("the worker stops within its shutdown timeout")
            .expect("exit status");
        assert!(exit.success(), "a clean exit: {exit}");
        let op = progress(&app, org, &import).await;
        if op.status.is_final() {
            break;
        }
        assert!(
            op.lease_expires_at
                .is_some_and(|l| l < haven::domain::now()),
            "the lease was released, not left to expire: {op:?}"
        );
        assert_eq!(op.failures, 0);
        worker = spawn_worker(&app, &flags);
    }
    let done = app.wait_until_done(&token, &import).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["failures"], 0, "{done}");
    assert!(done["attempt"].as_i64().unwrap() >= 2, "{done}");
    assert_eq!(done["result"]["rows_imported"], ROWS);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM patients").await,
        ROWS as i64
    );
    assert_eq!(unhcr_numbers(&app, org).await.len(), ROWS);
    let _ = worker.kill().await;
}

dual_test!(
    rolling_restarts_never_count_as_failed_attempts,
    flags = &["--workers", "0"],
    |app: TestApp| rolling_restarts_never_count_as_failed_attempts(app)
);

/// Installs a fault: deleting a patient fails while `engine_fault` has a row (a
/// database error that is not an outage, the worst case for an undo).
async fn install_delete_fault(app: &TestApp) {
    app.raw_sql("CREATE TABLE engine_fault (on_delete INTEGER)")
        .await
        .unwrap();
    match app.backend {
        Backend::Postgres => {
            app.raw_sql(
                "CREATE FUNCTION engine_fault() RETURNS trigger AS $$ BEGIN \
                 IF EXISTS (SELECT 1 FROM engine_fault) THEN RAISE EXCEPTION 'injected fault'; END IF; \
                 RETURN OLD; END $$ LANGUAGE plpgsql",
            )
            .await
            .unwrap();
            app.raw_sql(
                "CREATE TRIGGER engine_fault BEFORE DELETE ON patients \
                 FOR EACH ROW EXECUTE FUNCTION engine_fault()",
            )
            .await
            .unwrap();
        }
        Backend::Sqlite => {
            app.raw_sql(
                "CREATE TRIGGER engine_fault BEFORE DELETE ON patients \
                 WHEN EXISTS (SELECT 1 FROM engine_fault) \
                 BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
            )
            .await
            .unwrap();
        }
    }
    app.raw_sql("INSERT INTO engine_fault VALUES (1)")
        .await
        .unwrap();
}

/// Defect 5: an error inside the undo of an aborted import does not end it `failed`
/// with its rows left: it stays undoing and is retried until the undo completes.
async fn an_undo_interrupted_by_errors_is_retried_until_done(app: TestApp) {
    let (org, token) = organization(&app, "Kakuma Clinic").await;
    // 4,000 valid rows, a whole number of import chunks, then the invalid one in a
    // chunk of its own: everything before it is written before the abort.
    let mut file = csv("UND", 4_000);
    file.push_str("UND-BAD,Given,Family,not-a-gender,Kakuma\n");
    let import = schedule_import(&app, &token, &file, json!({"on_error": "abort"})).await;
    install_delete_fault(&app).await;
    assert_eq!(
        app.engine.run_once().await.unwrap(),
        Ran::Operation(Uuid::parse_str(&import).unwrap())
    );
    let op: Value = app
        .get(&token, &format!("/api/v2/bulk-operations/{import}/status"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(op["status"], "processing", "not failed half-undone: {op}");
    assert_eq!(op["undoing"], true, "{op}");
    assert_eq!(op["progress"]["phase"], "undoing", "{op}");
    assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 4_000);
    // A cancel now cannot change how it ends.
    let cancel = app
        .post_json(
            &token,
            &format!("/api/v2/bulk-operations/{import}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(cancel.status(), 409);

    // Still failing: retried again, still undoing.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_ne!(app.engine.run_once().await.unwrap(), Ran::Empty);
    assert_eq!(
        progress(&app, org, &import).await.undo_reason.as_deref(),
        Some("aborted")
    );

    // The fault clears: the next retry finishes the undo.
    app.raw_sql("DELETE FROM engine_fault").await.unwrap();
    let mut done = Value::Null;
    for _ in 0..100 {
        app.engine.run_once().await.unwrap();
        done = app
            .get(&token, &format!("/api/v2/bulk-operations/{import}/status"))
            .await
            .json()
            .await
            .unwrap();
        if done["status"] != "processing" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["undoing"], false);
    let message = done["error_message"].as_str().unwrap();
    assert!(message.contains("on_error is abort"), "{message}");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM patients").await,
        0,
        "fully undone"
    );
}

dual_test!(
    an_undo_interrupted_by_errors_is_retried_until_done,
    flags = &["--workers", "0", "--max-attempts", "1"],
    |app: TestApp| an_undo_interrupted_by_errors_is_retried_until_done(app)
);

/// A fake worker's claim of operation `id` (with this lease).
async fn claim_by_hand(app: &TestApp, lease: Duration) -> haven::domain::operation::Operation {
    let claimed = app
        .store
        .claim_due("test-worker", lease, 10, 1)
        .await
        .unwrap()
        .operations;
    assert_eq!(claimed.len(), 1, "one operation due");
    claimed.into_iter().next().unwrap()
}

fn completion(op: &haven::domain::operation::Operation) -> haven::store::ops::Finish {
    haven::store::ops::Finish {
        operation_id: op.id,
        attempt: op.attempt,
        ending: haven::store::ops::Ending::Final(haven::domain::operation::Status::Completed),
        result: Some(json!({})),
        error_message: None,
        output_blob: None,
        output_expires_at: None,
        completed_at: haven::domain::now(),
        audit: None,
        rolled_back: None,
    }
}

/// Defect 8: a cancel accepted after the last chunk is not followed by a completion
/// that ignores it: the completion gives way, and the operation ends cancelled.
async fn a_cancel_after_the_last_chunk_ends_the_operation_cancelled(app: TestApp) {
    let (org, token) = organization(&app, "Kakuma Clinic").await;
    import_here(&app, &token, "CAN", 600).await;
    let update = schedule(
        &app,
        &token,
        "update",
        json!({"filters": {"current_camp": "Kakuma"}, "changes": {"current_camp": "Dadaab"}}),
    )
    .await;
    // A worker runs every chunk of the update, then the user cancels...
    let op = claim_by_hand(&app, Duration::from_secs(1)).await;
    let cancel = app
        .post_json(
            &token,
            &format!("/api/v2/bulk-operations/{update}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(cancel.status(), 200);
    let shown: Value = cancel.json().await.unwrap();
    assert_eq!(shown["cancel_requested"], true);
    // ...and the worker's completion arrives after the cancel: it is refused.
    let finished = app.store.finish_operation(completion(&op)).await.unwrap();
    assert_eq!(finished, haven::store::ops::Finished::CancelRequested);
    assert_eq!(
        progress(&app, org, &update).await.status,
        haven::domain::operation::Status::Processing
    );

    // The engine's own path: a takeover sees the cancel and ends it cancelled.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_ne!(app.engine.run_once().await.unwrap(), Ran::Empty);
    let done = app.wait_until_done(&token, &update).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM patients WHERE current_camp = 'Kakuma'")
            .await,
        600,
        "nothing changed"
    );
    // A cancel of an ended operation is a 409, never a 200 that is not kept.
    let again = app
        .post_json(
            &token,
            &format!("/api/v2/bulk-operations/{update}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(again.status(), 409);
}

dual_test!(
    a_cancel_after_the_last_chunk_ends_the_operation_cancelled,
    flags = &["--workers", "0"],
    |app: TestApp| a_cancel_after_the_last_chunk_ends_the_operation_cancelled(app)
);

/// Defect 7: a stale rollback attempt cannot mark the target or write its audit entry;
/// the attempt holding the lease does both, with its completion, in one transaction.
async fn a_stale_rollback_completion_marks_nothing(app: TestApp) {
    let (org, token) = organization(&app, "Kakuma Clinic").await;
    import_here(&app, &token, "RBK", 50).await;
    let imports = app
        .store
        .list_operations(
            org,
            None,
            None,
            &haven::store::Page {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    let target = imports[0].id;
    let response = app
        .post_json(
            &token,
            &format!("/api/v2/bulk/import/rollback/{target}"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let stale = claim_by_hand(&app, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let current = claim_by_hand(&app, Duration::from_secs(60)).await;
    assert_eq!(current.attempt, stale.attempt + 1);

    let mut late = completion(&stale);
    let entry = haven::store::NewAuditEntry::for_operation(
        &stale,
        "operation.rolled_back",
        "success",
        json!({}),
    );
    late.rolled_back = Some((target, entry.clone()));
    assert_eq!(
        app.store.finish_operation(late).await.unwrap(),
        haven::store::ops::Finished::LeaseLost
    );
    let audited = "SELECT COUNT(*) FROM audit_events WHERE action = 'operation.rolled_back'";
    assert_eq!(app.count(audited).await, 0);
    assert_eq!(
        progress(&app, org, &target.to_string()).await.status,
        haven::domain::operation::Status::Completed
    );

    let mut now = completion(&current);
    now.rolled_back = Some((target, entry));
    assert_eq!(
        app.store.finish_operation(now).await.unwrap(),
        haven::store::ops::Finished::Done
    );
    assert_eq!(app.count(audited).await, 1);
    assert_eq!(
        progress(&app, org, &target.to_string()).await.status,
        haven::domain::operation::Status::RolledBack
    );
}

dual_test!(
    a_stale_rollback_completion_marks_nothing,
    flags = &["--workers", "0"],
    |app: TestApp| a_stale_rollback_completion_marks_nothing(app)
);

/// Dependants of a failed operation are cancelled with it, transitively and at once
/// (in its finishing transaction), each with its audit entry.
async fn a_failure_cancels_its_dependants_transitively_at_once(app: TestApp) {
    let (_, token) = organization(&app, "Kakuma Clinic").await;
    let mut bad = csv("DEP", 10);
    bad.push_str("DEP-BAD,Given,Family,not-a-gender,Kakuma\n");
    let first = schedule_import(&app, &token, &bad, json!({"on_error": "abort"})).await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let second = schedule(
        &app,
        &token,
        "export",
        json!({"depends_on": [first], "scheduled_at": later}),
    )
    .await;
    let third = schedule(
        &app,
        &token,
        "export",
        json!({"depends_on": [second], "scheduled_at": later}),
    )
    .await;
    assert_eq!(
        app.engine.run_once().await.unwrap(),
        Ran::Operation(Uuid::parse_str(&first).unwrap())
    );
    for (id, waits_on) in [(&second, &first), (&third, &second)] {
        let op: Value = app
            .get(&token, &format!("/api/v2/bulk-operations/{id}/status"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(op["status"], "cancelled", "{op}");
        let message = op["error_message"].as_str().unwrap();
        assert!(message.contains(waits_on.as_str()), "{message}");
    }
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'operation.cancel'")
            .await,
        2
    );
}

dual_test!(
    a_failure_cancels_its_dependants_transitively_at_once,
    flags = &["--workers", "0"],
    |app: TestApp| a_failure_cancels_its_dependants_transitively_at_once(app)
);
