//! Rollback of imports, updates and deletes (SPEC 4.6, 10): what comes back, what is
//! left alone as a conflict, and when a rollback is refused.

mod common;

use std::collections::BTreeSet;

use chrono::{Duration, SecondsFormat, Utc};
use common::{sample, Backend, TestApp};
use haven::domain::permission::Role;
use serde_json::{json, Value};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A fresh organization with a data manager (who may roll back) and an admin (who may
/// also bulk-delete and read the audit log).
struct Org {
    id: Uuid,
    manager: String,
    admin: String,
}

async fn org(app: &TestApp, name: &str) -> Org {
    let id = app.create_org(name).await;
    Org {
        id,
        manager: app.user_token(id, Role::DataManager).await,
        admin: app.user_token(id, Role::Admin).await,
    }
}

/// `n` valid patients, numbered `{prefix}-00000`…, all in `camp`.
fn generated_csv(prefix: &str, n: usize, camp: &str) -> String {
    let mut csv = String::from(
        "unhcr_number,given_name,family_name,gender,date_of_birth,current_camp,camp_section,phone_number,languages_spoken,allergies\n",
    );
    let genders = ["female", "male", "other", "unknown"];
    for i in 0..n {
        csv.push_str(&format!(
            "{prefix}-{i:05},Given{i},Family{i},{},19{:02}-0{}-1{},{camp},S{},+2547{:08},so;sw,{}\n",
            genders[i % 4],
            50 + i % 50,
            1 + i % 9,
            i % 10,
            i % 7,
            i,
            if i % 3 == 0 { "penicillin" } else { "" },
        ));
    }
    csv
}

/// An id as a SQL literal: SQLite keeps UUIDs as 16-byte blobs, PostgreSQL as `uuid`.
fn id_sql(app: &TestApp, id: &str) -> String {
    let id = Uuid::parse_str(id).expect("uuid");
    match app.backend {
        Backend::Sqlite => format!("X'{}'", id.simple()),
        Backend::Postgres => format!("'{id}'"),
    }
}

/// Every row of `patients`, every column rendered as text (NULL as `NULL`), ordered by id.
/// The columns are read from the catalogue, so a column added later is compared too.
async fn snapshot_patients(app: &TestApp) -> Vec<String> {
    match app.backend {
        Backend::Sqlite => {
            let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&app.db.url)
                .await
                .expect("connect");
            let columns: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info('patients') ORDER BY cid")
                    .fetch_all(&mut conn)
                    .await
                    .expect("columns");
            assert!(columns.len() >= 29, "{columns:?}");
            // quote() renders every SQLite value, blobs included, as an exact literal.
            let row = columns
                .iter()
                .map(|c| format!("'{c}=' || quote(\"{c}\")"))
                .collect::<Vec<_>>()
                .join(" || '|' || ");
            sqlx::query_scalar(&format!("SELECT {row} FROM patients ORDER BY id"))
                .fetch_all(&mut conn)
                .await
                .expect("snapshot")
        }
        Backend::Postgres => {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&app.db.url)
                .await
                .expect("connect");
            let columns: Vec<String> = sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = 'patients' \
                 ORDER BY ordinal_position",
            )
            .fetch_all(&mut conn)
            .await
            .expect("columns");
            assert!(columns.len() >= 29, "{columns:?}");
            let row = columns
                .iter()
                .map(|c| format!("'{c}=' || quote_nullable(CAST(\"{c}\" AS TEXT))"))
                .collect::<Vec<_>>()
                .join(" || '|' || ");
            sqlx::query_scalar(&format!("SELECT {row} FROM patients ORDER BY id"))
                .fetch_all(&mut conn)
                .await
                .expect("snapshot")
        }
    }
}

/// Every live patient the caller sees with `query` (filters), through the paged API.
async fn list_patients(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = String::from("/api/v2/patients?limit=200");
        if !query.is_empty() {
            path.push('&');
            path.push_str(query);
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let response = app.get(token, &path).await;
        assert_eq!(response.status(), 200, "list {path}");
        let page: Value = response.json().await.expect("list json");
        all.extend(
            page["patients"]
                .as_array()
                .expect("patients")
                .iter()
                .cloned(),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return all,
        }
    }
}

async fn get_patient(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.get(token, &format!("/api/v2/patients/{id}")).await
}

/// A patient's JSON without the fields every change moves on.
fn without_change_stamps(patient: &Value) -> Value {
    let mut p = patient.clone();
    let map = p.as_object_mut().expect("patient object");
    map.remove("version");
    map.remove("updated_at");
    p
}

/// POST /api/v2/bulk/{kind}/rollback/{id}, with no body or a JSON body.
async fn request_rollback(
    app: &TestApp,
    token: &str,
    kind: &str,
    id: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let request = app
        .client
        .post(app.url(&format!("/api/v2/bulk/{kind}/rollback/{id}")))
        .bearer_auth(token);
    let request = match body {
        Some(b) => request.json(&b),
        None => request,
    };
    request.send().await.expect("rollback request")
}

/// Asks for a rollback, checks the 202 and its operation, waits for the end and checks
/// that the rollback is in the audit log. Returns the finished rollback operation.
async fn run_rollback(
    app: &TestApp,
    token: &str,
    kind: &str,
    target: &str,
    body: Option<Value>,
) -> Value {
    let response = request_rollback(app, token, kind, target, body).await;
    assert_eq!(
        response.status(),
        202,
        "rollback of {kind} {target} accepted"
    );
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    let op: Value = response.json().await.expect("rollback json");
    assert_eq!(op["type"], "rollback", "{op}");
    assert_eq!(op["id"], op["operation_id"], "{op}");
    let id = op["id"].as_str().expect("rollback id").to_string();
    assert_eq!(
        location,
        Some(format!("/api/v2/bulk-operations/{id}/status")),
        "Location of the rollback's status"
    );
    let done = app.wait_until_done(token, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["type"], "rollback");
    assert_eq!(done["result"]["target_operation_id"], target, "{done}");
    assert_rollback_audited(app, &id).await;
    done
}

