//! Bad scheduling requests: each is refused at once with a clear error in the shape of
//! SPEC 4.2, and none leaves anything behind (no patient, no operation, no upload).

mod common;

use common::{sample, TestApp};
use haven::domain::permission::Role;
use serde_json::{json, Value};
use uuid::Uuid;

/// An admin of a fresh organization, with the basic sample imported so that a bad
/// request has data it could damage.
async fn admin_with_patients(app: &TestApp) -> (Uuid, String) {
    let org = app.create_org("Kakuma Clinic").await;
    let token = app.user_token(org, Role::Admin).await;
    let op = app
        .run_import(&token, &sample("patients-basic.csv"), json!({}))
        .await;
    assert_eq!(op["status"], "completed", "{op}");
    (org, token)
}

/// What a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    patients: i64,
    live_patients: i64,
    changed_patients: i64,
    operations: i64,
    uploads: usize,
}

async fn snapshot(app: &TestApp) -> Snapshot {
    let uploads = std::fs::read_dir(app.dir.path().join("blobs").join("uploads"))
        .map(|d| d.count())
        .unwrap_or(0);
    Snapshot {
        patients: app.count("SELECT COUNT(*) FROM patients").await,
        live_patients: app
            .count("SELECT COUNT(*) FROM patients WHERE deleted_at IS NULL")
            .await,
        changed_patients: app
            .count("SELECT COUNT(*) FROM patients WHERE version <> 1")
            .await,
        operations: app.count("SELECT COUNT(*) FROM bulk_operations").await,
        uploads,
    }
}

/// Checks the status and the error body `{"error":{"code","message","details":[…]}}`;
/// returns the error object.
async fn refused(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("a JSON error body");
    let error = &body["error"];
    assert!(error["code"].is_string(), "error.code: {body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error.message: {body}"
    );
    let details = error["details"]
        .as_array()
        .expect("error.details is a list");
    for d in details {
        assert!(d["field"].is_string(), "detail.field: {body}");
        assert!(d["message"].is_string(), "detail.message: {body}");
    }
    if status == 422 {
        assert_eq!(error["code"], "validation_failed", "{body}");
        assert!(!details.is_empty(), "a 422 names its fields: {body}");
    }
    error.clone()
}

/// The detail about `field`, which must be there.
fn detail<'a>(error: &'a Value, field: &str) -> &'a Value {
    error["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["field"] == field)
        .unwrap_or_else(|| panic!("a detail about {field} in {error}"))
}

