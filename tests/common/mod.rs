//! Test harness: spawns Haven on port 0 against a fresh SQLite file or a fresh
//! PostgreSQL database, and offers typed helpers. Every database-backed test runs on
//! both backends through `dual_test!`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use haven::config::Config;
use haven::domain::permission::Role;
use haven::store::Store;
use serde_json::{json, Value};
use uuid::Uuid;

pub mod faults;

/// Where the PostgreSQL tests create their databases. Required, never skipped: without
/// a reachable server the PostgreSQL half of the suite fails.
pub fn postgres_admin_url() -> String {
    std::env::var("HAVEN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test; PostgreSQL ones are dropped afterwards.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
}

impl TestDb {
    /// A database that exists already and outlives the test (nothing is dropped).
    pub fn existing(url: &str) -> TestDb {
        TestDb {
            url: url.to_string(),
            pg_name: None,
        }
    }

    pub async fn create(backend: Backend, dir: &std::path::Path) -> TestDb {
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.join("haven.db").display()),
                pg_name: None,
            },
            Backend::Postgres => {
                let name = format!("haven_test_{}", Uuid::new_v4().simple());
                let admin = postgres_admin_url();
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .expect("PostgreSQL must be reachable for the PostgreSQL tests (HAVEN_TEST_POSTGRES_URL)");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                TestDb {
                    url: format!("{base}/{name}"),
                    pg_name: Some(name),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs outside async; a short-lived thread with its own runtime does it.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&postgres_admin_url())
                        .await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
            .map_err(std::io::Error::other)
        })
        .join();
    }
}

/// A running Haven for one test.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub engine: Arc<haven::engine::Engine>,
    pub client: reqwest::Client,
    pub backend: Backend,
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A config as the command line would build it, with extra flags.
pub fn config_with(dir: &std::path::Path, db_url: &str, extra: &[&str]) -> Config {
    let mut args = vec![
        "haven".to_string(),
        "--data-dir".to_string(),
        dir.display().to_string(),
        "--database-url".to_string(),
        db_url.to_string(),
        "--master-key".to_string(),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    haven::cli::Cli::try_parse_from(args)
        .expect("test flags parse")
        .config
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, &[]).await
    }

    pub async fn spawn_with(backend: Backend, extra_flags: &[&str]) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = TestDb::create(backend, dir.path()).await;
        Self::spawn_on(backend, db, dir, extra_flags).await
    }

    /// Haven on a database of the caller's (a PostgreSQL server the test runs itself).
    pub async fn spawn_on(
        backend: Backend,
        db: TestDb,
        dir: tempfile::TempDir,
        extra_flags: &[&str],
    ) -> TestApp {
        let config = Arc::new(config_with(dir.path(), &db.url, extra_flags));
        let store = haven::app::open_store(&config).await.expect("open store");
        let keyring = haven::app::load_keyring(&config).expect("keyring");
        let engine = haven::app::start_engine(store.clone(), keyring, &config).expect("engine");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server_store = store.clone();
        let server_config = config.clone();
        let server_engine = engine.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = haven::app::serve(
                server_store,
                server_config,
                server_engine,
                listener,
                shutdown,
            )
            .await
            {
                eprintln!("test server stopped: {e:#}");
            }
        });
        TestApp {
            addr,
            base: format!("http://{addr}"),
            store,
            config,
            engine,
            client: reqwest::Client::new(),
            backend,
            db,
            dir,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn create_org(&self, name: &str) -> Uuid {
        haven::app::create_organization(self.store.as_ref(), name)
            .await
            .expect("create org")
            .id
    }

    /// Creates a user with a role and logs in; returns the bearer token.
    pub async fn user_token(&self, org: Uuid, role: Role) -> String {
        let email = format!("{}-{}@example.org", role.as_str(), Uuid::new_v4().simple());
        let password = "correct-horse-battery-staple";
        haven::app::create_user(self.store.as_ref(), org, &email, role, password)
            .await
            .expect("create user");
        let response = self.login(&email, password).await;
        assert_eq!(response.status(), 200, "login of a fresh user");
        let body: Value = response.json().await.expect("login json");
        body["token"].as_str().expect("token").to_string()
    }

    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/v2/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("login request")
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET")
    }

    pub async fn post_json(&self, token: &str, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn put_json(&self, token: &str, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("PUT")
    }

    pub async fn delete(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("DELETE")
    }

    /// Creates a patient through the API and returns its JSON.
    pub async fn create_patient(&self, token: &str, body: Value) -> Value {
        let response = self.post_json(token, "/api/v2/patients", &body).await;
        assert_eq!(response.status(), 201, "create patient");
        response.json().await.expect("patient json")
    }

    /// Runs a SQL statement directly against the test database (for tampering tests).
    pub async fn raw_sql(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let mut conn =
                    <sqlx::SqliteConnection as sqlx::Connection>::connect(&self.db.url).await?;
                Ok(sqlx::query(sql).execute(&mut conn).await?.rows_affected())
            }
            Backend::Postgres => {
                let mut conn =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&self.db.url).await?;
                Ok(sqlx::query(sql).execute(&mut conn).await?.rows_affected())
            }
        }
    }

    /// Counts rows with a SQL query returning one integer.
    pub async fn count(&self, sql: &str) -> i64 {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&self.db.url)
                    .await
                    .expect("connect");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut conn)
                    .await
                    .expect("count")
            }
            Backend::Postgres => {
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&self.db.url)
                    .await
                    .expect("connect");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut conn)
                    .await
                    .expect("count")
            }
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The path of the built `haven` binary.
pub fn haven_bin() -> &'static str {
    env!("CARGO_BIN_EXE_haven")
}

