//! Logging in and out, tokens, throttling, and the permission table of SPEC 2.

mod common;

use common::TestApp;
use haven::domain::permission::Role;
use serde_json::{json, Value};

async fn user_with_password(app: &TestApp, role: Role) -> (uuid::Uuid, String, String) {
    let org = app.create_org("Clinic").await;
    let email = format!("{}@clinic.example.org", role.as_str());
    let password = "a-long-enough-passphrase";
    haven::app::create_user(app.store.as_ref(), org, &email, role, password)
        .await
        .expect("create user");
    (org, email, password.to_string())
}

dual_test!(
    login_with_the_right_password_returns_a_working_token,
    |app: TestApp| async move {
        let (org, email, password) = user_with_password(&app, Role::DataManager).await;
        let response = app.login(&email, &password).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["user"]["email"], email);
        assert_eq!(body["user"]["role"], "data_manager");
        assert_eq!(body["user"]["organization_id"], org.to_string());
        assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
        let token = body["token"].as_str().unwrap();
        assert!(token.len() >= 22, "at least 128 bits");

        let me: Value = app
            .get(token, "/api/v2/auth/me")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["email"], email);

        // Only the token's hash is stored.
        let stored = app
            .count(&format!(
                "SELECT COUNT(*) FROM tokens WHERE token_hash = '{token}'"
            ))
            .await;
        assert_eq!(stored, 0);
        let audit = app
        .count("SELECT COUNT(*) FROM audit_events WHERE action = 'auth.login' AND outcome = 'success'")
        .await;
        assert_eq!(audit, 1);
    }
);

dual_test!(
    login_with_a_wrong_password_is_refused_and_audited,
    |app: TestApp| async move {
        let (_, email, _) = user_with_password(&app, Role::Viewer).await;
        let response = app.login(&email, "not-the-password-at-all").await;
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_credentials");
        assert!(body.get("token").is_none());
        let unknown = app.login("nobody@example.org", "whatever-password").await;
        assert_eq!(
            unknown.status(),
            401,
            "unknown accounts answer like wrong passwords"
        );
        let failures = app
        .count("SELECT COUNT(*) FROM audit_events WHERE action = 'auth.login' AND outcome = 'failure'")
        .await;
        assert_eq!(failures, 1);
    }
);

dual_test!(a_revoked_token_is_refused, |app: TestApp| async move {
    let org = app.create_org("Clinic").await;
    let token = app.user_token(org, Role::Analyst).await;
    assert_eq!(app.get(&token, "/api/v2/auth/me").await.status(), 200);
    let logout = app
        .post_json(&token, "/api/v2/auth/logout", &json!({}))
        .await;
    assert_eq!(logout.status(), 200);
    let after = app.get(&token, "/api/v2/auth/me").await;
    assert_eq!(after.status(), 401);
    let body: Value = after.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
});

dual_test!(an_expired_token_is_refused, |app: TestApp| async move {
    let org = app.create_org("Clinic").await;
    let token = app.user_token(org, Role::Analyst).await;
    // Move the token's clock instead of sleeping: it expired a second ago.
    let hash = haven::auth::token_hash(&token);
    let past = haven::domain::now() - chrono::Duration::seconds(1);
    let sql = format!(
        "UPDATE tokens SET expires_at = '{}' WHERE token_hash = '{hash}'",
        past.to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
    );
    assert_eq!(app.raw_sql(&sql).await.unwrap(), 1);
    assert_eq!(app.get(&token, "/api/v2/auth/me").await.status(), 401);
});

dual_test!(
    missing_or_garbage_tokens_answer_401,
    |app: TestApp| async move {
        let none = app
            .client
            .get(app.url("/api/v2/patients"))
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 401);
        let garbage = app.get("not-a-token", "/api/v2/patients").await;
        assert_eq!(garbage.status(), 401);
        let body: Value = garbage.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
);

dual_test!(
    repeated_failed_logins_are_slowed_down_with_429,
    |app: TestApp| async move {
        let (_, email, password) = user_with_password(&app, Role::Viewer).await;
        for _ in 0..5 {
            assert_eq!(
                app.login(&email, "wrong-password-again").await.status(),
                401
            );
        }
        let throttled = app.login(&email, &password).await;
        assert_eq!(throttled.status(), 429, "even the right password waits");
        let retry_after: u64 = throttled.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after > 0 && retry_after <= 900);
    }
);

dual_test!(
    each_role_has_exactly_the_permissions_of_the_table,
    |app: TestApp| async move {
        let org = app.create_org("Clinic").await;
        let table = [
            (
                Role::Admin,
                vec![
                    "patients.read",
                    "patients.write",
                    "bulk.read",
                    "bulk.import",
                    "bulk.export",
                    "bulk.update",
                    "bulk.delete",
                    "bulk.rollback",
                    "bulk.cancel",
                    "audit.read",
                    "org.admin",
                ],
            ),
            (
                Role::DataManager,
                vec![
                    "patients.read",
                    "patients.write",
                    "bulk.read",
                    "bulk.import",
                    "bulk.export",
                    "bulk.update",
                    "bulk.rollback",
                    "bulk.cancel",
                ],
            ),
            (
                Role::Analyst,
                vec!["patients.read", "bulk.read", "bulk.export"],
            ),
            (Role::Viewer, vec!["patients.read", "bulk.read"]),
        ];
        for (role, expected) in table {
            let token = app.user_token(org, role).await;
            let me: Value = app
                .get(&token, "/api/v2/auth/me")
                .await
                .json()
                .await
                .unwrap();
            let got: Vec<&str> = me["permissions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            assert_eq!(got, expected, "{role:?}");

            // What the table says is enforced on the endpoints too.
            let write = app
                .post_json(
                    &token,
                    "/api/v2/patients",
                    &json!({"given_name": "Test", "family_name": "Person", "gender": "other"}),
                )
                .await
                .status();
            assert_eq!(
                write == 201,
                expected.contains(&"patients.write"),
                "{role:?} patients.write"
            );
            let audit = app.get(&token, "/api/v2/audit").await.status();
            assert_eq!(
                audit == 200,
                expected.contains(&"audit.read"),
                "{role:?} audit.read"
            );
            let read = app.get(&token, "/api/v2/patients").await.status();
            assert_eq!(read, 200, "{role:?} patients.read");
        }
    }
);

dual_test!(
    a_viewer_creating_a_patient_gets_403_and_the_refusal_is_audited,
    |app: TestApp| async move {
        let org = app.create_org("Clinic").await;
        let token = app.user_token(org, Role::Viewer).await;
        let response = app
            .post_json(
                &token,
                "/api/v2/patients",
                &json!({"given_name": "Amina", "family_name": "Abdi", "gender": "female"}),
            )
            .await;
        assert_eq!(response.status(), 403);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("patients.write"));
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 0);
        let denied = app
        .count("SELECT COUNT(*) FROM audit_events WHERE action = 'permission.denied' AND outcome = 'denied'")
        .await;
        assert_eq!(denied, 1);
    }
);
