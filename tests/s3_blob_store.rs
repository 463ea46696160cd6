//! The S3 blob store against a real S3-compatible server: moto's server mode, started
//! by the test (`HAVEN_TEST_MOTO_SERVER`, or `moto_server` beside `HAVEN_TEST_PYTHON`;
//! `.ci/run` installs it). Without it these tests fail: they are never skipped.
//!
//! Two `haven` processes with data directories of their own share one database, one
//! master key and one bucket: `haven serve` (no workers) receives the upload and serves
//! the download, `haven worker` runs the import and the export.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::{haven_bin, Backend, TestApp};
use futures::TryStreamExt;
use haven::blobs::BlobStore;
use haven::domain::permission::Role;
use haven::engine::{Engine, EngineSettings};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// The master key every process of a test shares (the one `TestApp` uses).
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// One moto server for the whole test binary, stopped when the binary exits.
struct Moto {
    endpoint: String,
    /// The shell that runs moto kills it when this pipe closes (at exit).
    _guard: Mutex<std::process::Child>,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

fn moto_binary() -> PathBuf {
    if let Ok(path) = std::env::var("HAVEN_TEST_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let beside_python = std::env::var("HAVEN_TEST_PYTHON")
        .ok()
        .and_then(|python| Some(PathBuf::from(python).parent()?.join("moto_server")))
        .filter(|path| path.exists());
    beside_python.unwrap_or_else(|| {
        panic!(
            "the S3 tests need moto's server: `pip install 'moto[server]==5.2.5'` into a venv \
             and set HAVEN_TEST_MOTO_SERVER to its bin/moto_server (or HAVEN_TEST_PYTHON to \
             that venv's python); .ci/run does this"
        )
    })
}

/// Starts moto (once) and points the `AWS_*` variables of this process, inherited by
/// the `haven` processes it starts, at it.
fn moto() -> &'static Moto {
    MOTO.get_or_init(|| {
        let binary = moto_binary();
        assert!(
            binary.exists(),
            "HAVEN_TEST_MOTO_SERVER={} does not exist",
            binary.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("sh")
            .args([
                "-c",
                "\"$0\" -H 127.0.0.1 -p \"$1\" >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill $pid",
            ])
            .arg(&binary)
            .arg(port.to_string())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("start moto_server");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server ({}) did not listen on port {port} within 60 s",
                binary.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let endpoint = format!("http://127.0.0.1:{port}");
        std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
        std::env::set_var("AWS_ACCESS_KEY_ID", "haven-test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "haven-test-secret");
        std::env::set_var("AWS_REGION", "us-east-1");
        Moto {
            endpoint,
            _guard: Mutex::new(child),
        }
    })
}

/// A new bucket, created through the S3 API (moto accepts the unsigned request).
async fn new_bucket() -> String {
    let moto = moto();
    let bucket = format!("haven-{}", Uuid::new_v4().simple());
    let response = reqwest::Client::new()
        .put(format!("{}/{bucket}", moto.endpoint))
        .send()
        .await
        .expect("PUT bucket");
    assert!(
        response.status().is_success(),
        "create bucket: {response:?}"
    );
    bucket
}

/// The bucket as a test sees it, bypassing Haven.
fn bucket_store(bucket: &str) -> impl ObjectStore {
    AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_allow_http(true)
        .build()
        .expect("S3 client")
}

/// Every object in the bucket: key and bytes.
async fn objects(bucket: &str) -> Vec<(String, Vec<u8>)> {
    let store = bucket_store(bucket);
    let metas: Vec<_> = store.list(None).try_collect().await.expect("list");
    let mut out = Vec::new();
    for meta in metas {
        let bytes = store
            .get(&meta.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        out.push((meta.location.to_string(), bytes.to_vec()));
    }
    out
}

fn keys(objects: &[(String, Vec<u8>)]) -> Vec<&str> {
    objects.iter().map(|(key, _)| key.as_str()).collect()
}

/// Searches every object for each of the needles (unique names of the test's data).
fn assert_no_plaintext(objects: &[(String, Vec<u8>)], needles: &[&str]) {
    for (key, bytes) in objects {
        for needle in needles {
            let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(!found, "{key} holds the plaintext {needle}");
        }
    }
}

async fn get(app: &TestApp, url: &str, token: &str) -> reqwest::Response {
    let response = app.client.get(url).bearer_auth(token).send().await;
    response.expect("GET")
}

/// A `haven` subcommand on the shared database, key and bucket, in its own data dir.
fn haven(
    subcommand: &str,
    app: &TestApp,
    data_dir: &std::path::Path,
    key_file: &std::path::Path,
    blob_store: &str,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(haven_bin());
    command
        .arg(subcommand)
        .args(["--database-url", &app.db.url, "--blob-store", blob_store])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--master-key-file")
        .arg(key_file)
        .env_remove("HAVEN_MASTER_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Starts `haven serve` without workers; returns it and its base URL.
async fn start_server(mut command: tokio::process::Command) -> (tokio::process::Child, String) {
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-bootstrap",
            "--workers",
            "0",
        ])
        .stdout(std::process::Stdio::piped());
    let mut child = command.spawn().expect("start haven serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.split('/').take(3).collect::<Vec<_>>().join("/");
            }
        }
        panic!("haven serve exited before listening");
    })
    .await
    .expect("haven serve listens within 60 s");
    // Keep reading so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base)
}

/// Lowercase letters naming `i` (names hold no digits).
fn letters(mut i: usize) -> String {
    let mut s = String::new();
    for _ in 0..4 {
        s.push((b'a' + (i % 26) as u8) as char);
        i /= 26;
    }
    s
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 10 s");
}

async fn two_processes_share_uploads_and_exports_through_s3(backend: Backend) {
    let bucket = new_bucket().await;
    let store_url = format!("s3://{bucket}/haven");
    // This process: the database and its helpers only (no workers).
    let app = TestApp::spawn_with(backend, &["--workers", "0", "--blob-store", &store_url]).await;
    let org = app.create_org("Kakuma").await;
    let token = app.user_token(org, Role::Admin).await;
    let dirs = tempfile::tempdir().expect("temp dir");
    let key_file = dirs.path().join("master.key");
    std::fs::write(&key_file, format!("{MASTER_KEY}\n")).expect("key file");
    let (server_dir, worker_dir) = (dirs.path().join("server"), dirs.path().join("worker"));
    let (mut server, base) =
        start_server(haven("serve", &app, &server_dir, &key_file, &store_url)).await;

    const ROWS: usize = 1_500;
    let mut csv = String::from("unhcr_number,given_name,family_name,gender\n");
    let mut expected = BTreeSet::new();
    for i in 0..ROWS {
        let number = format!("S3T-{i:05}");
        csv.push_str(&format!(
            "{number},Zorvanthe,Quillfeather{},female\n",
            letters(i)
        ));
        expected.insert(number);
    }
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(csv.clone().into_bytes()).file_name("camp.csv"),
    );
    let response = app
        .client
        .post(format!("{base}/api/v2/bulk/import/schedule"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 201, "upload to haven serve");
    let import: Value = response.json().await.expect("op json");
    let import_id = import["id"].as_str().expect("id").to_string();

    // The upload is in the bucket, encrypted; nothing of it on the server's disk.
    let stored = objects(&bucket).await;
    assert_eq!(
        keys(&stored),
        [format!("haven/uploads/{import_id}.csv.enc")]
    );
    assert!(stored[0].1.len() > csv.len(), "ciphertext and tags");
    assert_no_plaintext(&stored, &["Zorvanthe", "Quillfeather", "S3T-0"]);
    assert!(!server_dir.join("blobs").exists(), "no local blobs");
    eprintln!("{backend:?}: upload stored as 1 encrypted object, no plaintext");

    // The worker, on another data dir, runs the import from the bucket.
    let mut worker = haven("worker", &app, &worker_dir, &key_file, &store_url)
        .args(["--workers", "2"])
        .spawn()
        .expect("start haven worker");
    let done = app.wait_until_done(&token, &import_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["rows_imported"], ROWS as i64, "{done}");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM patients").await,
        ROWS as i64
    );
    let numbers = patients(&app, org).await;
    assert_eq!(
        numbers.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "exactly the patients of the file"
    );
    assert!(numbers
        .values()
        .all(|(given, family)| given == "Zorvanthe" && family.starts_with("Quillfeather")));
    wait_for("the ended import's upload is removed", async || {
        objects(&bucket).await.is_empty()
    })
    .await;
    assert!(!worker_dir.join("blobs").exists(), "no local blobs");

