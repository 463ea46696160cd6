//! Measures the delay from an operation's `completed_at` to its `operation.completed`
//! WebSocket frame (issue 9), over 100 dry-run exports, against a real
//! `target/release/haven serve` on a fresh database:
//!
//! ```sh
//! cargo build --release --bin haven --example ws_delay
//! target/release/examples/ws_delay sqlite
//! target/release/examples/ws_delay postgres   # HAVEN_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres
//! ```

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const OPERATIONS: usize = 100;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend = std::env::args().nth(1).unwrap_or_else(|| "sqlite".into());
    let dir = tempfile::tempdir()?;
    let mut dropped_at_end: Option<(String, String)> = None;
    let url = match backend.as_str() {
        "postgres" => {
            let admin = std::env::var("HAVEN_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let name = format!("haven_ws_delay_{}", uuid::Uuid::new_v4().simple());
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await?;
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str()).await?;
            dropped_at_end = Some((admin.clone(), name.clone()));
            format!(
                "{}/{name}",
                admin.rsplit_once('/').map(|(a, _)| a).unwrap_or(&admin)
            )
        }
        _ => format!("sqlite://{}/haven.db", dir.path().display()),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = tokio::process::Command::new("target/release/haven")
        .args([
            "serve",
            "--database-url",
            &url,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env(
            "HAVEN_MASTER_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start target/release/haven serve")?;
    let mut lines = BufReader::new(server.stdout.take().context("stdout")?).lines();
    let password = loop {
        let line = lines.next_line().await?.context("serve ended")?;
        if let Some(rest) = line.strip_prefix("login: admin@demo.local password: ") {
            break rest.trim().to_string();
        }
    };
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let login: Value = client
        .post(format!("{base}/api/v2/auth/login"))
        .json(&json!({"email": "admin@demo.local", "password": password}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["token"].as_str().context("token")?.to_string();
    // The limit of 60 scheduling requests a minute per user (SPEC 10): a second user of
    // the same organization schedules half of them.
    let me: Value = client
        .get(format!("{base}/api/v2/auth/me"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let org = me["organization_id"]
        .as_str()
        .or(me["user"]["organization_id"].as_str())
        .context("organization")?
        .to_string();
    let second_password = "ws-delay-second-user-password";
    let created = tokio::process::Command::new("target/release/haven")
        .args([
            "admin",
            "create-user",
            "--org",
            &org,
            "--email",
            "second@demo.local",
            "--role",
            "data_manager",
        ])
        .args(["--database-url", &url])
        .arg("--data-dir")
        .arg(dir.path())
        .env(
            "HAVEN_MASTER_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )
        .env("HAVEN_PASSWORD", second_password)
        .status()
        .await?;
    anyhow::ensure!(created.success(), "haven admin create-user failed");
    let second: Value = client
        .post(format!("{base}/api/v2/auth/login"))
        .json(&json!({"email": "second@demo.local", "password": second_password}))
        .send()
        .await?
        .json()
        .await?;
    let tokens = [
        token.clone(),
        second["token"]
            .as_str()
            .context("second token")?
            .to_string(),
    ];
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/api/v2/ws?token={token}"))
            .await?;
    let mut delays = Vec::new();
    for n in 0..OPERATIONS {
        let op: Value = client
            .post(format!("{base}/api/v2/bulk/export/schedule"))
            .bearer_auth(&tokens[n % 2])
            .json(&json!({"dry_run": true, "email_notification": false}))
            .send()
            .await?
            .json()
            .await?;
        let id = op["id"].as_str().context("id")?.to_string();
        let received = loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
                .await?
                .context("socket closed")??;
            if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
                let event: Value = serde_json::from_str(&text)?;
                if event["operation_id"] == id.as_str()
                    && event["event_type"] == "operation.completed"
                {
                    break chrono::Utc::now();
                }
            }
        };
        let done: Value = client
            .get(format!("{base}/api/v2/bulk-operations/{id}/status"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let completed = chrono::DateTime::parse_from_rfc3339(
            done["completed_at"].as_str().context("completed_at")?,
        )?;
        delays.push(
            (received - completed.with_timezone(&chrono::Utc))
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1000.0,
        );
    }
    delays.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        delays[((delays.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(delays.len() - 1)]
    };
    println!(
        "{backend}: completed_at -> WebSocket frame over {OPERATIONS} operations: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.5),
        at(0.99),
        delays[delays.len() - 1]
    );
    let _ = server.kill().await;
    let _ = server.wait().await;
    if let Some((admin, name)) = dropped_at_end {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await?;
        sqlx::Executor::execute(
            &mut conn,
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
        )
        .await?;
    }
    Ok(())
}
