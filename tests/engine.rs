//! The engine's guarantees (SPEC 4.5): on time, exactly once across a crash, cancel
//! leaves nothing, dependencies, and encryption at rest.

mod common;

use std::time::Duration;

use common::{Backend, TestApp};
use haven::domain::permission::Role;
use haven::engine::Ran;
use serde_json::{json, Value};
use uuid::Uuid;

async fn manager(app: &TestApp) -> (Uuid, String) {
    let org = app.create_org("Dadaab Clinic").await;
    (org, app.user_token(org, Role::Admin).await)
}

fn big_csv(rows: usize) -> String {
    let mut csv = String::from("unhcr_number,given_name,family_name,gender\n");
    for i in 0..rows {
        csv.push_str(&format!("CRASH-{i:06},Given{i},Family{i},other\n"));
    }
    csv
}

async fn schedule(app: &TestApp, token: &str, csv: &str) -> Uuid {
    let response = app.schedule_import(token, csv, json!({})).await;
    assert_eq!(response.status(), 201);
    let op: Value = response.json().await.unwrap();
    Uuid::parse_str(op["id"].as_str().unwrap()).unwrap()
}

/// Polls the store until the running operation has committed at least `rows`.
async fn wait_for_progress(app: &TestApp, org: Uuid, id: Uuid, rows: i64) -> i64 {
    for _ in 0..4000 {
        let op = app.store.get_operation(org, id).await.unwrap().unwrap();
        if op.progress_processed >= rows {
            return op.progress_processed;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("no progress");
}

async fn an_operation_scheduled_two_seconds_ahead_starts_on_time(app: TestApp) {
    let (_, token) = manager(&app).await;
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let response = app
        .post_json(
            &token,
            "/api/v2/bulk/export/schedule",
            &json!({"scheduled_at": at.to_rfc3339(), "timezone": "Africa/Nairobi"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let op: Value = response.json().await.unwrap();
    assert_eq!(op["status"], "scheduled");
    assert_eq!(op["timezone"], "Africa/Nairobi");
    let done = app
        .wait_until_done(&token, op["id"].as_str().unwrap())
        .await;
    let parse = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let lag = parse(&done["started_at"]) - parse(&done["scheduled_at"]);
    assert!(lag >= chrono::Duration::zero(), "never early: {lag}");
    assert!(
        lag < chrono::Duration::seconds(1),
        "started {lag} after its time"
    );
}

dual_test!(
    an_operation_scheduled_two_seconds_ahead_starts_on_time,
    |app: TestApp| an_operation_scheduled_two_seconds_ahead_starts_on_time(app)
);

async fn a_worker_killed_mid_import_is_finished_by_another_without_duplicates(app: TestApp) {
    let (org, token) = manager(&app).await;
    let rows = 20_000;
    let id = schedule(&app, &token, &big_csv(rows)).await;

    let seen = app.kill_worker_midway(org, id, 1_000).await;
    let op = app.store.get_operation(org, id).await.unwrap().unwrap();
    assert_eq!(
        op.status.as_str(),
        "processing",
        "the killed worker left it claimed"
    );
    assert!(
        op.progress_processed < rows as i64,
        "killed in the middle ({seen} rows done)"
    );
    let estimate = op.progress_total.expect("a total while running");
    assert!(
        (estimate - rows as i64).abs() <= rows as i64 / 5,
        "the total is estimated from the bytes read: {estimate}"
    );
    let partial = app.count("SELECT COUNT(*) FROM patients").await;
    assert_eq!(
        partial, op.progress_processed,
        "rows and progress committed together"
    );

    let second =
        haven::app::start_engine(app.store.clone(), app.engine.keyring.clone(), &app.config)
            .unwrap();
    assert_eq!(
        second.run_once().await.unwrap(),
        Ran::Empty,
        "the lease still holds"
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        second.run_once().await.unwrap(),
        Ran::Operation(id),
        "taken over after the lease expired"
    );

    let done = app.wait_until_done(&token, &id.to_string()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["result"]["rows_imported"], rows);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM patients").await,
        rows as i64
    );
    assert_eq!(
        app.count("SELECT COUNT(DISTINCT unhcr_number) FROM patients")
            .await,
        rows as i64
    );
}

dual_test!(
    a_worker_killed_mid_import_is_finished_by_another_without_duplicates,
    flags = &["--workers", "0", "--lease-duration", "1s"],
    |app: TestApp| a_worker_killed_mid_import_is_finished_by_another_without_duplicates(app)
);

async fn a_cancelled_running_import_leaves_no_patient(app: TestApp) {
    let (org, token) = manager(&app).await;
    let id = schedule(&app, &token, &big_csv(20_000)).await;
    let engine = app.engine.clone();
    let worker = tokio::spawn(async move { engine.run_once().await });
    wait_for_progress(&app, org, id, 500).await;
    let response = app
        .post_json(
            &token,
            &format!("/api/v2/bulk-operations/{id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let op: Value = response.json().await.unwrap();
    assert_eq!(op["cancel_requested"], true);
    worker.await.unwrap().unwrap();
    let done = app.wait_until_done(&token, &id.to_string()).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM patients").await,
        0,
        "the partial import was undone"
    );
    let again = app
        .post_json(
            &token,
            &format!("/api/v2/bulk-operations/{id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(again.status(), 409, "it has ended");
}

dual_test!(
    a_cancelled_running_import_leaves_no_patient,
    flags = &["--workers", "0"],
    |app: TestApp| a_cancelled_running_import_leaves_no_patient(app)
);

dual_test!(
    a_dependent_runs_after_its_dependency_and_is_cancelled_when_it_fails,
    |app: TestApp| async move {
        let (_, token) = manager(&app).await;
        let first = app
            .run_import(&token, &common::sample("patients-basic.csv"), json!({}))
            .await;
        let response = app
            .post_json(
                &token,
                "/api/v2/bulk/export/schedule",
                &json!({"depends_on": [first["id"]]}),
            )
            .await;
        let export: Value = response.json().await.unwrap();
        assert_eq!(export["depends_on"], json!([first["id"]]));
        let done = app
            .wait_until_done(&token, export["id"].as_str().unwrap())
            .await;
        assert_eq!(done["status"], "completed");
        assert_eq!(done["result"]["rows_exported"], 8);

        let failing = app
            .run_import(
                &token,
                &common::sample("patients-bad-rows.csv"),
                json!({"on_error": "abort"}),
            )
            .await;
        assert_eq!(failing["status"], "failed");
        let response = app
            .post_json(
                &token,
                "/api/v2/bulk/export/schedule",
                &json!({"depends_on": [failing["id"]]}),
            )
            .await;
        let blocked: Value = response.json().await.unwrap();
        let ended = app
            .wait_until_done(&token, blocked["id"].as_str().unwrap())
            .await;
        assert_eq!(ended["status"], "cancelled");
        assert!(ended["error_message"]
            .as_str()
            .unwrap()
            .contains("depends on"));
    }
);

async fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

dual_test!(
    an_import_scheduled_for_next_week_leaves_no_plaintext_anywhere,
    |app: TestApp| async move {
        let (_, token) = manager(&app).await;
        let names = ["Zephyrine-Qoraxeeye", "Oluwakemisola-Vantreight"];
        let csv = format!(
            "given_name,family_name,gender\n{},{},female\n",
            names[0], names[1]
        );
        let next_week = chrono::Utc::now() + chrono::Duration::days(7);
        let response = app
            .schedule_import(
                &token,
                &csv,
                json!({"scheduled_at": next_week.to_rfc3339(), "field_mapping": {}}),
            )
            .await;
        assert_eq!(response.status(), 201);
        let op: Value = response.json().await.unwrap();
        assert_eq!(op["status"], "scheduled");
        assert!(!op.to_string().contains(names[0]), "not in the API answer");

        // The SQLite file (and its WAL), the blob store, every file of the data dir.
        for file in files_under(app.dir.path()).await {
            let bytes = std::fs::read(&file).unwrap();
            for name in names {
                let found = bytes.windows(name.len()).any(|w| w == name.as_bytes());
                assert!(!found, "{name} in plaintext in {}", file.display());
            }
        }
        // The stored parameters and every text column of the operation, in the database.
        let contains = match app.backend {
            Backend::Sqlite => "instr(parameters, CAST('{0}' AS BLOB)) > 0",
            Backend::Postgres => "position(convert_to('{0}', 'UTF8') in parameters) > 0",
        };
        let leaked = app
        .count(&format!(
            "SELECT COUNT(*) FROM bulk_operations WHERE {} \
             OR COALESCE(result, '') LIKE '%{name}%' OR COALESCE(error_message, '') LIKE '%{name}%'",
            contains.replace("{0}", names[0]),
            name = names[0]
        ))
        .await;
        assert_eq!(leaked, 0);
        assert_eq!(
            app.count("SELECT COUNT(*) FROM audit_events WHERE details LIKE '%Zephyrine%'")
                .await,
            0
        );
    }
);

dual_test!(
    organizations_are_served_fairly_within_the_per_organization_limit,
    flags = &["--workers", "0"],
    |app: TestApp| async move {
        // No background workers: claims are made here, one by one, then in a batch.
        let (org_a, token_a) = manager(&app).await;
        let (org_b, token_b) = manager(&app).await;
        for _ in 0..5 {
            let r = app
                .post_json(&token_a, "/api/v2/bulk/export/schedule", &json!({}))
                .await;
            assert_eq!(r.status(), 201);
        }
        let r = app
            .post_json(&token_b, "/api/v2/bulk/export/schedule", &json!({}))
            .await;
        let b_op: Value = r.json().await.unwrap();
        let b_id = Uuid::parse_str(b_op["id"].as_str().unwrap()).unwrap();

        let lease = Duration::from_secs(300);
        let claim = |want| app.store.claim_due("fairness-test", lease, 2, want);
        let first = claim(1).await.unwrap().operations;
        assert_eq!(
            first[0].organization_id, org_a,
            "the earliest operation first"
        );
        let second = claim(1).await.unwrap().operations;
        assert_eq!(
            (second[0].organization_id, second[0].id),
            (org_b, b_id),
            "B's only operation is not starved by A's five"
        );
        let third = claim(1).await.unwrap().operations;
        assert_eq!(third[0].organization_id, org_a);
        assert!(
            claim(10).await.unwrap().operations.is_empty(),
            "A already runs 2 (--max-per-org)"
        );
        // Each claim wrote its start into the trail, in the claim's transaction.
        assert_eq!(
            app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'operation.start'")
                .await,
            3
        );
    }
);

dual_test!(
    one_claim_hands_out_several_operations_fairly,
    flags = &["--workers", "0"],
    |app: TestApp| async move {
        let (org_a, token_a) = manager(&app).await;
        let (org_b, token_b) = manager(&app).await;
        for _ in 0..5 {
            app.post_json(&token_a, "/api/v2/bulk/export/schedule", &json!({}))
                .await;
        }
        app.post_json(&token_b, "/api/v2/bulk/export/schedule", &json!({}))
            .await;
        let claimed = app
            .store
            .claim_due("batch-test", Duration::from_secs(300), 2, 10)
            .await
            .unwrap()
            .operations;
        let orgs: Vec<Uuid> = claimed.iter().map(|o| o.organization_id).collect();
        assert_eq!(orgs.len(), 3, "2 of A's (its limit) and B's one");
        assert_eq!(orgs.iter().filter(|o| **o == org_a).count(), 2);
        assert_eq!(orgs.iter().filter(|o| **o == org_b).count(), 1);
        for op in &claimed {
            assert_eq!(op.status, haven::domain::operation::Status::Processing);
            assert_eq!(op.attempt, 1);
            let lease = op.lease_expires_at.unwrap() - haven::domain::now();
            assert!(
                lease > chrono::Duration::seconds(290),
                "the lease starts at the claim: {lease}"
            );
        }
    }
);

async fn transient_failures_are_retried_then_fail_with_a_clear_message(app: TestApp) {
    let (_, token) = manager(&app).await;
    let id = schedule(&app, &token, &big_csv(10)).await;
    // The disk holding the upload fails: reading it is an I/O error (here, the file
    // replaced by a directory: opening works, reading fails with EISDIR).
    let upload = app.dir.path().join(format!("blobs/uploads/{id}.csv.enc"));
    std::fs::remove_file(&upload).unwrap();
    std::fs::create_dir(&upload).unwrap();
    assert_eq!(app.engine.run_once().await.unwrap(), Ran::Operation(id));
    let op: Value = app
        .get(&token, &format!("/api/v2/bulk-operations/{id}/status"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(op["status"], "scheduled", "retried later: {op}");
    assert_eq!(op["attempt"], 1);
    assert_eq!(op["failures"], 1, "a failed attempt counts: {op}");
    assert_eq!(
        app.engine.run_once().await.unwrap(),
        Ran::Empty,
        "backing off"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(app.engine.run_once().await.unwrap(), Ran::Operation(id));
    let op: Value = app
        .get(&token, &format!("/api/v2/bulk-operations/{id}/status"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(op["status"], "failed", "{op}");
    assert!(
        op["error_message"]
            .as_str()
            .unwrap()
            .contains("after 2 attempts"),
        "{op}"
    );
}

async fn a_missing_upload_fails_at_once_instead_of_being_retried(app: TestApp) {
    let (_, token) = manager(&app).await;
    let id = schedule(&app, &token, &big_csv(10)).await;
    std::fs::remove_file(app.dir.path().join(format!("blobs/uploads/{id}.csv.enc"))).unwrap();
    assert_eq!(app.engine.run_once().await.unwrap(), Ran::Operation(id));
    let op: Value = app
        .get(&token, &format!("/api/v2/bulk-operations/{id}/status"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(op["status"], "failed", "not retried: {op}");
    assert_eq!(op["attempt"], 1);
    assert!(
        op["error_message"]
            .as_str()
            .unwrap()
            .contains("uploaded file is missing"),
        "{op}"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 0);
}

dual_test!(
    a_missing_upload_fails_at_once_instead_of_being_retried,
    flags = &["--workers", "0", "--max-attempts", "3"],
    |app: TestApp| a_missing_upload_fails_at_once_instead_of_being_retried(app)
);

dual_test!(
    transient_failures_are_retried_then_fail_with_a_clear_message,
    flags = &["--workers", "0", "--max-attempts", "2"],
    |app: TestApp| transient_failures_are_retried_then_fail_with_a_clear_message(app)
);
