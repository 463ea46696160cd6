//! `haven worker` as separate processes: two of them share the queue with the API
//! process, and every operation runs exactly once.

mod common;

use common::TestApp;
use haven::domain::permission::Role;
use serde_json::{json, Value};

fn spawn_worker(app: &TestApp) -> tokio::process::Child {
    app.spawn_worker(&["--workers", "2"])
}

async fn two_worker_processes_run_every_operation_exactly_once(app: TestApp) {
    // This process only serves the API: the worker processes do all the work.
    let mut workers = [spawn_worker(&app), spawn_worker(&app)];
    let mut ops = Vec::new();
    for org_name in ["Kakuma", "Zaatari"] {
        let org = app.create_org(org_name).await;
        let token = app.user_token(org, Role::DataManager).await;
        for batch in 0..3 {
            let mut csv = String::from("unhcr_number,given_name,family_name,gender\n");
            for i in 0..2_000 {
                csv.push_str(&format!("{org_name}-{batch}-{i},Given,Family,male\n"));
            }
            let response = app.schedule_import(&token, &csv, json!({})).await;
            assert_eq!(response.status(), 201);
            let op: Value = response.json().await.unwrap();
            ops.push((token.clone(), op["id"].as_str().unwrap().to_string()));
        }
    }
    for (token, id) in &ops {
        let done = app.wait_until_done(token, id).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["attempt"], 1, "claimed once: {done}");
        assert_eq!(done["result"]["rows_imported"], 2_000);
        let at = |k: &str| chrono::DateTime::parse_from_rfc3339(done[k].as_str().unwrap()).unwrap();
        // Reported, not asserted: how long a worker process took to pick it up.
        eprintln!(
            "{:?} pickup lag: {} ms",
            app.backend,
            (at("started_at") - at("scheduled_at")).num_milliseconds()
        );
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 12_000);
    assert_eq!(
        app.count("SELECT COUNT(DISTINCT unhcr_number) FROM patients")
            .await,
        12_000
    );
    for worker in &mut workers {
        let _ = worker.kill().await;
    }
}

dual_test!(
    two_worker_processes_run_every_operation_exactly_once,
    flags = &["--workers", "0"],
    |app: TestApp| two_worker_processes_run_every_operation_exactly_once(app)
);