/// The audit log has the scheduling and the completion of the rollback operation.
async fn assert_rollback_audited(app: &TestApp, rollback_id: &str) {
    let count = |action: &str| {
        format!(
            "SELECT COUNT(*) FROM audit_events WHERE action = '{action}' AND resource_id = '{rollback_id}'"
        )
    };
    assert_eq!(
        app.count(&count("operation.schedule")).await,
        1,
        "the rollback {rollback_id} is audited when scheduled"
    );
    assert_eq!(
        app.count(&count("operation.complete")).await,
        1,
        "the rollback {rollback_id} is audited when completed"
    );
}

async fn status_of(app: &TestApp, token: &str, id: &str) -> Value {
    let response = app
        .get(token, &format!("/api/v2/bulk-operations/{id}/status"))
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("status json")
}

/// Checks a refusal: the status, the error body and that no rollback was scheduled.
async fn assert_refused(response: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(response.status(), status, "{what}");
    let body: Value = response.json().await.expect("error json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: a clear message: {body}"
    );
    body
}

async fn rollback_operations(app: &TestApp) -> i64 {
    app.count("SELECT COUNT(*) FROM bulk_operations WHERE type = 'rollback'")
        .await
}

/// Moves an operation's completion into the past.
async fn completed_hours_ago(app: &TestApp, id: &str, hours: i64) {
    let at = (Utc::now() - Duration::hours(hours)).to_rfc3339_opts(SecondsFormat::Micros, false);
    let changed = app
        .raw_sql(&format!(
            "UPDATE bulk_operations SET completed_at = '{at}' WHERE id = {}",
            id_sql(app, id)
        ))
        .await
        .expect("move completed_at");
    assert_eq!(changed, 1);
}

async fn import_ok(app: &TestApp, token: &str, csv: &str, options: Value) -> String {
    let op = app.run_import(token, csv, options).await;
    assert_eq!(op["status"], "completed", "{op}");
    op["id"].as_str().unwrap().to_string()
}

fn ids_of(patients: &[Value]) -> Vec<String> {
    patients
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Import rollback
// ---------------------------------------------------------------------------------------

dual_test!(
    rolling_back_an_import_of_a_thousand_patients_leaves_the_table_byte_for_byte_as_before,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let other = org(&app, "Dadaab Clinic").await;
        for (token, body) in [
            (
                &a.manager,
                json!({"unhcr_number": "KEN-24-000001", "given_name": "Amina", "family_name": "Abdi",
                       "gender": "female", "date_of_birth": "1991-03-14", "origin_country": "SO",
                       "current_camp": "Kakuma", "languages_spoken": ["so", "sw"], "allergies": ["penicillin"],
                       "phone_number": "+254711000001", "email": "amina@example.org"}),
            ),
            (
                &a.manager,
                json!({"given_name": "Omar", "family_name": "Yusuf", "gender": "male",
                       "estimated_birth_year": 1980, "blood_type": "O+"}),
            ),
            (
                &a.manager,
                json!({"unhcr_number": "KEN-24-000003", "given_name": "Leila", "family_name": "Hussein",
                       "gender": "female", "refugee_status": "asylum_seeker"}),
            ),
            (
                &other.manager,
                json!({"unhcr_number": "KEN-24-000001", "given_name": "Sara", "family_name": "Ali",
                       "gender": "female"}),
            ),
        ] {
            app.create_patient(token, body).await;
        }
        // A hand edit before the import: version 2 must survive as it is.
        let omar = list_patients(&app, &a.manager, "").await;
        let omar = omar.iter().find(|p| p["given_name"] == "Omar").unwrap();
        let response = app
            .put_json(
                &a.manager,
                &format!("/api/v2/patients/{}", omar["id"].as_str().unwrap()),
                &json!({"version": 1, "camp_section": "B12"}),
            )
            .await;
        assert_eq!(response.status(), 200);
        let before = snapshot_patients(&app).await;
        assert_eq!(before.len(), 4);

        let import = import_ok(
            &app,
            &a.manager,
            &generated_csv("IMP", 1000, "Kakuma"),
            json!({}),
        )
        .await;
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 1004);

        let rollback = run_rollback(&app, &a.manager, "import", &import, None).await;
        assert_eq!(rollback["result"]["patients_removed"], 1000, "{rollback}");
        assert_eq!(rollback["result"]["patients_restored"], 0, "{rollback}");
        assert_eq!(rollback["result"]["conflicts"], json!([]), "{rollback}");
        assert_eq!(rollback["organization_id"], a.id.to_string());
        assert_eq!(
            status_of(&app, &a.manager, &import).await["status"],
            "rolled_back"
        );

        let after = snapshot_patients(&app).await;
        assert_eq!(after.len(), before.len());
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(a, b, "every remaining row is as it was before the import");
        }
        assert_eq!(
            app.count("SELECT COUNT(*) FROM patients WHERE unhcr_number LIKE 'IMP-%'")
                .await,
            0,
            "the imported patients are gone, not soft-deleted"
        );
    }
);

