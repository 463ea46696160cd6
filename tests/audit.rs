//! The audit chain: entries are written, cannot be edited through the database's front
//! door, and `haven audit verify` names the entry someone changed or removed.

mod common;

use common::{Backend, TestApp};
use serde_json::Value;

/// Writes a few audited changes and returns the admin token.
async fn audited_history(app: &TestApp) -> (uuid::Uuid, String) {
    app.audited_history().await
}

fn verify_cli(app: &TestApp) -> std::process::Output {
    std::process::Command::new(common::haven_bin())
        .args([
            "audit",
            "verify",
            "--database-url",
            &app.db.url,
            // The chain is keyed with a key derived from the master key.
            "--master-key",
            app.config
                .master_key
                .as_deref()
                .expect("the harness gives a master key"),
            "--data-dir",
        ])
        .arg(app.dir.path())
        .output()
        .expect("run haven audit verify")
}

async fn entry_id_at(app: &TestApp, token: &str, seq: i64) -> String {
    let list: Value = app
        .get(token, "/api/v2/audit?limit=200")
        .await
        .json()
        .await
        .unwrap();
    let entry = list["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["seq"] == seq)
        .expect("entry with seq")
        .clone();
    entry["id"].as_str().unwrap().to_string()
}

/// Lets the test edit the table the way an intruder with database access would.
async fn disable_append_only_guard(app: &TestApp) {
    match app.backend {
        Backend::Sqlite => {
            app.raw_sql("DROP TRIGGER audit_events_no_update")
                .await
                .unwrap();
            app.raw_sql("DROP TRIGGER audit_events_no_delete")
                .await
                .unwrap();
        }
        Backend::Postgres => {
            app.raw_sql("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete")
                .await
                .unwrap();
        }
    }
}

dual_test!(
    logins_and_patient_changes_are_chained_and_verify_intact,
    |app: TestApp| async move {
        let (_, token) = audited_history(&app).await;
        let list: Value = app.get(&token, "/api/v2/audit").await.json().await.unwrap();
        let actions: Vec<&str> = list["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            [
                "patient.create",
                "patient.create",
                "patient.create",
                "auth.login"
            ]
        );
        let text = list.to_string();
        assert!(!text.contains("Amina"), "no patient data in audit details");

        let verify: Value = app
            .get(&token, "/api/v2/audit/verify")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(verify["intact"], true);
        assert_eq!(verify["entries_checked"], 4);
        let output = verify_cli(&app);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
);

dual_test!(
    the_database_refuses_to_update_or_delete_audit_entries,
    |app: TestApp| async move {
        audited_history(&app).await;
        assert!(app
            .raw_sql("UPDATE audit_events SET outcome = 'failure'")
            .await
            .is_err());
        assert!(app.raw_sql("DELETE FROM audit_events").await.is_err());
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events").await, 4);
    }
);

dual_test!(
    an_edited_audit_row_makes_verify_exit_1_naming_that_entry,
    |app: TestApp| async move {
        let (_, token) = audited_history(&app).await;
        let target = entry_id_at(&app, &token, 2).await;
        disable_append_only_guard(&app).await;
        let changed = app
            .raw_sql("UPDATE audit_events SET details = '{\"fields\":[]}' WHERE seq = 2")
            .await
            .unwrap();
        assert_eq!(changed, 1);

        let output = verify_cli(&app);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains(&target), "names the edited entry: {stdout}");
        assert!(stdout.contains("changed"), "{stdout}");

        let api: Value = app
            .get(&token, "/api/v2/audit/verify")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(api["intact"], false);
        assert_eq!(api["broken"]["entry_id"], target.as_str());
    }
);

dual_test!(a_removed_audit_row_is_detected, |app: TestApp| async move {
    let (_, token) = audited_history(&app).await;
    let next = entry_id_at(&app, &token, 3).await;
    disable_append_only_guard(&app).await;
    app.raw_sql("DELETE FROM audit_events WHERE seq = 2")
        .await
        .unwrap();
    let output = verify_cli(&app);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&next),
        "names the entry after the gap: {stdout}"
    );
});

dual_test!(
    removing_the_newest_audit_rows_is_detected,
    |app: TestApp| async move {
        audited_history(&app).await;
        disable_append_only_guard(&app).await;
        app.raw_sql("DELETE FROM audit_events WHERE seq = 4")
            .await
            .unwrap();
        let output = verify_cli(&app);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains("newest entries were removed"), "{stdout}");
    }
);
