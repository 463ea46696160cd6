//! `bench lag <sqlite|postgres> <count> <processes>`: scheduling lag of `count` dry-run
//! exports all due at the same instant, run by real `target/release/haven` processes.
//!
//! On a fresh database and data dir it starts one `haven serve` (the API, which also
//! runs workers) and `processes - 1` `haven worker` processes; on SQLite they all share
//! one database file. Organizations and users are created with `haven admin`, the
//! exports are scheduled through `POST /api/v2/bulk/export/schedule` with one
//! `scheduled_at` a few seconds ahead, and once all of them have ended their
//! `scheduled_at`, `started_at` and `completed_at` are read back through
//! `GET /api/v2/bulk-operations`. The database is only polled (one `COUNT(*)` every
//! 250 ms) to know when to stop waiting.
//!
//! The exports are spread round-robin over `--orgs` organizations (default 10) and,
//! within each, over as many users as the per-user limit of 60 scheduling requests a
//! minute needs (SPEC 10; the limits are constants, not flags). Each process runs
//! `--workers` operations at once (default 2) under `--max-per-org` (default 2, the
//! server's default): with 10 organizations that allows 20 at once, more than 3
//! processes run, so the per-organization limit is not what is measured.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chrono::{DateTime, SubsecRound, Utc};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::Connection;

/// The key every process of a run shares (base64 of bytes 0..32; a benchmark key).
pub(crate) const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub(crate) const PASSWORD: &str = "bench-lag-password-long";
/// Scheduling requests one user may make a minute (SPEC 10), with a margin.
const PER_USER: usize = 50;
/// Operations an organization may have waiting (SPEC 10).
const MAX_SCHEDULED_PER_ORG: usize = 1_000;
/// Scheduling requests in flight at once.
const SCHEDULING_CONCURRENCY: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "bench lag",
    about = "Scheduling lag of dry-run exports due together"
)]
struct Args {
    backend: Backend,
    /// Dry-run exports, all due at the same instant.
    count: usize,
    /// Haven processes: one `serve` plus `processes - 1` `worker`.
    processes: usize,
    /// Organizations the exports are spread over.
    #[arg(long, default_value_t = 10)]
    orgs: usize,
    /// `--workers` of each process.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// `--max-per-org` of each process.
    #[arg(long, default_value_t = 2)]
    max_per_org: usize,
    /// Seconds between the start of scheduling and the due time (default 5 + count/100).
    #[arg(long)]
    lead_secs: Option<u64>,
    /// Give up waiting this many seconds after the due time, and report what ended.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

/// The processes and the database of one run; `cleanup` ends and removes them.
pub(crate) struct Run {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) db_url: String,
    pub(crate) pg_name: Option<String>,
    pub(crate) children: Vec<(String, tokio::process::Child)>,
    /// The haven binary (default `target/release/haven`).
    pub(crate) bin: PathBuf,
}