fn codes(error: &Value) -> Vec<String> {
    error["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn schedule(app: &TestApp, token: &str, kind: &str, body: Value) -> reqwest::Response {
    app.post_json(token, &format!("/api/v2/bulk/{kind}/schedule"), &body)
        .await
}

async fn multipart_import(
    app: &TestApp,
    token: &str,
    bytes: Vec<u8>,
    options: &[(&'static str, String)],
) -> reqwest::Response {
    app.multipart_import(token, bytes, options).await
}

async fn patient_id(app: &TestApp, token: &str, unhcr: &str) -> String {
    let body: Value = app
        .get(token, &format!("/api/v2/patients?unhcr_numbers={unhcr}"))
        .await
        .json()
        .await
        .unwrap();
    body["patients"][0]["id"]
        .as_str()
        .expect("patient")
        .to_string()
}

/// RFC 3339 with an offset, `seconds` from now.
fn from_now(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(seconds))
        .with_timezone(&chrono::FixedOffset::east_opt(3 * 3600).unwrap())
        .to_rfc3339()
}

dual_test!(
    a_csv_without_a_header_row_is_refused_at_once,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let before = snapshot(&app).await;

        let empty = refused(app.schedule_import(&token, "", json!({})).await, 422).await;
        assert_eq!(detail(&empty, "file")["code"], "empty_file", "{empty}");
        let blank = refused(
            app.schedule_import(&token, "\u{feff}\n\n", json!({})).await,
            422,
        )
        .await;
        assert_eq!(detail(&blank, "file")["code"], "empty_file", "{blank}");

        let data_first = refused(
            app.schedule_import(&token, "KEN-1,Amina,Abdi,female\n", json!({}))
                .await,
            422,
        )
        .await;
        let d = detail(&data_first, "file");
        assert_eq!(d["code"], "missing_header", "{data_first}");
        assert!(d["message"].as_str().unwrap().contains("header"));
        assert!(
            !data_first.to_string().contains("Amina"),
            "the error does not echo patient data"
        );

        let multipart = refused(
            multipart_import(&app, &token, b"KEN-1,Amina,Abdi,female\n".to_vec(), &[]).await,
            422,
        )
        .await;
        assert_eq!(detail(&multipart, "file")["code"], "missing_header");
        assert_eq!(snapshot(&app).await, before);
    }
);

dual_test!(
    a_header_without_name_columns_is_refused_with_missing_required_column,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let before = snapshot(&app).await;
        let error = refused(
            app.schedule_import(
                &token,
                "unhcr_number,gender,date_of_birth\nKEN-1,female,1990-01-01\n",
                json!({}),
            )
            .await,
            422,
        )
        .await;
        assert_eq!(
            codes(&error),
            ["missing_required_column", "missing_required_column"],
            "{error}"
        );
        let text = error.to_string();
        assert!(
            text.contains("given_name") && text.contains("family_name"),
            "{text}"
        );

        let only_family = refused(
            app.schedule_import(&token, "family_name,gender\nAbdi,female\n", json!({}))
                .await,
            422,
        )
        .await;
        assert_eq!(codes(&only_family), ["missing_required_column"]);
        assert!(detail(&only_family, "file")["message"]
            .as_str()
            .unwrap()
            .contains("given_name"));
        // A mapping to a column that is not there is as clear.
        let mapped = refused(
            app.schedule_import(
                &token,
                "first,last\nAmina,Abdi\n",
                json!({"field_mapping": {"first": "given_name", "surname_col": "family_name"}}),
            )
            .await,
            422,
        )
        .await;
        assert_eq!(detail(&mapped, "field_mapping")["code"], "unknown_column");
        assert_eq!(snapshot(&app).await, before);
    }
);

dual_test!(
    a_file_that_is_not_utf8_is_refused_with_not_utf8,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let before = snapshot(&app).await;
        let mut bytes = b"unhcr_number,given_name,family_name,gender\nKEN-1,".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(b"Amina,Abdi,female\n");
        let error = refused(multipart_import(&app, &token, bytes, &[]).await, 422).await;
        let d = detail(&error, "file");
        assert_eq!(d["code"], "not_utf8", "{error}");
        assert!(d["message"].as_str().unwrap().contains("UTF-8"));

        // Latin-1 in the header row itself.
        let latin1 = b"given_name,family_name,pr\xe9nom\nAmina,Abdi,x\n".to_vec();
        let error = refused(multipart_import(&app, &token, latin1, &[]).await, 422).await;
        assert_eq!(detail(&error, "file")["code"], "not_utf8", "{error}");
        assert_eq!(snapshot(&app).await, before);
    }
);

dual_test!(
    an_unknown_export_field_is_refused_naming_fields,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let before = snapshot(&app).await;
        let error = refused(
            schedule(
                &app,
                &token,
                "export",
                json!({"fields": ["given_name", "favourite_colour"]}),
            )
            .await,
            422,
        )
        .await;
        let d = detail(&error, "fields");
        assert_eq!(d["code"], "unknown_field");
        assert!(d["message"].as_str().unwrap().contains("favourite_colour"));
        for body in [
            json!({"fields": []}),
            json!({"fields": ["given_name", "given_name"]}),
            json!({"fields": "given_name"}),
        ] {
            let error = refused(schedule(&app, &token, "export", body.clone()).await, 422).await;
            detail(&error, "fields");
        }
        let format = refused(
            schedule(&app, &token, "export", json!({"format": "pdf"})).await,
            422,
        )
        .await;
        assert_eq!(detail(&format, "format")["code"], "invalid_enum");
        let filter = refused(
            schedule(
                &app,
                &token,
                "export",
                json!({"filters": {"gender": "robot"}}),
            )
            .await,
            422,
        )
        .await;
        assert!(
            filter["details"][0]["field"]
                .as_str()
                .unwrap()
                .contains("gender"),
            "a bad filter is named: {filter}"
        );
        assert_eq!(snapshot(&app).await, before);
    }
);

