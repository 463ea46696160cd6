//! Notifications end to end (issue 9), against real peers started by the tests: an
//! SMTP sink, an HTTP receiver for webhooks, a WebSocket client; on both databases.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, TestApp};
use futures::{SinkExt, StreamExt};
use haven::domain::permission::Role;
use haven::engine::Ran;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PUBLIC_URL: &str = "https://haven.example.org";
/// A patient name that must never appear in a notification.
const SECRET_NAME: &str = "Zephyrine";

/// A minimal SMTP server that accepts every mail and keeps it.
#[derive(Clone, Default)]
struct SmtpSink {
    mails: Arc<Mutex<Vec<String>>>,
}

impl SmtpSink {
    async fn start_on(listener: tokio::net::TcpListener) -> SmtpSink {
        let sink = SmtpSink::default();
        let mails = sink.mails.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mails = mails.clone();
                tokio::spawn(async move {
                    let _ = serve_smtp(stream, mails).await;
                });
            }
        });
        sink
    }

    fn mails(&self) -> Vec<String> {
        self.mails.lock().unwrap().clone()
    }

    /// Waits until a mail whose subject contains all of `words` arrived.
    async fn wait_for(&self, words: &[&str]) -> String {
        for _ in 0..600 {
            if let Some(mail) = self
                .mails()
                .into_iter()
                .find(|m| words.iter().all(|w| subject(m).contains(w)))
            {
                return mail;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no mail with {words:?}; got {:?}",
            self.mails().iter().map(|m| subject(m)).collect::<Vec<_>>()
        );
    }
}

async fn serve_smtp(
    stream: tokio::net::TcpStream,
    mails: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_ascii_uppercase();
        if command.starts_with("EHLO") || command.starts_with("HELO") {
            write.write_all(b"250-sink\r\n250 8BITMIME\r\n").await?;
        } else if command.starts_with("DATA") {
            write.write_all(b"354 go ahead\r\n").await?;
            let mut mail = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                mail.push_str(&line);
            }
            mails.lock().unwrap().push(mail);
            write.write_all(b"250 queued\r\n").await?;
        } else if command.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            write.write_all(b"250 OK\r\n").await?;
        }
    }
}

fn subject(mail: &str) -> String {
    mail.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or_default()
        .to_string()
}

/// The mail with quoted-printable soft line breaks and `=3D` undone.
fn decoded(mail: &str) -> String {
    mail.replace("=\r\n", "").replace("=3D", "=")
}

fn csv(rows: usize) -> String {
    let mut csv = String::from("unhcr_number,given_name,family_name,gender\n");
    for i in 0..rows {
        csv.push_str(&format!("NOT-{i:06},{SECRET_NAME},Family{i},female\n"));
    }
    csv
}

async fn organization(app: &TestApp, name: &str) -> (uuid::Uuid, String) {
    let org = app.create_org(name).await;
    (org, app.user_token(org, Role::Admin).await)
}

/// Runs everything due with this process's engine (the apps here have no workers).
async fn run_all(app: &TestApp) {
    while app.engine.run_once().await.unwrap() != Ran::Empty {}
}

async fn schedule(app: &TestApp, token: &str, kind: &str, body: Value) -> String {
    let response = app
        .post_json(token, &format!("/api/v2/bulk/{kind}/schedule"), &body)
        .await;
    assert_eq!(response.status(), 201);
    let op: Value = response.json().await.unwrap();
    op["id"].as_str().unwrap().to_string()
}

async fn import_patients(app: &TestApp, token: &str) {
    let response = app
        .schedule_import(token, &csv(20), json!({"email_notification": false}))
        .await;
    assert_eq!(response.status(), 201);
    run_all(app).await;
}

async fn import_and_export(app: &TestApp, token: &str) -> String {
    import_patients(app, token).await;
    export_all(app, token).await
}

async fn export_all(app: &TestApp, token: &str) -> String {
    let export = schedule(app, token, "export", json!({"format": "csv"})).await;
    run_all(app).await;
    let done = app.wait_until_done(token, &export).await;
    assert_eq!(done["status"], "completed", "{done}");
    export
}

async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn app_with_smtp(backend: Backend, port: u16, extra: &[&str]) -> TestApp {
    let smtp = format!("smtp://127.0.0.1:{port}");
    let mut flags = vec![
        "--workers",
        "0",
        "--smtp-url",
        &smtp,
        "--public-url",
        PUBLIC_URL,
    ];
    flags.extend_from_slice(extra);
    TestApp::spawn_with(backend, &flags).await
}

