//! Recurring schedules, dependency chains and fairness (issue 10), on both databases.

mod common;

use std::time::Duration;

use common::{Backend, TestApp};
use haven::domain::permission::Role;
use haven::engine::Ran;
use serde_json::{json, Value};
use uuid::Uuid;

async fn organization(app: &TestApp, name: &str) -> (Uuid, String) {
    let org = app.create_org(name).await;
    (org, app.user_token(org, Role::Admin).await)
}

fn every_minute_export() -> Value {
    json!({
        "name": "Nightly partner export",
        "cron": "* * * * *",
        "timezone": "Europe/Berlin",
        "operation": {"type": "export", "format": "csv", "dry_run": true, "email_notification": false},
    })
}

async fn create(app: &TestApp, token: &str, body: &Value) -> Value {
    let response = app.post_json(token, "/api/v2/bulk/schedules", body).await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn assert_422(app: &TestApp, token: &str, body: Value, field: &str) {
    let response = app.post_json(token, "/api/v2/bulk/schedules", &body).await;
    assert_eq!(response.status(), 422, "{body}");
    let error: Value = response.json().await.unwrap();
    let fields: Vec<&str> = error["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&field), "{field} in {error}");
}

dual_test!(
    schedules_are_validated_managed_and_isolated,
    flags = &["--workers", "0"],
    |app: TestApp| async move {
        let (_, token) = organization(&app, "Kakuma Clinic").await;
        let mut bad = every_minute_export();
        bad["cron"] = json!("61 * * * *");
        assert_422(&app, &token, bad, "cron").await;
        let mut bad = every_minute_export();
        bad["cron"] = json!("* * * *");
        assert_422(&app, &token, bad, "cron").await;
        let mut bad = every_minute_export();
        bad["timezone"] = json!("Mars/Olympus");
        assert_422(&app, &token, bad, "timezone").await;
        let mut bad = every_minute_export();
        bad["operation"] = json!({"type": "import"});
        assert_422(&app, &token, bad, "operation.type").await;
        let mut bad = every_minute_export();
        bad["operation"]["format"] = json!("pdf");
        assert_422(&app, &token, bad, "operation.format").await;
        let mut bad = every_minute_export();
        bad["operation"]["scheduled_at"] = json!("2030-01-01T00:00:00Z");
        assert_422(&app, &token, bad, "operation.scheduled_at").await;
        let mut bad = every_minute_export();
        bad["missed"] = json!("sometimes");
        assert_422(&app, &token, bad, "missed").await;
        let bad = json!({"cron": "* * * * *", "operation": {"type": "delete", "filters": {"current_camp": "Kakuma"}}, "name": "x"});
        assert_422(&app, &token, bad, "operation.confirm").await;
        assert_eq!(app.count("SELECT COUNT(*) FROM bulk_schedules").await, 0);

        let created = create(&app, &token, &every_minute_export()).await;
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(created["enabled"], true);
        assert_eq!(created["missed"], "skip");
        assert_eq!(created["operation"]["type"], "export");
        let next =
            chrono::DateTime::parse_from_rfc3339(created["next_run_at"].as_str().unwrap()).unwrap();
        assert!(
            next > chrono::Utc::now() && next < chrono::Utc::now() + chrono::Duration::seconds(61)
        );

        let paused: Value = app
            .post_json(
                &token,
                &format!("/api/v2/bulk/schedules/{id}/pause"),
                &json!({}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(paused["enabled"], false);
        assert_eq!(paused["next_run_at"], Value::Null);
        let resumed: Value = app
            .post_json(
                &token,
                &format!("/api/v2/bulk/schedules/{id}/resume"),
                &json!({}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(resumed["enabled"], true);
        assert!(resumed["next_run_at"].is_string());
        let mut changed = every_minute_export();
        changed["cron"] = json!("30 2 * * *");
        changed["missed"] = json!("run_once");
        let response = app
            .put_json(&token, &format!("/api/v2/bulk/schedules/{id}"), &changed)
            .await;
        assert_eq!(response.status(), 200);
        let listed: Value = app
            .get(&token, "/api/v2/bulk/schedules")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(listed["schedules"][0]["cron"], "30 2 * * *");
        assert_eq!(listed["schedules"][0]["missed"], "run_once");

        // Another organization sees nothing; a viewer may not schedule exports.
        let (other_org, other) = organization(&app, "Other").await;
        let foreign = app
            .get(&other, &format!("/api/v2/bulk/schedules/{id}"))
            .await;
        assert_eq!(foreign.status(), 404);
        let viewer = app.user_token(other_org, Role::Viewer).await;
        let refused = app
            .post_json(&viewer, "/api/v2/bulk/schedules", &every_minute_export())
            .await;
        assert_eq!(refused.status(), 403);
        let removed = app
            .delete(&token, &format!("/api/v2/bulk/schedules/{id}"))
            .await;
        assert_eq!(removed.status(), 204);
        assert_eq!(app.count("SELECT COUNT(*) FROM bulk_schedules").await, 0);
        assert!(
            app.count("SELECT COUNT(*) FROM audit_events WHERE action LIKE 'schedule.%'")
                .await
                >= 5
        );
    }
);

dual_test!(
    each_occurrence_creates_one_operation_and_missed_ones_follow_the_policy,
    flags = &["--workers", "0"],
    |app: TestApp| async move {
        let (_, token) = organization(&app, "Kakuma Clinic").await;
        let skip = create(&app, &token, &every_minute_export()).await;
        let mut body = every_minute_export();
        body["missed"] = json!("run_once");
        let _once = create(&app, &token, &body).await;
        let first = chrono::DateTime::parse_from_rfc3339(skip["next_run_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);

        // On time: each schedule's occurrence creates one operation, once.
        let pass = app
            .engine
            .fire_due_schedules(first + chrono::Duration::seconds(1))
            .await
            .unwrap();
        assert_eq!(pass.fired, 2);
        let again = app
            .engine
            .fire_due_schedules(first + chrono::Duration::seconds(2))
            .await
            .unwrap();
        assert_eq!(again.fired, 0, "the occurrence is handled");
        let id = skip["id"].as_str().unwrap();
        let shown: Value = app
            .get(&token, &format!("/api/v2/bulk/schedules/{id}"))
            .await
            .json()
            .await
            .unwrap();
        let ops = shown["operations"].as_array().unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0]["schedule_id"], id);
        let scheduled_at =
            chrono::DateTime::parse_from_rfc3339(ops[0]["scheduled_at"].as_str().unwrap()).unwrap();
        assert_eq!(scheduled_at, first, "scheduled on the occurrence's instant");
        assert_eq!(ops[0]["dry_run"], true);

        // Down for three minutes: skip creates nothing, run_once one operation.
        let later = first + chrono::Duration::seconds(3 * 60 + 30);
        let pass = app.engine.fire_due_schedules(later).await.unwrap();
        assert_eq!(pass.fired, 1, "run_once only");
        assert!(pass.skipped >= 3);
        assert_eq!(
            app.count(
                "SELECT COUNT(*) FROM bulk_operations o JOIN bulk_schedules s ON s.id = o.schedule_id \
                 WHERE s.missed = 'run_once'"
            )
            .await,
            2
        );
        assert_eq!(
            app.count("SELECT COUNT(*) FROM bulk_operations o JOIN bulk_schedules s ON s.id = o.schedule_id WHERE s.missed = 'skip'").await,
            1
        );
    }
);

/// Three processes race for the same occurrences: one operation each, never two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_create_exactly_one_operation_per_occurrence() {
    let app = TestApp::spawn_with(Backend::Postgres, &["--workers", "0"]).await;
    let (_, token) = organization(&app, "Kakuma Clinic").await;
    let mut body = every_minute_export();
    body["missed"] = json!("run_once");
    let schedule = create(&app, &token, &body).await;
    let id = schedule["id"].as_str().unwrap().to_string();
    let mut workers = [
        app.spawn_worker(&["--workers", "1"]),
        app.spawn_worker(&["--workers", "1"]),
        app.spawn_worker(&["--workers", "1"]),
    ];
    for round in 1..=5 {
        // Make occurrences in the past due again, as after downtime: all three processes
        // see the schedule due at once and race for its latest occurrence.
        app.raw_sql(&format!(
            "UPDATE bulk_schedules SET next_run_at = now() - interval '{} minutes' WHERE id = '{id}'",
            10 * round
        ))
        .await
        .unwrap();
        let mut handled = false;
        for _ in 0..100 {
            handled = app
                .count(&format!(
                    "SELECT COUNT(*) FROM bulk_schedules WHERE id = '{id}' AND next_run_at > now()"
                ))
                .await
                == 1;
            if handled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(handled, "round {round}: the schedule moved on");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let operations = app
        .count(&format!(
            "SELECT COUNT(*) FROM bulk_operations WHERE schedule_id = '{id}'"
        ))
        .await;
    let occurrences = app
        .count(&format!(
            "SELECT COUNT(DISTINCT occurrence_at) FROM bulk_operations WHERE schedule_id = '{id}'"
        ))
        .await;
    assert!(operations >= 1, "the latest occurrence ran");
    assert_eq!(
        operations, occurrences,
        "one operation per occurrence, never two"
    );
    assert!(
        operations <= 2,
        "five rounds within a minute or two: {operations}"
    );
    for worker in &mut workers {
        let _ = worker.kill().await;
    }
}

async fn schedule(app: &TestApp, token: &str, kind: &str, body: Value) -> String {
    let response = app
        .post_json(token, &format!("/api/v2/bulk/{kind}/schedule"), &body)
        .await;
    assert_eq!(response.status(), 201, "{kind}");
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn status(app: &TestApp, token: &str, id: &str) -> Value {
    app.get(token, &format!("/api/v2/bulk-operations/{id}/status"))
        .await
        .json()
        .await
        .unwrap()
}

fn time(op: &Value, key: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(op[key].as_str().unwrap()).unwrap()
}

dual_test!(
    a_chain_runs_in_order_and_its_broken_links_cancel_what_waits,
    flags = &["--workers", "0"],
    |app: TestApp| async move {
        let (_, token) = organization(&app, "Kakuma Clinic").await;
        let csv = "unhcr_number,given_name,family_name,gender\nCH-1,A,B,female\nCH-2,C,D,male\n";
        let response = app.schedule_import(&token, csv, json!({})).await;
        let a = response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let b = schedule(&app, &token, "export", json!({"depends_on": [a]})).await;
        let c = schedule(&app, &token, "export", json!({"depends_on": [b]})).await;
        while app.engine.run_once().await.unwrap() != Ran::Empty {}
        let (a_op, b_op, c_op) = (
            status(&app, &token, &a).await,
            status(&app, &token, &b).await,
            status(&app, &token, &c).await,
        );
        for op in [&a_op, &b_op, &c_op] {
            assert_eq!(op["status"], "completed", "{op}");
        }
        assert!(time(&b_op, "started_at") >= time(&a_op, "completed_at"));
        assert!(time(&c_op, "started_at") >= time(&b_op, "completed_at"));

        // Cancelled while B waits: B and C are cancelled, with the reason.
        let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        let a2 = schedule(&app, &token, "export", json!({"scheduled_at": later})).await;
        let b2 = schedule(&app, &token, "export", json!({"depends_on": [a2]})).await;
        let c2 = schedule(&app, &token, "export", json!({"depends_on": [b2]})).await;
        let cancel = app
            .post_json(
                &token,
                &format!("/api/v2/bulk-operations/{a2}/cancel"),
                &json!({}),
            )
            .await;
        assert_eq!(cancel.status(), 200);
        for (id, waits_on) in [(&b2, &a2), (&c2, &b2)] {
            let op = status(&app, &token, id).await;
            assert_eq!(op["status"], "cancelled", "{op}");
            assert!(op["error_message"]
                .as_str()
                .unwrap()
                .contains(waits_on.as_str()));
        }

        // Rolled back while B waits.
        let a3 = a.clone();
        let b3 = schedule(
            &app,
            &token,
            "export",
            json!({"depends_on": [a3], "scheduled_at": later}),
        )
        .await;
        let c3 = schedule(&app, &token, "export", json!({"depends_on": [b3]})).await;
        let rollback = app
            .post_json(
                &token,
                &format!("/api/v2/bulk/import/rollback/{a3}"),
                &json!({}),
            )
            .await;
        assert_eq!(rollback.status(), 202);
        while app.engine.run_once().await.unwrap() != Ran::Empty {}
        assert_eq!(status(&app, &token, &a3).await["status"], "rolled_back");
        for (id, reason) in [(&b3, "rolled_back".to_string()), (&c3, b3.clone())] {
            let op = status(&app, &token, id).await;
            assert_eq!(op["status"], "cancelled", "{op}");
            assert!(
                op["error_message"].as_str().unwrap().contains(&reason),
                "{op}"
            );
        }
    }
);

dual_test!(
    a_cycle_in_the_dependencies_is_refused,
    flags = &["--workers", "0"],
    |app: TestApp| async move {
        let (_, token) = organization(&app, "Kakuma Clinic").await;
        let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        let a = schedule(&app, &token, "export", json!({"scheduled_at": later})).await;
        let b = schedule(
            &app,
            &token,
            "export",
            json!({"depends_on": [a], "scheduled_at": later}),
        )
        .await;
        // The API cannot make a cycle (dependencies exist before their dependants); a
        // database edited by hand can.
        let (a_id, b_id) = (Uuid::parse_str(&a).unwrap(), Uuid::parse_str(&b).unwrap());
        let bind = |id: Uuid| match app.backend {
            Backend::Postgres => format!("'{id}'"),
            Backend::Sqlite => format!("X'{}'", id.simple()),
        };
        app.raw_sql(&format!(
            "INSERT INTO operation_dependencies (operation_id, depends_on_id) VALUES ({}, {})",
            bind(a_id),
            bind(b_id)
        ))
        .await
        .unwrap();
        let response = app
            .post_json(
                &token,
                "/api/v2/bulk/export/schedule",
                &json!({"depends_on": [b]}),
            )
            .await;
        assert_eq!(response.status(), 422);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["details"][0]["field"], "depends_on", "{body}");
        assert_eq!(body["error"]["details"][0]["code"], "cycle", "{body}");
        // Another organization's id is refused the same way as a missing one.
        let (_, other) = organization(&app, "Other").await;
        let response = app
            .post_json(
                &other,
                "/api/v2/bulk/export/schedule",
                &json!({"depends_on": [a]}),
            )
            .await;
        assert_eq!(response.status(), 422);
    }
);

dual_test!(
    one_organizations_many_operations_do_not_starve_anothers_one,
    flags = &["--workers", "0"],
    |app: TestApp| async move {
        let (_, x) = organization(&app, "Busy Clinic").await;
        let (_, y) = organization(&app, "Small Clinic").await;
        let at = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
        let mut xs = Vec::new();
        for _ in 0..20 {
            xs.push(schedule(&app, &x, "export", json!({"scheduled_at": at})).await);
        }
        let y_op = schedule(&app, &y, "export", json!({"scheduled_at": at})).await;
        // Two worker processes start once everything is scheduled, so all 21 are due
        // together however long scheduling took.
        let flags = ["--workers", "2", "--max-per-org", "1"];
        let mut workers = [app.spawn_worker(&flags), app.spawn_worker(&flags)];
        let mut x_ops = Vec::new();
        for id in &xs {
            x_ops.push(app.wait_until_done(&x, id).await);
        }
        let y_done = app.wait_until_done(&y, &y_op).await;
        let last_x_start = x_ops.iter().map(|o| time(o, "started_at")).max().unwrap();
        assert!(
            time(&y_done, "started_at") < last_x_start,
            "Y is not served last"
        );
        x_ops.sort_by_key(|o| time(o, "started_at"));
        for pair in x_ops.windows(2) {
            assert!(
                time(&pair[1], "started_at") >= time(&pair[0], "completed_at"),
                "two of X's ran at once: {} and {}",
                pair[0],
                pair[1]
            );
        }
        for worker in &mut workers {
            let _ = worker.kill().await;
        }
    }
);
