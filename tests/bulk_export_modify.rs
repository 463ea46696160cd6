//! Exports, updates and deletes through the HTTP API, and the monitoring endpoints around
//! them (SPEC 3, 4 and 10), on SQLite and PostgreSQL.

mod common;

use chrono::{DateTime, Duration, FixedOffset, SecondsFormat, Utc};
use common::{sample, TestApp};
use haven::domain::permission::Role;
use serde_json::{json, Value};
use uuid::Uuid;

/// An organization and a data manager's token.
async fn manager(app: &TestApp, name: &str) -> (Uuid, String) {
    let org = app.create_org(name).await;
    let token = app.user_token(org, Role::DataManager).await;
    (org, token)
}

fn id_of(op: &Value) -> String {
    op["id"].as_str().expect("operation id").to_string()
}

/// Imports a sample file and checks that every row went in.
async fn import_sample(app: &TestApp, token: &str, name: &str, rows: i64) {
    let op = app.run_import(token, &sample(name), json!({})).await;
    assert_eq!(op["status"], "completed", "{op}");
    assert_eq!(op["result"]["rows_imported"], rows, "{op}");
}

/// Runs an export to completion and returns the operation.
async fn run_export(app: &TestApp, token: &str, body: Value) -> Value {
    let op = app.run_bulk(token, "export", body).await;
    assert_eq!(op["status"], "completed", "{op}");
    op
}

async fn download(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.get(token, &format!("/api/v2/bulk-operations/{id}/download"))
        .await
}

/// The downloaded bytes of a completed export, checked against its result.
async fn downloaded_bytes(app: &TestApp, token: &str, op: &Value) -> Vec<u8> {
    let response = download(app, token, &id_of(op)).await;
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.expect("download body").to_vec();
    assert_eq!(
        op["result"]["bytes"].as_u64(),
        Some(bytes.len() as u64),
        "result.bytes is the size of the file the user downloads"
    );
    bytes
}

/// The patients of the caller's organization, by UNHCR number.
async fn patients(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let body: Value = app
        .get(token, &format!("/api/v2/patients?limit=200{query}"))
        .await
        .json()
        .await
        .expect("patients json");
    body["patients"].as_array().expect("patients").clone()
}

fn by_unhcr<'a>(list: &'a [Value], number: &str) -> &'a Value {
    list.iter()
        .find(|p| p["unhcr_number"] == number)
        .unwrap_or_else(|| panic!("patient {number} in {list:?}"))
}

/// The records of a CSV text, header first.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| r.expect("csv record").iter().map(String::from).collect())
        .collect()
}

/// The keys of a JSON object in the order they were written (serde_json's `Value` sorts
/// them, and the order of `fields` is part of the request).
struct Keys(Vec<String>);

impl<'de> serde::Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// An RFC 3339 time with a +03:00 offset, whole seconds, `from_now` ahead.
fn at_nairobi(from_now: Duration) -> String {
    let t = Utc::now() + from_now;
    let t = DateTime::from_timestamp(t.timestamp(), 0).expect("time");
    let nairobi = FixedOffset::east_opt(3 * 3600).expect("offset");
    t.with_timezone(&nairobi)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

fn instant(text: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

// ---------------------------------------------------------------- export

dual_test!(
    a_csv_export_neutralises_formulas_and_is_downloaded_with_its_result,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Kakuma Clinic").await;
        import_sample(&app, &token, "patients-formula-injection.csv", 5).await;
        let op = run_export(&app, &token, json!({"format": "csv"})).await;
        let id = id_of(&op);
        let result = &op["result"];
        assert_eq!(result["rows_exported"], 5, "{op}");
        assert_eq!(result["format"], "csv");
        assert_eq!(
            result["download_url"],
            format!("/api/v2/bulk-operations/{id}/download")
        );
        let expires = instant(&result["expires_at"]) - Utc::now();
        assert!(
            expires > Duration::days(7) - Duration::minutes(5) && expires <= Duration::days(7),
            "the file is kept 7 days by default: {expires}"
        );

        let response = download(&app, &token, &id).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-disposition"].to_str().unwrap(),
            format!("attachment; filename=\"haven-export-{id}.csv\"")
        );
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv"));
        let text = response.text().await.unwrap();
        assert_eq!(result["bytes"].as_u64(), Some(text.len() as u64));
        assert!(
            text.starts_with("id,unhcr_number,given_name,family_name,gender,date_of_birth\n"),
            "{text}"
        );
        let rows = csv_rows(&text);
        assert_eq!(rows.len(), 6, "a header and five patients");
        let stored = patients(&app, &token, "").await;
        let given = |number: &str| -> String {
            rows.iter()
                .find(|r| r[1] == number)
                .unwrap_or_else(|| panic!("{number} exported"))[2]
                .clone()
        };
        assert_eq!(
            given("KEN-24-000301"),
            "'=HYPERLINK(\"http://x\",\"click\")"
        );
        assert_eq!(given("KEN-24-000302"), "'+SUM(1+1)");
        assert_eq!(given("KEN-24-000303"), "'-2+3");
        assert_eq!(given("KEN-24-000304"), "'@cmd");
        // SPEC 3 trims names, so the import may have stored "Tab"; either way no cell
        // may reach a spreadsheet starting with a raw tab.
        let tab = by_unhcr(&stored, "KEN-24-000305")["given_name"]
            .as_str()
            .unwrap()
            .to_string();
        let expected_tab = if tab.starts_with('\t') {
            format!("'{tab}")
        } else {
            tab.clone()
        };
        assert_eq!(given("KEN-24-000305"), expected_tab, "stored as {tab:?}");
        for row in &rows[1..] {
            for cell in row {
                assert!(
                    !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                    "a dangerous cell went out: {cell:?}"
                );
            }
            let id = &row[0];
            assert_eq!(
                &by_unhcr(&stored, &row[1])["id"],
                &Value::String(id.clone()),
                "the id column holds the patient id"
            );
            assert_eq!(
                (&row[3][..], &row[4][..], &row[5][..]),
                ("Ali", "male", "1990-01-01")
            );
        }

        let phones = run_export(
            &app,
            &token,
            json!({"format": "csv", "fields": ["unhcr_number", "given_name", "phone_number"]}),
        )
        .await;
        let text = String::from_utf8(downloaded_bytes(&app, &token, &phones).await).unwrap();
        assert!(
            text.starts_with("unhcr_number,given_name,phone_number\n"),
            "{text}"
        );
        for n in 301..=305 {
            assert!(
                text.contains(&format!(",\"+254711000{n}\"\n")),
                "phone +254711000{n} quoted and intact in {text}"
            );
        }
        assert!(
            text.contains("KEN-24-000302,'+SUM(1+1),\"+254711000302\"\n"),
            "{text}"
        );
    }
);