fn assert_mail_is_clean(mail: &str, export: &str) {
    let text = decoded(mail);
    assert!(text.contains("text/plain"), "a plain text part");
    assert!(text.contains("text/html"), "an HTML part");
    let link = format!("{PUBLIC_URL}/operations/{export}");
    assert!(
        text.contains(&link),
        "the link to the operation page: {text}"
    );
    assert!(text.contains(export), "names the operation id");
    assert!(!text.contains(SECRET_NAME), "no patient data: {text}");
    assert!(!text.contains("NOT-0000"), "no patient data: {text}");
}

async fn an_export_sends_its_confirmation_and_completion_mail(backend: Backend) {
    let port = free_port().await;
    let sink = SmtpSink::start_on(
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap(),
    )
    .await;
    let app = app_with_smtp(backend, port, &[]).await;
    let (_, token) = organization(&app, "Kakuma Clinic").await;
    let export = import_and_export(&app, &token).await;
    let confirmation = sink.wait_for(&["export", "scheduled"]).await;
    assert_mail_is_clean(&confirmation, &export);
    let completion = sink.wait_for(&["export", "completed"]).await;
    assert_mail_is_clean(&completion, &export);
    assert!(
        decoded(&completion).contains("download"),
        "where to download it"
    );
    // The import asked for no mail.
    assert!(sink.mails().iter().all(|m| !subject(m).contains("import")));
}

dual_backend_test!(
    an_export_sends_its_confirmation_and_completion_mail,
    an_export_sends_its_confirmation_and_completion_mail
);

