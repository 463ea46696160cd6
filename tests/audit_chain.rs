//! The keyed audit chain (issue 8, item 4): a chain recomputed from the database without
//! the key fails verification, the chain head cannot be moved back or deleted through the
//! database, and a head recorded outside the database catches a chain cut back by someone
//! who could bypass those protections.

mod common;

use common::{Backend, TestApp};

async fn audited_history(app: &TestApp) -> uuid::Uuid {
    app.audited_history().await.0
}

fn verify_cli(app: &TestApp, org: uuid::Uuid, extra: &[&str]) -> (Option<i32>, String) {
    let key = app.config.master_key.as_deref().unwrap();
    verify_cli_with_key(app, org, key, extra)
}

/// `haven audit verify --org ORG` with the given master key and extra flags: the exit
/// code and standard output.
fn verify_cli_with_key(
    app: &TestApp,
    org: uuid::Uuid,
    key: &str,
    extra: &[&str],
) -> (Option<i32>, String) {
    let output = std::process::Command::new(common::haven_bin())
        .args(["audit", "verify", "--database-url", &app.db.url, "--org"])
        .arg(org.to_string())
        .args(["--master-key", key])
        .arg("--data-dir")
        .arg(app.dir.path())
        .args(extra)
        .output()
        .expect("run haven audit verify");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

/// Turns off every trigger protecting the audit tables, as someone with the database
/// file or a superuser could.
async fn disable_guards(app: &TestApp) {
    let statements: &[&str] = match app.backend {
        Backend::Sqlite => &[
            "DROP TRIGGER audit_events_no_update",
            "DROP TRIGGER audit_events_no_delete",
            "DROP TRIGGER audit_heads_no_delete",
            "DROP TRIGGER audit_heads_insert_checked",
            "DROP TRIGGER audit_heads_update_checked",
        ],
        Backend::Postgres => &[
            "ALTER TABLE audit_events DISABLE TRIGGER USER",
            "ALTER TABLE audit_heads DISABLE TRIGGER USER",
        ],
    };
    for sql in statements {
        app.raw_sql(sql).await.expect(sql);
    }
}

fn sql_text(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn org_literal(app: &TestApp, org: uuid::Uuid) -> String {
    match app.backend {
        Backend::Sqlite => format!("X'{}'", org.simple()),
        Backend::Postgres => format!("'{org}'"),
    }
}

dual_test!(
    a_chain_recomputed_without_the_key_fails_verification,
    |app: TestApp| async move {
        let org = audited_history(&app).await;
        let (code, stdout) = verify_cli(&app, org, &[]);
        assert_eq!(code, Some(0), "{stdout}");

        // The attacker edits the second entry and recomputes every hash from the
        // database alone, as the unkeyed chain allowed, then moves the head along.
        disable_guards(&app).await;
        let mut entries = app.store.audit_entries(org, 0, 100).await.unwrap();
        let mut prev = haven::audit::GENESIS_HASH.to_string();
        for entry in entries.iter_mut() {
            if entry.seq == 2 {
                entry.details = "{\"fields\":[]}".to_string();
            }
            entry.prev_hash = prev.clone();
            entry.key_id = None;
            entry.hash = haven::audit::entry_hash(entry, None);
            prev = entry.hash.clone();
            app.raw_sql(&format!(
                "UPDATE audit_events SET details = {}, prev_hash = {}, hash = {}, key_id = NULL \
                 WHERE organization_id = {} AND seq = {}",
                sql_text(&entry.details),
                sql_text(&entry.prev_hash),
                sql_text(&entry.hash),
                org_literal(&app, org),
                entry.seq
            ))
            .await
            .unwrap();
        }
        app.raw_sql(&format!(
            "UPDATE audit_heads SET hash = {} WHERE organization_id = {}",
            sql_text(&prev),
            org_literal(&app, org)
        ))
        .await
        .unwrap();

        let (code, stdout) = verify_cli(&app, org, &[]);
        assert_eq!(code, Some(1), "{stdout}");
        assert!(stdout.contains("BROKEN"), "{stdout}");
    }
);

dual_test!(
    the_database_refuses_to_move_the_chain_head_back_or_delete_it,
    |app: TestApp| async move {
        let org = audited_history(&app).await;
        let o = org_literal(&app, org);
        let back = format!(
            "UPDATE audit_heads SET seq = 2, hash = (SELECT hash FROM audit_events \
             WHERE organization_id = {o} AND seq = 2) WHERE organization_id = {o}"
        );
        assert!(app.raw_sql(&back).await.is_err(), "moved back");
        let forged = format!("UPDATE audit_heads SET seq = 99 WHERE organization_id = {o}");
        assert!(app.raw_sql(&forged).await.is_err(), "moved to no entry");
        assert!(
            app.raw_sql("DELETE FROM audit_heads").await.is_err(),
            "deleted"
        );
        let head = app.store.audit_head(org).await.unwrap().unwrap();
        assert_eq!(head.seq, 4);
        let (code, stdout) = verify_cli(&app, org, &[]);
        assert_eq!(code, Some(0), "{stdout}");
    }
);

dual_test!(
    a_head_recorded_outside_the_database_catches_a_cut_back_chain,
    |app: TestApp| async move {
        let org = audited_history(&app).await;
        let (code, stdout) = verify_cli(&app, org, &[]);
        assert_eq!(code, Some(0), "{stdout}");
        let head = stdout
            .split("head ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("verify prints the head")
            .to_string();
        assert!(head.starts_with("4:"), "{stdout}");
        let (code, stdout) = verify_cli(&app, org, &["--expect-head", &head]);
        assert_eq!(code, Some(0), "{stdout}");

        // Remove the newest entry and move the head back to the one before: the
        // database alone cannot tell.
        disable_guards(&app).await;
        let o = org_literal(&app, org);
        app.raw_sql(&format!(
            "DELETE FROM audit_events WHERE organization_id = {o} AND seq = 4"
        ))
        .await
        .unwrap();
        app.raw_sql(&format!(
            "UPDATE audit_heads SET seq = 3, hash = (SELECT hash FROM audit_events \
             WHERE organization_id = {o} AND seq = 3) WHERE organization_id = {o}"
        ))
        .await
        .unwrap();
        let (code, stdout) = verify_cli(&app, org, &[]);
        assert_eq!(code, Some(0), "undetectable without an anchor: {stdout}");
        let (code, stdout) = verify_cli(&app, org, &["--expect-head", &head]);
        assert_eq!(code, Some(1), "{stdout}");
        assert!(stdout.contains("newest entries were removed"), "{stdout}");
    }
);

dual_test!(
    entries_keyed_before_a_master_key_rotation_verify_with_the_previous_key,
    |app: TestApp| async move {
        let org = audited_history(&app).await;
        let old_key_file = app.dir.path().join("previous.key");
        std::fs::write(&old_key_file, app.config.master_key.as_deref().unwrap()).unwrap();
        let new_key = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
        let run = |extra: &[&str]| verify_cli_with_key(&app, org, new_key, extra);
        let (code, stdout) = run(&[]);
        assert_eq!(code, Some(1), "{stdout}");
        assert!(stdout.contains("previous-master-key-file"), "{stdout}");
        let old = old_key_file.display().to_string();
        let (code, stdout) = run(&["--previous-master-key-file", &old]);
        assert_eq!(code, Some(0), "{stdout}");
    }
);
