//! The web UI in a real browser: a data manager logs in, uploads a CSV, schedules the
//! import two seconds ahead with email on, and watches the dashboard show it scheduled,
//! running and completed without reloading; then rolls it back from the dashboard.

mod common;
mod web_support;

use std::time::Duration;

use chrono::Utc;
use common::TestApp;
use haven::domain::permission::Role;
use serde_json::json;
use web_support::{patients_csv, user, Browser};

/// Rows in the uploaded file: enough for the import to run for a while, so the
/// dashboard can show it running.
const ROWS: usize = 60_000;

async fn import_schedule_watch_and_roll_back(app: TestApp) {
    let org = app.create_org("Kakuma Clinic").await;
    let email = user(&app, org, Role::DataManager).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("kakuma-registration.csv");
    // The valid rows, then one with a gender that does not exist: reported, not imported.
    let csv = patients_csv(ROWS) + "Bad,Row,robot,1990-01-01,WEB-BAD,Kakuma\n";
    std::fs::write(&file, csv).expect("csv");

    let browser = Browser::start(1280).await;
    browser.log_in(&app.base, &email).await;
    assert!(browser.text("body").await.contains("Nothing is scheduled."));

    // The import form: the file first, its preview with the detected mapping.
    browser.click("a[href='/import']").await;
    browser.find("#import-form").await;
    let file_input = browser.find("#file").await;
    file_input
        .send_keys(&file.display().to_string())
        .await
        .expect("choose the file");
    browser
        .wait_for(
            "the preview of the file",
            "var p = document.getElementById('preview'); return !!p && !p.hidden && document.querySelectorAll('#preview-table tbody tr').length === 5;",
        )
        .await;
    let preview = browser.text("#preview-table").await;
    assert!(
        preview.contains("given_name") && preview.contains("Amina0"),
        "{preview}"
    );
    let mapped = browser
        .js(
            "return Array.from(document.querySelectorAll('#preview-table select')).map(function (s) { return s.value; });",
            vec![],
        )
        .await;
    assert_eq!(
        mapped,
        json!([
            "given_name",
            "family_name",
            "gender",
            "date_of_birth",
            "unhcr_number",
            "current_camp"
        ]),
        "the detected mapping"
    );
    // Email on by default; dry run off.
    assert_eq!(
        browser
            .js("return [document.getElementById('email_notification').checked, document.getElementById('dry_run').checked];", vec![])
            .await,
        json!([true, false])
    );
    browser.screenshot("import-form").await;

    // Schedule for later: two seconds ahead (the picker takes whole seconds: the next
    // whole second after that), in Nairobi time; the time is set and the form sent at once.
    browser.click("#when-later").await;
    browser.fill("#timezone", "Africa/Nairobi").await;
    let at = Utc::now() + chrono::Duration::milliseconds(3000);
    let at = at.with_timezone(&chrono_tz::Africa::Nairobi);
    browser
        .js(
            "document.getElementById('scheduled_local').value = arguments[0];
             document.querySelector('#import-form button[type=submit]').click();",
            vec![json!(at.format("%Y-%m-%dT%H:%M:%S").to_string())],
        )
        .await;

    // The dashboard: the new operation highlighted, scheduled.
    let id = browser.highlighted().await;
    let notice = browser.text("#notice").await;
    assert!(notice.contains("scheduled"), "{notice}");
    // A mark that a reload would erase; the row's states are recorded from the page's
    // first render on (see `web_support::RECORD_ROWS`).
    browser.js("window.__noReload = true;", vec![]).await;
    let first = browser.seen(&id).await;
    assert_eq!(
        first[0],
        json!("scheduled:scheduled"),
        "shown as scheduled first"
    );
    let op_row = format!("#op-{id}");
    assert!(browser.text(&op_row).await.contains("Scheduled"));

    // Running, with its progress bar, then completed: without reloading.
    browser
        .wait_for(
            "the import running",
            &format!("var r = document.getElementById('op-{id}'); return !!r && r.getAttribute('data-status') !== 'scheduled';"),
        )
        .await;
    if browser
        .js(
            &format!("return !!document.querySelector('#op-{id} progress');"),
            vec![],
        )
        .await
        == json!(true)
    {
        browser.screenshot("dashboard-running").await;
    }
    browser
        .wait_for(
            "the import completed",
            &format!("var r = document.getElementById('op-{id}'); return !!r && r.getAttribute('data-status') === 'completed';"),
        )
        .await;
    let seen = browser.seen(&id).await;
    assert_eq!(
        seen,
        json!([
            "scheduled:scheduled",
            "running:processing",
            "finished:completed"
        ]),
        "the statuses the row showed"
    );
    assert_eq!(
        browser
            .js("return window.__noReload === true;", vec![])
            .await,
        json!(true),
        "no reload"
    );
    let row = browser.text(&op_row).await;
    assert!(row.contains("Completed"), "{row}");
    assert!(
        row.contains(&format!(
            "{} rows: {ROWS} imported, 0 updated, 0 skipped, 1 failed",
            ROWS + 1
        )),
        "{row}"
    );
    assert!(
        row.contains("Roll back") && row.contains("possible for 23 h"),
        "{row}"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM patients WHERE deleted_at IS NULL")
            .await,
        ROWS as i64
    );
    // The error report button gives the CSV report: the row as a spreadsheet numbers it.
    let report = browser
        .js(
            &format!(
                "return fetch(document.querySelector('#op-{id} a[href$=\"/errors.csv\"]').href).then(function (r) {{ return r.text(); }});"
            ),
            vec![],
        )
        .await;
    let report = report.as_str().expect("report");
    assert!(report.starts_with("row,column,code,message"), "{report}");
    assert!(
        report.contains(&format!("{},gender,invalid_enum", ROWS + 2)),
        "{report}"
    );
    assert!(!report.contains("robot"), "no cell values in the report");
    // The live region told screen readers.
    let live = browser.text("#live").await;
    assert!(
        live.contains("Import") && live.contains("Completed"),
        "{live:?}"
    );
    browser.screenshot("dashboard").await;

    // Roll it back from the dashboard.
    browser
        .click(&format!("#op-{id} form[action$='/rollback'] button"))
        .await;
    browser
        .client
        .accept_alert()
        .await
        .expect("confirm the rollback");
    browser
        .wait_for(
            "the rollback notice",
            "var n = document.getElementById('notice'); return !!n && n.textContent.indexOf('rollback') >= 0;",
        )
        .await;
    browser
        .wait_for(
            "the import rolled back",
            &format!("var r = document.getElementById('op-{id}'); return !!r && r.getAttribute('data-status') === 'rolled_back';"),
        )
        .await;
    assert!(browser.text(&op_row).await.contains("Rolled back"));
    assert_eq!(
        app.count("SELECT COUNT(*) FROM patients WHERE deleted_at IS NULL")
            .await,
        0
    );

    // The operation page tells the whole story, without patient data.
    browser.goto(&format!("{}/operations/{id}", app.base)).await;
    let page = browser.text("main").await;
    for expected in [
        "Import operation",
        "Rolled back",
        "operation.schedule",
        "operation.rolled_back",
        "create",
    ] {
        assert!(page.contains(expected), "{expected} in:\n{page}");
    }
    assert!(
        !page.contains("Amina"),
        "no patient data on the operation page"
    );
    browser.screenshot("operation").await;
    browser.close().await;

    // Email was on: the confirmation and the completion went out (to the outbox).
    let outbox = app.dir.path().join("outbox");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mails: Vec<String> = std::fs::read_dir(&outbox)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .filter(|m| m.contains(&id))
                    .collect()
            })
            .unwrap_or_default();
        if mails.len() >= 2 {
            assert!(
                mails.iter().any(|m| m.contains("scheduled")),
                "a confirmation mail"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mails about {id}: {mails:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

dual_test!(
    a_data_manager_imports_watches_it_live_and_rolls_it_back,
    |app: TestApp| async move { import_schedule_watch_and_roll_back(app).await }
);