dual_test!(
    an_update_of_id_or_organization_id_is_refused_naming_the_change,
    |app: TestApp| async move {
        let (org, token) = admin_with_patients(&app).await;
        let before = snapshot(&app).await;
        let amina = patient_id(&app, &token, "KEN-24-000001").await;
        let error = refused(
            schedule(
                &app,
                &token,
                "update",
                json!({"patient_ids": [amina], "changes": {"id": Uuid::new_v4(), "current_camp": "Dadaab"}}),
            )
            .await,
            422,
        )
        .await;
        assert_eq!(detail(&error, "changes.id")["code"], "read_only");
        let error = refused(
            schedule(
                &app,
                &token,
                "update",
                json!({"filters": {"gender": "female"}, "changes": {"organization_id": org}}),
            )
            .await,
            422,
        )
        .await;
        assert_eq!(
            detail(&error, "changes.organization_id")["code"],
            "read_only"
        );
        let legacy = refused(
            schedule(
                &app,
                &token,
                "update",
                json!({"filters": {}, "field": "organization_id", "value": Uuid::new_v4()}),
            )
            .await,
            422,
        )
        .await;
        detail(&legacy, "changes.organization_id");
        for field in ["version", "created_at", "deleted_at"] {
            let error = refused(
                schedule(
                    &app,
                    &token,
                    "update",
                    json!({"patient_ids": [amina], "changes": {field: null}}),
                )
                .await,
                422,
            )
            .await;
            detail(&error, &format!("changes.{field}"));
        }
        let bad_value = refused(
            schedule(
                &app,
                &token,
                "update",
                json!({"patient_ids": [amina], "changes": {"gender": "robot", "given_name": null, "shoe_size": 42}}),
            )
            .await,
            422,
        )
        .await;
        detail(&bad_value, "changes.gender");
        detail(&bad_value, "changes.given_name");
        detail(&bad_value, "changes.shoe_size");
        assert_eq!(snapshot(&app).await, before);
    }
);

dual_test!(
    a_scheduled_at_in_the_past_or_without_an_offset_is_refused,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let amina = patient_id(&app, &token, "KEN-24-000001").await;
        let before = snapshot(&app).await;
        let bodies = |at: &str| {
            vec![
                ("export", json!({"scheduled_at": at})),
                (
                    "update",
                    json!({"scheduled_at": at, "patient_ids": [amina], "changes": {"current_camp": "Dadaab"}}),
                ),
                (
                    "delete",
                    json!({"scheduled_at": at, "patient_ids": [amina], "confirm": true}),
                ),
                (
                    "import",
                    json!({"scheduled_at": at, "csv_data": sample("patients-basic.csv")}),
                ),
            ]
        };
        for (at, code) in [
            (from_now(-120), "in_past"),
            ("2026-12-01T02:00:00".to_string(), "invalid_timestamp"),
            ("tomorrow at two".to_string(), "invalid_timestamp"),
            (from_now(400 * 24 * 3600), "too_far"),
        ] {
            for (kind, body) in bodies(&at) {
                let error = refused(schedule(&app, &token, kind, body).await, 422).await;
                assert_eq!(
                    detail(&error, "scheduled_at")["code"],
                    code,
                    "{kind} at {at}: {error}"
                );
            }
        }
        let multipart = refused(
            multipart_import(
                &app,
                &token,
                sample("patients-basic.csv").into_bytes(),
                &[("scheduled_at", "2026-12-01T02:00:00".to_string())],
            )
            .await,
            422,
        )
        .await;
        detail(&multipart, "scheduled_at");
        assert_eq!(snapshot(&app).await, before);

        // Within the 60 s of grace a time just past is accepted and runs at once.
        let response = schedule(
            &app,
            &token,
            "export",
            json!({"scheduled_at": from_now(-30)}),
        )
        .await;
        assert_eq!(response.status(), 201);
    }
);