    // An export written by the worker, downloaded through the server.
    let response = app
        .client
        .post(format!("{base}/api/v2/bulk/export/schedule"))
        .bearer_auth(&token)
        .json(&json!({"format": "csv", "fields": ["unhcr_number", "given_name", "family_name"]}))
        .send()
        .await
        .expect("schedule export");
    assert_eq!(response.status(), 201);
    let export: Value = response.json().await.expect("op json");
    let export_id = export["id"].as_str().expect("id").to_string();
    let done = app.wait_until_done(&token, &export_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["rows_exported"], ROWS as i64, "{done}");
    let stored = objects(&bucket).await;
    assert_eq!(
        keys(&stored),
        [format!("haven/exports/{export_id}.a1.csv.enc")]
    );
    assert_no_plaintext(
        &stored,
        &["Zorvanthe", "Quillfeather", "S3T-0", "unhcr_number"],
    );
    let download = get(
        &app,
        &format!("{base}/api/v2/bulk-operations/{export_id}/download"),
        &token,
    )
    .await;
    assert_eq!(download.status(), 200);
    let text = download.text().await.expect("body");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("unhcr_number,given_name,family_name"),
        "header"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), ROWS, "one line a patient");
    let mut exported = BTreeSet::new();
    for row in &rows {
        let cells: Vec<&str> = row.split(',').collect();
        let (given, family) = &numbers[cells[0]];
        assert_eq!(cells[1..], [given.as_str(), family.as_str()], "{row}");
        exported.insert(cells[0].to_string());
    }
    assert_eq!(exported, expected, "every patient exported once");
    eprintln!("{backend:?}: {ROWS} rows imported by the worker, exported and downloaded");

    // The cleanup removes the expired export and an abandoned upload from the bucket.
    let orphan = format!("uploads/{}.csv.enc", Uuid::new_v4());
    bucket_store(&bucket)
        .put(
            &ObjectPath::from(format!("haven/{orphan}")),
            b"abandoned".to_vec().into(),
        )
        .await
        .expect("put orphan");
    let long_ago = (chrono::Utc::now() - chrono::Duration::days(8))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    app.raw_sql(&format!(
        "UPDATE bulk_operations SET output_expires_at = '{long_ago}' WHERE output_blob IS NOT NULL"
    ))
    .await
    .expect("expire the export");
    let mut settings = EngineSettings::from_config(&app.config);
    settings.upload_grace = Duration::ZERO;
    let cleaner = Engine::new(
        app.store.clone(),
        app.engine.keyring.clone(),
        BlobStore::s3(&store_url).expect("blob store"),
        settings,
    );
    let report = cleaner.cleanup_once().await.expect("cleanup");
    assert_eq!(
        (report.export_files, report.upload_files),
        (1, 1),
        "{report:?}"
    );
    assert!(objects(&bucket).await.is_empty(), "the bucket is empty");
    let download = get(
        &app,
        &format!("{base}/api/v2/bulk-operations/{export_id}/download"),
        &token,
    )
    .await;
    assert_eq!(download.status(), 404, "the expired export is gone");
    eprintln!("{backend:?}: the cleanup emptied the bucket");

    let _ = worker.kill().await;
    let _ = server.kill().await;
}

