//! The web UI in a real browser: schedule an export for tomorrow with the minimal
//! fields preselected, a second one waiting for it, then cancel the first from the
//! dashboard (and the second goes with it).

mod common;
mod web_support;

use chrono::Utc;
use common::TestApp;
use haven::domain::permission::Role;
use serde_json::json;
use web_support::{user, Browser};

async fn export_for_later_then_cancel(app: TestApp) {
    let org = app.create_org("Dadaab Clinic").await;
    let email = user(&app, org, Role::DataManager).await;
    let browser = Browser::start(1280).await;
    browser.log_in(&app.base, &email).await;

    browser.click("a[href='/export']").await;
    browser.find("form[action='/export']").await;
    let checked = browser
        .js(
            "return Array.from(document.querySelectorAll('input[name=fields]:checked')).map(function (c) { return c.value; });",
            vec![],
        )
        .await;
    assert_eq!(
        checked,
        json!([
            "id",
            "unhcr_number",
            "given_name",
            "family_name",
            "gender",
            "date_of_birth"
        ]),
        "the minimal set is preselected"
    );
    // Every input has a label.
    let unlabelled = browser
        .js(
            "return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea')).filter(function (i) {
               return !(i.labels && i.labels.length) && !i.getAttribute('aria-label');
             }).map(function (i) { return i.name || i.id; });",
            vec![],
        )
        .await;
    assert_eq!(unlabelled, json!([]), "inputs without a label");

    browser.click("#format-json").await;
    browser.click("#field-current_camp").await;
    browser
        .js(
            "document.getElementById('filter-current_camp').value = 'Dadaab';",
            vec![],
        )
        .await;
    let tomorrow =
        (Utc::now() + chrono::Duration::days(1)).with_timezone(&chrono_tz::Europe::Berlin);
    browser
        .schedule_later(
            "Europe/Berlin",
            &tomorrow.format("%Y-%m-%dT%H:%M").to_string(),
        )
        .await;
    browser.screenshot("export-form").await;
    browser
        .click("form[action='/export'] button[type=submit]")
        .await;

    let id = browser.highlighted().await;
    assert!(
        !browser
            .all(&format!("#section-scheduled #op-{id}"))
            .await
            .is_empty(),
        "in the scheduled section"
    );
    let row = browser.text(&format!("#op-{id}")).await;
    assert!(
        row.contains("Export") && row.contains("Scheduled") && row.contains("By you"),
        "{row}"
    );
    // Stored as the user asked: tomorrow, that minute in Berlin, with its zone.
    let op = app
        .store
        .get_operation(org, uuid::Uuid::parse_str(&id).expect("uuid"))
        .await
        .expect("read")
        .expect("op");
    assert_eq!(op.timezone, "Europe/Berlin");
    assert_eq!(
        op.scheduled_at.timestamp() / 60,
        tomorrow.timestamp() / 60,
        "scheduled for the chosen minute"
    );

    // A second export waits for the first: the form lists the scheduled one.
    browser.click("a[href='/export']").await;
    browser.click(&format!("#dep-{id}")).await;
    browser
        .click("form[action='/export'] button[type=submit]")
        .await;
    let waiting = browser.highlighted().await;
    assert_ne!(waiting, id);
    let second = app
        .store
        .get_operation(org, uuid::Uuid::parse_str(&waiting).expect("uuid"))
        .await
        .expect("read")
        .expect("op");
    assert_eq!(second.depends_on, vec![op.id], "depends on the first");

    // Cancelling the first cancels the one waiting for it.
    browser
        .click(&format!("#op-{id} form[action$='/cancel'] button"))
        .await;
    browser
        .wait_for(
            "the cancel notice",
            "var n = document.getElementById('notice'); return !!n && n.textContent.indexOf('cancelled') >= 0;",
        )
        .await;
    let row = browser.text(&format!("#section-finished #op-{id}")).await;
    assert!(row.contains("Cancelled"), "{row}");
    assert!(
        browser
            .all(&format!("#op-{id} form[action$='/cancel']"))
            .await
            .is_empty(),
        "no cancel button on a cancelled operation"
    );
    browser
        .wait_for(
            "the dependant cancelled too",
            &format!("var r = document.getElementById('op-{waiting}'); return !!r && r.getAttribute('data-status') === 'cancelled';"),
        )
        .await;
    assert_eq!(browser.text("[data-count-for=scheduled]").await, "(0)");
    browser.close().await;
}

dual_test!(
    an_export_scheduled_for_tomorrow_is_cancelled_from_the_dashboard,
    |app: TestApp| async move { export_for_later_then_cancel(app).await }
);
