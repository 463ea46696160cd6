//! Imports through the HTTP API, with the sample files and their expected outcomes.

mod common;

use common::{sample, TestApp};
use haven::domain::permission::Role;
use serde_json::{json, Value};

async fn manager(app: &TestApp) -> String {
    let org = app.create_org("Kakuma Clinic").await;
    app.user_token(org, Role::DataManager).await
}

dual_test!(
    the_basic_sample_imports_eight_patients,
    |app: TestApp| async move {
        let token = manager(&app).await;
        let op = app
            .run_import(&token, &sample("patients-basic.csv"), json!({}))
            .await;
        assert_eq!(op["status"], "completed", "{op}");
        assert_eq!(op["result"]["rows_total"], 8);
        assert_eq!(op["result"]["rows_imported"], 8);
        assert_eq!(op["result"]["rows_failed"], 0);
        assert_eq!(op["progress"]["percent"], 100.0);
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 8);
        let list: Value = app
            .get(
                &token,
                "/api/v2/patients?unhcr_numbers=JOR-24-000002,TZA-24-000005,UGA-24-000008",
            )
            .await
            .json()
            .await
            .unwrap();
        let patients = list["patients"].as_array().unwrap();
        let by = |n: &str| {
            patients
                .iter()
                .find(|p| p["unhcr_number"] == n)
                .unwrap()
                .clone()
        };
        assert_eq!(by("JOR-24-000002")["given_name"], "فاطمة");
        assert_eq!(
            by("TZA-24-000005")["emergency_contact_name"],
            "Claudine, Nkurunziza"
        );
        assert_eq!(by("UGA-24-000008")["date_of_birth"], "1988-02-29");
        assert_eq!(
            by("TZA-24-000005")["languages_spoken"],
            json!(["fr", "rw", "sw"])
        );
        let tagged = app
            .count("SELECT COUNT(*) FROM patients WHERE import_operation_id IS NOT NULL")
            .await;
        assert_eq!(tagged, 8, "every created patient carries its operation");
    }
);

dual_test!(
    aliases_and_day_first_dates_import_with_the_right_format_only,
    |app: TestApp| async move {
        let token = manager(&app).await;
        let csv = sample("patients-aliases-ddmmyyyy-bom-crlf.csv");
        let op = app
            .run_import(&token, &csv, json!({"date_format": "DD/MM/YYYY"}))
            .await;
        assert_eq!(op["status"], "completed", "{op}");
        assert_eq!(op["result"]["rows_imported"], 3);
        assert_eq!(op["result"]["columns_ignored"], json!(["notes_ignored"]));
        let omar: Value = app
            .get(&token, "/api/v2/patients?unhcr_numbers=KEN-24-000101")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            omar["patients"][0]["date_of_birth"], "1990-04-03",
            "03/04/1990 is 3 April"
        );
        assert_eq!(omar["patients"][0]["gender"], "male");

        let token_b = manager(&app).await;
        let guessed = app.run_import(&token_b, &csv, json!({})).await;
        assert_eq!(
            guessed["result"]["rows_imported"], 0,
            "dates are never guessed"
        );
        let errors = app
            .row_errors(&token_b, guessed["id"].as_str().unwrap())
            .await;
        assert_eq!(errors.len(), 3);
        assert!(
            errors
                .iter()
                .all(|e| e["column"] == "dob" && e["code"] == "invalid_date"),
            "{errors:?}"
        );
    }
);

async fn bad_rows_errors(app: &TestApp, token: &str, op: &Value) {
    let errors = app.row_errors(token, op["id"].as_str().unwrap()).await;
    let got: Vec<(i64, &str)> = errors
        .iter()
        .map(|e| (e["row"].as_i64().unwrap(), e["column"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            (3, "given_name"),
            (4, "gender"),
            (5, "date_of_birth"),
            (6, "blood_type"),
            (7, "phone_number"),
            (8, "origin_country"),
            (9, "email"),
            (10, "unhcr_number"),
            (11, "date_of_birth")
        ]
    );
    let text = serde_json::to_string(&errors).unwrap();
    for value in [
        "robot",
        "2001-13-45",
        "Q+",
        "12ab",
        "not-an-email",
        "Ibrahim",
    ] {
        assert!(
            !text.contains(value),
            "no patient data in the error report: {value}"
        );
    }
}

dual_test!(
    bad_rows_are_reported_and_skipped_under_on_error_skip,
    |app: TestApp| async move {
        let token = manager(&app).await;
        let op = app
            .run_import(
                &token,
                &sample("patients-bad-rows.csv"),
                json!({"on_error": "skip"}),
            )
            .await;
        assert_eq!(op["status"], "completed", "{op}");
        assert_eq!(op["result"]["rows_imported"], 1);
        assert_eq!(op["result"]["rows_failed"], 9);
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 1);
        bad_rows_errors(&app, &token, &op).await;
        let csv = app
            .error_report_csv(&token, op["id"].as_str().unwrap())
            .await;
        assert!(
            csv.starts_with("row,column,code,message\n3,given_name,required,"),
            "{csv}"
        );
    }
);

