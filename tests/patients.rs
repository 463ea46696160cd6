//! The patients API: validation, optimistic concurrency, soft delete, filters, paging,
//! and organization isolation.

mod common;

use common::TestApp;
use haven::domain::permission::Role;
use serde_json::{json, Value};

fn amina() -> Value {
    json!({
        "unhcr_number": "KEN-24-000001", "given_name": " Amina ", "family_name": "Abdi",
        "gender": "F", "date_of_birth": "1991-03-14", "refugee_status": "refugee",
        "origin_country": "so", "current_camp": "Kakuma", "camp_section": "B12",
        "phone_number": "+254711000001", "email": "amina.abdi@example.org",
        "primary_language": "so", "languages_spoken": ["so", "sw", "en"], "blood_type": "O+",
        "allergies": ["penicillin"]
    })
}

async fn setup(app: &TestApp) -> String {
    let org = app.create_org("Kakuma Clinic").await;
    app.user_token(org, Role::DataManager).await
}

dual_test!(
    a_valid_patient_is_created_normalised_and_readable,
    |app: TestApp| async move {
        let token = setup(&app).await;
        let response = app.post_json(&token, "/api/v2/patients", &amina()).await;
        assert_eq!(response.status(), 201);
        let location = response.headers()["location"].to_str().unwrap().to_string();
        let created: Value = response.json().await.unwrap();
        assert_eq!(created["given_name"], "Amina", "trimmed");
        assert_eq!(created["gender"], "female");
        assert_eq!(created["origin_country"], "SO");
        assert_eq!(created["version"], 1);
        assert_eq!(created["verification_status"], "unverified");
        assert_eq!(
            location,
            format!("/api/v2/patients/{}", created["id"].as_str().unwrap())
        );
        let read: Value = app.get(&token, &location).await.json().await.unwrap();
        assert_eq!(read, created);
    }
);

dual_test!(
    invalid_patients_get_422_naming_the_field_and_nothing_is_written,
    |app: TestApp| async move {
        let token = setup(&app).await;
        app.create_patient(&token, amina()).await;
        let cases = [
            (
                "given_name",
                json!({"given_name": "", "family_name": "Abdi", "gender": "female"}),
                "required",
            ),
            (
                "gender",
                json!({"given_name": "Sara", "family_name": "Ali", "gender": "robot"}),
                "invalid_enum",
            ),
            (
                "date_of_birth",
                json!({"given_name": "Musa", "family_name": "Ali", "gender": "male", "date_of_birth": "2001-13-45"}),
                "invalid_date",
            ),
            (
                "blood_type",
                json!({"given_name": "Zainab", "family_name": "Ali", "gender": "female", "blood_type": "Q+"}),
                "invalid_enum",
            ),
            (
                "phone_number",
                json!({"given_name": "Daniel", "family_name": "Ali", "gender": "male", "phone_number": "12ab"}),
                "invalid_phone",
            ),
            (
                "unhcr_number",
                json!({"given_name": "Ali", "family_name": "Ali", "gender": "male", "unhcr_number": "KEN-24-000001"}),
                "duplicate",
            ),
            (
                "origin_country",
                json!({"given_name": "Esther", "family_name": "Ali", "gender": "female", "origin_country": "XX"}),
                "invalid_country",
            ),
            (
                "email",
                json!({"given_name": "Noor", "family_name": "Ali", "gender": "female", "email": "not-an-email"}),
                "invalid_email",
            ),
            (
                "date_of_birth",
                json!({"given_name": "Ibrahim", "family_name": "Ali", "gender": "male", "date_of_birth": "2099-01-01"}),
                "date_in_future",
            ),
            (
                "id",
                json!({"id": "0192d3f4-0000-7000-8000-000000000000", "given_name": "X", "family_name": "Y", "gender": "male"}),
                "read_only",
            ),
        ];
        for (field, body, code) in cases {
            let response = app.post_json(&token, "/api/v2/patients", &body).await;
            assert_eq!(response.status(), 422, "{field}");
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["error"]["code"], "validation_failed");
            let details = error["error"]["details"].as_array().unwrap();
            assert!(
                details
                    .iter()
                    .any(|d| d["field"] == field && d["code"] == code),
                "{field}: {details:?}"
            );
        }
        assert_eq!(
            app.count("SELECT COUNT(*) FROM patients").await,
            1,
            "only the valid one"
        );
    }
);

dual_test!(
    an_update_with_a_stale_version_gets_409_and_changes_nothing,
    |app: TestApp| async move {
        let token = setup(&app).await;
        let created = app.create_patient(&token, amina()).await;
        let path = format!("/api/v2/patients/{}", created["id"].as_str().unwrap());

        let first = app
            .put_json(
                &token,
                &path,
                &json!({"version": 1, "current_camp": "Dadaab", "camp_section": null}),
            )
            .await;
        assert_eq!(first.status(), 200);
        let updated: Value = first.json().await.unwrap();
        assert_eq!(updated["version"], 2);
        assert_eq!(updated["current_camp"], "Dadaab");
        assert_eq!(updated["camp_section"], Value::Null, "null clears");
        assert_eq!(updated["given_name"], "Amina", "absent fields stay");

        let stale = app
            .put_json(
                &token,
                &path,
                &json!({"version": 1, "current_camp": "Kakuma"}),
            )
            .await;
        assert_eq!(stale.status(), 409);
        let body: Value = stale.json().await.unwrap();
        assert_eq!(body["error"]["code"], "conflict");
        let now: Value = app.get(&token, &path).await.json().await.unwrap();
        assert_eq!(now["current_camp"], "Dadaab");
        assert_eq!(now["version"], 2);

        let missing_version = app
            .put_json(&token, &path, &json!({"current_camp": "Kakuma"}))
            .await;
        assert_eq!(missing_version.status(), 422);
        let invalid = app
            .put_json(&token, &path, &json!({"version": 2, "gender": "robot"}))
            .await;
        assert_eq!(invalid.status(), 422);
        let system = app
            .put_json(
                &token,
                &path,
                &json!({"version": 2, "organization_id": "0192d3f4-0000-7000-8000-000000000000"}),
            )
            .await;
        assert_eq!(system.status(), 422);
    }
);

