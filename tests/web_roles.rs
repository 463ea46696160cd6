//! The web UI in a real browser: a viewer sees the operations but no import form and
//! no cancel button; the pages of other roles answer 403.

mod common;
mod web_support;

use common::TestApp;
use haven::domain::permission::Role;
use serde_json::json;
use web_support::{user, Browser};

async fn a_viewer_only_looks(app: TestApp) {
    let org = app.create_org("Clinic").await;
    let manager = app.user_token(org, Role::DataManager).await;
    let response = app
        .post_json(
            &manager,
            "/api/v2/bulk/export/schedule",
            &json!({"format": "csv", "scheduled_at": (chrono::Utc::now() + chrono::Duration::hours(5)).to_rfc3339()}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let email = user(&app, org, Role::Viewer).await;

    let browser = Browser::start(1280).await;
    browser.log_in(&app.base, &email).await;
    let dashboard = browser.text("main").await;
    assert!(
        dashboard.contains("Export") && dashboard.contains("Scheduled"),
        "{dashboard}"
    );
    assert!(
        browser.all("a[href='/import']").await.is_empty(),
        "no link to the import form"
    );
    assert!(
        browser.all("form[action$='/cancel']").await.is_empty(),
        "no cancel button"
    );
    assert!(
        !dashboard.contains("New import") && !dashboard.contains("Cancel"),
        "{dashboard}"
    );
    assert!(browser.text("header").await.contains("(Viewer)"));

    browser.goto(&format!("{}/import", app.base)).await;
    let page = browser.text("main").await;
    assert!(
        page.contains("Forbidden") && page.contains("does not allow"),
        "{page}"
    );
    assert!(
        browser.all("#import-form").await.is_empty(),
        "no import form"
    );
    assert!(browser.all("input[type=file]").await.is_empty());
    browser.goto(&format!("{}/audit", app.base)).await;
    assert!(browser.text("main").await.contains("does not allow"));
    browser.close().await;
    // The refusals are in the audit log, as the API's are.
    assert!(
        app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'permission.denied'")
            .await
            >= 2
    );
}

dual_test!(
    a_viewer_sees_no_import_form_and_no_cancel_button,
    |app: TestApp| async move { a_viewer_only_looks(app).await }
);
