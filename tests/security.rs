//! The attacks of issue 8, each tried as an attacker would and each shown to fail now:
//! oversized CSV headers, parallel password guessing, empty list filters, NUL characters,
//! formulas in error reports, unaudited probes, unbounded strings and the smaller leaks.
//! Every test runs on SQLite and PostgreSQL, and checks that a refused request left the
//! data as it was.

mod common;

use common::TestApp;
use haven::domain::permission::Role;
use serde_json::{json, Value};
use uuid::Uuid;

/// An admin of a fresh organization with three patients.
async fn admin_with_patients(app: &TestApp) -> (Uuid, String) {
    let org = app.create_org("Kakuma Clinic").await;
    let token = app.user_token(org, Role::Admin).await;
    for (name, number) in [("Amina", "KEN-1"), ("Leila", "KEN-2"), ("Omar", "KEN-3")] {
        app.create_patient(
            &token,
            json!({"given_name": name, "family_name": "Abdi", "gender": "female",
                   "unhcr_number": number, "current_camp": "Kakuma"}),
        )
        .await;
    }
    (org, token)
}

async fn live_patients(app: &TestApp) -> i64 {
    app.count("SELECT COUNT(*) FROM patients WHERE deleted_at IS NULL")
        .await
}

/// The status, and the `error` object of the JSON error body.
async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON error body");
    (status, body["error"].clone())
}

fn detail_codes(error: &Value) -> Vec<String> {
    error["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| x["code"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn uploads_left(app: &TestApp) -> usize {
    std::fs::read_dir(app.dir.path().join("blobs").join("uploads"))
        .map(|d| d.count())
        .unwrap_or(0)
}

// Item 1: a header of millions of columns was read whole and planned (1.25 GB for 10 MB).
dual_test!(
    oversized_csv_headers_are_refused_with_a_clear_422,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let row = b"\nAmina,Abdi\n";
        // 8 MB of commas: refused after reading the first 64 KiB of it.
        let mut commas = vec![b','; 8 * 1024 * 1024];
        commas.extend_from_slice(row);
        let many: Vec<String> = (0..600).map(|i| format!("c{i}")).collect();
        let wide = format!("given_name,family_name,{}\nAmina,Abdi\n", many.join(","));
        let long_name = format!("given_name,family_name,{}\nAmina,Abdi\n", "x".repeat(300));
        for (csv, code) in [
            (commas, "header_too_long"),
            (wide.into_bytes(), "too_many_columns"),
            (long_name.into_bytes(), "invalid_column_name"),
        ] {
            let (status, error) = error_of(app.multipart_import(&token, csv, &[]).await).await;
            assert_eq!(status, 422, "{code}: {error}");
            assert_eq!(detail_codes(&error), [code], "{error}");
        }
        // A mapping too big to plan cheaply is refused too.
        let mapping: serde_json::Map<String, Value> = (0..501)
            .map(|i| (format!("c{i}"), json!("given_name")))
            .collect();
        let response = app
            .schedule_import(
                &token,
                "given_name,family_name\nAmina,Abdi\n",
                json!({"field_mapping": mapping}),
            )
            .await;
        let (status, error) = error_of(response).await;
        assert_eq!(
            (status, detail_codes(&error)),
            (422, vec!["too_many".to_string()])
        );
        assert_eq!(app.count("SELECT COUNT(*) FROM bulk_operations").await, 0);
        assert_eq!(uploads_left(&app), 0, "no upload is kept");
        assert_eq!(live_patients(&app).await, 3);
    }
);