/// Defines one test per backend: `dual_test!(name, |app| async move { ... })`, or with
/// command-line flags for the app: `dual_test!(name, flags = &["--workers", "0"], ...)`.
#[macro_export]
macro_rules! dual_test {
    ($name:ident, flags = $flags:expr, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = common::TestApp::spawn_with(common::Backend::Sqlite, $flags).await;
                ($body)(app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let app = common::TestApp::spawn_with(common::Backend::Postgres, $flags).await;
                ($body)(app).await;
            }
        }
    };
    ($name:ident, $body:expr) => {
        $crate::dual_test!($name, flags = &[], $body);
    };
}

/// One test per backend for bodies that start their own app (they need something,
/// such as a port, before it exists): `dual_backend_test!(name, |backend| ...)`.
#[macro_export]
macro_rules! dual_backend_test {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)(common::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)(common::Backend::Postgres).await;
            }
        }
    };
}

/// A sample file of `tests/samples` (a copy of the shared samples, kept in the repository).
pub fn sample(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/samples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("sample {}: {e}", path.display()))
}

impl TestApp {
    /// Schedules an import of `csv` (JSON form) with extra options; returns the response.
    pub async fn schedule_import(
        &self,
        token: &str,
        csv: &str,
        options: Value,
    ) -> reqwest::Response {
        let mut body = json!({"csv_data": csv, "file_name": "test.csv"});
        if let (Some(b), Some(o)) = (body.as_object_mut(), options.as_object()) {
            for (k, v) in o {
                b.insert(k.clone(), v.clone());
            }
        }
        self.post_json(token, "/api/v2/bulk/import/schedule", &body)
            .await
    }