dual_test!(
    a_json_export_is_an_array_of_objects_with_exactly_the_selected_fields_in_order,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Zaatari Clinic").await;
        import_sample(&app, &token, "patients-basic.csv", 8).await;
        let fields = [
            "unhcr_number",
            "given_name",
            "languages_spoken",
            "version",
            "date_of_birth",
            "id",
        ];
        let op = run_export(&app, &token, json!({"format": "json", "fields": fields})).await;
        assert_eq!(op["result"]["rows_exported"], 8);
        assert_eq!(op["result"]["format"], "json");
        let response = download(&app, &token, &id_of(&op)).await;
        assert!(response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .ends_with(".json\""));
        let bytes = response.bytes().await.unwrap();
        assert_eq!(op["result"]["bytes"].as_u64(), Some(bytes.len() as u64));
        let ordered: Vec<Keys> = serde_json::from_slice(&bytes).expect("an array of objects");
        assert_eq!(ordered.len(), 8);
        for keys in &ordered {
            assert_eq!(keys.0, fields, "exactly the selected fields, in order");
        }
        let items: Vec<Value> = serde_json::from_slice(&bytes).unwrap();
        let stored = patients(&app, &token, "").await;
        for item in &items {
            let p = by_unhcr(&stored, item["unhcr_number"].as_str().unwrap());
            for field in fields {
                assert_eq!(item[field], p[field], "{field} of {item}");
            }
        }
        let fatima = items
            .iter()
            .find(|i| i["unhcr_number"] == "JOR-24-000002")
            .unwrap();
        assert_eq!(
            fatima["given_name"], "فاطمة",
            "JSON is not neutralised or mangled"
        );
        let yousef = items
            .iter()
            .find(|i| i["unhcr_number"] == "JOR-24-000007")
            .unwrap();
        assert_eq!(yousef["date_of_birth"], Value::Null);
        assert_eq!(yousef["languages_spoken"], json!(["ar", "en"]));
        assert_eq!(yousef["version"], 1);
    }
);

dual_test!(
    an_ndjson_export_is_one_fhir_patient_resource_per_line,
    |app: TestApp| async move {
        let (org, token) = manager(&app, "Bidibidi Clinic").await;
        import_sample(&app, &token, "patients-basic.csv", 8).await;
        let op = run_export(&app, &token, json!({"format": "ndjson"})).await;
        assert_eq!(op["result"]["format"], "ndjson");
        assert_eq!(op["result"]["rows_exported"], 8);
        let text = String::from_utf8(downloaded_bytes(&app, &token, &op).await).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8, "{text}");
        let stored = patients(&app, &token, "").await;
        for line in lines {
            let r: Value = serde_json::from_str(line).expect("each line is JSON");
            assert_eq!(r["resourceType"], "Patient");
            let number = r["identifier"][0]["value"].as_str().expect("identifier");
            let p = by_unhcr(&stored, number);
            assert_eq!(r["id"], p["id"]);
            assert_eq!(r["name"][0]["family"], p["family_name"]);
            assert_eq!(r["name"][0]["given"][0], p["given_name"]);
            assert_eq!(r["gender"], p["gender"]);
            match p["date_of_birth"].as_str() {
                Some(date) => assert_eq!(r["birthDate"], date),
                None => assert!(r.get("birthDate").is_none(), "no null in FHIR: {r}"),
            }
            assert_eq!(
                r["managingOrganization"]["reference"],
                format!("Organization/{org}")
            );
        }
    }
);

dual_test!(
    an_xlsx_export_is_a_zip_workbook,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Nyarugusu Clinic").await;
        import_sample(&app, &token, "patients-formula-injection.csv", 5).await;
        let op = run_export(
            &app,
            &token,
            json!({"format": "xlsx", "fields": ["given_name", "phone_number", "version"]}),
        )
        .await;
        assert_eq!(op["result"]["format"], "xlsx");
        assert_eq!(op["result"]["rows_exported"], 5);
        let response = download(&app, &token, &id_of(&op)).await;
        assert!(response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .ends_with(".xlsx\""));
        assert_eq!(
            response.headers()["content-type"],
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        );
        let bytes = response.bytes().await.unwrap();
        assert_eq!(op["result"]["bytes"].as_u64(), Some(bytes.len() as u64));
        assert!(bytes.starts_with(b"PK"), "a zip file");
    }
);

