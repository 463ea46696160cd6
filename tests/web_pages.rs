//! The web UI's other pages in a real browser: notifications with the unread badge and
//! preferences, the patients list with filters, the audit log and users for admins, the
//! place of recurring schedules, and the log-in page.

mod common;
mod web_support;

use common::TestApp;
use haven::domain::permission::Role;
use serde_json::{json, Value};
use web_support::{user, Browser};

async fn the_other_pages(app: TestApp) {
    let org = app.create_org("Clinic").await;
    let email = user(&app, org, Role::Admin).await;
    let token = app.user_token(org, Role::DataManager).await;
    for (i, (camp, gender)) in [
        ("Kakuma", "female"),
        ("Kakuma", "male"),
        ("Dadaab", "female"),
    ]
    .iter()
    .enumerate()
    {
        app.create_patient(
            &token,
            json!({"given_name": format!("Halima{i}"), "family_name": "Test", "gender": gender,
                   "current_camp": camp, "unhcr_number": format!("KAK-{i:04}")}),
        )
        .await;
    }
    let browser = Browser::start(1280).await;
    browser.goto(&format!("{}/login", app.base)).await;
    browser.find("#email").await;
    browser.screenshot("login").await;
    browser.log_in(&app.base, &email).await;

    // An operation of this user ends: the badge counts it without a reload.
    assert!(
        browser.all("#unread:not([hidden])").await.is_empty(),
        "no unread yet"
    );
    let me: Value = browser
        .js(
            "return fetch('/api/v2/auth/me', {headers: {'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content}}).then(function (r) { return r.json(); });",
            vec![],
        )
        .await;
    assert_eq!(
        me["email"],
        email.as_str(),
        "the page's script calls the API with the cookie and its token"
    );
    browser.click("a[href='/export']").await;
    browser
        .click("form[action='/export'] button[type=submit]")
        .await;
    let id = browser.highlighted().await;
    browser
        .wait_for(
            "the export completed and counted as unread",
            &format!(
                "var r = document.getElementById('op-{id}'); var b = document.getElementById('unread');
                 return !!r && r.getAttribute('data-status') === 'completed' && !b.hidden && Number(document.getElementById('unread-count').textContent) >= 2;"
            ),
        )
        .await;
    let row = browser.text(&format!("#op-{id}")).await;
    assert!(
        row.contains("Download") && row.contains("3 patients exported"),
        "{row}"
    );

    // Notifications: the list, mark all read, preferences saved through the API.
    browser.click("a[href='/notifications']").await;
    let page = browser.text("main").await;
    assert!(
        page.contains(&format!("Your export operation {id} completed.")),
        "{page}"
    );
    browser.click("#pref-operation\\.completed-email").await;
    browser.fill("#phone_number", "+254700000001").await;
    browser.screenshot("notifications").await;
    browser
        .click("form[action='/notifications/preferences'] button[type=submit]")
        .await;
    assert!(browser
        .text("main")
        .await
        .contains("Your preferences were saved."));
    let prefs: Value = app
        .get(
            &token_of(&app, &email).await,
            "/api/v2/notifications/preferences",
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(prefs["phone_number"], "+254700000001");
    assert!(
        !prefs["preferences"]["operation.completed"]
            .as_array()
            .expect("list")
            .contains(&json!("email")),
        "{prefs}"
    );
    browser
        .click("form[action='/notifications/read'] button")
        .await;
    browser.find("h1").await;
    assert!(
        browser.all("#unread:not([hidden])").await.is_empty(),
        "all read"
    );

    // Patients, filtered.
    browser.click("a[href='/patients']").await;
    assert!(browser.text("main").await.contains("Halima2"));
    browser
        .js("document.getElementById('filter-current_camp').value = 'Kakuma'; document.getElementById('filter-gender').value = 'female';", vec![])
        .await;
    browser
        .click("form[action='/patients'] button[type=submit]")
        .await;
    browser.find("h2#h-patients").await;
    let list = browser.text("main").await;
    assert!(
        list.contains("Halima0") && !list.contains("Halima1") && !list.contains("Halima2"),
        "{list}"
    );
    let url = browser.url().await;
    assert!(
        !url.contains("Halima") && !url.contains("KAK-"),
        "no patient data in the URL: {url}"
    );
    browser.screenshot("patients").await;

    // The audit log and users, for admins.
    browser.click("a[href='/audit']").await;
    let audit = browser.text("main").await;
    assert!(
        audit.contains("chain of your organization's log is intact"),
        "{audit}"
    );
    assert!(
        audit.contains("operation.download") || audit.contains("operation.schedule"),
        "{audit}"
    );
    browser.screenshot("audit").await;
    browser.click("a[href='/users']").await;
    let users = browser.text("main").await;
    assert!(
        users.contains(&email) && users.contains("Administrator") && users.contains("Data manager"),
        "{users}"
    );
    browser.screenshot("users").await;
    browser.click("a[href='/schedules']").await;
    assert!(browser
        .text("#schedules-list")
        .await
        .contains("No recurring schedule yet"));

    // Log out: back to the log-in page, and the pages need a login again.
    browser.click("form[action='/logout'] button").await;
    browser.find("#email").await;
    browser.goto(&format!("{}/audit", app.base)).await;
    browser.find("#email").await;
    assert!(browser.url().await.contains("/login?next=%2Faudit"));
    browser.close().await;
}

/// A bearer token of an existing user (logs in through the API).
async fn token_of(app: &TestApp, email: &str) -> String {
    let body: Value = app
        .login(email, web_support::PASSWORD)
        .await
        .json()
        .await
        .expect("json");
    body["token"].as_str().expect("token").to_string()
}

dual_test!(
    notifications_patients_audit_and_users_pages_work,
    |app: TestApp| async move { the_other_pages(app).await }
);