dual_test!(
    depends_on_naming_another_organizations_operation_is_refused,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let other_org = app.create_org("Zaatari Clinic").await;
        let other = app.user_token(other_org, Role::Admin).await;
        let theirs = app.run_bulk(&other, "export", json!({})).await;
        let theirs_id = theirs["id"].as_str().unwrap().to_string();
        let mine = app.run_bulk(&token, "export", json!({})).await;
        let mine_id = mine["id"].as_str().unwrap().to_string();
        let before = snapshot(&app).await;

        for deps in [
            json!([theirs_id]),
            json!([mine_id, theirs_id]),
            json!([Uuid::now_v7()]),
            json!(["not-an-id"]),
            json!(theirs_id),
        ] {
            let error = refused(
                schedule(&app, &token, "export", json!({"depends_on": deps})).await,
                422,
            )
            .await;
            let d = detail(&error, "depends_on");
            assert!(
                !d["message"].as_str().unwrap().contains("Zaatari"),
                "nothing about the other organization is revealed"
            );
        }
        let multipart = refused(
            multipart_import(
                &app,
                &token,
                sample("patients-basic.csv").into_bytes(),
                &[("depends_on", format!("{mine_id},{theirs_id}"))],
            )
            .await,
            422,
        )
        .await;
        detail(&multipart, "depends_on");
        assert_eq!(snapshot(&app).await, before);

        let response = schedule(&app, &token, "export", json!({"depends_on": [mine_id]})).await;
        assert_eq!(
            response.status(),
            201,
            "its own operation is a valid dependency"
        );
    }
);

dual_test!(
    a_dependency_listed_twice_is_not_a_server_error,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let export = app.run_bulk(&token, "export", json!({})).await;
        let id = export["id"].as_str().unwrap().to_string();
        let before = snapshot(&app).await;
        let response = schedule(&app, &token, "export", json!({"depends_on": [id, id]})).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert!(
            status == 201 || status == 422,
            "either accepted once or refused naming depends_on, not {status}: {body}"
        );
        if status == 201 {
            assert_eq!(body["depends_on"], json!([id]), "{body}");
        } else {
            assert_eq!(body["error"]["details"][0]["field"], "depends_on", "{body}");
            assert_eq!(snapshot(&app).await, before);
        }
    }
);

dual_test!(
    a_delete_without_confirm_is_refused,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let amina = patient_id(&app, &token, "KEN-24-000001").await;
        let before = snapshot(&app).await;
        for body in [
            json!({"patient_ids": [amina]}),
            json!({"patient_ids": [amina], "confirm": false}),
            json!({"filters": {"gender": "female"}, "confirm": "yes"}),
        ] {
            let error = refused(schedule(&app, &token, "delete", body).await, 422).await;
            detail(&error, "confirm");
        }
        // An update without a backup needs the same confirmation.
        let error = refused(
            schedule(
                &app,
                &token,
                "update",
                json!({"patient_ids": [amina], "changes": {"current_camp": "Dadaab"}, "create_backup": false}),
            )
            .await,
            422,
        )
        .await;
        detail(&error, "confirm");
        assert_eq!(snapshot(&app).await, before);
        let response = app.get(&token, &format!("/api/v2/patients/{amina}")).await;
        assert_eq!(response.status(), 200);
    }
);

