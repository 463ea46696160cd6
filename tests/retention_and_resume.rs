//! A rollback survives a killed worker, and the cleanup removes what outlived its
//! retention (SPEC 4.6, 9).

mod common;

use std::time::Duration;

use common::TestApp;
use haven::domain::permission::Role;
use haven::engine::Ran;
use serde_json::{json, Value};
use uuid::Uuid;

fn csv(rows: usize) -> String {
    let mut csv = String::from("unhcr_number,given_name,family_name,gender\n");
    for i in 0..rows {
        csv.push_str(&format!("RB-{i:06},Given{i},Family{i},female\n"));
    }
    csv
}

/// A timestamp literal both databases read back as that instant.
fn at(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

async fn a_rollback_interrupted_by_a_killed_worker_finishes_when_resumed(app: TestApp) {
    let org = app.create_org("Clinic").await;
    let token = app.user_token(org, Role::DataManager).await;
    let rows = 20_000;
    let response = app.schedule_import(&token, &csv(rows), json!({})).await;
    let import: Value = response.json().await.unwrap();
    let import_id = import["id"].as_str().unwrap().to_string();
    assert!(matches!(
        app.engine.run_once().await.unwrap(),
        Ran::Operation(_)
    ));
    assert_eq!(
        app.count("SELECT COUNT(*) FROM patients").await,
        rows as i64
    );

    let response = app
        .post_json(
            &token,
            &format!("/api/v2/bulk/import/rollback/{import_id}"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let rollback: Value = response.json().await.unwrap();
    let rollback_id = Uuid::parse_str(rollback["id"].as_str().unwrap()).unwrap();

    app.kill_worker_midway(org, rollback_id, 1_000).await;
    let op = app
        .store
        .get_operation(org, rollback_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(op.status.as_str(), "processing", "killed mid-way");
    let left = app.count("SELECT COUNT(*) FROM patients").await;
    assert!(
        left > 0 && left < rows as i64,
        "part of the import removed: {left}"
    );
    assert_eq!(
        op.progress_processed,
        rows as i64 - left,
        "progress committed with the removals"
    );

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let second =
        haven::app::start_engine(app.store.clone(), app.engine.keyring.clone(), &app.config)
            .unwrap();
    assert_eq!(
        second.run_once().await.unwrap(),
        Ran::Operation(rollback_id)
    );
    let done = app.wait_until_done(&token, &rollback_id.to_string()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["result"]["patients_removed"], rows);
    assert_eq!(done["result"]["conflicts"], json!([]));
    assert_eq!(done["progress"]["processed"], rows);
    assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 0);
    let target: Value = app
        .get(
            &token,
            &format!("/api/v2/bulk-operations/{import_id}/status"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(target["status"], "rolled_back");
    let trail = app
        .count("SELECT COUNT(*) FROM audit_events WHERE action = 'operation.rolled_back'")
        .await;
    assert_eq!(trail, 1, "the import's audit trail says it was rolled back");
}

dual_test!(
    a_rollback_interrupted_by_a_killed_worker_finishes_when_resumed,
    flags = &["--workers", "0", "--lease-duration", "1s"],
    |app: TestApp| a_rollback_interrupted_by_a_killed_worker_finishes_when_resumed(app)
);

dual_test!(
    the_cleanup_purges_backups_exports_and_deleted_patients_past_retention,
    |app: TestApp| async move {
        let org = app.create_org("Clinic").await;
        let token = app.user_token(org, Role::Admin).await;
        app.run_import(&token, &csv(10), json!({})).await;
        let update = app
            .run_bulk(
                &token,
                "update",
                json!({"filters": {}, "changes": {"current_camp": "Dadaab"}}),
            )
            .await;
        let export = app
            .run_bulk(&token, "export", json!({"format": "csv"}))
            .await;
        let list: Value = app
            .get(&token, "/api/v2/patients?limit=2")
            .await
            .json()
            .await
            .unwrap();
        let ids: Vec<Value> = list["patients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].clone())
            .collect();
        app.run_bulk(
            &token,
            "delete",
            json!({"patient_ids": ids, "confirm": true}),
        )
        .await;
        assert_eq!(
            app.count("SELECT COUNT(*) FROM operation_backups").await,
            12
        );

        // Nothing is old yet: a pass removes nothing.
        assert_eq!(
            app.engine.cleanup_once().await.unwrap(),
            haven::engine::CleanupReport::default()
        );

        let long_ago = at(chrono::Utc::now() - chrono::Duration::days(31));
        let update_id = update["id"].as_str().unwrap();
        app.raw_sql(&format!(
            "UPDATE operation_backups SET created_at = '{long_ago}'"
        ))
        .await
        .unwrap();
        app.raw_sql(&format!(
            "UPDATE patients SET deleted_at = '{long_ago}' WHERE deleted_at IS NOT NULL"
        ))
        .await
        .unwrap();
        app.raw_sql(&format!("UPDATE bulk_operations SET output_expires_at = '{long_ago}' WHERE output_blob IS NOT NULL")).await.unwrap();
        app.raw_sql(&format!(
            "UPDATE bulk_operations SET completed_at = '{long_ago}'"
        ))
        .await
        .unwrap();

        let report = app.engine.cleanup_once().await.unwrap();
        assert_eq!(
            (report.export_files, report.backups, report.deleted_patients),
            (1, 12, 2)
        );
        assert_eq!(app.count("SELECT COUNT(*) FROM operation_backups").await, 0);
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 8);
        let export_id = export["id"].as_str().unwrap();
        let download = app
            .get(
                &token,
                &format!("/api/v2/bulk-operations/{export_id}/download"),
            )
            .await;
        assert_eq!(download.status(), 404);
        let exports = std::fs::read_dir(app.dir.path().join("blobs/exports"))
            .unwrap()
            .count();
        assert_eq!(exports, 0, "the encrypted export file is gone");
        let rollback = app
            .post_json(
                &token,
                &format!("/api/v2/bulk/update/rollback/{update_id}"),
                &json!({}),
            )
            .await;
        assert_eq!(rollback.status(), 409, "its backup is past retention");
        // The audit log is never purged.
        let verify: Value = app
            .get(&token, "/api/v2/audit/verify")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(verify["intact"], true);
    }
);

/// Runs an import of `rows` until at least `done` rows are committed, then kills the
/// worker; returns the operation id.
async fn import_killed_midway(
    app: &TestApp,
    token: &str,
    org: Uuid,
    rows: usize,
    done: i64,
) -> Uuid {
    let response = app.schedule_import(token, &csv(rows), json!({})).await;
    let op: Value = response.json().await.unwrap();
    let id = Uuid::parse_str(op["id"].as_str().unwrap()).unwrap();
    app.kill_worker_midway(org, id, done).await;
    assert!(
        app.count("SELECT COUNT(*) FROM patients").await > 0,
        "part of it was written"
    );
    id
}

async fn a_cancel_while_an_import_waits_for_its_retry_undoes_what_it_wrote(app: TestApp) {
    let org = app.create_org("Clinic").await;
    let token = app.user_token(org, Role::DataManager).await;
    let id = import_killed_midway(&app, &token, org, 20_000, 1_000).await;
    // The killed worker may have left the writer connection inside a transaction; the
    // store's next write discards that connection (and its lock) before we write here.
    app.store
        .heartbeat(Uuid::nil(), 0, Duration::from_secs(1))
        .await
        .unwrap();
    // As a transient failure leaves it: back to `scheduled`, retry in an hour.
    let later = at(chrono::Utc::now() + chrono::Duration::hours(1));
    app.raw_sql(&format!(
        "UPDATE bulk_operations SET status = 'scheduled', next_attempt_at = '{later}', \
         lease_expires_at = NULL, lease_owner = NULL"
    ))
    .await
    .unwrap();

    let response = app
        .post_json(
            &token,
            &format!("/api/v2/bulk-operations/{id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let op: Value = response.json().await.unwrap();
    assert_eq!(
        op["status"], "scheduled",
        "not cancelled on the spot: it has work to undo"
    );
    assert_eq!(op["cancel_requested"], true);
    assert_eq!(
        app.engine.run_once().await.unwrap(),
        Ran::Operation(id),
        "due at once"
    );
    let done = app.wait_until_done(&token, &id.to_string()).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 0);
}

dual_test!(
    a_cancel_while_an_import_waits_for_its_retry_undoes_what_it_wrote,
    flags = &["--workers", "0", "--lease-duration", "1s"],
    |app: TestApp| a_cancel_while_an_import_waits_for_its_retry_undoes_what_it_wrote(app)
);

async fn an_import_that_fails_part_way_leaves_no_patient(app: TestApp) {
    let org = app.create_org("Clinic").await;
    let token = app.user_token(org, Role::DataManager).await;
    let id = import_killed_midway(&app, &token, org, 20_000, 1_000).await;
    // The stored upload is damaged while the import waits to be resumed.
    let upload = app.dir.path().join(format!("blobs/uploads/{id}.csv.enc"));
    let mut bytes = std::fs::read(&upload).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&upload, bytes).unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    assert_eq!(app.engine.run_once().await.unwrap(), Ran::Operation(id));
    let done = app.wait_until_done(&token, &id.to_string()).await;
    assert_eq!(done["status"], "failed", "{done}");
    let message = done["error_message"].as_str().unwrap();
    assert!(message.contains("partial changes were undone"), "{message}");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM patients").await,
        0,
        "no partial import"
    );
    assert!(
        !upload.exists(),
        "the upload is removed once the import has ended"
    );
}

dual_test!(
    an_import_that_fails_part_way_leaves_no_patient,
    flags = &["--workers", "0", "--lease-duration", "1s"],
    |app: TestApp| an_import_that_fails_part_way_leaves_no_patient(app)
);

async fn an_import_whose_workers_keep_dying_gives_up_and_undoes_its_rows(app: TestApp) {
    let org = app.create_org("Clinic").await;
    let token = app.user_token(org, Role::DataManager).await;
    // The first worker dies after committing rows: that is progress, not a failure.
    let id = import_killed_midway(&app, &token, org, 20_000, 1_000).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // The next one claims it and dies before committing anything: a failed attempt.
    let doomed = app
        .store
        .claim_due("doomed-worker", Duration::from_secs(1), 10, 1)
        .await
        .unwrap();
    assert_eq!(doomed.operations.len(), 1);
    assert_eq!(
        doomed.operations[0].failures, 0,
        "the takeover after progress is free"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // With --max-attempts 1 that failure used the budget up: undo and fail.
    assert_eq!(app.engine.run_once().await.unwrap(), Ran::Operation(id));
    let done = app.wait_until_done(&token, &id.to_string()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["failures"], 1, "{done}");
    let message = done["error_message"].as_str().unwrap();
    assert!(
        message.contains("gave up") && message.contains("undone"),
        "{message}"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 0);
}

async fn a_takeover_after_progress_does_not_use_the_failure_budget(app: TestApp) {
    let org = app.create_org("Clinic").await;
    let token = app.user_token(org, Role::DataManager).await;
    let id = import_killed_midway(&app, &token, org, 20_000, 1_000).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(app.engine.run_once().await.unwrap(), Ran::Operation(id));
    let done = app.wait_until_done(&token, &id.to_string()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(done["failures"], 0, "{done}");
    assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 20_000);
}

dual_test!(
    a_takeover_after_progress_does_not_use_the_failure_budget,
    flags = &[
        "--workers",
        "0",
        "--lease-duration",
        "1s",
        "--max-attempts",
        "1",
    ],
    |app: TestApp| a_takeover_after_progress_does_not_use_the_failure_budget(app)
);

dual_test!(
    an_import_whose_workers_keep_dying_gives_up_and_undoes_its_rows,
    flags = &[
        "--workers",
        "0",
        "--lease-duration",
        "1s",
        "--max-attempts",
        "1",
    ],
    |app: TestApp| an_import_whose_workers_keep_dying_gives_up_and_undoes_its_rows(app)
);