/// The text of one file inside a zip archive (an XLSX workbook).
fn zip_entry(bytes: &[u8], name: &str) -> String {
    use std::io::Read;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip file");
    let mut entry = archive
        .by_name(name)
        .unwrap_or_else(|e| panic!("{name} in the workbook: {e}"));
    let mut text = String::new();
    entry.read_to_string(&mut text).expect("UTF-8 XML");
    text
}

/// The text of a file inside a zip archive, or nothing when it has no such file.
fn zip_entry_if_any(bytes: &[u8], name: &str) -> String {
    let archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip file");
    if archive.index_for_name(name).is_some() {
        zip_entry(bytes, name)
    } else {
        String::new()
    }
}

dual_test!(
    xlsx_cells_are_neutralised_but_phone_numbers_stay_intact,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Dzaleka Clinic").await;
        import_sample(&app, &token, "patients-formula-injection.csv", 5).await;
        let op = run_export(
            &app,
            &token,
            json!({"format": "xlsx", "fields": ["unhcr_number", "given_name", "phone_number"]}),
        )
        .await;
        let bytes = downloaded_bytes(&app, &token, &op).await;
        // Haven writes text as inline strings in the sheet; a shared string table, if a
        // writer used one, is searched too, so the test does not depend on that.
        let sheet = zip_entry(&bytes, "xl/worksheets/sheet1.xml");
        let strings = zip_entry_if_any(&bytes, "xl/sharedStrings.xml");
        let xml = format!("{strings}\n{sheet}");
        // XML escapes `"` as `&quot;`, so the HYPERLINK formula is matched by its prefix.
        for neutralised in ["'=HYPERLINK(", "'+SUM(1+1)", "'-2+3", "'@cmd"] {
            assert!(xml.contains(neutralised), "{neutralised} in {xml}");
        }
        for raw in [">=HYPERLINK(", ">+SUM(", ">-2+3", ">@cmd", ">\tTab"] {
            assert!(!xml.contains(raw), "{raw:?} went out unneutralised: {xml}");
        }
        for n in 301..=305 {
            let phone = format!("+254711000{n}");
            assert!(
                xml.contains(&format!(">{phone}<")),
                "{phone} intact in {xml}"
            );
            assert!(
                !xml.contains(&format!("'{phone}")),
                "{phone} mangled: {xml}"
            );
            assert!(xml.contains(&format!(">KEN-24-000{n}<")), "{xml}");
        }
    }
);

dual_test!(
    filters_and_include_deleted_choose_the_exported_patients,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Kutupalong Clinic").await;
        import_sample(&app, &token, "patients-basic.csv", 8).await;
        let count = |body: Value| {
            let app = &app;
            let token = &token;
            async move {
                let op = run_export(app, token, body).await;
                let text = String::from_utf8(downloaded_bytes(app, token, &op).await).unwrap();
                let rows = csv_rows(&text).len() as i64 - 1;
                assert_eq!(op["result"]["rows_exported"], rows, "{op}");
                rows
            }
        };
        assert_eq!(count(json!({"filters": {"gender": "female"}})).await, 4);
        assert_eq!(count(json!({"filters": {"gender": "male"}})).await, 3);
        assert_eq!(
            count(json!({"filters": {"origin_country": "SY", "current_camp": "Azraq"}})).await,
            1
        );
        assert_eq!(
            count(json!({"filters": {"unhcr_numbers": ["KEN-24-000001", "UGA-24-000008"]}})).await,
            2
        );
        // Dates and times are compared as the database stores them (on SQLite the export
        // reads through SQLite's C API, with values encoded as sqlx encodes them).
        // Both bounds are inclusive; a patient without a date of birth matches neither.
        assert_eq!(
            count(json!({"filters": {"born_after": "1990-01-01"}})).await,
            4
        );
        assert_eq!(
            count(json!({"filters": {"born_before": "1989-12-31"}})).await,
            3
        );
        assert_eq!(
            count(json!({"filters": {"born_after": "1988-02-29", "born_before": "1991-03-14"}}))
                .await,
            2
        );
        let hour_ago = (Utc::now() - Duration::hours(1)).to_rfc3339();
        let in_an_hour = (Utc::now() + Duration::hours(1)).to_rfc3339();
        assert_eq!(
            count(json!({"filters": {"updated_since": hour_ago}})).await,
            8
        );
        assert_eq!(
            count(json!({"filters": {"updated_since": in_an_hour}})).await,
            0
        );

        let stored = patients(&app, &token, "").await;
        let amina = by_unhcr(&stored, "KEN-24-000001")["id"]
            .as_str()
            .unwrap()
            .to_string();
        let response = app
            .delete(&token, &format!("/api/v2/patients/{amina}"))
            .await;
        assert_eq!(response.status(), 204);
        assert_eq!(count(json!({"filters": {"gender": "female"}})).await, 3);
        assert_eq!(
            count(json!({"filters": {"gender": "female"}, "include_deleted": true})).await,
            4
        );
        assert_eq!(count(json!({})).await, 7);
        assert_eq!(count(json!({"include_deleted": true})).await, 8);
    }
);