dual_test!(
    rolling_back_an_upsert_import_restores_old_values_one_version_later_and_removes_its_new_patients,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let mut originals = Vec::new();
        for i in 1..=5 {
            originals.push(
                app.create_patient(
                    &a.manager,
                    json!({"unhcr_number": format!("U-{i}"), "given_name": format!("Old{i}"),
                           "family_name": "Abdi", "gender": "female", "current_camp": "Kakuma",
                           "camp_section": format!("B{i}"), "phone_number": format!("+25471100000{i}"),
                           "languages_spoken": ["so"]}),
                )
                .await,
            );
        }
        assert!(originals.iter().all(|p| p["version"] == 1));
        // Existing patients get a new camp and name (phone left empty: kept); three are new.
        let mut csv = String::from("unhcr_number,given_name,family_name,gender,current_camp,phone_number\n");
        for i in 1..=5 {
            csv.push_str(&format!("U-{i},New{i},Abdi,female,Dadaab,\n"));
        }
        for i in 1..=3 {
            csv.push_str(&format!("N-{i},Fresh{i},Yusuf,male,Dadaab,+254722000000\n"));
        }
        let upsert = app.run_import(&a.manager, &csv, json!({"mode": "upsert"})).await;
        assert_eq!(upsert["status"], "completed", "{upsert}");
        assert_eq!(upsert["result"]["rows_updated"], 5);
        assert_eq!(upsert["result"]["rows_imported"], 3);
        let upsert_id = upsert["id"].as_str().unwrap();
        for original in &originals {
            let now: Value = get_patient(&app, &a.manager, original["id"].as_str().unwrap())
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(now["version"], 2);
            assert_eq!(now["current_camp"], "Dadaab");
        }
        let created = list_patients(&app, &a.manager, "unhcr_numbers=N-1,N-2,N-3").await;
        assert_eq!(created.len(), 3);

        let rollback = run_rollback(&app, &a.manager, "import", upsert_id, None).await;
        assert_eq!(rollback["result"]["patients_removed"], 3, "{rollback}");
        assert_eq!(rollback["result"]["patients_restored"], 5, "{rollback}");
        assert_eq!(rollback["result"]["conflicts"], json!([]));
        assert_eq!(status_of(&app, &a.manager, upsert_id).await["status"], "rolled_back");

        for original in &originals {
            let response = get_patient(&app, &a.manager, original["id"].as_str().unwrap()).await;
            assert_eq!(response.status(), 200);
            let restored: Value = response.json().await.unwrap();
            assert_eq!(
                without_change_stamps(&restored),
                without_change_stamps(original),
                "old values back"
            );
            assert_eq!(
                restored["version"], 3,
                "a restore is a change: version 1, upsert 2, rollback 3"
            );
        }
        for patient in &created {
            assert_eq!(
                get_patient(&app, &a.manager, patient["id"].as_str().unwrap())
                    .await
                    .status(),
                404,
                "a patient the upsert created is gone"
            );
        }
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 5);
    }
);

// ---------------------------------------------------------------------------------------
// Update rollback
// ---------------------------------------------------------------------------------------

/// Imports 500 patients into `camp` (and 20 elsewhere), moves the 500 to `Kalobeyei` with
/// a bulk update, then edits three of them by hand. Returns the update id, the three
/// hand-edited patients as they are now, and the 497 others as they were before.
async fn update_then_edit_three_by_hand(
    app: &TestApp,
    token: &str,
    camp: &str,
) -> (String, Vec<Value>, Vec<Value>) {
    import_ok(app, token, &generated_csv("UPD", 500, camp), json!({})).await;
    import_ok(
        app,
        token,
        &generated_csv("OTH", 20, "Elsewhere"),
        json!({}),
    )
    .await;
    let before = list_patients(app, token, &format!("current_camp={camp}")).await;
    assert_eq!(before.len(), 500);
    let update = app
        .run_bulk(
            token,
            "update",
            json!({"filters": {"current_camp": camp}, "changes": {"current_camp": "Kalobeyei"}}),
        )
        .await;
    assert_eq!(update["status"], "completed", "{update}");
    assert_eq!(update["result"]["patients_matched"], 500);
    assert_eq!(update["result"]["patients_updated"], 500);
    let update_id = update["id"].as_str().unwrap().to_string();

    let moved = list_patients(app, token, "current_camp=Kalobeyei").await;
    assert_eq!(moved.len(), 500);
    let mut edited = Vec::new();
    for patient in moved.iter().skip(100).step_by(150).take(3) {
        assert_eq!(patient["version"], 2);
        let response = app
            .put_json(
                token,
                &format!("/api/v2/patients/{}", patient["id"].as_str().unwrap()),
                &json!({"version": 2, "current_camp": "Nakivale", "phone_number": "+256700000001"}),
            )
            .await;
        assert_eq!(response.status(), 200, "hand edit");
        let now: Value = response.json().await.unwrap();
        assert_eq!(now["version"], 3);
        edited.push(now);
    }
    let edited_ids: BTreeSet<String> = ids_of(&edited).into_iter().collect();
    let others = before
        .into_iter()
        .filter(|p| !edited_ids.contains(p["id"].as_str().unwrap()))
        .collect::<Vec<_>>();
    assert_eq!(others.len(), 497);
    (update_id, edited, others)
}

