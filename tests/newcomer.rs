//! A newcomer's path: a fresh data dir, `haven serve`, log in with what it printed.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Backend, TestDb};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn first_start_prints_working_credentials(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("haven-data");
    let db = TestDb::create(backend, &data_dir).await;
    let mut command = tokio::process::Command::new(common::haven_bin());
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if backend == Backend::Postgres {
        command.env("DATABASE_URL", &db.url);
    }
    let mut child = command.spawn().expect("start haven serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut login, mut url) = (None, None);
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("login: ") {
                login = Some(rest.to_string());
            }
            if let Some(start) = line.find("http://") {
                url = Some(
                    line[start..]
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .trim_end_matches('/')
                        .to_string(),
                );
                break;
            }
        }
    })
    .await
    .expect("haven serve printed its URL");
    let login = login.expect("a login line");
    let (email, password) = login
        .split_once(" password: ")
        .expect("login: EMAIL password: PASSWORD");
    assert_eq!(email, "admin@demo.local");
    assert!(password.len() >= 12);
    if backend == Backend::Sqlite {
        assert!(
            data_dir.join("haven.db").exists(),
            "SQLite created in ./haven-data"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(data_dir.join("master.key"))
        .expect("master key generated")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(&data_dir).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700, "the data dir is the owner's only");
    if backend == Backend::Sqlite {
        let db_mode = std::fs::metadata(data_dir.join("haven.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            db_mode & 0o777,
            0o600,
            "the database file is the owner's only"
        );
    }

    let client = reqwest::Client::new();
    let base = url.expect("URL line");
    let response = client
        .post(format!("{base}/api/v2/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["role"], "admin");
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let _ = child.kill().await;

    // A second start finds the organization and prints no new password.
    let mut again = tokio::process::Command::new(common::haven_bin());
    again
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if backend == Backend::Postgres {
        again.env("DATABASE_URL", &db.url);
    }
    let mut child = again.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        first.contains("listening"),
        "no bootstrap the second time: {first}"
    );
    let _ = child.kill().await;
}

#[tokio::test]
async fn a_fresh_data_dir_serves_and_the_printed_login_works_on_sqlite() {
    first_start_prints_working_credentials(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_fresh_database_serves_and_the_printed_login_works_on_postgres() {
    first_start_prints_working_credentials(Backend::Postgres).await;
}

#[test]
fn a_blob_store_of_another_kind_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(common::haven_bin())
        .args([
            "serve",
            "--no-bootstrap",
            "--listen",
            "127.0.0.1:0",
            "--blob-store",
            "gs://bucket/prefix",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("--blob-store gs://bucket/prefix: expected a directory or s3://bucket/prefix"));
    assert!(
        !dir.path().join("gs:").exists(),
        "no local directory named after the URL"
    );
}

#[tokio::test]
async fn admin_commands_create_an_organization_and_a_user_who_can_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], password: Option<&str>| {
        let mut c = std::process::Command::new(common::haven_bin());
        c.args(args).arg("--data-dir").arg(dir.path());
        if let Some(p) = password {
            c.env("HAVEN_PASSWORD", p);
        }
        c.output().unwrap()
    };
    let org = run(&["admin", "create-org", "Zaatari Clinic"], None);
    assert!(org.status.success());
    let org_id = String::from_utf8(org.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let weak = run(
        &[
            "admin",
            "create-user",
            "--org",
            &org_id,
            "--email",
            "dm@z.example.org",
            "--role",
            "data_manager",
        ],
        Some("short"),
    );
    assert!(!weak.status.success(), "password policy enforced");
    let user = run(
        &[
            "admin",
            "create-user",
            "--org",
            &org_id,
            "--email",
            "dm@z.example.org",
            "--role",
            "data_manager",
        ],
        Some("a-long-enough-passphrase"),
    );
    assert!(
        user.status.success(),
        "{}",
        String::from_utf8_lossy(&user.stderr)
    );
    let user_id = String::from_utf8(user.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(uuid::Uuid::parse_str(&user_id).is_ok());
    let verify = run(&["audit", "verify"], None);
    assert!(verify.status.success());
}