// Item 2: the failure count was checked before Argon2 and recorded after it.
dual_test!(
    parallel_password_guesses_are_counted_before_hashing,
    |app: TestApp| async move {
        let org = app.create_org("Clinic").await;
        let email = "nurse@example.org";
        haven::app::create_user(
            app.store.as_ref(),
            org,
            email,
            Role::Viewer,
            "correct-horse-battery-staple",
        )
        .await
        .expect("user");
        let guesses = (0..40).map(|i| {
            let app = &app;
            async move {
                app.login(email, &format!("guess-number-{i}"))
                    .await
                    .status()
                    .as_u16()
            }
        });
        let statuses = futures::future::join_all(guesses).await;
        let count = |s: u16| statuses.iter().filter(|x| **x == s).count();
        assert_eq!(count(401), 5, "exactly 5 guesses checked: {statuses:?}");
        assert_eq!(count(401) + count(429) + count(503), 40, "{statuses:?}");
        assert!(count(429) > 0, "{statuses:?}");
        // Locked now, even for the right password.
        let right = app.login(email, "correct-horse-battery-staple").await;
        assert_eq!(right.status(), 429);
        assert!(right.headers().contains_key("retry-after"));
        // Item 7: throttled logins are in the account's audit chain.
        let throttled = app
            .count("SELECT COUNT(*) FROM audit_events WHERE action = 'auth.login' AND outcome = 'throttled'")
            .await;
        assert!(throttled >= 1, "throttled logins audited");

        // One address guessing many accounts: at most 20 checked.
        let sprays = (0..40).map(|i| {
            let app = &app;
            async move {
                app.login(&format!("nobody{i}@example.org"), "guess-number-x")
                    .await
                    .status()
                    .as_u16()
            }
        });
        let statuses = futures::future::join_all(sprays).await;
        let checked = statuses.iter().filter(|s| **s == 401).count();
        assert_eq!(
            checked,
            20 - 5,
            "the address had 5 failures already: {statuses:?}"
        );
    }
);

// Item 3: `{"patient_ids":[]}` deleted every patient of the organization.
dual_test!(
    empty_list_filters_are_refused_everywhere,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        for query in [
            "patient_ids=",
            "unhcr_numbers=",
            "unhcr_numbers=,%20,",
            "patient_ids=,",
        ] {
            let (status, error) =
                error_of(app.get(&token, &format!("/api/v2/patients?{query}")).await).await;
            assert_eq!(
                (status, detail_codes(&error)),
                (422, vec!["empty_list".to_string()]),
                "{query}"
            );
        }
        for filters in [
            json!({"patient_ids": []}),
            json!({"unhcr_numbers": []}),
            json!({"unhcr_numbers": [" "]}),
        ] {
            let delete = app
                .post_json(
                    &token,
                    "/api/v2/bulk/delete/schedule",
                    &json!({"filters": filters, "confirm": true}),
                )
                .await;
            assert_eq!(delete.status(), 422, "delete {filters}");
            let update = app
                .post_json(
                    &token,
                    "/api/v2/bulk/update/schedule",
                    &json!({"filters": filters, "changes": {"camp_section": "B12"}}),
                )
                .await;
            assert_eq!(update.status(), 422, "update {filters}");
            let export = app
                .post_json(
                    &token,
                    "/api/v2/bulk/export/schedule",
                    &json!({"filters": filters}),
                )
                .await;
            assert_eq!(export.status(), 422, "export {filters}");
        }
        assert_eq!(app.count("SELECT COUNT(*) FROM bulk_operations").await, 0);
        assert_eq!(live_patients(&app).await, 3);
        assert_eq!(
            app.count("SELECT COUNT(*) FROM patients WHERE version <> 1")
                .await,
            0
        );
    }
);