dual_test!(
    rolling_back_an_update_without_force_leaves_hand_edited_patients_as_conflicts,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let (update_id, edited, others) =
            update_then_edit_three_by_hand(&app, &a.manager, "Kakuma").await;

        let rollback = run_rollback(&app, &a.manager, "update", &update_id, None).await;
        let result = &rollback["result"];
        assert_eq!(result["patients_restored"], 497, "{rollback}");
        assert_eq!(result["patients_removed"], 0, "{rollback}");
        let conflicts = result["conflicts"].as_array().expect("conflicts list");
        let conflict_ids: BTreeSet<&str> = conflicts
            .iter()
            .map(|c| c["patient_id"].as_str().unwrap())
            .collect();
        let edited_ids: BTreeSet<&str> = edited.iter().map(|p| p["id"].as_str().unwrap()).collect();
        assert_eq!(conflicts.len(), 3, "{conflicts:?}");
        assert_eq!(conflict_ids, edited_ids, "exactly the hand-edited patients");
        for conflict in conflicts {
            let keys: Vec<&String> = conflict.as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                ["patient_id", "reason"],
                "no other patient data: {conflict}"
            );
            assert!(conflict["reason"].as_str().is_some_and(|r| !r.is_empty()));
        }
        let text = rollback.to_string();
        for value in [
            "Nakivale",
            "Kalobeyei",
            "Kakuma",
            "+256700000001",
            "Given",
            "UPD-",
        ] {
            assert!(
                !text.contains(value),
                "no patient data in the operation: {value}"
            );
        }
        assert_eq!(
            status_of(&app, &a.manager, &update_id).await["status"],
            "rolled_back"
        );

        for patient in &edited {
            let now: Value = get_patient(&app, &a.manager, patient["id"].as_str().unwrap())
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(&now, patient, "the hand edit is kept untouched");
        }
        let restored = list_patients(&app, &a.manager, "current_camp=Kakuma").await;
        assert_eq!(restored.len(), 497);
        for (now, before) in restored.iter().zip(&others) {
            assert_eq!(without_change_stamps(now), without_change_stamps(before));
            assert_eq!(now["version"], 3, "version 1, update 2, rollback 3");
        }
        assert_eq!(
            list_patients(&app, &a.manager, "current_camp=Kalobeyei")
                .await
                .len(),
            0
        );
        assert_eq!(
            list_patients(&app, &a.manager, "current_camp=Elsewhere")
                .await
                .len(),
            20
        );

        // The rollback is done: forcing it afterwards is a second rollback, refused.
        let again = request_rollback(
            &app,
            &a.manager,
            "update",
            &update_id,
            Some(json!({"force": true})),
        )
        .await;
        assert_refused(again, 409, "a second rollback, even forced").await;
    }
);

dual_test!(
    rolling_back_an_update_with_force_restores_the_updated_field_of_hand_edited_patients_too,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let (update_id, edited, _) =
            update_then_edit_three_by_hand(&app, &a.manager, "Kakuma").await;

        let rollback = run_rollback(
            &app,
            &a.manager,
            "update",
            &update_id,
            Some(json!({"force": true})),
        )
        .await;
        assert_eq!(rollback["result"]["patients_restored"], 500, "{rollback}");
        assert_eq!(rollback["result"]["patients_removed"], 0);
        assert_eq!(rollback["result"]["conflicts"], json!([]));
        assert_eq!(
            status_of(&app, &a.manager, &update_id).await["status"],
            "rolled_back"
        );
        assert_eq!(
            list_patients(&app, &a.manager, "current_camp=Kakuma")
                .await
                .len(),
            500
        );
        for patient in &edited {
            let now: Value = get_patient(&app, &a.manager, patient["id"].as_str().unwrap())
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(now["current_camp"], "Kakuma", "forced over the hand edit");
            // The update changed the camp only: the rollback restores that field and
            // leaves the hand edit of another field as it is (SPEC 4.6: "restores
            // every changed field from the backup").
            assert_eq!(now["phone_number"], "+256700000001");
            assert_eq!(now["version"], 4, "1, update 2, hand edit 3, rollback 4");
        }
    }
);

dual_test!(
    rolling_back_an_update_of_list_date_and_emptied_fields_restores_every_value_exactly,
    |app: TestApp| async move {
        // Before-images hold the changed fields only, and a chunk writes only the
        // columns it changes: every kind of column must come back as it was.
        let a = org(&app, "Kakuma Clinic").await;
        import_ok(
            &app,
            &a.manager,
            &generated_csv("TYP", 60, "Kakuma"),
            json!({}),
        )
        .await;
        let before = list_patients(&app, &a.manager, "current_camp=Kakuma").await;
        assert_eq!(before.len(), 60);
        assert!(before
            .iter()
            .any(|p| p["allergies"] == json!(["penicillin"])));
        assert!(before.iter().any(|p| p["allergies"] == json!([])));

        let changes = json!({
            "allergies": ["latex", "nuts"],
            "languages_spoken": ["en"],
            "date_of_birth": "2001-02-03",
            "camp_section": null,
            "email": "clinic@example.org",
        });
        let update = app
            .run_bulk(
                &a.manager,
                "update",
                json!({"filters": {"current_camp": "Kakuma"}, "changes": changes}),
            )
            .await;
        assert_eq!(update["status"], "completed", "{update}");
        assert_eq!(update["result"]["patients_updated"], 60);
        let updated = list_patients(&app, &a.manager, "current_camp=Kakuma").await;
        for patient in &updated {
            assert_eq!(patient["allergies"], json!(["latex", "nuts"]));
            assert_eq!(patient["languages_spoken"], json!(["en"]));
            assert_eq!(patient["date_of_birth"], "2001-02-03");
            assert_eq!(patient["camp_section"], Value::Null);
            assert_eq!(patient["email"], "clinic@example.org");
            assert_eq!(patient["version"], 2);
        }
        // The fields the update did not name are untouched by its narrower UPDATE.
        for (now, was) in updated.iter().zip(&before) {
            for field in ["given_name", "phone_number", "gender", "unhcr_number"] {
                assert_eq!(now[field], was[field], "{field} kept by the update");
            }
        }

        let id = update["id"].as_str().unwrap();
        let rollback = run_rollback(&app, &a.manager, "update", id, None).await;
        assert_eq!(rollback["result"]["patients_restored"], 60, "{rollback}");
        let restored = list_patients(&app, &a.manager, "current_camp=Kakuma").await;
        assert_eq!(restored.len(), 60);
        for (now, was) in restored.iter().zip(&before) {
            assert_eq!(without_change_stamps(now), without_change_stamps(was));
            assert_eq!(now["version"], 3, "version 1, update 2, rollback 3");
        }
    }
);

// ---------------------------------------------------------------------------------------
// Delete rollback
// ---------------------------------------------------------------------------------------