dual_test!(
    a_dry_run_export_counts_the_rows_and_writes_no_file,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Kakuma Clinic").await;
        import_sample(&app, &token, "patients-basic.csv", 8).await;
        let op = run_export(
            &app,
            &token,
            json!({"format": "csv", "filters": {"gender": "female"}, "dry_run": true}),
        )
        .await;
        assert_eq!(op["dry_run"], true);
        assert_eq!(op["result"]["rows_exported"], 4, "{op}");
        assert_eq!(op["result"]["download_url"], Value::Null);
        assert_eq!(download(&app, &token, &id_of(&op)).await.status(), 404);
        let dir = app.dir.path().join("blobs").join("exports");
        let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(files, 0, "no file in {}", dir.display());
    }
);

dual_test!(
    the_export_file_on_disk_holds_no_patient_data_in_plaintext,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Dadaab Clinic").await;
        import_sample(&app, &token, "patients-basic.csv", 8).await;
        for format in ["csv", "json", "ndjson"] {
            let op = run_export(
                &app,
                &token,
                json!({"format": format, "fields": ["given_name", "family_name", "unhcr_number", "phone_number"]}),
            )
            .await;
            let downloaded = downloaded_bytes(&app, &token, &op).await;
            assert!(
                String::from_utf8_lossy(&downloaded).contains("Nyakuoth"),
                "the download holds the names"
            );
        }
        let dir = app.dir.path().join("blobs").join("exports");
        let files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(
            files.len(),
            3,
            "one file per export, no partial left: {files:?}"
        );
        for file in files {
            let raw = std::fs::read(&file).unwrap();
            assert!(!raw.is_empty());
            for secret in [
                "Amina",
                "Nyakuoth",
                "Jean-Baptiste",
                "فاطمة",
                "KEN-24-000001",
                "+254711000001",
            ] {
                assert!(
                    !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{secret} in plaintext in {}",
                    file.display()
                );
            }
        }
    }
);

// ---------------------------------------------------------------- update

dual_test!(
    an_update_by_filters_changes_each_matched_patient_once_with_a_backup,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Kakuma Clinic").await;
        import_sample(&app, &token, "patients-basic.csv", 8).await;
        let op = app
            .run_bulk(
                &token,
                "update",
                json!({"filters": {"gender": "female"}, "changes": {"current_camp": "Dadaab"}}),
            )
            .await;
        assert_eq!(op["status"], "completed", "{op}");
        assert_eq!(op["type"], "update");
        assert_eq!(op["result"]["patients_matched"], 4, "{op}");
        assert_eq!(op["result"]["patients_updated"], 4);
        assert_eq!(op["result"]["backup_id"], op["id"], "{op}");
        let stored = patients(&app, &token, "").await;
        for p in &stored {
            if p["gender"] == "female" {
                assert_eq!(p["current_camp"], "Dadaab", "{p}");
                assert_eq!(p["version"], 2, "{p}");
            } else {
                assert_eq!(p["version"], 1, "{p}");
            }
        }
        assert_eq!(
            app.count("SELECT COUNT(*) FROM operation_backups").await,
            4,
            "one before-image per changed patient"
        );
        assert_eq!(
            app.count("SELECT COUNT(*) FROM patients WHERE current_camp = 'Dadaab'")
                .await,
            5,
            "the four women and Ayaan, who lived there already"
        );
    }
);

dual_test!(
    the_legacy_field_and_value_pair_updates_and_skips_patients_already_equal,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Kakuma Clinic").await;
        import_sample(&app, &token, "patients-basic.csv", 8).await;
        // Amina (Kakuma) and Ayaan (already Dadaab) come from Somalia.
        let op = app
            .run_bulk(
                &token,
                "update",
                json!({"filters": {"origin_country": "SO"}, "field": "current_camp", "value": "Dadaab"}),
            )
            .await;
        assert_eq!(op["status"], "completed", "{op}");
        assert_eq!(op["result"]["patients_matched"], 2, "{op}");
        assert_eq!(op["result"]["patients_updated"], 1, "{op}");
        let stored = patients(&app, &token, "").await;
        let amina = by_unhcr(&stored, "KEN-24-000001");
        assert_eq!(
            (&amina["current_camp"], &amina["version"]),
            (&json!("Dadaab"), &json!(2))
        );
        assert_eq!(
            by_unhcr(&stored, "KEN-24-000006")["version"],
            1,
            "a patient the update does not change keeps its version"
        );
        assert_eq!(app.count("SELECT COUNT(*) FROM operation_backups").await, 1);
    }
);

dual_test!(
    a_dry_run_update_reports_what_would_change_and_changes_nothing,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Kakuma Clinic").await;
        import_sample(&app, &token, "patients-basic.csv", 8).await;
        let op = app
            .run_bulk(
                &token,
                "update",
                json!({"filters": {"gender": "female"}, "changes": {"current_camp": "Dadaab"}, "dry_run": true}),
            )
            .await;
        assert_eq!(op["status"], "completed", "{op}");
        assert_eq!(op["dry_run"], true);
        assert_eq!(op["result"]["patients_matched"], 4, "{op}");
        assert_eq!(op["result"]["patients_updated"], 4, "what would happen");
        assert_eq!(op["result"]["backup_id"], Value::Null);
        assert_eq!(
            app.count("SELECT COUNT(*) FROM patients WHERE version <> 1")
                .await,
            0
        );
        assert_eq!(
            app.count("SELECT COUNT(*) FROM patients WHERE current_camp = 'Dadaab'")
                .await,
            1,
            "only Ayaan, as imported"
        );
        assert_eq!(app.count("SELECT COUNT(*) FROM operation_backups").await, 0);
    }
);