impl Run {
    /// A fresh data dir and database: on PostgreSQL a new database `<prefix>_<uuid>`,
    /// on SQLite a file in the data dir.
    pub(crate) async fn new(backend: Backend, prefix: &str) -> anyhow::Result<Run> {
        let dir = tempfile::tempdir()?;
        let (db_url, pg_name) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("haven.db").display()),
                None,
            ),
            Backend::Postgres => {
                let admin = crate::admin_url();
                let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .with_context(|| format!("connecting to {admin} (HAVEN_TEST_POSTGRES_URL)"))?;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await?;
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                (format!("{base}/{name}"), Some(name))
            }
        };
        Ok(Run {
            dir,
            db_url,
            pg_name,
            children: Vec::new(),
            bin: Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/haven"),
        })
    }

    pub(crate) fn haven(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(["--database-url", &self.db_url])
            .arg("--data-dir")
            .arg(self.dir.path())
            .env("HAVEN_MASTER_KEY", MASTER_KEY)
            .env_remove("DATABASE_URL")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    pub(crate) fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Runs `haven <args>` to the end and returns the last line it printed.
    pub(crate) async fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .haven()
            .args(args)
            .env("HAVEN_PASSWORD", PASSWORD)
            .output()
            .await
            .context("running target/release/haven (cargo build --release --bin haven)")?;
        ensure!(
            out.status.success(),
            "haven {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        Ok(stdout.lines().last().unwrap_or_default().trim().to_string())
    }

    /// Starts `haven <command>` with its stdout and stderr in `<data-dir>/<name>.{out,log}`.
    pub(crate) fn spawn(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = std::fs::File::create(self.dir.path().join(format!("{name}.out")))?;
        let log = std::fs::File::create(self.log(name))?;
        let child = self
            .haven()
            .args(args)
            .stdout(out)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting haven {}", args.join(" ")))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Waits until `<data-dir>/<file>` has a line containing `needle`; returns the line.
    pub(crate) async fn wait_for_line(
        &mut self,
        file: &str,
        needle: &str,
    ) -> anyhow::Result<String> {
        let path = self.dir.path().join(file);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            for (name, child) in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                        .unwrap_or_default();
                    bail!("haven {name} ended ({status}) before it was ready:\n{log}");
                }
            }
            ensure!(
                Instant::now() < deadline,
                "no line `{needle}` in {file} after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts `haven serve` with `args` (which start with `serve`) and returns its
    /// base URL once it listens.
    pub(crate) async fn serve(&mut self, args: &[&str]) -> anyhow::Result<String> {
        self.spawn("serve", args)?;
        let line = self
            .wait_for_line("serve.out", "is listening on http://")
            .await?;
        line.split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .map(|s| format!("http://{}", s.trim_end_matches('/')))
            .context("no address in the serve line")
    }

    /// Lines of a process's log at WARN or ERROR level.
    pub(crate) fn warnings(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.log(name))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_string)
            .collect()
    }

    /// Kills the processes (each by its own handle), drops the PostgreSQL database and
    /// removes the data dir.
    pub(crate) async fn cleanup(mut self) -> anyhow::Result<()> {
        for (_, child) in &mut self.children {
            let _ = child.kill().await;
        }
        if let Some(name) = &self.pg_name {
            let mut conn = sqlx::PgConnection::connect(&crate::admin_url())
                .await
                .context("connecting to PostgreSQL to drop the benchmark database")?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .with_context(|| format!("dropping {name}"))?;
        }
        // Dropping a TempDir ignores a failed removal: retry a few times, then say so.
        let path = self.dir.path().to_path_buf();
        let mut removed = self.dir.close();
        for _ in 0..5 {
            if !path.exists() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            removed = std::fs::remove_dir_all(&path);
        }
        removed.with_context(|| format!("removing the data dir {}", path.display()))
    }
}

/// A read-only connection that counts the operations not yet ended.
enum Poller {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Poller {
    async fn open(backend: Backend, url: &str) -> anyhow::Result<Self> {
        Ok(match backend {
            Backend::Sqlite => {
                use std::str::FromStr;
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                    .read_only(true)
                    .busy_timeout(Duration::from_secs(30));
                Poller::Sqlite(sqlx::SqliteConnection::connect_with(&options).await?)
            }
            Backend::Postgres => Poller::Postgres(sqlx::PgConnection::connect(url).await?),
        })
    }

    /// Closes the connection and waits until it is closed.
    async fn close(self) {
        let _ = match self {
            Poller::Sqlite(c) => c.close().await,
            Poller::Postgres(c) => c.close().await,
        };
    }