dual_test!(
    rolling_back_a_delete_brings_back_all_two_hundred_patients_unchanged,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        import_ok(
            &app,
            &a.manager,
            &generated_csv("DEL", 300, "Kakuma"),
            json!({}),
        )
        .await;
        let all = list_patients(&app, &a.manager, "").await;
        let doomed: Vec<Value> = all
            .iter()
            .step_by(3)
            .chain(all.iter().skip(1).step_by(3))
            .take(200)
            .cloned()
            .collect();
        assert_eq!(doomed.len(), 200);
        let delete = app
            .run_bulk(
                &a.admin,
                "delete",
                json!({"patient_ids": ids_of(&doomed), "confirm": true}),
            )
            .await;
        assert_eq!(delete["status"], "completed", "{delete}");
        assert_eq!(delete["result"]["patients_deleted"], 200);
        assert_eq!(
            get_patient(&app, &a.manager, doomed[0]["id"].as_str().unwrap())
                .await
                .status(),
            404
        );
        assert_eq!(list_patients(&app, &a.manager, "").await.len(), 100);

        let rollback = run_rollback(
            &app,
            &a.manager,
            "delete",
            delete["id"].as_str().unwrap(),
            None,
        )
        .await;
        assert_eq!(rollback["result"]["patients_restored"], 200, "{rollback}");
        assert_eq!(rollback["result"]["patients_removed"], 0);
        assert_eq!(rollback["result"]["conflicts"], json!([]));
        assert_eq!(
            status_of(&app, &a.manager, delete["id"].as_str().unwrap()).await["status"],
            "rolled_back"
        );
        for before in &doomed {
            let response = get_patient(&app, &a.manager, before["id"].as_str().unwrap()).await;
            assert_eq!(response.status(), 200, "back after the rollback");
            let now: Value = response.json().await.unwrap();
            assert_eq!(
                without_change_stamps(&now),
                without_change_stamps(before),
                "fields unchanged"
            );
            assert_eq!(now["version"], 3, "1, delete 2, rollback 3");
        }
        assert_eq!(list_patients(&app, &a.manager, "").await.len(), 300);
        assert_eq!(
            app.count("SELECT COUNT(*) FROM patients WHERE deleted_at IS NOT NULL")
                .await,
            0
        );
    }
);

dual_test!(
    a_deleted_patient_whose_unhcr_number_was_given_to_someone_else_is_a_conflict_not_a_failure,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        import_ok(
            &app,
            &a.manager,
            &generated_csv("REU", 10, "Kakuma"),
            json!({}),
        )
        .await;
        let all = list_patients(&app, &a.manager, "").await;
        let delete = app
            .run_bulk(
                &a.admin,
                "delete",
                json!({"patient_ids": ids_of(&all), "confirm": true}),
            )
            .await;
        assert_eq!(delete["status"], "completed", "{delete}");
        // The number is free again among live patients, and someone takes it.
        let newcomer = app
            .create_patient(
                &a.manager,
                json!({"unhcr_number": "REU-00004", "given_name": "Newcomer", "family_name": "Ali", "gender": "male"}),
            )
            .await;

        let response = request_rollback(
            &app,
            &a.manager,
            "delete",
            delete["id"].as_str().unwrap(),
            None,
        )
        .await;
        assert_eq!(response.status(), 202);
        let op: Value = response.json().await.unwrap();
        let done = app
            .wait_until_done(&a.manager, op["id"].as_str().unwrap())
            .await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["result"]["patients_restored"], 9, "{done}");
        let conflicts = done["result"]["conflicts"].as_array().unwrap();
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        let clashing = all
            .iter()
            .find(|p| p["unhcr_number"] == "REU-00004")
            .unwrap();
        assert_eq!(conflicts[0]["patient_id"], clashing["id"]);
        assert_eq!(
            get_patient(&app, &a.manager, newcomer["id"].as_str().unwrap())
                .await
                .status(),
            200
        );
    }
);

dual_test!(
    rolling_back_an_import_keeps_the_patients_edited_since_and_lists_them_as_conflicts,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let import = import_ok(
            &app,
            &a.manager,
            &generated_csv("EDT", 20, "Kakuma"),
            json!({}),
        )
        .await;
        let imported = list_patients(&app, &a.manager, "").await;
        let mut edited = Vec::new();
        for patient in [&imported[3], &imported[17]] {
            let response = app
                .put_json(
                    &a.manager,
                    &format!("/api/v2/patients/{}", patient["id"].as_str().unwrap()),
                    &json!({"version": 1, "camp_section": "Seen by a nurse"}),
                )
                .await;
            assert_eq!(response.status(), 200);
            edited.push(response.json::<Value>().await.unwrap());
        }
        let rollback = run_rollback(&app, &a.manager, "import", &import, None).await;
        assert_eq!(rollback["result"]["patients_removed"], 18, "{rollback}");
        let conflicts: BTreeSet<String> = rollback["result"]["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["patient_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(conflicts, ids_of(&edited).into_iter().collect());
        let left = list_patients(&app, &a.manager, "").await;
        assert_eq!(left, edited, "the edited patients stay exactly as edited");
    }
);