// Item 5: PostgreSQL answered 500 to a NUL character; an import with one failed whole.
dual_test!(
    nul_characters_are_validation_errors,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let login = app.login("a\u{0}b@example.org", "whatever-password").await;
        assert_eq!(login.status(), 422);
        let list = app.get(&token, "/api/v2/patients?current_camp=K%00").await;
        assert_eq!(list.status(), 422);
        let create = app
            .post_json(
                &token,
                "/api/v2/patients",
                &json!({"given_name": "A\u{0}", "family_name": "B", "gender": "male"}),
            )
            .await;
        assert_eq!(create.status(), 422);
        let allergies = app
            .post_json(&token, "/api/v2/patients",
                &json!({"given_name": "A", "family_name": "B", "gender": "male", "allergies": ["x\u{0}"]}))
            .await;
        assert_eq!(allergies.status(), 422);
        let update = app
            .post_json(&token, "/api/v2/bulk/update/schedule",
                &json!({"filters": {"current_camp": "Kakuma"}, "changes": {"camp_section": "B\u{0}"}}))
            .await;
        assert_eq!(update.status(), 422);
        let filter = app
            .post_json(
                &token,
                "/api/v2/bulk/export/schedule",
                &json!({"filters": {"unhcr_numbers": ["K\u{0}"]}}),
            )
            .await;
        assert_eq!(filter.status(), 422);
        assert_eq!(live_patients(&app).await, 3);

        // One NUL cell is that row's error; the other rows are imported.
        let csv = "given_name,family_name,gender\nNadia,Hassan,female\nBad\u{0}Name,Hassan,male\nYusuf,Ali,male\n";
        let op = app.run_import(&token, csv, json!({})).await;
        assert_eq!(op["status"], "completed", "{op}");
        assert_eq!(op["result"]["rows_imported"], 2, "{op}");
        assert_eq!(op["result"]["rows_failed"], 1, "{op}");
        let errors = app.row_errors(&token, op["id"].as_str().unwrap()).await;
        assert_eq!(errors[0]["row"], 3);
        assert_eq!(errors[0]["code"], "invalid_character");
        assert_eq!(live_patients(&app).await, 5);
    }
);

/// Whether a CSV cell could start a formula: the first character, after the quote that
/// wraps a quoted cell.
fn risky_cells(csv: &str) -> Vec<String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(csv.as_bytes());
    reader
        .records()
        .flat_map(|r| {
            r.expect("csv")
                .iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|cell| haven::formats::export::formula_risk(cell))
        .collect()
}

// Item 6: the error report's CSV carried live formulas from header names.
dual_test!(
    error_reports_and_exports_neutralise_formulas,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let csv = "given_name,family_name,=HYPERLINK(1),\u{FF1D}1+1,\u{200B}=1+1\n\
                   Nadia,Hassan,robot,2001-13-45,XX\n";
        let mapping = json!({"=HYPERLINK(1)": "gender", "\u{FF1D}1+1": "date_of_birth",
                             "\u{200B}=1+1": "origin_country"});
        let op = app
            .run_import(&token, csv, json!({"field_mapping": mapping}))
            .await;
        assert_eq!(op["result"]["rows_failed"], 1, "{op}");
        let report = app
            .client
            .get(app.url(&format!(
                "/api/v2/bulk-operations/{}/errors",
                op["id"].as_str().unwrap()
            )))
            .bearer_auth(&token)
            .header("accept", "text/csv")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(report.contains("'=HYPERLINK"), "{report}");
        assert!(report.contains("'\u{FF1D}1+1"), "{report}");
        assert!(report.contains("'\u{200B}=1+1"), "{report}");
        assert_eq!(risky_cells(&report), Vec::<String>::new(), "{report}");

        for camp in [
            "\u{FF1D}1+1",
            "\u{FF0B}1",
            "\u{FF0D}1",
            "\u{FF20}A1",
            "\u{200B}=1+1",
            "\u{FEFF}@x",
        ] {
            app.create_patient(&token, json!({"given_name": "X", "family_name": "Y", "gender": "male", "current_camp": camp})).await;
        }
        let export = app
            .run_bulk(
                &token,
                "export",
                json!({"format": "csv", "fields": ["given_name", "current_camp"]}),
            )
            .await;
        let file = app
            .get(
                &token,
                &format!(
                    "/api/v2/bulk-operations/{}/download",
                    export["id"].as_str().unwrap()
                ),
            )
            .await
            .text()
            .await
            .unwrap();
        assert_eq!(risky_cells(&file), Vec::<String>::new(), "{file}");
        assert!(file.contains("'\u{FF1D}1+1"), "{file}");
    }
);

