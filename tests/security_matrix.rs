//! The organization and role matrix over every endpoint, read from the OpenAPI document
//! that the router itself produces (a route cannot exist without its entry there):
//!
//! - every id-bearing endpoint answers 404 to another organization's ids, of every kind,
//!   changes nothing of theirs, and each probe is audited in the caller's chain;
//! - every endpoint that is not public answers 401 without a token, and 403 exactly to
//!   the roles that lack the permission its security requirement names (SPEC 2).

mod common;

use common::TestApp;
use haven::domain::permission::{Permission, Role};
use serde_json::{json, Value};
use uuid::Uuid;

/// Endpoints anyone may call.
const PUBLIC: [&str; 4] = [
    "POST /api/v2/auth/login",
    "GET /healthz",
    "GET /readyz",
    "GET /api/v2/openapi.json",
];

struct Endpoint {
    method: String,
    path: String,
    /// `None` for a public endpoint; `Some("")` when any login will do.
    permission: Option<String>,
}

async fn endpoints(app: &TestApp) -> Vec<Endpoint> {
    let doc: Value = app
        .client
        .get(app.url("/api/v2/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            let permission = op["security"].as_array().map(|reqs| {
                reqs[0]["bearer"][0]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            });
            found.push(Endpoint {
                method: method.to_uppercase(),
                path: path.clone(),
                permission,
            });
        }
    }
    // Logging out revokes the token used: last.
    found.sort_by_key(|e| e.path.ends_with("/logout"));
    assert!(found.len() >= 26, "the document lists the API");
    found
}

async fn call(app: &TestApp, token: Option<&str>, method: &str, path: &str) -> u16 {
    let mut request = app.client.request(method.parse().unwrap(), app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == "PUT" {
        request = request.json(&json!({"version": 1, "given_name": "Changed"}));
    } else if method == "POST" {
        request = request.json(&json!({}));
    }
    request.send().await.unwrap().status().as_u16()
}

fn permission(name: &str) -> Permission {
    *Permission::ALL
        .iter()
        .find(|p| p.as_str() == name)
        .unwrap_or_else(|| panic!("`{name}` is not a permission of SPEC 2"))
}

/// An organization with a patient and one completed operation of each kind.
async fn victim(app: &TestApp) -> (String, Vec<String>) {
    let org = app.create_org("Victim Clinic").await;
    let token = app.user_token(org, Role::Admin).await;
    let import = app
        .run_import(
            &token,
            "given_name,family_name,gender,unhcr_number\nAmina,Abdi,female,KEN-1\nOmar,Ali,male,KEN-2\n",
            json!({}),
        )
        .await;
    let list: Value = app
        .get(&token, "/api/v2/patients")
        .await
        .json()
        .await
        .unwrap();
    let patient = list["patients"][0]["id"].as_str().unwrap().to_string();
    let second = list["patients"][1]["id"].as_str().unwrap().to_string();
    let export = app.run_bulk(&token, "export", json!({})).await;
    let update = app
        .run_bulk(
            &token,
            "update",
            json!({"patient_ids": [patient], "changes": {"camp_section": "B1"}}),
        )
        .await;
    let delete = app
        .run_bulk(
            &token,
            "delete",
            json!({"patient_ids": [second], "confirm": true}),
        )
        .await;
    let mut ids = vec![patient];
    for op in [import, export, update, delete] {
        assert_eq!(op["status"], "completed", "{op}");
        ids.push(op["id"].as_str().unwrap().to_string());
    }
    (token, ids)
}

/// What a probe must not change: the victim's patients and operations.
async fn victim_state(app: &TestApp) -> (i64, i64, i64, i64) {
    (
        app.count("SELECT COUNT(*) FROM patients WHERE deleted_at IS NULL")
            .await,
        app.count("SELECT CAST(COALESCE(SUM(version), 0) AS BIGINT) FROM patients")
            .await,
        app.count("SELECT COUNT(*) FROM bulk_operations").await,
        app.count("SELECT COUNT(*) FROM bulk_operations WHERE status <> 'completed'")
            .await,
    )
}

dual_test!(
    every_id_bearing_endpoint_hides_other_organizations_ids,
    |app: TestApp| async move {
        let (victim_token, ids) = victim(&app).await;
        let before = victim_state(&app).await;
        let other = app.create_org("Prober NGO").await;
        let prober = app.user_token(other, Role::Admin).await;
        let mut probes = 0;
        for endpoint in endpoints(&app).await {
            if !endpoint.path.contains("{id}") {
                continue;
            }
            for id in &ids {
                let path = endpoint.path.replace("{id}", id);
                let status = call(&app, Some(&prober), &endpoint.method, &path).await;
                assert_eq!(status, 404, "{} {path}", endpoint.method);
                probes += 1;
            }
        }
        assert!(probes >= 10 * ids.len(), "{probes} probes");
        assert_eq!(
            victim_state(&app).await,
            before,
            "nothing of theirs changed"
        );
        let audited = app
            .count("SELECT COUNT(*) FROM audit_events WHERE action = 'access.cross_organization'")
            .await;
        assert_eq!(audited, probes as i64, "every probe audited");
        let verify = app.audit_verify(&victim_token).await;
        assert_eq!(verify["intact"], true, "{verify}");
    }
);

dual_test!(
    every_endpoint_checks_login_and_the_permission_it_documents,
    |app: TestApp| async move {
        let org = app.create_org("Clinic").await;
        let missing = Uuid::now_v7().to_string();
        let roles = [Role::Admin, Role::DataManager, Role::Analyst, Role::Viewer];
        let mut tokens = Vec::new();
        for role in roles {
            tokens.push((role, app.user_token(org, role).await));
        }
        for endpoint in endpoints(&app).await {
            let key = format!("{} {}", endpoint.method, endpoint.path);
            let path = endpoint.path.replace("{id}", &missing);
            let Some(needed) = &endpoint.permission else {
                assert!(
                    PUBLIC.contains(&key.as_str()),
                    "{key} has no security requirement"
                );
                continue;
            };
            assert_eq!(
                call(&app, None, &endpoint.method, &path).await,
                401,
                "{key} without a token"
            );
            assert_eq!(
                call(&app, Some("not-a-token"), &endpoint.method, &path).await,
                401,
                "{key} with a bad token"
            );
            for (role, token) in &tokens {
                let status = call(&app, Some(token), &endpoint.method, &path).await;
                let allowed = needed.is_empty() || role.has(permission(needed));
                if allowed {
                    assert!(
                        ![401, 403].contains(&status),
                        "{key} as {}: {status}",
                        role.as_str()
                    );
                } else {
                    assert_eq!(status, 403, "{key} as {}", role.as_str());
                }
            }
        }
    }
);
