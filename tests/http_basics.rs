//! What answers without a login: the start page, the probes, and the JSON error body of
//! SPEC 4.2 for unknown paths and wrong methods.

mod common;

use common::TestApp;
use serde_json::Value;

/// Checks `{"error":{"code","message","details":[]}}` with the expected code.
async fn assert_error_body(response: reqwest::Response, code: &str) {
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "JSON error body, got {content_type}"
    );
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        !body["error"]["message"].as_str().unwrap_or("").is_empty(),
        "a message: {body}"
    );
    assert_eq!(body["error"]["details"], serde_json::json!([]), "{body}");
}

dual_test!(
    the_start_page_leads_to_the_log_in_page_of_the_web_ui,
    |app: TestApp| async move {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let response = client.get(app.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 303);
        assert_eq!(response.headers()["location"], "/login");
        let response = client.get(app.url("/login")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/html; charset=utf-8"
        );
        let html = response.text().await.unwrap();
        assert!(html.contains(r#"<html lang="en">"#), "{html}");
        assert!(html.contains("<title>Log in · Haven</title>"), "{html}");
        assert!(html.contains("<h1>Log in to Haven</h1>"), "{html}");
        assert!(
            html.contains(r#"<label for="password">Password</label>"#),
            "{html}"
        );
    }
);

dual_test!(
    a_wrong_method_answers_405_with_the_json_error_body,
    |app: TestApp| async move {
        let response = app
            .client
            .get(app.url("/api/v2/bulk/import/schedule"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
        let allow = response.headers()["allow"].to_str().unwrap().to_string();
        assert!(allow.contains("POST"), "Allow: {allow}");
        assert_error_body(response, "method_not_allowed").await;

        // A path with several methods.
        let response = app
            .client
            .patch(app.url("/api/v2/patients"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
        let allow = response.headers()["allow"].to_str().unwrap().to_string();
        assert!(
            allow.contains("GET") && allow.contains("POST"),
            "Allow: {allow}"
        );
        assert_error_body(response, "method_not_allowed").await;

        // The start page only reads.
        let response = app.client.post(app.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 405);
        assert_error_body(response, "method_not_allowed").await;
    }
);

dual_test!(
    an_unknown_path_answers_404_with_the_json_error_body,
    |app: TestApp| async move {
        let response = app
            .client
            .get(app.url("/api/v2/no-such-thing"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        assert_error_body(response, "not_found").await;
    }
);

dual_test!(the_probes_answer_200, |app: TestApp| async move {
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
});