    /// Waits (up to 120 s) until the operation has ended; returns it.
    pub async fn wait_until_done(&self, token: &str, id: &str) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let op: Value = self
                .get(token, &format!("/api/v2/bulk-operations/{id}/status"))
                .await
                .json()
                .await
                .expect("status json");
            let status = op["status"].as_str().unwrap_or("").to_string();
            if !["scheduled", "processing"].contains(&status.as_str()) {
                return op;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "operation {id} did not end: {op}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// Schedules, checks the 201, and waits for the end.
    pub async fn run_import(&self, token: &str, csv: &str, options: Value) -> Value {
        let response = self.schedule_import(token, csv, options).await;
        assert_eq!(response.status(), 201, "schedule import");
        let op: Value = response.json().await.expect("op json");
        self.wait_until_done(token, op["id"].as_str().expect("id"))
            .await
    }

    /// Schedules a JSON bulk operation (`export`, `update`, `delete`) and waits for it.
    pub async fn run_bulk(&self, token: &str, kind: &str, body: Value) -> Value {
        let response = self
            .post_json(token, &format!("/api/v2/bulk/{kind}/schedule"), &body)
            .await;
        assert_eq!(response.status(), 201, "schedule {kind}");
        let op: Value = response.json().await.expect("op json");
        self.wait_until_done(token, op["id"].as_str().expect("id"))
            .await
    }

    pub async fn row_errors(&self, token: &str, id: &str) -> Vec<Value> {
        let body: Value = self
            .get(token, &format!("/api/v2/bulk-operations/{id}/errors"))
            .await
            .json()
            .await
            .expect("errors json");
        body["errors"].as_array().cloned().unwrap_or_default()
    }
}

impl TestApp {
    /// Starts a second engine on this app's store, lets it work on operation `id` until
    /// at least `rows` are committed, then kills it the way a crash would: mid-chunk,
    /// lease still held. Returns the rows committed when it was killed.
    pub async fn kill_worker_midway(&self, org: Uuid, id: Uuid, rows: i64) -> i64 {
        let worker = haven::app::start_engine(
            self.store.clone(),
            self.engine.keyring.clone(),
            &self.config,
        )
        .expect("engine");
        let running = tokio::spawn(async move { worker.run_once().await });
        let mut committed = 0;
        for _ in 0..5000 {
            let op = self
                .store
                .get_operation(org, id)
                .await
                .expect("read")
                .expect("op");
            committed = op.progress_processed;
            if committed >= rows {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert!(committed >= rows, "the worker made no progress");
        running.abort();
        let _ = running.await;
        // A COMMIT already handed to the database may still land after the task is gone.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        committed
    }
}

impl TestApp {
    /// A `haven worker` process on this app's database and data directory.
    pub fn spawn_worker(&self, extra: &[&str]) -> tokio::process::Child {
        self.spawn_worker_logging(extra, None)
    }

    /// A `haven worker` process whose log (stderr) goes to `log`, when given.
    pub fn spawn_worker_logging(
        &self,
        extra: &[&str],
        log: Option<&std::path::Path>,
    ) -> tokio::process::Child {
        let stderr = match log {
            Some(path) => std::fs::File::create(path)
                .map(std::process::Stdio::from)
                .expect("worker log file"),
            None => std::process::Stdio::null(),
        };
        tokio::process::Command::new(haven_bin())
            .arg("worker")
            .args(["--database-url", &self.db.url])
            .args(extra)
            .arg("--data-dir")
            .arg(self.dir.path())
            .env(
                "HAVEN_MASTER_KEY",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            )
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start haven worker")
    }

    /// Schedules an import by multipart upload: the part `file` and text options.
    pub async fn multipart_import(
        &self,
        token: &str,
        bytes: Vec<u8>,
        options: &[(&str, String)],
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name("camp.csv"),
        );
        for (name, value) in options {
            form = form.text(name.to_string(), value.clone());
        }
        self.client
            .post(self.url("/api/v2/bulk/import/schedule"))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .expect("multipart POST")
    }

    /// An operation's error report as CSV (`Accept: text/csv`).
    pub async fn error_report_csv(&self, token: &str, id: &str) -> String {
        self.client
            .get(self.url(&format!("/api/v2/bulk-operations/{id}/errors")))
            .bearer_auth(token)
            .header("accept", "text/csv")
            .send()
            .await
            .expect("errors request")
            .text()
            .await
            .expect("errors text")
    }

    /// `GET /api/v2/audit/verify` as the given admin.
    pub async fn audit_verify(&self, token: &str) -> Value {
        self.get(token, "/api/v2/audit/verify")
            .await
            .json()
            .await
            .expect("verify json")
    }

    /// A fresh organization whose admin logged in and created three patients: four
    /// audit entries. Returns the organization and the admin's token.
    pub async fn audited_history(&self) -> (Uuid, String) {
        let org = self.create_org("Clinic").await;
        let token = self.user_token(org, Role::Admin).await;
        for name in ["Amina", "Leila", "Omar"] {
            self.create_patient(
                &token,
                json!({"given_name": name, "family_name": "Test", "gender": "other"}),
            )
            .await;
        }
        (org, token)
    }
}

impl TestApp {
    /// The organization's live patients, read from the store page by page.
    pub async fn all_patients(&self, org: Uuid) -> Vec<haven::domain::patient::Patient> {
        let mut patients = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .scan_patients(haven::store::ops::PatientScan {
                    org,
                    filters: &Default::default(),
                    include_deleted: false,
                    imported_by: None,
                    page: haven::store::Page {
                        after,
                        limit: 5_000,
                    },
                })
                .await
                .expect("scan");
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            patients.extend(page);
        }
        patients
    }
}