dual_test!(
    an_operation_waiting_on_a_rolled_back_import_is_cancelled,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let import = import_ok(
            &app,
            &a.manager,
            &generated_csv("DEP", 5, "Kakuma"),
            json!({}),
        )
        .await;
        let tomorrow = (Utc::now() + Duration::days(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
        let response = app
            .post_json(
                &a.manager,
                "/api/v2/bulk/export/schedule",
                &json!({"scheduled_at": tomorrow, "depends_on": [import]}),
            )
            .await;
        assert_eq!(response.status(), 201);
        let export: Value = response.json().await.unwrap();
        let export_id = export["id"].as_str().unwrap();
        run_rollback(&app, &a.manager, "import", &import, None).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let waiting = loop {
            let op = status_of(&app, &a.manager, export_id).await;
            if op["status"] != "scheduled" || std::time::Instant::now() > deadline {
                break op;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(waiting["status"], "cancelled", "{waiting}");
        assert!(
            waiting["error_message"]
                .as_str()
                .unwrap_or("")
                .contains(&import),
            "the reason names the operation it depended on: {waiting}"
        );
    }
);

// ---------------------------------------------------------------------------------------
// Window and refusals
// ---------------------------------------------------------------------------------------

dual_test!(
    an_import_completed_twenty_five_hours_ago_can_no_longer_be_rolled_back,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let old = import_ok(
            &app,
            &a.manager,
            &generated_csv("OLD", 5, "Kakuma"),
            json!({}),
        )
        .await;
        let recent = import_ok(
            &app,
            &a.manager,
            &generated_csv("NEW", 5, "Kakuma"),
            json!({}),
        )
        .await;
        completed_hours_ago(&app, &old, 25).await;
        completed_hours_ago(&app, &recent, 23).await;

        let body = assert_refused(
            request_rollback(&app, &a.manager, "import", &old, None).await,
            409,
            "outside the 24 h window",
        )
        .await;
        assert_eq!(body["error"]["code"], "conflict");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("window"),
            "{body}"
        );
        assert_eq!(rollback_operations(&app).await, 0, "nothing was scheduled");
        assert_eq!(
            status_of(&app, &a.manager, &old).await["status"],
            "completed"
        );
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 10);

        let rollback = run_rollback(&app, &a.manager, "import", &recent, None).await;
        assert_eq!(
            rollback["result"]["patients_removed"], 5,
            "23 h is still inside the window"
        );
    }
);

dual_test!(
    an_update_can_be_rolled_back_while_its_backup_is_kept_and_not_after,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        import_ok(
            &app,
            &a.manager,
            &generated_csv("WIN", 10, "Kakuma"),
            json!({}),
        )
        .await;
        let update = |camp: &'static str| {
            let app = &app;
            let token = a.manager.clone();
            async move {
                let op = app
                    .run_bulk(
                        &token,
                        "update",
                        json!({"filters": {}, "changes": {"camp_section": camp}}),
                    )
                    .await;
                assert_eq!(op["status"], "completed", "{op}");
                op["id"].as_str().unwrap().to_string()
            }
        };
        let month_old = update("X1").await;
        let day_old = update("X2").await;
        completed_hours_ago(&app, &month_old, 31 * 24).await;
        completed_hours_ago(&app, &day_old, 25).await;
        assert_refused(
            request_rollback(&app, &a.manager, "update", &month_old, None).await,
            409,
            "the 30-day backup retention has passed",
        )
        .await;
        let rollback = run_rollback(&app, &a.manager, "update", &day_old, None).await;
        assert_eq!(
            rollback["result"]["patients_restored"], 10,
            "an update's window is the backup retention, not 24 h"
        );
        assert_eq!(
            list_patients(&app, &a.manager, "camp_section=X1")
                .await
                .len(),
            10
        );
    }
);

dual_test!(
    rolling_back_the_same_import_twice_is_refused,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let import = import_ok(
            &app,
            &a.manager,
            &generated_csv("TWI", 50, "Kakuma"),
            json!({}),
        )
        .await;
        let first = request_rollback(&app, &a.manager, "import", &import, None).await;
        assert_eq!(first.status(), 202);
        let first: Value = first.json().await.unwrap();
        // At once, while the first is scheduled, running or already done.
        assert_refused(
            request_rollback(&app, &a.manager, "import", &import, None).await,
            409,
            "a rollback of it is already under way",
        )
        .await;
        let done = app
            .wait_until_done(&a.manager, first["id"].as_str().unwrap())
            .await;
        assert_eq!(done["status"], "completed", "{done}");
        let body = assert_refused(
            request_rollback(
                &app,
                &a.manager,
                "import",
                &import,
                Some(json!({"force": true})),
            )
            .await,
            409,
            "already rolled back",
        )
        .await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("already"),
            "{body}"
        );
        assert_eq!(rollback_operations(&app).await, 1);
    }
);

dual_test!(
    simultaneous_rollback_requests_for_one_operation_start_a_single_rollback,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        import_ok(
            &app,
            &a.manager,
            &generated_csv("SIM", 50, "Kakuma"),
            json!({}),
        )
        .await;
        let update = app
            .run_bulk(
                &a.manager,
                "update",
                json!({"filters": {}, "changes": {"camp_section": "Z"}}),
            )
            .await;
        let id = update["id"].as_str().unwrap();
        let requests = (0..10).map(|_| {
            request_rollback(&app, &a.manager, "update", id, Some(json!({"force": true})))
        });
        let statuses: Vec<u16> = futures::future::join_all(requests)
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        let accepted = statuses.iter().filter(|s| **s == 202).count();
        assert_eq!(accepted, 1, "one rollback, the others 409: {statuses:?}");
        assert!(
            statuses.iter().all(|s| *s == 202 || *s == 409),
            "{statuses:?}"
        );
        assert_eq!(rollback_operations(&app).await, 1);
    }
);

dual_test!(
    operations_that_did_not_complete_cannot_be_rolled_back,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let failed = app
            .run_import(
                &a.manager,
                &sample("patients-bad-rows.csv"),
                json!({"on_error": "abort"}),
            )
            .await;
        assert_eq!(failed["status"], "failed", "{failed}");
        assert_refused(
            request_rollback(
                &app,
                &a.manager,
                "import",
                failed["id"].as_str().unwrap(),
                None,
            )
            .await,
            409,
            "a failed import",
        )
        .await;

        let tomorrow = (Utc::now() + Duration::days(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
        let response = app
            .schedule_import(
                &a.manager,
                &generated_csv("LATER", 3, "Kakuma"),
                json!({"scheduled_at": tomorrow}),
            )
            .await;
        assert_eq!(response.status(), 201);
        let scheduled: Value = response.json().await.unwrap();
        let scheduled_id = scheduled["id"].as_str().unwrap();
        assert_eq!(
            status_of(&app, &a.manager, scheduled_id).await["status"],
            "scheduled"
        );
        let body = assert_refused(
            request_rollback(&app, &a.manager, "import", scheduled_id, None).await,
            409,
            "a still-scheduled import",
        )
        .await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("complete"),
            "{body}"
        );

        let cancel = app
            .post_json(
                &a.manager,
                &format!("/api/v2/bulk-operations/{scheduled_id}/cancel"),
                &json!({}),
            )
            .await;
        assert_eq!(cancel.status(), 200);
        assert_refused(
            request_rollback(&app, &a.manager, "import", scheduled_id, None).await,
            409,
            "a cancelled import",
        )
        .await;
        assert_eq!(rollback_operations(&app).await, 0);
    }
);