dual_test!(
    bad_rows_import_nothing_under_on_error_abort,
    |app: TestApp| async move {
        let token = manager(&app).await;
        let op = app
            .run_import(
                &token,
                &sample("patients-bad-rows.csv"),
                json!({"on_error": "abort"}),
            )
            .await;
        assert_eq!(op["status"], "failed", "{op}");
        assert!(op["error_message"]
            .as_str()
            .unwrap()
            .contains("nothing was imported"));
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 0);
        bad_rows_errors(&app, &token, &op).await;
    }
);

dual_test!(
    modes_create_upsert_and_skip_existing_treat_known_numbers_as_asked,
    |app: TestApp| async move {
        let token = manager(&app).await;
        let csv = "unhcr_number,given_name,family_name,gender,current_camp\nU-1,Amina,Abdi,female,Kakuma\nU-2,Omar,Yusuf,male,Kakuma\n";
        app.run_import(&token, csv, json!({})).await;
        let again = "unhcr_number,given_name,family_name,gender,current_camp\nU-1,Amina,Abdi,female,Dadaab\nU-3,Leila,Hussein,female,\n";
        let create = app
            .run_import(&token, again, json!({"mode": "create"}))
            .await;
        assert_eq!(
            (
                create["result"]["rows_imported"].as_i64(),
                create["result"]["rows_failed"].as_i64()
            ),
            (Some(1), Some(1))
        );
        let skip = app
            .run_import(&token, again, json!({"mode": "skip_existing"}))
            .await;
        assert_eq!(skip["result"]["rows_skipped"], 2);
        let upsert = app
            .run_import(&token, again, json!({"mode": "upsert"}))
            .await;
        assert_eq!(upsert["result"]["rows_updated"], 2);
        let u1: Value = app
            .get(&token, "/api/v2/patients?unhcr_numbers=U-1")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(u1["patients"][0]["current_camp"], "Dadaab");
        assert_eq!(u1["patients"][0]["version"], 2);
        assert_eq!(
            app.count("SELECT COUNT(*) FROM operation_backups").await,
            2,
            "before-images kept"
        );
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 3);
    }
);

dual_test!(
    a_dry_run_import_reports_and_writes_nothing,
    |app: TestApp| async move {
        let token = manager(&app).await;
        let op = app
            .run_import(
                &token,
                &sample("patients-basic.csv"),
                json!({"dry_run": true}),
            )
            .await;
        assert_eq!(op["status"], "completed");
        assert_eq!(op["dry_run"], true);
        assert_eq!(op["result"]["rows_imported"], 8, "what would happen");
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 0);
    }
);

dual_test!(
    a_multipart_upload_with_text_options_imports,
    |app: TestApp| async move {
        let token = manager(&app).await;
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(
                    sample("patients-aliases-ddmmyyyy-bom-crlf.csv").into_bytes(),
                )
                .file_name("camp.csv"),
            )
            .text("date_format", "DD/MM/YYYY")
            .text("dry_run", "false")
            .text("field_mapping", r#"{"notes_ignored": "camp_section"}"#);
        let response = app
            .client
            .post(app.url("/api/v2/bulk/import/schedule"))
            .bearer_auth(&token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let location = response.headers()["location"].to_str().unwrap().to_string();
        let op: Value = response.json().await.unwrap();
        assert_eq!(
            location,
            format!(
                "/api/v2/bulk-operations/{}/status",
                op["id"].as_str().unwrap()
            )
        );
        let done = app
            .wait_until_done(&token, op["id"].as_str().unwrap())
            .await;
        assert_eq!(done["result"]["rows_imported"], 3, "{done}");
        assert_eq!(done["result"]["columns_ignored"], json!([]));
    }
);

dual_test!(
    ten_thousand_rows_with_one_bad_in_fifty_under_skip_and_abort,
    |app: TestApp| async move {
        let token = manager(&app).await;
        let mut csv = String::from("unhcr_number,given_name,family_name,gender,date_of_birth\n");
        for i in 0..10_000 {
            let gender = if i % 50 == 49 { "robot" } else { "female" };
            csv.push_str(&format!(
                "BULK-{i:05},Name{i},Family{i},{gender},1990-01-01\n"
            ));
        }
        let skip = app
            .run_import(&token, &csv, json!({"on_error": "skip"}))
            .await;
        assert_eq!(skip["status"], "completed", "{skip}");
        assert_eq!(skip["result"]["rows_imported"], 9_800);
        assert_eq!(skip["result"]["rows_failed"], 200);
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 9_800);
        let errors = app.row_errors(&token, skip["id"].as_str().unwrap()).await;
        assert_eq!(errors.len(), 200);
        assert_eq!(
            errors[0]["row"], 51,
            "row 49 of the data is spreadsheet row 51"
        );

        let other = manager(&app).await;
        let abort = app
            .run_import(&other, &csv, json!({"on_error": "abort"}))
            .await;
        assert_eq!(abort["status"], "failed");
        assert_eq!(
            app.count("SELECT COUNT(*) FROM patients").await,
            9_800,
            "the abort left nothing"
        );
        assert_eq!(
            app.row_errors(&other, abort["id"].as_str().unwrap())
                .await
                .len(),
            200
        );
    }
);

