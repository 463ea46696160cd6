//! Master key rotation: data sealed under the previous key stays readable when that key
//! is given as a previous key; without it, the operation fails with a clear message.

mod common;

use common::TestApp;
use haven::domain::permission::Role;
use haven::engine::Ran;
use serde_json::{json, Value};

const HARNESS_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const NEW_KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

async fn operations_sealed_under_the_previous_key_run_after_a_rotation(app: TestApp) {
    // API only: the operations wait for the engines this test builds.
    let org = app.create_org("Clinic").await;
    let token = app.user_token(org, Role::DataManager).await;
    let schedule = |csv: String| {
        let app = &app;
        let token = token.clone();
        async move {
            let r = app.schedule_import(&token, &csv, json!({})).await;
            assert_eq!(r.status(), 201);
            let op: Value = r.json().await.unwrap();
            uuid::Uuid::parse_str(op["id"].as_str().unwrap()).unwrap()
        }
    };
    let first = schedule(common::sample("patients-basic.csv")).await;
    let second = schedule(common::sample("patients-formula-injection.csv")).await;
    let old_key_file = app.dir.path().join("previous.key");
    std::fs::write(&old_key_file, HARNESS_KEY).unwrap();
    let old_key_path = old_key_file.display().to_string();

    // Without the previous key the sealed parameters cannot be read: a clear failure.
    let forgetful = common::config_with(
        app.dir.path(),
        &app.db.url,
        &["--master-key", NEW_KEY, "--workers", "0"],
    );
    let keyring = haven::app::load_keyring(&forgetful).unwrap();
    let engine = haven::app::start_engine(app.store.clone(), keyring, &forgetful).unwrap();
    assert_eq!(engine.run_once().await.unwrap(), Ran::Operation(first));
    let failed = app.store.get_operation(org, first).await.unwrap().unwrap();
    assert_eq!(failed.status.as_str(), "failed");
    assert!(failed.error_message.unwrap().contains("master key"));

    let rotated = common::config_with(
        app.dir.path(),
        &app.db.url,
        &[
            "--master-key",
            NEW_KEY,
            "--previous-master-key-file",
            &old_key_path,
            "--workers",
            "0",
        ],
    );
    let keyring = haven::app::load_keyring(&rotated).unwrap();
    let new_key_id = keyring.active_key_id();
    let engine = haven::app::start_engine(app.store.clone(), keyring, &rotated).unwrap();
    assert_eq!(engine.run_once().await.unwrap(), Ran::Operation(second));
    let done = app.store.get_operation(org, second).await.unwrap().unwrap();
    assert_eq!(
        done.status.as_str(),
        "completed",
        "{:?}",
        done.error_message
    );
    assert_eq!(done.result.unwrap()["rows_imported"], 5);
    assert_ne!(
        done.parameters_key_id, new_key_id,
        "sealed under the previous key"
    );
}

dual_test!(
    operations_sealed_under_the_previous_key_run_after_a_rotation,
    flags = &["--workers", "0"],
    |app: TestApp| operations_sealed_under_the_previous_key_run_after_a_rotation(app)
);