dual_test!(
    a_dry_run_import_cannot_be_rolled_back,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let dry = app
            .run_import(
                &a.manager,
                &sample("patients-basic.csv"),
                json!({"dry_run": true}),
            )
            .await;
        assert_eq!(dry["status"], "completed");
        assert_eq!(dry["dry_run"], true);
        let body = assert_refused(
            request_rollback(
                &app,
                &a.manager,
                "import",
                dry["id"].as_str().unwrap(),
                None,
            )
            .await,
            409,
            "a dry run changed nothing",
        )
        .await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("dry run"),
            "{body}"
        );
        assert_eq!(rollback_operations(&app).await, 0);
    }
);

dual_test!(
    a_rollback_cannot_itself_be_rolled_back_and_the_endpoint_must_match_the_type,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let import = import_ok(
            &app,
            &a.manager,
            &generated_csv("RR", 5, "Kakuma"),
            json!({}),
        )
        .await;
        let rollback = run_rollback(&app, &a.manager, "import", &import, None).await;
        let rollback_id = rollback["id"].as_str().unwrap();
        // Issue 4: rolling back a rollback answers 409, whichever endpoint is used.
        for kind in ["import", "update", "delete"] {
            assert_refused(
                request_rollback(&app, &a.manager, kind, rollback_id, None).await,
                409,
                "a rollback of a rollback",
            )
            .await;
        }
        // An operation of another type through the wrong endpoint is not found either.
        let other = import_ok(
            &app,
            &a.manager,
            &generated_csv("RS", 5, "Kakuma"),
            json!({}),
        )
        .await;
        for kind in ["update", "delete"] {
            assert_refused(
                request_rollback(&app, &a.manager, kind, &other, None).await,
                404,
                &format!("an import through the {kind} endpoint"),
            )
            .await;
        }
        assert_eq!(
            status_of(&app, &a.manager, &other).await["status"],
            "completed"
        );
        assert_eq!(rollback_operations(&app).await, 1);
    }
);

dual_test!(
    an_update_made_without_a_backup_cannot_be_rolled_back,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        import_ok(
            &app,
            &a.manager,
            &generated_csv("NB", 20, "Kakuma"),
            json!({}),
        )
        .await;
        let update = app
            .run_bulk(
                &a.manager,
                "update",
                json!({"filters": {"current_camp": "Kakuma"}, "changes": {"current_camp": "Dadaab"},
                       "create_backup": false, "confirm": true}),
            )
            .await;
        assert_eq!(update["status"], "completed", "{update}");
        assert_eq!(update["result"]["backup_id"], Value::Null);
        let body = assert_refused(
            request_rollback(
                &app,
                &a.manager,
                "update",
                update["id"].as_str().unwrap(),
                Some(json!({"force": true})),
            )
            .await,
            409,
            "no backup",
        )
        .await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("backup"),
            "{body}"
        );
        assert_eq!(rollback_operations(&app).await, 0);
        assert_eq!(
            list_patients(&app, &a.manager, "current_camp=Dadaab")
                .await
                .len(),
            20
        );
    }
);

// ---------------------------------------------------------------------------------------
// Organizations and permissions
// ---------------------------------------------------------------------------------------

dual_test!(
    another_organizations_operation_cannot_be_rolled_back_and_answers_404,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let b = org(&app, "Dadaab Clinic").await;
        let import = import_ok(
            &app,
            &a.manager,
            &generated_csv("XO", 10, "Kakuma"),
            json!({}),
        )
        .await;
        let update = app
            .run_bulk(
                &a.manager,
                "update",
                json!({"filters": {}, "changes": {"camp_section": "Q"}}),
            )
            .await;
        for (kind, id) in [
            ("import", import.as_str()),
            ("update", update["id"].as_str().unwrap()),
        ] {
            for token in [&b.manager, &b.admin] {
                let body = assert_refused(
                    request_rollback(&app, token, kind, id, Some(json!({"force": true}))).await,
                    404,
                    "another organization's operation",
                )
                .await;
                assert_eq!(body["error"]["code"], "not_found");
            }
        }
        assert_refused(
            request_rollback(
                &app,
                &a.manager,
                "import",
                &Uuid::now_v7().to_string(),
                None,
            )
            .await,
            404,
            "an id that does not exist",
        )
        .await;
        assert_eq!(rollback_operations(&app).await, 0);
        assert_eq!(
            status_of(&app, &a.manager, &import).await["status"],
            "completed"
        );
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 10);
    }
);

dual_test!(
    viewers_and_analysts_may_not_roll_back_and_are_refused_with_403,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let import = import_ok(
            &app,
            &a.manager,
            &generated_csv("PERM", 10, "Kakuma"),
            json!({}),
        )
        .await;
        for role in [Role::Viewer, Role::Analyst] {
            let token = app.user_token(a.id, role).await;
            let body = assert_refused(
                request_rollback(&app, &token, "import", &import, None).await,
                403,
                role.as_str(),
            )
            .await;
            assert_eq!(body["error"]["code"], "forbidden");
        }
        let anonymous = app
            .client
            .post(app.url(&format!("/api/v2/bulk/import/rollback/{import}")))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401);
        assert_eq!(rollback_operations(&app).await, 0);
        assert_eq!(
            app.count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE action = 'permission.denied' \
                 AND resource_id = 'POST /api/v2/bulk/import/rollback/{import}'"
            ))
            .await,
            2,
            "each refusal is audited"
        );
        // The admin may, as the data manager may (the other tests).
        let rollback = run_rollback(&app, &a.admin, "import", &import, None).await;
        assert_eq!(rollback["result"]["patients_removed"], 10);
    }
);