// Item 7: a probe of another organization's ids answered 404 and left no trace.
dual_test!(
    probes_of_another_organizations_ids_are_audited,
    |app: TestApp| async move {
        let (_, victim_token) = admin_with_patients(&app).await;
        let list: Value = app
            .get(&victim_token, "/api/v2/patients")
            .await
            .json()
            .await
            .unwrap();
        let victim_patient = list["patients"][0]["id"].as_str().unwrap().to_string();
        let export = app.run_bulk(&victim_token, "export", json!({})).await;
        let victim_op = export["id"].as_str().unwrap().to_string();

        let other = app.create_org("Other NGO").await;
        let prober = app.user_token(other, Role::Admin).await;
        for path in [
            format!("/api/v2/patients/{victim_patient}"),
            format!("/api/v2/bulk-operations/{victim_op}/status"),
            format!("/api/v2/bulk-operations/{victim_op}/download"),
        ] {
            assert_eq!(app.get(&prober, &path).await.status(), 404, "{path}");
        }
        let unknown = Uuid::now_v7();
        assert_eq!(
            app.get(&prober, &format!("/api/v2/patients/{unknown}"))
                .await
                .status(),
            404
        );

        let audit: Value = app
            .get(&prober, "/api/v2/audit?limit=200")
            .await
            .json()
            .await
            .unwrap();
        let probes: Vec<&Value> = audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "access.cross_organization")
            .collect();
        assert_eq!(probes.len(), 3, "{audit}");
        let ids: Vec<&str> = probes
            .iter()
            .map(|e| e["resource_id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&victim_patient.as_str()));
        assert!(ids.contains(&victim_op.as_str()));
        assert!(!audit.to_string().contains("Amina"), "no patient data");
        // The victim's chain holds nothing of the prober's, and both still verify.
        for token in [&prober, &victim_token] {
            let verify: Value = app
                .get(token, "/api/v2/audit/verify")
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(verify["intact"], true, "{verify}");
        }
    }
);

// Item 8: names, lists and list items of any size were stored and served.
dual_test!(
    lists_and_names_are_capped_with_422s,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let patient = |extra: Value| {
            let mut body = json!({"given_name": "A", "family_name": "B", "gender": "male"});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            body
        };
        let many: Vec<String> = (0..101).map(|i| format!("item{i}")).collect();
        for (extra, code) in [
            (json!({"allergies": many}), "too_many"),
            (json!({"chronic_conditions": ["x".repeat(201)]}), "too_long"),
            (
                json!({"email": format!("{}@example.org", "a".repeat(250))}),
                "too_long",
            ),
        ] {
            let (status, error) = error_of(
                app.post_json(&token, "/api/v2/patients", &patient(extra))
                    .await,
            )
            .await;
            assert_eq!(
                (status, detail_codes(&error)),
                (422, vec![code.to_string()])
            );
        }
        let numbers: Vec<String> = (0..10_001).map(|i| format!("N{i}")).collect();
        let deps: Vec<String> = (0..101).map(|_| Uuid::now_v7().to_string()).collect();
        for (path, body) in [
            (
                "/api/v2/bulk/export/schedule",
                json!({"filters": {"unhcr_numbers": numbers}}),
            ),
            (
                "/api/v2/bulk/export/schedule",
                json!({"filters": {"current_camp": "k".repeat(201)}}),
            ),
            ("/api/v2/bulk/export/schedule", json!({"depends_on": deps})),
            (
                "/api/v2/bulk/export/schedule",
                json!({"fields": vec!["id"; 101]}),
            ),
        ] {
            let (status, error) = error_of(app.post_json(&token, path, &body).await).await;
            assert_eq!(status, 422, "{error}");
        }
        // An unknown option with a huge name is not echoed whole.
        let mut body = serde_json::Map::new();
        body.insert("z".repeat(100_000), json!(1));
        let response = app
            .post_json(&token, "/api/v2/bulk/export/schedule", &Value::Object(body))
            .await;
        assert_eq!(response.status(), 422);
        assert!(response.text().await.unwrap().len() < 2_000);
        assert_eq!(app.count("SELECT COUNT(*) FROM bulk_operations").await, 0);
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 3);
    }
);