dual_test!(
    an_update_by_patient_ids_changes_only_those_patients,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Kakuma Clinic").await;
        import_sample(&app, &token, "patients-basic.csv", 8).await;
        let stored = patients(&app, &token, "").await;
        let targets = ["UGA-24-000003", "BGD-24-000004"];
        let ids: Vec<Value> = targets
            .iter()
            .map(|n| by_unhcr(&stored, n)["id"].clone())
            .collect();
        let op = app
            .run_bulk(
                &token,
                "update",
                json!({"patient_ids": ids, "changes": {"phone_number": "+254700000999", "camp_section": null, "gender": "U"}}),
            )
            .await;
        assert_eq!(op["status"], "completed", "{op}");
        assert_eq!(op["result"]["patients_matched"], 2, "{op}");
        assert_eq!(op["result"]["patients_updated"], 2);
        let after = patients(&app, &token, "").await;
        for p in &after {
            let number = p["unhcr_number"].as_str().unwrap();
            if targets.contains(&number) {
                assert_eq!(p["phone_number"], "+254700000999", "{p}");
                assert_eq!(p["camp_section"], Value::Null, "null clears: {p}");
                assert_eq!(p["gender"], "unknown", "normalised: {p}");
                assert_eq!(p["version"], 2);
            } else {
                assert_eq!(p, by_unhcr(&stored, number), "untouched");
            }
        }
        assert_eq!(app.count("SELECT COUNT(*) FROM operation_backups").await, 2);
    }
);

dual_test!(
    an_update_that_would_duplicate_a_unhcr_number_fails_at_once_as_bad_data,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Kakuma Clinic").await;
        import_sample(&app, &token, "patients-basic.csv", 8).await;
        // Four patients given one number, and one patient given another's number: the
        // unique rule of SPEC 3 can never hold, so this is bad data, not a transient
        // failure (SPEC 4.5): refused when scheduled, or failed on its first attempt with
        // a clear message. Never retried for a quarter of a minute as "unavailable".
        let cases = [
            json!({"filters": {"gender": "female"}, "changes": {"unhcr_number": "DUP-1"}}),
            json!({"filters": {"unhcr_numbers": ["BGD-24-000004"]}, "changes": {"unhcr_number": "TZA-24-000005"}}),
        ];
        let run = |body: Value| {
            let app = &app;
            let token = &token;
            async move {
                let response = app
                    .post_json(token, "/api/v2/bulk/update/schedule", &body)
                    .await;
                if response.status() == 422 {
                    let error: Value = response.json().await.unwrap();
                    assert_eq!(
                        error["error"]["details"][0]["field"], "changes.unhcr_number",
                        "{error}"
                    );
                    return;
                }
                assert_eq!(response.status(), 201);
                let op: Value = response.json().await.unwrap();
                let op = app.wait_until_done(token, &id_of(&op)).await;
                assert_eq!(op["status"], "failed", "{op}");
                let message = op["error_message"].as_str().unwrap_or("").to_string();
                assert_eq!(op["attempt"], 1, "bad data is not retried: {op}");
                assert!(message.contains("unhcr_number"), "a clear message: {op}");
            }
        };
        let (a, b) = (cases[0].clone(), cases[1].clone());
        tokio::join!(run(a), run(b));
        assert_eq!(
            app.count("SELECT COUNT(*) FROM patients WHERE version <> 1")
                .await,
            0,
            "nothing changed"
        );
        assert_eq!(app.count("SELECT COUNT(*) FROM operation_backups").await, 0);
    }
);

// ---------------------------------------------------------------- delete

dual_test!(
    a_confirmed_delete_by_patient_ids_soft_deletes_those_patients,
    |app: TestApp| async move {
        let org = app.create_org("Azraq Clinic").await;
        let token = app.user_token(org, Role::Admin).await;
        import_sample(&app, &token, "patients-basic.csv", 8).await;
        let stored = patients(&app, &token, "").await;
        let ids: Vec<String> = ["JOR-24-000002", "JOR-24-000007"]
            .iter()
            .map(|n| by_unhcr(&stored, n)["id"].as_str().unwrap().to_string())
            .collect();
        let op = app
            .run_bulk(
                &token,
                "delete",
                json!({"patient_ids": ids, "confirm": true}),
            )
            .await;
        assert_eq!(op["status"], "completed", "{op}");
        assert_eq!(op["type"], "delete");
        assert_eq!(op["result"]["patients_deleted"], 2, "{op}");
        for id in &ids {
            let response = app.get(&token, &format!("/api/v2/patients/{id}")).await;
            assert_eq!(response.status(), 404, "a deleted patient answers 404");
        }
        assert_eq!(patients(&app, &token, "").await.len(), 6);
        assert_eq!(
            app.count("SELECT COUNT(*) FROM patients").await,
            8,
            "soft deletion keeps the rows"
        );
        assert_eq!(
            app.count("SELECT COUNT(*) FROM patients WHERE deleted_at IS NOT NULL")
                .await,
            2
        );
        assert_eq!(
            app.count(
                "SELECT COUNT(*) FROM patients WHERE deleted_at IS NOT NULL AND unhcr_number LIKE 'JOR-%'"
            )
            .await,
            2
        );
    }
);