// ---------------------------------------------------------------------------------------
// Audit and progress
// ---------------------------------------------------------------------------------------

dual_test!(
    every_rollback_is_written_to_the_audit_log_without_patient_data,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let import = import_ok(
            &app,
            &a.manager,
            &generated_csv("AUD", 30, "Kakuma"),
            json!({}),
        )
        .await;
        let update = app
            .run_bulk(
                &a.manager,
                "update",
                json!({"filters": {}, "changes": {"camp_section": "Audited"}}),
            )
            .await;
        let ids = ids_of(&list_patients(&app, &a.manager, "").await);
        let delete = app
            .run_bulk(
                &a.admin,
                "delete",
                json!({"patient_ids": &ids[..10], "confirm": true}),
            )
            .await;
        let mut rollbacks = Vec::new();
        for (kind, id) in [
            ("delete", delete["id"].as_str().unwrap()),
            ("update", update["id"].as_str().unwrap()),
            ("import", import.as_str()),
        ] {
            // run_rollback checks the 'operation.schedule' and 'operation.complete' entries.
            // Forced: each restore moves versions on, which would make the next one conflict.
            let done = run_rollback(&app, &a.manager, kind, id, Some(json!({"force": true}))).await;
            assert_eq!(done["result"]["conflicts"], json!([]), "{done}");
            rollbacks.push(done["id"].as_str().unwrap().to_string());
        }
        assert_eq!(app.count("SELECT COUNT(*) FROM patients").await, 0);
        let log: Value = app
            .get(&a.admin, "/api/v2/audit?limit=200")
            .await
            .json()
            .await
            .unwrap();
        let events = log["events"].as_array().expect("events");
        for id in &rollbacks {
            let scheduled = events
                .iter()
                .find(|e| e["action"] == "operation.schedule" && e["resource_id"] == id.as_str())
                .unwrap_or_else(|| panic!("schedule entry of {id} in GET /api/v2/audit"));
            assert_eq!(scheduled["outcome"], "success");
        }
        let text = log.to_string();
        for value in ["AUD-000", "Given1", "Family1", "Audited", "+2547"] {
            assert!(
                !text.contains(value),
                "no patient data in the audit log: {value}"
            );
        }
        let verify = app.audit_verify(&a.admin).await;
        assert_eq!(verify["intact"], true, "{verify}");
    }
);

dual_test!(
    a_finished_rollback_reports_its_progress_in_patients,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        let import = import_ok(
            &app,
            &a.manager,
            &generated_csv("PRO", 700, "Kakuma"),
            json!({}),
        )
        .await;
        let rollback = run_rollback(&app, &a.manager, "import", &import, None).await;
        assert_eq!(rollback["result"]["patients_removed"], 700);
        assert_eq!(rollback["progress"]["percent"], 100.0, "{rollback}");
        assert_eq!(rollback["progress"]["processed"], 700, "{rollback}");
        assert_eq!(rollback["progress"]["total"], 700, "{rollback}");
    }
);

dual_test!(
    conflicts_are_rows_paged_by_an_endpoint_and_sampled_in_the_result,
    |app: TestApp| async move {
        let a = org(&app, "Kakuma Clinic").await;
        import_ok(
            &app,
            &a.manager,
            &generated_csv("CON", 250, "Kakuma"),
            json!({}),
        )
        .await;
        let update = app
            .run_bulk(
                &a.manager,
                "update",
                json!({"filters": {"current_camp": "Kakuma"}, "changes": {"current_camp": "Kalobeyei"}}),
            )
            .await;
        assert_eq!(update["result"]["patients_updated"], 250, "{update}");
        let update_id = update["id"].as_str().unwrap().to_string();
        // Every patient is edited after the update: every restore is a conflict.
        app.raw_sql("UPDATE patients SET version = version + 1")
            .await
            .unwrap();

        let rollback = run_rollback(&app, &a.manager, "update", &update_id, None).await;
        let result = &rollback["result"];
        assert_eq!(result["patients_restored"], 0, "{rollback}");
        assert_eq!(result["conflicts_total"], 250, "{rollback}");
        assert_eq!(
            result["conflicts"].as_array().unwrap().len(),
            100,
            "a sample"
        );
        let rollback_id = rollback["id"].as_str().unwrap();
        // The cursor holds counts, not the list (it grew quadratically).
        let cursor_bytes = app
            .count(&format!(
                "SELECT CAST(LENGTH(progress_cursor) AS BIGINT) FROM bulk_operations WHERE id = {}",
                id_sql(&app, rollback_id)
            ))
            .await;
        assert!(cursor_bytes < 1_000, "cursor of {cursor_bytes} bytes");

        let mut seen = BTreeSet::new();
        let mut cursor = String::new();
        loop {
            let page: Value = app
                .get(
                    &a.manager,
                    &format!(
                        "/api/v2/bulk-operations/{rollback_id}/conflicts?limit=200&cursor={cursor}"
                    ),
                )
                .await
                .json()
                .await
                .unwrap();
            for c in page["conflicts"].as_array().unwrap() {
                assert!(seen.insert(c["patient_id"].as_str().unwrap().to_string()));
                assert!(c["reason"].as_str().unwrap().contains("changed after"));
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = next.to_string(),
                None => break,
            }
        }
        assert_eq!(seen.len(), 250, "every conflict, once");
        // Another organization sees none of it.
        let b = org(&app, "Other Clinic").await;
        let other = app
            .get(
                &b.manager,
                &format!("/api/v2/bulk-operations/{rollback_id}/conflicts"),
            )
            .await;
        assert_eq!(other.status(), 404);
    }
);