    async fn unfinished(&mut self) -> anyhow::Result<i64> {
        const SQL: &str =
            "SELECT COUNT(*) FROM bulk_operations WHERE status IN ('scheduled', 'processing')";
        let (n,): (i64,) = match self {
            Poller::Sqlite(c) => sqlx::query_as(SQL).fetch_one(c).await?,
            Poller::Postgres(c) => sqlx::query_as(SQL).fetch_one(c).await?,
        };
        Ok(n)
    }
}

struct User {
    org: usize,
    token: String,
}

/// Sends a request and reads its JSON answer, whatever the status.
async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
) -> anyhow::Result<(reqwest::StatusCode, Value)> {
    let response = request.send().await.with_context(|| what.to_string())?;
    let status = response.status();
    let body = response
        .json()
        .await
        .with_context(|| format!("{what}: the answer ({status}) is not JSON"))?;
    Ok((status, body))
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn secs(s: f64) -> String {
    format!("{s:.3} s")
}

pub async fn main(args: &[String]) -> anyhow::Result<()> {
    let args =
        Args::try_parse_from(std::iter::once("bench lag".to_string()).chain(args.iter().cloned()))?;
    ensure!(args.count > 0, "count must be at least 1");
    ensure!(args.processes > 0, "processes must be at least 1");
    ensure!(args.orgs > 0, "--orgs must be at least 1");
    let per_org = args.count.div_ceil(args.orgs);
    ensure!(
        per_org < MAX_SCHEDULED_PER_ORG,
        "{per_org} operations an organization is over its limit of {MAX_SCHEDULED_PER_ORG} waiting: raise --orgs"
    );
    let load_before = load_average();
    let mut run = Run::new(args.backend, "haven_bench_lag").await?;
    let outcome = measure(&args, &mut run, &load_before).await;
    let cleaned = run.cleanup().await;
    outcome?;
    cleaned
}

async fn measure(args: &Args, run: &mut Run, load_before: &str) -> anyhow::Result<()> {
    // Organizations and users, through the command line (the first command migrates).
    let users_per_org = per_org_users(args);
    let mut logins = Vec::new();
    for o in 0..args.orgs {
        let org = run
            .admin(&["admin", "create-org", &format!("Bench {o}")])
            .await?;
        uuid::Uuid::parse_str(&org)
            .with_context(|| format!("`haven admin create-org` printed `{org}`, not an id"))?;
        for u in 0..users_per_org {
            let email = format!("bench-{o}-{u}@example.org");
            run.admin(&[
                "admin",
                "create-user",
                "--org",
                &org,
                "--email",
                &email,
                "--role",
                "data_manager",
            ])
            .await?;
            logins.push((o, email));
        }
    }

    // The processes: `serve` first (it prints its address), then the workers.
    let flags = [
        "--workers".to_string(),
        args.workers.to_string(),
        "--max-per-org".to_string(),
        args.max_per_org.to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut serve = vec!["serve", "--listen", "127.0.0.1:0", "--no-bootstrap"];
    serve.extend(&flags);
    let base = run.serve(&serve).await?;
    for w in 1..args.processes {
        let mut worker = vec!["worker"];
        worker.extend(&flags);
        run.spawn(&format!("worker{w}"), &worker)?;
    }
    for w in 1..args.processes {
        run.wait_for_line(&format!("worker{w}.log"), "worker started")
            .await?;
    }

    let http = reqwest::Client::new();
    let mut users = Vec::new();
    for (org, email) in &logins {
        let login = http
            .post(format!("{base}/api/v2/auth/login"))
            .json(&json!({"email": email, "password": PASSWORD}));
        let (status, body) = send(login, "login").await?;
        ensure!(status.is_success(), "login of {email}: {status} {body}");
        let token = body["token"]
            .as_str()
            .with_context(|| format!("no token in the login answer {body}"))?
            .to_string();
        users.push(User { org: *org, token });
    }

    // Schedule: operation i goes to organization i % orgs, then round-robin to its users.
    let lead = Duration::from_secs(args.lead_secs.unwrap_or(5 + args.count as u64 / 100));
    let due: DateTime<Utc> = (Utc::now() + lead).trunc_subsecs(0) + chrono::Duration::seconds(1);
    let due_text = due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = json!({"format": "csv", "dry_run": true, "email_notification": false,
        "scheduled_at": due_text});
    let scheduling = Instant::now();
    let requests = (0..args.count).map(|i| {
        let org = i % args.orgs;
        let user = &users[org * users_per_org + (i / args.orgs) % users_per_org];
        debug_assert_eq!(user.org, org);
        let (http, base, body) = (&http, &base, &body);
        async move {
            let request = http
                .post(format!("{base}/api/v2/bulk/export/schedule"))
                .bearer_auth(&user.token)
                .json(body);
            let (status, op) = send(request, "scheduling an export").await?;
            ensure!(status.as_u16() == 201, "scheduling answered {status} {op}");
            let at = op["scheduled_at"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .with_context(|| format!("no scheduled_at in {op}"))?;
            ensure!(
                at == due,
                "scheduled at {at}, not {due}: scheduling took longer than the lead; raise --lead-secs"
            );
            anyhow::Ok(())
        }
    });
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(requests)
        .buffer_unordered(SCHEDULING_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let scheduled_in = scheduling.elapsed();
    ensure!(
        Utc::now() < due,
        "scheduling took {scheduled_in:?}, past the due time: raise --lead-secs"
    );

    // Wait for the end of every operation (or the timeout).
    let mut poller = Poller::open(args.backend, &run.db_url).await?;
    let timed_out = wait_until_ended(&mut poller, due, args.timeout_secs).await;
    poller.close().await;
    let timed_out = timed_out?;
    let load_after = load_average();

    // Read the operations back, organization by organization.
    let mut ops = Vec::new();
    for org in 0..args.orgs {
        let token = &users[org * users_per_org].token;
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{base}/api/v2/bulk-operations?type=export&limit=200");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let (status, page) =
                send(http.get(&url).bearer_auth(token), "listing operations").await?;
            ensure!(status.is_success(), "listing operations: {status} {page}");
            ops.extend(
                page["operations"]
                    .as_array()
                    .context("no operations in the list answer")?
                    .iter()
                    .cloned(),
            );
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
    }
    ensure!(
        ops.len() == args.count,
        "the API lists {} exports, {} were scheduled",
        ops.len(),
        args.count
    );

    let time = |op: &Value, key: &str| -> anyhow::Result<Option<DateTime<Utc>>> {
        match op[key].as_str() {
            None => Ok(None),
            Some(s) => Ok(Some(
                DateTime::parse_from_rfc3339(s)
                    .with_context(|| format!("{key} `{s}`"))?
                    .with_timezone(&Utc),
            )),
        }
    };
    let mut start_lags = Vec::new();
    let mut end_lags = Vec::new();
    let mut last_completed: Option<DateTime<Utc>> = None;
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    let mut max_attempt = 0;
    for op in &ops {
        let scheduled = time(op, "scheduled_at")?.context("no scheduled_at")?;
        ensure!(
            scheduled == due,
            "operation {} is due at {scheduled}",
            op["id"]
        );
        *statuses
            .entry(op["status"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        max_attempt = max_attempt.max(op["attempt"].as_i64().unwrap_or(0));
        if let Some(started) = time(op, "started_at")? {
            start_lags.push((started - scheduled).as_seconds_f64());
        }
        if let Some(completed) = time(op, "completed_at")? {
            end_lags.push((completed - scheduled).as_seconds_f64());
            last_completed = last_completed.max(Some(completed));
        }
    }
    start_lags.sort_by(f64::total_cmp);
    end_lags.sort_by(f64::total_cmp);
    let drain = last_completed
        .map(|t| (t - due).as_seconds_f64())
        .unwrap_or(f64::NAN);

    let backend = args.backend.name();
    println!(
        "lag: {backend}, {} processes (1 serve + {} worker), {} dry-run exports due at {due_text}",
        args.processes,
        args.processes - 1,
        args.count
    );
    println!(
        "     {} organizations, {} users ({users_per_org} per organization), --workers {} --max-per-org {} per process",
        args.orgs,
        users.len(),
        args.workers,
        args.max_per_org
    );
    println!(
        "scheduled in {:.2} s ({SCHEDULING_CONCURRENCY} requests in flight), lead {} s",
        scheduled_in.as_secs_f64(),
        lead.as_secs()
    );
    if timed_out {
        println!(
            "TIMEOUT: gave up {} s after the due time; figures below are of what had started/ended",
            args.timeout_secs
        );
    }
    println!("statuses: {statuses:?}, highest attempt {max_attempt}");
    for (what, lags) in [
        ("start lag (started_at - scheduled_at)", &start_lags),
        ("end lag (completed_at - scheduled_at)", &end_lags),
    ] {
        println!(
            "{what}, {} ops: p50 {}, p99 {}, max {}",
            lags.len(),
            secs(percentile(lags, 50.0)),
            secs(percentile(lags, 99.0)),
            secs(percentile(lags, 100.0))
        );
    }
    println!("drain (last completed_at - scheduled_at): {}", secs(drain));
    println!("load average before: {load_before}; after: {load_after}");
    for (name, _) in &run.children {
        for line in run.warnings(name) {
            println!("{name}: {line}");
        }
    }
    println!(
        "| {backend} | {} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s{} | {load_before} |",
        args.processes,
        args.count,
        percentile(&start_lags, 50.0),
        percentile(&start_lags, 99.0),
        percentile(&start_lags, 100.0),
        drain,
        if timed_out { " (timeout)" } else { "" }
    );
    Ok(())
}

/// Waits until no operation is scheduled or running; `Ok(true)` when it gave up
/// `timeout_secs` after the due time.
async fn wait_until_ended(
    poller: &mut Poller,
    due: DateTime<Utc>,
    timeout_secs: u64,
) -> anyhow::Result<bool> {
    let give_up = due + chrono::Duration::seconds(timeout_secs as i64);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if Utc::now() < due {
            continue;
        }
        if poller.unfinished().await? == 0 {
            return Ok(false);
        }
        if Utc::now() > give_up {
            return Ok(true);
        }
    }
}

/// Users an organization needs so that none exceeds the per-user scheduling limit.
fn per_org_users(args: &Args) -> usize {
    args.count.div_ceil(args.orgs).div_ceil(PER_USER).max(1)
}