// ---------------------------------------------------------------- idempotency

dual_test!(
    the_same_idempotency_key_twice_from_one_user_creates_one_operation,
    |app: TestApp| async move {
        let (org, token) = manager(&app, "Kakuma Clinic").await;
        let schedule = |token: String, key: &'static str| {
            let app = &app;
            async move {
                let response = app
                    .client
                    .post(app.url("/api/v2/bulk/export/schedule"))
                    .bearer_auth(token)
                    .header("Idempotency-Key", key)
                    .json(&json!({"format": "csv", "scheduled_at": at_nairobi(Duration::days(1))}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                id_of(&response.json::<Value>().await.unwrap())
            }
        };
        let first = schedule(token.clone(), "nightly-export-2026-12-01").await;
        let second = schedule(token.clone(), "nightly-export-2026-12-01").await;
        assert_eq!(first, second, "the first operation is returned");
        assert_eq!(app.count("SELECT COUNT(*) FROM bulk_operations").await, 1);

        let other_key = schedule(token.clone(), "nightly-export-2026-12-02").await;
        assert_ne!(other_key, first);
        let colleague = app.user_token(org, Role::DataManager).await;
        let theirs = schedule(colleague, "nightly-export-2026-12-01").await;
        assert_ne!(theirs, first, "keys belong to one user");
        assert_eq!(app.count("SELECT COUNT(*) FROM bulk_operations").await, 3);

        // An import replayed with its key does not take the file a second time.
        let import = |key: &'static str| {
            let app = &app;
            let token = token.clone();
            async move {
                let response = app
                    .client
                    .post(app.url("/api/v2/bulk/import/schedule"))
                    .bearer_auth(token)
                    .header("Idempotency-Key", key)
                    .json(&json!({"csv_data": sample("patients-basic.csv"), "file_name": "basic.csv"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                id_of(&response.json::<Value>().await.unwrap())
            }
        };
        let a = import("camp-registration").await;
        let b = import("camp-registration").await;
        assert_eq!(a, b);
        let done = app.wait_until_done(&token, &a).await;
        assert_eq!(done["result"]["rows_imported"], 8, "{done}");
        assert_eq!(app.count("SELECT COUNT(*) FROM bulk_operations").await, 4);
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 8);
    }
);

dual_test!(
    concurrent_requests_with_one_idempotency_key_all_return_the_first_operation,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Kakuma Clinic").await;
        let requests = (0..10).map(|_| {
            let client = app.client.clone();
            let url = app.url("/api/v2/bulk/export/schedule");
            let token = token.clone();
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .bearer_auth(token)
                    .header("Idempotency-Key", "double-click")
                    .json(&json!({"scheduled_at": at_nairobi(Duration::days(1))}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            })
        });
        let mut answers = Vec::new();
        for request in requests.collect::<Vec<_>>() {
            answers.push(request.await.unwrap());
        }
        assert_eq!(app.count("SELECT COUNT(*) FROM bulk_operations").await, 1);
        let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
        let refusal = answers
            .iter()
            .find(|(s, _)| *s != 201)
            .map(|(_, body)| body);
        assert_eq!(statuses, vec![201; 10], "first refusal: {refusal:?}");
        let first = &answers[0].1["id"];
        assert!(
            answers.iter().all(|(_, op)| &op["id"] == first),
            "{answers:?}"
        );
    }
);

// ---------------------------------------------------------------- isolation

dual_test!(
    another_organization_cannot_see_or_touch_an_operation,
    |app: TestApp| async move {
        let (_, token_a) = manager(&app, "Kakuma Clinic").await;
        import_sample(&app, &token_a, "patients-basic.csv", 8).await;
        let export = run_export(&app, &token_a, json!({"format": "csv"})).await;
        let export_id = id_of(&export);
        let waiting: Value = app
            .post_json(
                &token_a,
                "/api/v2/bulk/export/schedule",
                &json!({"scheduled_at": at_nairobi(Duration::days(1))}),
            )
            .await
            .json()
            .await
            .unwrap();
        let waiting_id = id_of(&waiting);

        let org_b = app.create_org("Zaatari Clinic").await;
        let token_b = app.user_token(org_b, Role::Admin).await;
        for id in [&export_id, &waiting_id] {
            let status = app
                .get(&token_b, &format!("/api/v2/bulk-operations/{id}/status"))
                .await;
            assert_eq!(status.status(), 404);
            let body: Value = status.json().await.unwrap();
            assert_eq!(body["error"]["code"], "not_found");
            let cancel = app
                .post_json(
                    &token_b,
                    &format!("/api/v2/bulk-operations/{id}/cancel"),
                    &json!({}),
                )
                .await;
            assert_eq!(cancel.status(), 404, "not 409: nothing is revealed");
            let errors = app
                .get(&token_b, &format!("/api/v2/bulk-operations/{id}/errors"))
                .await;
            assert_eq!(errors.status(), 404);
            let file = download(&app, &token_b, id).await;
            assert_eq!(file.status(), 404);
        }
        let list: Value = app
            .get(&token_b, "/api/v2/bulk-operations")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(list["operations"], json!([]), "{list}");
        let scheduled: Value = app
            .get(&token_b, "/api/v2/bulk-operations/scheduled")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(scheduled["operations"], json!([]), "{scheduled}");

        // Organization A still has everything, untouched.
        assert_eq!(download(&app, &token_a, &export_id).await.status(), 200);
        let still: Value = app
            .get(
                &token_a,
                &format!("/api/v2/bulk-operations/{waiting_id}/status"),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(still["status"], "scheduled");
        let list_a: Value = app
            .get(&token_a, "/api/v2/bulk-operations")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(list_a["operations"].as_array().unwrap().len(), 3);
    }
);

// ---------------------------------------------------------------- lists

dual_test!(
    the_operations_list_is_newest_first_with_type_and_status_filters_and_a_cursor,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Kakuma Clinic").await;
        let mut created = Vec::new();
        let import = app
            .run_import(&token, &sample("patients-basic.csv"), json!({}))
            .await;
        created.push(id_of(&import));
        for format in ["csv", "json"] {
            created.push(id_of(
                &run_export(&app, &token, json!({"format": format})).await,
            ));
        }
        let update = app
            .run_bulk(
                &token,
                "update",
                json!({"filters": {"gender": "male"}, "changes": {"camp_section": "C1"}}),
            )
            .await;
        created.push(id_of(&update));
        let waiting: Value = app
            .post_json(
                &token,
                "/api/v2/bulk/export/schedule",
                &json!({"scheduled_at": at_nairobi(Duration::days(1))}),
            )
            .await
            .json()
            .await
            .unwrap();
        created.push(id_of(&waiting));
        let newest_first: Vec<String> = created.iter().rev().cloned().collect();

        let list = |query: &'static str| {
            let app = &app;
            let token = &token;
            async move {
                let response = app
                    .get(token, &format!("/api/v2/bulk-operations{query}"))
                    .await;
                assert_eq!(response.status(), 200, "{query}");
                response.json::<Value>().await.unwrap()
            }
        };
        let ids = |body: &Value| -> Vec<String> {
            body["operations"]
                .as_array()
                .unwrap()
                .iter()
                .map(id_of)
                .collect()
        };
        let all = list("").await;
        assert_eq!(ids(&all), newest_first);
        assert_eq!(all["next_cursor"], Value::Null);
        assert_eq!(all["operations"][0]["status"], "scheduled");
        assert_eq!(all["operations"][4]["type"], "import");

        let exports = list("?type=export").await;
        assert_eq!(
            ids(&exports),
            vec![created[4].clone(), created[2].clone(), created[1].clone()]
        );
        assert!(exports["operations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["type"] == "export"));
        assert_eq!(
            ids(&list("?status=scheduled").await),
            vec![created[4].clone()]
        );
        assert_eq!(
            ids(&list("?type=export&status=completed").await),
            vec![created[2].clone(), created[1].clone()]
        );
        assert_eq!(ids(&list("?type=delete").await), Vec::<String>::new());

        // Pages of two, following next_cursor, give every operation once, in order.
        let mut paged = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10 {
            let query = match &cursor {
                None => "/api/v2/bulk-operations?limit=2".to_string(),
                Some(c) => format!("/api/v2/bulk-operations?limit=2&cursor={c}"),
            };
            let page: Value = app.get(&token, &query).await.json().await.unwrap();
            let got = ids(&page);
            assert!(got.len() <= 2);
            paged.extend(got);
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(paged, newest_first);

        for bad in [
            "?type=purge",
            "?status=done",
            "?limit=0",
            "?limit=201",
            "?cursor=nope",
        ] {
            let response = app
                .get(&token, &format!("/api/v2/bulk-operations{bad}"))
                .await;
            assert_eq!(response.status(), 422, "{bad}");
        }
    }
);

dual_test!(
    operations_scheduled_for_tomorrow_wait_in_order_and_a_cancelled_one_never_runs,
    |app: TestApp| async move {
        let (_, token) = manager(&app, "Kakuma Clinic").await;
        import_sample(&app, &token, "patients-basic.csv", 8).await;
        let mut scheduled = Vec::new();
        for hours in [26, 24, 25] {
            let at = at_nairobi(Duration::hours(hours));
            let response = app
                .post_json(
                    &token,
                    "/api/v2/bulk/export/schedule",
                    &json!({"scheduled_at": at, "timezone": "Africa/Nairobi"}),
                )
                .await;
            assert_eq!(response.status(), 201);
            let op: Value = response.json().await.unwrap();
            assert_eq!(op["status"], "scheduled");
            assert_eq!(op["timezone"], "Africa/Nairobi");
            assert_eq!(
                instant(&op["scheduled_at"]),
                DateTime::parse_from_rfc3339(&at).unwrap(),
                "the instant asked for, in UTC"
            );
            assert!(op["scheduled_at"].as_str().unwrap().ends_with('Z'));
            scheduled.push((hours, id_of(&op)));
        }
        scheduled.sort();
        let expected: Vec<String> = scheduled.iter().map(|(_, id)| id.clone()).collect();
        let list: Value = app
            .get(&token, "/api/v2/bulk-operations/scheduled")
            .await
            .json()
            .await
            .unwrap();
        let got: Vec<String> = list["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(id_of)
            .collect();
        assert_eq!(got, expected, "ordered by scheduled_at");
        let times: Vec<DateTime<Utc>> = list["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| instant(&o["scheduled_at"]))
            .collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));

        let target = expected[0].clone();
        let before = download(&app, &token, &target).await;
        assert_eq!(before.status(), 404, "no file before the export ran");
        let response = app
            .post_json(
                &token,
                &format!("/api/v2/bulk-operations/{target}/cancel"),
                &json!({}),
            )
            .await;
        assert_eq!(response.status(), 200);
        let cancelled: Value = response.json().await.unwrap();
        assert_eq!(cancelled["status"], "cancelled", "at once: {cancelled}");

        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let later: Value = app
            .get(&token, &format!("/api/v2/bulk-operations/{target}/status"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(later["status"], "cancelled", "{later}");
        assert_eq!(later["started_at"], Value::Null, "it never started");
        assert_eq!(download(&app, &token, &target).await.status(), 404);
        let list: Value = app
            .get(&token, "/api/v2/bulk-operations/scheduled")
            .await
            .json()
            .await
            .unwrap();
        let left: Vec<String> = list["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(id_of)
            .collect();
        assert_eq!(left, expected[1..].to_vec());
        let again = app
            .post_json(
                &token,
                &format!("/api/v2/bulk-operations/{target}/cancel"),
                &json!({}),
            )
            .await;
        assert_eq!(again.status(), 409, "it has already ended");
    }
);

dual_test!(
    another_organizations_patient_ids_match_nothing_in_export_update_and_delete,
    |app: TestApp| async move {
        let (_, token_a) = manager(&app, "Kakuma Clinic").await;
        import_sample(&app, &token_a, "patients-basic.csv", 8).await;
        let ids: Vec<Value> = patients(&app, &token_a, "")
            .await
            .iter()
            .map(|p| p["id"].clone())
            .collect();
        let org_b = app.create_org("Zaatari Clinic").await;
        let token_b = app.user_token(org_b, Role::Admin).await;
        let export = run_export(&app, &token_b, json!({"filters": {"patient_ids": ids}})).await;
        assert_eq!(export["result"]["rows_exported"], 0, "{export}");
        let text = String::from_utf8(downloaded_bytes(&app, &token_b, &export).await).unwrap();
        assert_eq!(
            text,
            "id,unhcr_number,given_name,family_name,gender,date_of_birth\n"
        );
        let update = app
            .run_bulk(
                &token_b,
                "update",
                json!({"patient_ids": ids, "changes": {"current_camp": "Dadaab"}}),
            )
            .await;
        assert_eq!(update["result"]["patients_matched"], 0, "{update}");
        let delete = app
            .run_bulk(
                &token_b,
                "delete",
                json!({"patient_ids": ids, "confirm": true}),
            )
            .await;
        assert_eq!(delete["result"]["patients_deleted"], 0, "{delete}");
        assert_eq!(
            app.count("SELECT COUNT(*) FROM patients WHERE version = 1 AND deleted_at IS NULL")
                .await,
            8,
            "organization A's patients are untouched"
        );
    }
);

dual_test!(
    a_csv_export_of_a_subset_of_fields_has_exactly_those_columns_for_every_row,
    |app: TestApp| async move {
        // 2,500 patients: several batches of the export's stream.
        let (_, token) = manager(&app, "Kakuma Clinic").await;
        let mut csv = String::from(
            "unhcr_number,given_name,family_name,gender,date_of_birth,phone_number,languages_spoken,allergies\n",
        );
        for i in 0..2_500 {
            csv.push_str(&format!(
                "SUB-{i:05},Given{i},Family{i},female,1990-01-{:02},+2547{i:08},so;sw,{}\n",
                1 + i % 28,
                if i % 2 == 0 { "dust" } else { "" }
            ));
        }
        let import = app.run_import(&token, &csv, json!({})).await;
        assert_eq!(import["result"]["rows_imported"], 2_500, "{import}");
        let fields = [
            "version",
            "allergies",
            "phone_number",
            "unhcr_number",
            "updated_at",
        ];
        let op = run_export(&app, &token, json!({"format": "csv", "fields": fields})).await;
        assert_eq!(op["result"]["rows_exported"], 2_500);
        let text = String::from_utf8(downloaded_bytes(&app, &token, &op).await).unwrap();
        let rows = csv_rows(&text);
        assert_eq!(
            rows[0], fields,
            "the header is the requested fields, in order"
        );
        assert_eq!(rows.len(), 2_501);
        let listed = patients(&app, &token, "&unhcr_numbers=SUB-00000,SUB-00001").await;
        assert_eq!(listed.len(), 2);
        let numbers: Vec<&str> = rows[1..].iter().map(|r| r[3].as_str()).collect();
        let mut sorted = numbers.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 2_500, "every patient once");
        for row in &rows[1..] {
            assert_eq!(row.len(), fields.len(), "exactly those columns: {row:?}");
            assert_eq!(row[0], "1");
            assert!(row[2].starts_with("+2547"), "{row:?}");
        }
        for p in &listed {
            let number = p["unhcr_number"].as_str().unwrap();
            let row = rows[1..].iter().find(|r| r[3] == number).expect("exported");
            let allergies: Vec<&str> = p["allergies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(row[1], allergies.join(";"));
            assert_eq!(row[2], p["phone_number"].as_str().unwrap());
            assert_eq!(row[4], p["updated_at"].as_str().unwrap());
        }
    }
);
