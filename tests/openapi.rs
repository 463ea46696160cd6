//! The OpenAPI document: served without login, generated from the code, and equal to
//! the committed copy `docs/openapi.json` (regenerate it with `haven openapi`).

mod common;

use common::TestApp;
use serde_json::Value;

dual_test!(
    the_served_openapi_document_is_the_committed_one,
    |app: TestApp| async move {
        let response = app
            .client
            .get(app.url("/api/v2/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "no login needed");
        let served: Value = response.json().await.unwrap();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
        let committed: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(
            served == committed,
            "docs/openapi.json is out of date: run `cargo run -- openapi > docs/openapi.json`"
        );
        assert!(served["paths"]["/api/v2/patients/{id}"]["put"].is_object());
    }
);