// Item 9: 400 for big bodies, keys cut silently, passwords echoed, missing headers.
dual_test!(smaller_leaks_are_closed, |app: TestApp| async move {
    let (_, token) = admin_with_patients(&app).await;
    let big = json!({"filters": {"current_camp": "x".repeat(3 * 1024 * 1024)}});
    // A client of its own: the server answers before reading the whole body and closes
    // the connection, which a pooled connection would carry into the next request.
    let response = reqwest::Client::new()
        .post(app.url("/api/v2/bulk/export/schedule"))
        .bearer_auth(&token)
        .json(&big)
        .send()
        .await
        .expect("answered");
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    let long_key = "k".repeat(201);
    let response = app
        .client
        .post(app.url("/api/v2/bulk/export/schedule"))
        .bearer_auth(&token)
        .header("idempotency-key", &long_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(app.count("SELECT COUNT(*) FROM bulk_operations").await, 0);

    let secret = "9876543210123";
    let response = app
        .client
        .post(app.url("/api/v2/auth/login"))
        .json(&json!({"email": "x@example.org", "password": 9876543210123_i64}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert!(!response.text().await.unwrap().contains(secret));

    let login = app.login("nobody@example.org", "wrong-password-1").await;
    assert_eq!(login.headers()["cache-control"], "no-store");
    let list: Value = app
        .get(&token, "/api/v2/patients")
        .await
        .json()
        .await
        .unwrap();
    let id = list["patients"][0]["id"].as_str().unwrap().to_string();
    let patient = app.get(&token, &format!("/api/v2/patients/{id}")).await;
    assert_eq!(patient.headers()["cache-control"], "no-store");
    assert_eq!(patient.headers()["x-content-type-options"], "nosniff");

    use std::os::unix::fs::PermissionsExt;
    for dir in ["blobs", "blobs/uploads", "blobs/exports"] {
        let mode = std::fs::metadata(app.dir.path().join(dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{dir}");
    }
});

/// Whether a file holds a byte string.
fn file_contains(path: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read(path)
        .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        .unwrap_or(false)
}

// Item 9: replaced values stayed readable in SQLite's write-ahead log.
dual_test!(
    a_wal_checkpoint_leaves_no_replaced_value_on_disk,
    |app: TestApp| async move {
        let (_, token) = admin_with_patients(&app).await;
        let marker = "Zqxvyw-replaced-name";
        let created = app
            .create_patient(
                &token,
                json!({"given_name": marker, "family_name": "B", "gender": "male"}),
            )
            .await;
        let id = created["id"].as_str().unwrap();
        let response = app
            .put_json(
                &token,
                &format!("/api/v2/patients/{id}"),
                &json!({"given_name": "Other", "version": 1}),
            )
            .await;
        assert_eq!(response.status(), 200);
        assert!(app.store.checkpoint_wal().await.expect("checkpoint"));
        if app.backend == common::Backend::Sqlite {
            let db = app.dir.path().join("haven.db");
            let wal = app.dir.path().join("haven.db-wal");
            assert_eq!(
                std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
                0,
                "log truncated"
            );
            assert!(
                !file_contains(&db, marker.as_bytes()),
                "the old value is zeroed"
            );
            assert!(file_contains(&db, b"Other"));
        }
    }
);