dual_test!(
    duplicates_and_known_numbers_across_chunks_give_the_same_row_errors,
    |app: TestApp| async move {
        // 5,000 rows: more than two chunks of the import. Rows 0..100 exist already; the
        // file repeats some of its own numbers further down, in later chunks, and holds
        // a few invalid rows. Every mode must report each such row at its spreadsheet
        // row, with the same code, whichever chunk it falls in.
        let token = manager(&app).await;
        let header = "unhcr_number,given_name,family_name,gender,current_camp,languages_spoken\n";
        let mut existing = String::from(header);
        for i in 0..100 {
            existing.push_str(&format!("CH-{i:05},Old{i},Family{i},female,Kakuma,so\n"));
        }
        let first = app.run_import(&token, &existing, json!({})).await;
        assert_eq!(first["result"]["rows_imported"], 100, "{first}");
        let mut csv = String::from(header);
        let mut in_file_duplicates = Vec::new();
        let mut invalid = Vec::new();
        for i in 0..5_000usize {
            let row = i as i64 + 2;
            let number = if i >= 2_000 && i % 997 == 0 {
                in_file_duplicates.push(row);
                format!("CH-{:05}", i - 1_500)
            } else {
                format!("CH-{i:05}")
            };
            let gender = if i % 1_201 == 600 {
                invalid.push(row);
                "robot"
            } else {
                "male"
            };
            csv.push_str(&format!(
                "{number},New{i},Family{i},{gender},Dadaab,so;ar\n"
            ));
        }
        let errors_of = |errors: &[Value]| -> Vec<(i64, String, String)> {
            let mut list: Vec<(i64, String, String)> = errors
                .iter()
                .map(|e| {
                    (
                        e["row"].as_i64().unwrap(),
                        e["column"].as_str().unwrap().to_string(),
                        e["code"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            list.sort();
            list
        };
        let mut expected_common: Vec<(i64, String, String)> = in_file_duplicates
            .iter()
            .map(|r| (*r, "unhcr_number".to_string(), "duplicate".to_string()))
            .chain(
                invalid
                    .iter()
                    .map(|r| (*r, "gender".to_string(), "invalid_enum".to_string())),
            )
            .collect();
        expected_common.sort();
        let bad = (in_file_duplicates.len() + invalid.len()) as i64;
        let known = (0..100)
            .filter(|i| i % 1_201 != 600)
            .map(|i| (i + 2, "unhcr_number".to_string(), "duplicate".to_string()));

        // create: rows 0..100 are known numbers, each a `duplicate` error.
        let create = app
            .run_import(&token, &csv, json!({"mode": "create"}))
            .await;
        assert_eq!(create["status"], "completed", "{create}");
        let mut expected: Vec<_> = expected_common.iter().cloned().chain(known).collect();
        expected.sort();
        let errors = app.row_errors(&token, create["id"].as_str().unwrap()).await;
        assert_eq!(errors_of(&errors), expected);
        assert_eq!(
            create["result"]["rows_failed"],
            expected.len() as i64,
            "{create}"
        );
        assert_eq!(
            create["result"]["rows_imported"],
            5_000 - expected.len() as i64,
            "{create}"
        );

        // skip_existing and upsert on a fresh organization's copy of the same state:
        // known numbers are skipped or updated, the same rows fail.
        for (mode, skipped, updated) in [("skip_existing", 100, 0), ("upsert", 0, 100)] {
            let org = app.create_org(&format!("Org {mode}")).await;
            let token = app.user_token(org, Role::DataManager).await;
            app.run_import(&token, &existing, json!({})).await;
            let op = app.run_import(&token, &csv, json!({"mode": mode})).await;
            assert_eq!(op["status"], "completed", "{op}");
            let errors = app.row_errors(&token, op["id"].as_str().unwrap()).await;
            assert_eq!(errors_of(&errors), expected_common, "{mode}");
            assert_eq!(op["result"]["rows_failed"], bad, "{mode}: {op}");
            assert_eq!(op["result"]["rows_skipped"], skipped, "{mode}: {op}");
            assert_eq!(op["result"]["rows_updated"], updated, "{mode}: {op}");
            assert_eq!(
                op["result"]["rows_imported"],
                5_000 - 100 - bad,
                "{mode}: {op}"
            );
        }
        let upserted: Value = app
            .get(&token, "/api/v2/patients?unhcr_numbers=CH-00001")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            upserted["patients"][0]["given_name"], "Old1",
            "create left it"
        );
    }
);