/// The organization's patients: UNHCR number to (given name, family name).
async fn patients(app: &TestApp, org: Uuid) -> BTreeMap<String, (String, String)> {
    app.all_patients(org)
        .await
        .into_iter()
        .map(|p| {
            let f = p.fields;
            (
                f.unhcr_number.unwrap_or_default(),
                (f.given_name, f.family_name),
            )
        })
        .collect()
}

dual_backend_test!(
    two_processes_share_uploads_and_exports_through_s3,
    two_processes_share_uploads_and_exports_through_s3
);

/// A blob larger than a part goes up as a multipart upload and reads back whole
/// through the async and the blocking readers; a writer dropped half-way leaves
/// neither an object nor an unfinished upload behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_larger_than_a_part_goes_up_in_parts_and_reads_back_whole() {
    let bucket = new_bucket().await;
    let blobs = BlobStore::s3(&format!("s3://{bucket}/p")).expect("blob store");
    let data: Vec<u8> = (0..20 * 1024 * 1024 + 123)
        .map(|i: usize| (i * 7 % 251) as u8)
        .collect();
    let mut writer = blobs.create("exports/big.enc").await.expect("create");
    for chunk in data.chunks(64 * 1024 + 1) {
        writer.write_all(chunk).await.expect("write");
    }
    writer.commit().await.expect("commit");

    let mut back = Vec::new();
    let mut reader = blobs.open("exports/big.enc").await.expect("open");
    reader.read_to_end(&mut back).await.expect("read");
    assert!(back == data, "async read: the same bytes");
    let blocking = blobs
        .open_blocking("exports/big.enc")
        .await
        .expect("open blocking");
    let back = tokio::task::spawn_blocking(move || {
        let mut back = Vec::new();
        let mut blocking = blocking;
        std::io::Read::read_to_end(&mut blocking, &mut back).map(|_| back)
    })
    .await
    .expect("join")
    .expect("blocking read");
    assert!(back == data, "blocking read: the same bytes");
    let listed = blobs.list("exports").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].file_name, "big.enc");

    // Half-way through a multipart upload, the writer is dropped (a client gone).
    let mut writer = blobs.create("uploads/cut.enc").await.expect("create");
    for chunk in data[..12 * 1024 * 1024].chunks(64 * 1024) {
        writer.write_all(chunk).await.expect("write");
    }
    let client = reqwest::Client::new();
    let uploads_url = format!("{}/{bucket}?uploads", moto().endpoint);
    let listing = client.get(&uploads_url).send().await.expect("list uploads");
    let listing = listing.text().await.expect("body");
    assert!(
        listing.contains("<Upload>"),
        "a multipart upload is under way: {listing}"
    );
    drop(writer);
    wait_for("the cut upload is aborted", async || {
        let listing = client
            .get(&uploads_url)
            .send()
            .await
            .expect("list uploads")
            .text()
            .await
            .expect("body");
        !listing.contains("<Upload>")
    })
    .await;
    assert!(blobs.list("uploads").await.expect("list").is_empty());
    let missing = blobs
        .open("uploads/cut.enc")
        .await
        .err()
        .expect("no object");
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    assert!(blobs.remove("exports/big.enc").await);
    assert!(blobs.list("exports").await.expect("list").is_empty());
}

/// A bucket that does not exist stops `haven worker` at start, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_stops_a_worker_at_start_with_a_clear_message() {
    moto();
    let dir = tempfile::tempdir().expect("temp dir");
    let output = tokio::process::Command::new(haven_bin())
        .args(["worker", "--blob-store", "s3://haven-no-such-bucket/x"])
        .args(["--master-key", MASTER_KEY])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await
        .expect("run haven worker");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the blob store s3://haven-no-such-bucket/x does not answer"),
        "{stderr}"
    );
}