async fn mail_waits_for_a_smtp_server_that_was_down(backend: Backend) {
    let port = free_port().await;
    let app = app_with_smtp(backend, port, &[]).await;
    let (_, token) = organization(&app, "Kakuma Clinic").await;
    let export = import_and_export(&app, &token).await;
    // Nobody listens: the operation completed anyway, the mail waits.
    let op: Value = app
        .get(&token, &format!("/api/v2/bulk-operations/{export}/status"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(op["status"], "completed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pending: Value = app
        .get(&token, "/api/v2/notifications/deliveries?status=pending")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        !pending["deliveries"].as_array().unwrap().is_empty(),
        "the mails wait: {pending}"
    );
    // The server comes up: the mail is delivered by a retry.
    let sink = SmtpSink::start_on(
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap(),
    )
    .await;
    let completion = sink.wait_for(&["export", "completed"]).await;
    assert_mail_is_clean(&completion, &export);
}

dual_backend_test!(mail_waits_for_a_smtp_server_that_was_down, |backend| {
    mail_waits_for_a_smtp_server_that_was_down(backend)
});

async fn preferences_turn_off_one_mail_and_nothing_else(backend: Backend) {
    let port = free_port().await;
    let sink = SmtpSink::start_on(
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap(),
    )
    .await;
    let app = app_with_smtp(backend, port, &[]).await;
    let (_, token) = organization(&app, "Kakuma Clinic").await;
    let response = app
        .put_json(
            &token,
            "/api/v2/notifications/preferences",
            &json!({"preferences": {"operation.completed": ["in_app", "websocket"]}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let prefs: Value = response.json().await.unwrap();
    assert_eq!(
        prefs["preferences"]["operation.completed"],
        json!(["in_app", "websocket"])
    );
    assert_eq!(
        prefs["preferences"]["operation.scheduled"],
        json!(["in_app", "email", "websocket"]),
        "the others keep their defaults"
    );
    let export = import_and_export(&app, &token).await;
    sink.wait_for(&["export", "scheduled"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        sink.mails()
            .iter()
            .all(|m| !subject(m).contains("completed")),
        "no completion mail"
    );
    // In-app: the completion is there, and can be read.
    let list: Value = app
        .get(&token, "/api/v2/notifications")
        .await
        .json()
        .await
        .unwrap();
    let items = list["notifications"].as_array().unwrap();
    let completed = items
        .iter()
        .find(|n| n["event_type"] == "operation.completed" && n["operation_id"] == export.as_str())
        .expect("in-app completion");
    assert!(list["unread_count"].as_i64().unwrap() >= 2);
    assert!(!list.to_string().contains(SECRET_NAME));
    let id = completed["id"].as_str().unwrap();
    let read = app
        .post_json(
            &token,
            &format!("/api/v2/notifications/{id}/read"),
            &json!({}),
        )
        .await;
    assert_eq!(read.status(), 200);
    let all = app
        .post_json(&token, "/api/v2/notifications/read-all", &json!({}))
        .await;
    assert_eq!(all.status(), 200);
    let list: Value = app
        .get(&token, "/api/v2/notifications")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["unread_count"], 0);
    // Another user cannot read it.
    let (_, other) = organization(&app, "Other Clinic").await;
    let foreign = app
        .post_json(
            &other,
            &format!("/api/v2/notifications/{id}/read"),
            &json!({}),
        )
        .await;
    assert_eq!(foreign.status(), 404);
    // The change of settings is audited.
    assert!(
        app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'notifications.preferences'")
            .await
            == 1
    );
}

dual_backend_test!(preferences_turn_off_one_mail_and_nothing_else, |backend| {
    preferences_turn_off_one_mail_and_nothing_else(backend)
});

/// What the webhook receiver saw: headers and body of each request.
#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>,
    failures_left: Arc<Mutex<u32>>,
}

async fn start_receiver(failures: u32) -> (Receiver, String) {
    let receiver = Receiver {
        failures_left: Arc::new(Mutex::new(failures)),
        ..Default::default()
    };
    let state = receiver.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let state = state.clone();
            async move {
                state.requests.lock().unwrap().push((headers, body));
                let mut left = state.failures_left.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (receiver, url)
}

/// Checks a Standard Webhooks signature with an HMAC computed here.
fn signature_verifies(secret: &str, headers: &axum::http::HeaderMap, body: &str) -> bool {
    use base64::Engine as _;
    use hmac::Mac;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(
        format!(
            "{}.{}.{}",
            header("webhook-id"),
            header("webhook-timestamp"),
            body
        )
        .as_bytes(),
    );
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

async fn a_webhook_is_signed_retried_and_logged(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            "--workers",
            "0",
            "--allow-private-webhooks",
            "--webhook-retry-base",
            "100ms",
        ],
    )
    .await;
    let (_, token) = organization(&app, "Kakuma Clinic").await;
    import_patients(&app, &token).await;
    let (receiver, url) = start_receiver(3).await;
    let response = app
        .post_json(
            &token,
            "/api/v2/webhooks",
            &json!({"url": url, "events": ["operation.completed"], "description": "partner"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let hook: Value = response.json().await.unwrap();
    let secret = hook["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let hook_id = hook["id"].as_str().unwrap().to_string();
    let shown: Value = app
        .get(&token, &format!("/api/v2/webhooks/{hook_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(shown.get("secret").is_none(), "the secret is shown once");

    let export = export_all(&app, &token).await;
    for _ in 0..300 {
        if receiver.requests.lock().unwrap().len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests = receiver.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 4, "three failures, then the delivery");
    let ids: std::collections::BTreeSet<String> = requests
        .iter()
        .map(|(h, _)| h.get("webhook-id").unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "one message, retried under its id");
    for (headers, body) in &requests {
        assert!(
            signature_verifies(&secret, headers, body),
            "signature of {body}"
        );
        let envelope: Value = serde_json::from_str(body).unwrap();
        assert_eq!(envelope["type"], "operation.completed");
        assert_eq!(envelope["data"]["operation_id"], export.as_str());
        assert_eq!(envelope["data"]["status"], "completed");
        assert!(!body.contains(SECRET_NAME));
    }
    assert!(!signature_verifies(
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        &requests[0].0,
        &requests[0].1
    ));

    let log: Value = app
        .get(&token, &format!("/api/v2/webhooks/{hook_id}/deliveries"))
        .await
        .json()
        .await
        .unwrap();
    let deliveries = log["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{log}");
    assert_eq!(deliveries[0]["status"], "delivered");
    assert_eq!(deliveries[0]["attempts"], 4);
    let codes: Vec<i64> = deliveries[0]["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, vec![500, 500, 500, 200]);
}

dual_backend_test!(a_webhook_is_signed_retried_and_logged, |backend| {
    a_webhook_is_signed_retried_and_logged(backend)
});

dual_test!(
    webhooks_to_private_addresses_are_refused,
    flags = &["--workers", "0"],
    |app: TestApp| async move {
        let (_, token) = organization(&app, "Kakuma Clinic").await;
        for url in [
            "http://127.0.0.1:9/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/hook",
            "http://[::1]/hook",
            "http://localhost/hook",
            "ftp://example.org/hook",
        ] {
            let response = app
                .post_json(
                    &token,
                    "/api/v2/webhooks",
                    &json!({"url": url, "events": ["operation.failed"]}),
                )
                .await;
            assert_eq!(response.status(), 422, "{url}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["details"][0]["field"], "url", "{body}");
        }
        assert_eq!(app.count("SELECT COUNT(*) FROM webhooks").await, 0);
        // Not an admin: 403.
        let org = app.create_org("Other").await;
        let viewer = app.user_token(org, Role::Viewer).await;
        let response = app
            .post_json(
                &viewer,
                "/api/v2/webhooks",
                &json!({"url": "https://example.org", "events": ["operation.failed"]}),
            )
            .await;
        assert_eq!(response.status(), 403);
    }
);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, token: &str, after: Option<&str>) -> Socket {
    let mut url = format!("ws://{}/api/v2/ws?token={token}", app.addr);
    if let Some(after) = after {
        url.push_str(&format!("&after={after}"));
    }
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    socket
}

/// Reads frames until `done` says so (or 60 s pass).
async fn frames_until(socket: &mut Socket, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let next = tokio::time::timeout(Duration::from_secs(1), socket.next()).await;
        if let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) = next {
            let frame: Value = serde_json::from_str(&text).unwrap();
            let finished = done(&frame);
            frames.push(frame);
            if finished {
                return frames;
            }
        }
    }
    panic!("the expected frame never came: {frames:?}");
}

async fn a_websocket_client_sees_its_organization_only(app: TestApp) {
    let (org_a, token_a) = organization(&app, "Kakuma Clinic").await;
    let (org_b, token_b) = organization(&app, "Zaatari Clinic").await;
    // Without a token: 401.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/api/v2/ws", app.addr)).await;
    assert!(refused.is_err(), "no token, no socket");

    let mut socket = connect(&app, &token_a, None).await;
    let a = app.schedule_import(&token_a, &csv(3_000), json!({})).await;
    let a_id = a.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = app.schedule_import(&token_b, &csv(3_000), json!({})).await;
    let b_id = b.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    run_all(&app).await;
    let frames = frames_until(&mut socket, |f| {
        f["operation_id"] == a_id.as_str() && f["event_type"] == "operation.completed"
    })
    .await;
    let kinds: Vec<&str> = frames
        .iter()
        .filter(|f| f["operation_id"] == a_id.as_str())
        .map(|f| f["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"operation.scheduled"), "{kinds:?}");
    assert!(kinds.contains(&"operation.started"), "{kinds:?}");
    assert!(kinds.contains(&"operation.progress"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"operation.completed"));
    for frame in &frames {
        assert_eq!(
            frame["organization_id"],
            org_a.to_string(),
            "only A's events"
        );
        assert_ne!(frame["operation_id"], b_id.as_str());
        for key in [
            "event_id",
            "timestamp",
            "operation_type",
            "status",
            "progress",
        ] {
            assert!(frame.get(key).is_some(), "{key} in {frame}");
        }
    }
    assert!(!frames.iter().any(|f| f.to_string().contains(SECRET_NAME)));
    let _ = org_b;

    // A client that reconnects after the scheduled event gets what followed.
    let first = frames[0]["event_id"].as_str().unwrap().to_string();
    let mut again = connect(&app, &token_a, Some(&first)).await;
    let replayed = frames_until(&mut again, |f| f["event_type"] == "operation.completed").await;
    assert_eq!(replayed.len(), frames.len() - 1, "{replayed:?}");
    let _ = again.close(None).await;
    let _ = socket
        .send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
}

dual_test!(
    a_websocket_client_sees_its_organization_only,
    flags = &["--workers", "0"],
    |app: TestApp| a_websocket_client_sees_its_organization_only(app)
);

/// With two processes on one PostgreSQL, a client of the first sees the events of an
/// operation the second runs; reports the delay from `completed_at` to the frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_sees_operations_run_by_another_process() {
    let app = TestApp::spawn_with(Backend::Postgres, &["--workers", "0"]).await;
    let (_, token) = organization(&app, "Kakuma Clinic").await;
    let mut socket = connect(&app, &token, None).await;
    let mut worker = app.spawn_worker(&["--workers", "2"]);
    let export = schedule(&app, &token, "export", json!({"dry_run": true})).await;
    let frames = frames_until(&mut socket, |f| {
        f["operation_id"] == export.as_str() && f["event_type"] == "operation.completed"
    })
    .await;
    let received = chrono::Utc::now();
    let done = app.wait_until_done(&token, &export).await;
    let completed =
        chrono::DateTime::parse_from_rfc3339(done["completed_at"].as_str().unwrap()).unwrap();
    eprintln!(
        "completed_at to WebSocket frame: {} ms (upper bound)",
        (received - completed.with_timezone(&chrono::Utc)).num_milliseconds()
    );
    assert!(frames
        .iter()
        .any(|f| f["event_type"] == "operation.started"));
    let _ = worker.kill().await;
}

/// An HTTP receiver standing in for an SMS gateway: keeps the authorization header and
/// the JSON body of each request.
async fn start_sms_gateway() -> (Arc<Mutex<Vec<(String, Value)>>>, String) {
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let state = got.clone();
    let app = axum::Router::new().route(
        "/sms",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                state
                    .lock()
                    .unwrap()
                    .push((auth, serde_json::from_str(&body).unwrap_or(Value::Null)));
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (got, url)
}

async fn a_failure_is_sent_by_sms_to_a_user_with_a_phone(backend: Backend) {
    let (got, url) = start_sms_gateway().await;
    let app = TestApp::spawn_with(
        backend,
        &[
            "--workers",
            "0",
            "--sms-gateway-url",
            &url,
            "--sms-gateway-token",
            "gw-token",
        ],
    )
    .await;
    let (_, token) = organization(&app, "Kakuma Clinic").await;
    let bad = app
        .put_json(
            &token,
            "/api/v2/notifications/preferences",
            &json!({"phone_number": "0700"}),
        )
        .await;
    assert_eq!(bad.status(), 422, "not E.164");
    let ok = app
        .put_json(
            &token,
            "/api/v2/notifications/preferences",
            &json!({"phone_number": "+254700000001"}),
        )
        .await;
    assert_eq!(ok.status(), 200);
    let mut file = csv(5);
    file.push_str("BAD-1,Given,Family,not-a-gender\n");
    let response = app
        .schedule_import(&token, &file, json!({"on_error": "abort"}))
        .await;
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    run_all(&app).await;
    assert_eq!(app.wait_until_done(&token, &id).await["status"], "failed");
    for _ in 0..100 {
        if !got.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = got.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "one SMS, for the failure only: {sent:?}");
    assert_eq!(sent[0].0, "Bearer gw-token");
    assert_eq!(sent[0].1["to"], "+254700000001");
    let text = sent[0].1["text"].as_str().unwrap();
    assert!(text.contains(&id) && text.contains("failed"), "{text}");
    assert!(!text.contains(SECRET_NAME));
}

dual_backend_test!(
    a_failure_is_sent_by_sms_to_a_user_with_a_phone,
    a_failure_is_sent_by_sms_to_a_user_with_a_phone
);

dual_test!(
    a_webhook_is_deleted_in_its_own_organization_only_and_audited,
    flags = &["--workers", "0", "--allow-private-webhooks"],
    |app: TestApp| async move {
        let (_, token) = organization(&app, "Kakuma Clinic").await;
        let (_, other) = organization(&app, "Zaatari Clinic").await;
        let response = app
            .post_json(
                &token,
                "/api/v2/webhooks",
                &json!({"url": "http://127.0.0.1:9/hook", "events": ["operation.failed"]}),
            )
            .await;
        assert_eq!(response.status(), 201);
        let created: Value = response.json().await.unwrap();
        let path = format!("/api/v2/webhooks/{}", created["id"].as_str().unwrap());
        // Another organization's admin: 404, and the webhook stays.
        assert_eq!(app.delete(&other, &path).await.status(), 404);
        assert_eq!(app.count("SELECT COUNT(*) FROM webhooks").await, 1);
        assert_eq!(app.delete(&token, &path).await.status(), 204);
        assert_eq!(app.count("SELECT COUNT(*) FROM webhooks").await, 0);
        assert_eq!(app.get(&token, &path).await.status(), 404);
        assert_eq!(app.delete(&token, &path).await.status(), 404);
        assert_eq!(
            app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'webhook.delete'")
                .await,
            1,
            "one audited deletion; the refused ones wrote nothing"
        );
    }
);
