//! `GET /metrics` parses as OpenMetrics with an independent parser (PyPI's
//! prometheus_client) and its series move when an operation runs; the organization's
//! statistics (issue 10). On both databases.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::TestApp;
use haven::domain::permission::Role;
use haven::engine::Ran;
use serde_json::{json, Value};

/// The samples of a scrape, parsed by prometheus_client in Python.
async fn scrape(app: &TestApp, token: Option<&str>) -> Value {
    let mut request = app.client.get(app.url("/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/parse_metrics.py");
    let python = std::env::var("HAVEN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut python = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with prometheus_client: pip install prometheus_client)");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(samples: &Value, key: &str) -> f64 {
    samples.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

dual_test!(
    metrics_parse_and_move_when_an_operation_runs,
    flags = &["--workers", "0"],
    |app: TestApp| async move {
        let org = app.create_org("Kakuma Clinic").await;
        let token = app.user_token(org, Role::Admin).await;
        let before = scrape(&app, None).await;
        let csv = "unhcr_number,given_name,family_name,gender\nM-1,A,B,female\nM-2,C,D,male\n";
        let response = app.schedule_import(&token, csv, json!({})).await;
        assert_eq!(response.status(), 201);
        let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        let waiting = app
            .post_json(
                &token,
                "/api/v2/bulk/export/schedule",
                &json!({"scheduled_at": later}),
            )
            .await;
        assert_eq!(waiting.status(), 201);
        let queued = scrape(&app, None).await;
        assert_eq!(
            value(&queued, "haven_queue_depth{state=due}"),
            1.0,
            "{queued}"
        );
        assert_eq!(value(&queued, "haven_queue_depth{state=waiting}"), 1.0);
        assert_eq!(
            value(&queued, "haven_operations{status=scheduled,type=import}"),
            1.0
        );
        while app.engine.run_once().await.unwrap() != Ran::Empty {}
        let after = scrape(&app, None).await;
        assert_eq!(
            value(&after, "haven_operations{status=completed,type=import}"),
            1.0,
            "{after}"
        );
        assert_eq!(value(&after, "haven_queue_depth{state=due}"), 0.0);
        assert_eq!(
            value(
                &after,
                "haven_operations_finished_total{status=completed,type=import}"
            ) - value(
                &before,
                "haven_operations_finished_total{status=completed,type=import}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &after,
                "haven_operation_duration_seconds_count{type=import}"
            ),
            1.0
        );
        assert_eq!(value(&after, "haven_scheduling_lag_seconds_count{}"), 1.0);
        assert!(
            value(&after, "haven_http_requests_total{method=POST,route=/api/v2/bulk/import/schedule,status=201}") >= 1.0,
            "{after}"
        );
        // No id or other value from a path reaches a label.
        assert!(!after.to_string().contains(&org.to_string()));

        let stats: Value = app
            .get(&token, "/api/v2/bulk-operations/stats")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(stats["by_status"]["completed"], 1, "{stats}");
        assert_eq!(stats["by_status"]["scheduled"], 1);
        assert_eq!(stats["by_type"]["import"]["completed"], 1);
        assert!(stats["by_type"]["import"]["average_duration_seconds"].is_number());
        let since = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
        let none: Value = app
            .get(
                &token,
                &format!(
                    "/api/v2/bulk-operations/stats?since={}",
                    since.replace('+', "%2B")
                ),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(none["operations"], 0, "{none}");
        let bad = app
            .get(&token, "/api/v2/bulk-operations/stats?since=yesterday")
            .await;
        assert_eq!(bad.status(), 422);
    }
);

dual_test!(
    a_metrics_token_protects_the_metrics,
    flags = &["--workers", "0", "--metrics-token", "scrape-secret"],
    |app: TestApp| async move {
        let refused = app.client.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(refused.status(), 401);
        let wrong = app
            .client
            .get(app.url("/metrics"))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        let samples = scrape(&app, Some("scrape-secret")).await;
        assert!(samples.as_object().is_some_and(|s| !s.is_empty()));
    }
);