dual_test!(
    an_upload_over_max_upload_bytes_is_refused_with_413,
    flags = &["--max-upload-bytes", "1000"],
    |app: TestApp| async move {
        let (_, token) = {
            let org = app.create_org("Kakuma Clinic").await;
            (org, app.user_token(org, Role::Admin).await)
        };
        let small = app
            .run_import(
                &token,
                "given_name,family_name,gender\nAmina,Abdi,female\n",
                json!({}),
            )
            .await;
        assert_eq!(small["result"]["rows_imported"], 1, "{small}");
        let before = snapshot(&app).await;

        let mut csv = String::from("unhcr_number,given_name,family_name,gender\n");
        let mut i = 0;
        while csv.len() < 5000 {
            csv.push_str(&format!("KEN-24-{i:06},Amina,Abdi,female\n"));
            i += 1;
        }
        let bytes = csv.as_bytes()[..5000].to_vec();
        let error = refused(multipart_import(&app, &token, bytes, &[]).await, 413).await;
        assert_eq!(error["code"], "payload_too_large", "{error}");
        assert!(error["message"].as_str().unwrap().contains("1000"));

        let error = refused(app.schedule_import(&token, &csv, json!({})).await, 413).await;
        assert_eq!(error["code"], "payload_too_large", "the JSON form too");
        assert_eq!(snapshot(&app).await, before);
    }
);

