//! Row-level security on PostgreSQL (issue 8): a service role that is not a superuser,
//! as Haven should run in production, sees only the organization its transaction names,
//! even with a query that has no organization condition; nothing without a setting; and
//! Haven itself (API paths and the engine) works under it.

mod common;

use common::{Backend, TestApp};
use haven::domain::filters::PatientFilters;
use haven::domain::permission::Role;
use haven::store::Page;
use serde_json::{json, Value};
use sqlx::Connection;

/// A login role without superuser rights, with the grants Haven needs on the test
/// database; dropped again by [`RoleGuard`].
struct RoleGuard {
    name: String,
}

impl Drop for RoleGuard {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&common::postgres_admin_url()).await?;
                sqlx::query(&format!("DROP ROLE IF EXISTS {name}"))
                    .execute(&mut conn)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
            .map_err(std::io::Error::other)
        })
        .join();
    }
}

async fn service_role(app: &TestApp) -> (RoleGuard, String) {
    let name = format!("haven_service_{}", uuid::Uuid::new_v4().simple());
    for sql in [
        format!("CREATE ROLE {name} LOGIN NOSUPERUSER NOBYPASSRLS"),
        format!("GRANT USAGE ON SCHEMA public TO {name}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name}"),
        format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {name}"),
    ] {
        app.raw_sql(&sql).await.expect(&sql);
    }
    // The test database's URL with the service role as the user.
    let (_, rest) = app.db.url.split_once("://").unwrap();
    let (_, host_and_db) = rest.split_once('@').unwrap();
    let url = format!("postgres://{name}@{host_and_db}");
    (RoleGuard { name }, url)
}

async fn count_as(url: &str, setting: Option<&str>, sql: &str) -> Result<i64, sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let mut tx = conn.begin().await?;
    if let Some(org) = setting {
        sqlx::query("SELECT set_config('haven.organization_id', $1, true)")
            .bind(org)
            .execute(&mut *tx)
            .await?;
    }
    let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(n)
}

async fn patients_of(app: &TestApp, org_name: &str, names: &[&str]) -> (uuid::Uuid, String) {
    let org = app.create_org(org_name).await;
    let token = app.user_token(org, Role::Admin).await;
    for name in names {
        app.create_patient(
            &token,
            json!({"given_name": name, "family_name": "Test", "gender": "other"}),
        )
        .await;
    }
    (org, token)
}

/// PostgreSQL only: SQLite has no roles and no row-level security.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_limits_the_service_role_to_one_organization() {
    let app = TestApp::spawn_with(Backend::Postgres, &["--workers", "0"]).await;
    let (a, a_token) = patients_of(&app, "Clinic A", &["Amina", "Leila"]).await;
    let (b, _) = patients_of(&app, "Clinic B", &["Omar"]).await;
    let (_role, url) = service_role(&app).await;

    // No organization condition in the query: the policy alone decides.
    let all = "SELECT COUNT(*) FROM patients";
    assert_eq!(count_as(&url, Some(&a.to_string()), all).await.unwrap(), 2);
    assert_eq!(count_as(&url, Some(&b.to_string()), all).await.unwrap(), 1);
    assert_eq!(
        count_as(&url, None, all).await.unwrap(),
        0,
        "no setting, no rows"
    );
    assert_eq!(count_as(&url, Some("*"), all).await.unwrap(), 3);
    for table in [
        "users",
        "tokens",
        "audit_events",
        "audit_heads",
        "bulk_operations",
    ] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE organization_id <> '{a}'");
        assert_eq!(
            count_as(&url, Some(&a.to_string()), &sql).await.unwrap(),
            0,
            "{table}"
        );
    }
    // A row for another organization cannot be written either.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('haven.organization_id', $1, true)")
        .bind(a.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let moved = sqlx::query("UPDATE patients SET organization_id = $1")
        .bind(b)
        .execute(&mut *tx)
        .await;
    assert!(
        moved.is_err(),
        "WITH CHECK refuses rows of another organization"
    );
    drop(tx);

    // Haven running as the service role: the request paths and the engine.
    let schedule = app
        .schedule_import(
            &a_token,
            "given_name,family_name,gender\nNadia,Hassan,female\n",
            json!({}),
        )
        .await;
    assert_eq!(schedule.status(), 201);
    let op: Value = schedule.json().await.unwrap();
    let config = common::config_with(app.dir.path(), &url, &["--no-migrate", "--workers", "0"]);
    let store = haven::app::open_store(&config)
        .await
        .expect("open as the service role");
    let page = Page {
        after: None,
        limit: 50,
    };
    let listed = store
        .list_patients(a, &PatientFilters::default(), &page)
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    let omar = app
        .store
        .list_patients(b, &PatientFilters::default(), &page)
        .await
        .unwrap();
    assert!(store.get_patient(a, omar[0].id).await.unwrap().is_none());
    let keyring = haven::app::load_keyring(&config).unwrap();
    let engine = haven::app::start_engine(store.clone(), keyring, &config).unwrap();
    engine
        .run_once()
        .await
        .expect("the engine runs as the service role");
    let done = app
        .wait_until_done(&a_token, op["id"].as_str().unwrap())
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(count_as(&url, Some(&a.to_string()), all).await.unwrap(), 3);
    let keys = haven::audit::AuditKeys::from_keyring(&haven::app::load_keyring(&config).unwrap());
    let verified = haven::audit::verify(store.as_ref(), a, &keys, None)
        .await
        .unwrap();
    assert!(verified.broken.is_none(), "{:?}", verified.broken);
}