dual_test!(
    a_deleted_patient_is_soft_deleted_and_answers_404,
    |app: TestApp| async move {
        let token = setup(&app).await;
        let created = app.create_patient(&token, amina()).await;
        let path = format!("/api/v2/patients/{}", created["id"].as_str().unwrap());
        assert_eq!(app.delete(&token, &path).await.status(), 204);
        assert_eq!(app.get(&token, &path).await.status(), 404);
        assert_eq!(app.delete(&token, &path).await.status(), 404);
        assert_eq!(
            app.count("SELECT COUNT(*) FROM patients WHERE deleted_at IS NOT NULL")
                .await,
            1,
            "kept, marked"
        );
        // Its UNHCR number is free again for a new patient.
        app.create_patient(&token, amina()).await;
    }
);

dual_test!(
    filters_and_paging_select_the_right_patients,
    |app: TestApp| async move {
        let token = setup(&app).await;
        for i in 0..7 {
            let gender = if i % 2 == 0 { "female" } else { "male" };
            let camp = if i < 4 { "Kakuma" } else { "Dadaab" };
            app.create_patient(&token, json!({
            "unhcr_number": format!("N-{i}"), "given_name": format!("P{i}"), "family_name": "Test",
            "gender": gender, "current_camp": camp, "date_of_birth": format!("199{i}-06-01"),
        })).await;
        }
        let list = |query: &'static str| {
            let app = &app;
            let token = token.clone();
            async move {
                let response = app.get(&token, &format!("/api/v2/patients?{query}")).await;
                assert_eq!(response.status(), 200, "{query}");
                response.json::<Value>().await.unwrap()
            }
        };
        assert_eq!(
            list("gender=F").await["patients"].as_array().unwrap().len(),
            4
        );
        assert_eq!(
            list("gender=male&current_camp=Kakuma").await["patients"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            list("unhcr_numbers=N-1,N-2,N-9").await["patients"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            list("born_after=1993-01-01&born_before=1995-12-31").await["patients"]
                .as_array()
                .unwrap()
                .len(),
            3
        );

        let first = list("limit=3").await;
        assert_eq!(first["patients"].as_array().unwrap().len(), 3);
        let cursor = first["next_cursor"].as_str().unwrap().to_string();
        let second: Value = app
            .get(&token, &format!("/api/v2/patients?limit=3&cursor={cursor}"))
            .await
            .json()
            .await
            .unwrap();
        let third_cursor = second["next_cursor"].as_str().unwrap().to_string();
        let third: Value = app
            .get(
                &token,
                &format!("/api/v2/patients?limit=3&cursor={third_cursor}"),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(third["patients"].as_array().unwrap().len(), 1);
        assert_eq!(third["next_cursor"], Value::Null);

        for bad in [
            "gender=robot",
            "born_after=2001-13-45",
            "limit=500",
            "camp=Kakuma",
        ] {
            let response = app.get(&token, &format!("/api/v2/patients?{bad}")).await;
            assert_eq!(response.status(), 422, "{bad}");
        }
    }
);

dual_test!(
    another_organizations_patient_answers_404_and_stays_unchanged,
    |app: TestApp| async move {
        let org_a = app.create_org("A").await;
        let org_b = app.create_org("B").await;
        let token_a = app.user_token(org_a, Role::Admin).await;
        let token_b = app.user_token(org_b, Role::Admin).await;
        let patient_b = app.create_patient(&token_b, amina()).await;
        let path = format!("/api/v2/patients/{}", patient_b["id"].as_str().unwrap());

        let read = app.get(&token_a, &path).await;
        assert_eq!(read.status(), 404);
        let never_existed = app
            .get(
                &token_a,
                "/api/v2/patients/0192d3f4-0000-7000-8000-000000000000",
            )
            .await;
        let (a, b): (Value, Value) = (
            read.json().await.unwrap(),
            never_existed.json().await.unwrap(),
        );
        assert_eq!(a, b, "indistinguishable from an id that does not exist");
        assert_eq!(
            app.put_json(
                &token_a,
                &path,
                &json!({"version": 1, "given_name": "Mallory"})
            )
            .await
            .status(),
            404
        );
        assert_eq!(app.delete(&token_a, &path).await.status(), 404);
        let listed: Value = app
            .get(&token_a, "/api/v2/patients")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(listed["patients"].as_array().unwrap().len(), 0);

        let still: Value = app.get(&token_b, &path).await.json().await.unwrap();
        assert_eq!(still, patient_b, "B's patient is untouched");
        // A's organization may reuse the same UNHCR number: uniqueness is per organization.
        app.create_patient(&token_a, amina()).await;
    }
);