dual_test!(
    a_viewer_cannot_schedule_an_import,
    |app: TestApp| async move {
        let (org, _) = admin_with_patients(&app).await;
        let viewer = app.user_token(org, Role::Viewer).await;
        let analyst = app.user_token(org, Role::Analyst).await;
        let before = snapshot(&app).await;
        let error = refused(
            app.schedule_import(&viewer, &sample("patients-basic.csv"), json!({}))
                .await,
            403,
        )
        .await;
        assert_eq!(error["code"], "forbidden");
        let error = refused(
            multipart_import(
                &app,
                &viewer,
                sample("patients-basic.csv").into_bytes(),
                &[],
            )
            .await,
            403,
        )
        .await;
        assert_eq!(error["code"], "forbidden");
        refused(
            app.schedule_import(&analyst, &sample("patients-basic.csv"), json!({}))
                .await,
            403,
        )
        .await;
        refused(schedule(&app, &viewer, "export", json!({})).await, 403).await;
        refused(
            schedule(
                &app,
                &analyst,
                "update",
                json!({"filters": {}, "changes": {"current_camp": "Dadaab"}}),
            )
            .await,
            403,
        )
        .await;
        let unauthenticated = app
            .client
            .post(app.url("/api/v2/bulk/export/schedule"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        refused(unauthenticated, 401).await;
        assert_eq!(snapshot(&app).await, before);
    }
);

dual_test!(
    cancelling_a_completed_operation_answers_409,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let export = app.run_bulk(&token, "export", json!({})).await;
        assert_eq!(export["status"], "completed");
        let id = export["id"].as_str().unwrap();
        let before = snapshot(&app).await;
        let error = refused(
            app.post_json(
                &token,
                &format!("/api/v2/bulk-operations/{id}/cancel"),
                &json!({}),
            )
            .await,
            409,
        )
        .await;
        assert_eq!(error["code"], "conflict");
        assert!(
            error["message"].as_str().unwrap().contains("completed"),
            "{error}"
        );
        let after: Value = app
            .get(&token, &format!("/api/v2/bulk-operations/{id}/status"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(after["status"], "completed");
        assert_eq!(after["result"], export["result"]);
        let file = app
            .get(&token, &format!("/api/v2/bulk-operations/{id}/download"))
            .await;
        assert_eq!(file.status(), 200, "the export file is still there");
        assert_eq!(snapshot(&app).await, before);
        let missing = app
            .post_json(
                &token,
                &format!("/api/v2/bulk-operations/{}/cancel", Uuid::now_v7()),
                &json!({}),
            )
            .await;
        refused(missing, 404).await;
    }
);

dual_test!(
    an_unknown_option_name_is_refused,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let amina = patient_id(&app, &token, "KEN-24-000001").await;
        let before = snapshot(&app).await;
        for (kind, body) in [
            ("export", json!({"format": "csv", "colour": "blue"})),
            (
                "update",
                json!({"patient_ids": [amina], "changes": {"current_camp": "Dadaab"}, "colour": "blue"}),
            ),
            (
                "delete",
                json!({"patient_ids": [amina], "confirm": true, "colour": "blue"}),
            ),
            (
                "import",
                json!({"csv_data": sample("patients-basic.csv"), "colour": "blue"}),
            ),
        ] {
            let error = refused(schedule(&app, &token, kind, body).await, 422).await;
            assert_eq!(detail(&error, "colour")["code"], "unknown_field", "{kind}");
        }
        let multipart = refused(
            multipart_import(
                &app,
                &token,
                sample("patients-basic.csv").into_bytes(),
                &[("colour", "blue".to_string())],
            )
            .await,
            422,
        )
        .await;
        detail(&multipart, "colour");
        for (option, value) in [
            ("mode", json!("replace")),
            ("on_error", json!("ignore")),
            ("date_format", json!("YYYY/DD/MM")),
            ("timezone", json!("Mars/Olympus")),
            ("dry_run", json!("yes")),
        ] {
            let mut body = json!({"csv_data": sample("patients-basic.csv")});
            body[option] = value;
            let error = refused(schedule(&app, &token, "import", body).await, 422).await;
            detail(&error, option);
        }
        assert_eq!(snapshot(&app).await, before);
    }
);

dual_test!(
    an_update_without_targets_is_refused,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let amina = patient_id(&app, &token, "KEN-24-000001").await;
        let before = snapshot(&app).await;
        for body in [
            json!({"changes": {"current_camp": "Dadaab"}}),
            json!({"patient_ids": [], "changes": {"current_camp": "Dadaab"}}),
            json!({"patient_ids": ["not-an-id"], "changes": {"current_camp": "Dadaab"}}),
            json!({"patient_ids": [amina], "filters": {"gender": "female"}, "changes": {"current_camp": "Dadaab"}}),
        ] {
            let error = refused(schedule(&app, &token, "update", body.clone()).await, 422).await;
            detail(&error, "patient_ids");
        }
        let error = refused(
            schedule(&app, &token, "delete", json!({"confirm": true})).await,
            422,
        )
        .await;
        detail(&error, "patient_ids");
        let nothing = refused(
            schedule(&app, &token, "update", json!({"patient_ids": [amina]})).await,
            422,
        )
        .await;
        detail(&nothing, "changes");
        let empty = refused(
            schedule(
                &app,
                &token,
                "update",
                json!({"patient_ids": [amina], "changes": {}}),
            )
            .await,
            422,
        )
        .await;
        detail(&empty, "changes");
        assert_eq!(snapshot(&app).await, before);
    }
);

dual_test!(
    a_body_that_is_not_json_is_refused_with_the_same_error_shape,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let before = snapshot(&app).await;
        for kind in ["export", "update", "delete", "import"] {
            let response = app
                .client
                .post(app.url(&format!("/api/v2/bulk/{kind}/schedule")))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body("{not json")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            assert!(status == 400 || status == 422, "{kind}: {status}");
            refused(response, status).await;
        }
        assert_eq!(snapshot(&app).await, before);
    }
);

dual_test!(
    more_than_sixty_scheduling_requests_a_minute_get_429_with_retry_after,
    |app: TestApp| async move {
        let org = app.create_org("Busy Clinic").await;
        let token = app.user_token(org, Role::Analyst).await;
        let later = from_now(86_400);
        for i in 0..60 {
            let r = schedule(&app, &token, "export", json!({"scheduled_at": later})).await;
            assert_eq!(r.status(), 201, "request {i}");
        }
        let before = snapshot(&app).await;
        let r = schedule(&app, &token, "export", json!({"scheduled_at": later})).await;
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        let error = refused(r, 429).await;
        assert_eq!(error["code"], "too_many_requests");
        assert_eq!(snapshot(&app).await, before);
        // Another user of the same organization is not held back.
        let other = app.user_token(org, Role::Analyst).await;
        let r = schedule(&app, &other, "export", json!({"scheduled_at": later})).await;
        assert_eq!(r.status(), 201);
    }
);
