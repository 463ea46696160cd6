//! The web UI in a real browser: an invalid form shows the API's field errors beside
//! the fields; the update and delete forms preview how many patients match before
//! anything is scheduled; the pages fit a 360-pixel-wide phone.

mod common;
mod web_support;

use chrono::Utc;
use common::TestApp;
use haven::domain::permission::Role;
use serde_json::json;
use web_support::{user, Browser};

async fn invalid_import_shows_field_errors(app: TestApp) {
    let org = app.create_org("Clinic").await;
    let email = user(&app, org, Role::DataManager).await;
    let browser = Browser::start(1280).await;
    browser.log_in(&app.base, &email).await;
    browser.goto(&format!("{}/import", app.base)).await;
    browser.find("#import-form").await;

    // A time yesterday, and no file.
    let yesterday = Utc::now() - chrono::Duration::days(1);
    browser
        .schedule_later("UTC", &yesterday.format("%Y-%m-%dT%H:%M").to_string())
        .await;
    browser.click("#import-form button[type=submit]").await;
    browser.find("#error-summary").await;

    let summary = browser.text("#error-summary").await;
    assert!(summary.contains("these 2 problems"), "{summary}");
    let time_error = browser.text("#err-scheduled_at").await;
    assert!(time_error.contains("is in the past"), "{time_error}");
    let file_error = browser.text("#err-file").await;
    assert!(file_error.contains("choose the CSV file"), "{file_error}");
    // The fields say they are invalid and point at their messages; the summary has focus.
    let state = browser
        .js(
            "return [document.getElementById('scheduled_local').getAttribute('aria-invalid'),
                     document.getElementById('scheduled_local').getAttribute('aria-describedby'),
                     document.getElementById('file').getAttribute('aria-invalid'),
                     document.activeElement.id,
                     document.getElementById('when-later').checked,
                     document.getElementById('scheduled_local').value !== ''];",
            vec![],
        )
        .await;
    assert_eq!(
        state,
        json!([
            "true",
            "err-scheduled_at",
            "true",
            "error-summary",
            true,
            true
        ]),
        "the form keeps what was entered"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM bulk_operations").await, 0);
    browser.screenshot("import-form-errors").await;
    browser.close().await;
}

dual_test!(
    an_import_without_a_file_in_the_past_shows_both_field_errors,
    |app: TestApp| async move { invalid_import_shows_field_errors(app).await }
);

async fn update_and_delete_preview_before_confirming(app: TestApp) {
    let org = app.create_org("Clinic").await;
    let email = user(&app, org, Role::Admin).await;
    let token = app.user_token(org, Role::Admin).await;
    for (i, camp) in ["Kakuma", "Kakuma", "Kakuma", "Dadaab"].iter().enumerate() {
        app.create_patient(
            &token,
            json!({"given_name": format!("P{i}"), "family_name": "Test", "gender": "female", "current_camp": camp}),
        )
        .await;
    }
    let browser = Browser::start(1280).await;
    browser.log_in(&app.base, &email).await;

    // Update: filters, a change, the preview count, then confirm.
    browser.goto(&format!("{}/update", app.base)).await;
    browser.fill("#filter-current_camp", "Kakuma").await;
    browser
        .js(
            "document.getElementById('change_field_1').value = 'camp_section';",
            vec![],
        )
        .await;
    browser.fill("#change_value_1", "B12").await;
    assert!(
        browser.all("button[value=confirm]").await.is_empty(),
        "no confirmation before a preview"
    );
    browser.click("button[value=preview]").await;
    let count = browser.text("#preview-count").await;
    assert!(count.contains("3 patients match"), "{count}");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM bulk_operations").await,
        0,
        "a preview schedules nothing"
    );
    browser.screenshot("update-form").await;
    browser.click("button[value=confirm]").await;
    let id = browser.highlighted().await;
    assert!(browser.text(&format!("#op-{id}")).await.contains("Update"));

    // Delete: ids pasted, the count, the typed confirmation.
    let ids: Vec<String> = app
        .get(&token, "/api/v2/patients?current_camp=Dadaab")
        .await
        .json::<serde_json::Value>()
        .await
        .expect("json")["patients"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["id"].as_str().expect("id").to_string())
        .collect();
    browser.goto(&format!("{}/delete", app.base)).await;
    browser.click("#target-ids").await;
    browser.fill("#patient_ids", &ids.join("\n")).await;
    browser.click("button[value=preview]").await;
    let count = browser.text("#preview-count").await;
    assert!(count.contains("1 patient matches"), "{count}");
    browser.fill("#confirm_text", "remove").await;
    browser.click("button[value=confirm]").await;
    let error = browser.text("#err-confirm").await;
    assert!(error.contains("type DELETE"), "{error}");
    browser.screenshot("delete-form").await;
    browser.fill("#confirm_text", "DELETE").await;
    browser.click("button[value=confirm]").await;
    let id = browser.highlighted().await;
    assert!(browser.text(&format!("#op-{id}")).await.contains("Delete"));
    browser.close().await;
}

dual_test!(
    update_and_delete_show_how_many_patients_match_before_confirming,
    |app: TestApp| async move { update_and_delete_preview_before_confirming(app).await }
);

async fn pages_fit_a_phone(app: TestApp) {
    let org = app.create_org("Clinic").await;
    let email = user(&app, org, Role::Admin).await;
    let browser = Browser::start(360).await;
    browser.log_in(&app.base, &email).await;
    for path in [
        "/",
        "/import",
        "/export",
        "/update",
        "/delete",
        "/notifications",
        "/patients",
        "/audit",
        "/users",
        "/schedules",
    ] {
        browser.goto(&format!("{}{path}", app.base)).await;
        browser.find("h1").await;
        let overflow = browser
            .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth;", vec![])
            .await;
        assert!(
            overflow.as_i64().unwrap_or(99) <= 0,
            "{path} scrolls sideways by {overflow}px at 360 px"
        );
    }
    browser.goto(&format!("{}/", app.base)).await;
    browser.find("h1").await;
    browser.screenshot("dashboard-phone").await;
    browser.close().await;
}

dual_test!(
    every_page_fits_a_360_pixel_screen,
    |app: TestApp| async move { pages_fit_a_phone(app).await }
);
