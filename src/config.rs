//! One `Config` for every subcommand: flags win over environment variables, which win
//! over defaults (clap does the layering). Secrets never appear in `Debug`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Settings common to every subcommand (SPEC 1). Flags may stand before or after the
/// subcommand because each is declared `global`.
#[derive(Args, Clone)]
pub struct Config {
    /// Database URL: sqlite://PATH or postgres://... (default: sqlite in the data dir).
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Where the SQLite database, master key, blobs and outbox live.
    #[arg(
        long,
        env = "HAVEN_DATA_DIR",
        global = true,
        default_value = "./haven-data"
    )]
    pub data_dir: PathBuf,

    /// Address the HTTP server listens on.
    #[arg(
        long,
        env = "HAVEN_LISTEN",
        global = true,
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// File holding the base64 master key (default: <data-dir>/master.key, generated).
    #[arg(long, global = true)]
    pub master_key_file: Option<PathBuf>,

    /// Base64 of a 32-byte master key; takes the place of the key file.
    #[arg(
        long = "master-key",
        env = "HAVEN_MASTER_KEY",
        global = true,
        hide = true
    )]
    pub master_key: Option<String>,

    /// Key files of earlier master keys, still used to read what they encrypted after a
    /// rotation (new data is always encrypted with the current key).
    #[arg(
        long,
        env = "HAVEN_PREVIOUS_MASTER_KEY_FILES",
        global = true,
        value_delimiter = ','
    )]
    pub previous_master_key_file: Vec<PathBuf>,

    /// SMTP server for notification mail (unset: .eml files in <data-dir>/outbox).
    #[arg(long, env = "HAVEN_SMTP_URL", global = true)]
    pub smtp_url: Option<String>,

    /// When set, `GET /metrics` needs `Authorization: Bearer <this token>`.
    #[arg(long, env = "HAVEN_METRICS_TOKEN", global = true)]
    pub metrics_token: Option<String>,

    /// Sender address of notification mail.
    #[arg(
        long,
        env = "HAVEN_SMTP_FROM",
        global = true,
        default_value = "Haven <haven@localhost>"
    )]
    pub smtp_from: String,

    /// HTTP gateway for SMS notifications: receives a JSON POST {"to","text"}.
    #[arg(long, env = "HAVEN_SMS_GATEWAY_URL", global = true)]
    pub sms_gateway_url: Option<String>,

    /// Bearer token sent to the SMS gateway.
    #[arg(long, env = "HAVEN_SMS_GATEWAY_TOKEN", global = true)]
    pub sms_gateway_token: Option<String>,

    /// First wait before a failed webhook delivery is retried (doubles each time).
    #[arg(long, env = "HAVEN_WEBHOOK_RETRY_BASE", global = true, default_value = "1s", value_parser = parse_duration)]
    pub webhook_retry_base: Duration,

    /// Attempts of one webhook delivery before it is marked failed.
    #[arg(
        long,
        env = "HAVEN_WEBHOOK_MAX_ATTEMPTS",
        global = true,
        default_value_t = 12
    )]
    pub webhook_max_attempts: i64,

    /// Lets webhooks reach private, loopback and link-local addresses (tests, labs).
    #[arg(long, env = "HAVEN_ALLOW_PRIVATE_WEBHOOKS", global = true)]
    pub allow_private_webhooks: bool,

    /// Base of links in emails (default: http://<listen>).
    #[arg(long, env = "HAVEN_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// Where encrypted uploads, exports and reports live (default: <data-dir>/blobs).
    #[arg(long, env = "HAVEN_BLOB_STORE", global = true)]
    pub blob_store: Option<String>,

    /// Operations run at once in this process (default: number of cores; 0 = API only).
    #[arg(long, env = "HAVEN_WORKERS", global = true)]
    pub workers: Option<usize>,

    /// Operations run at once per organization, across all processes.
    #[arg(long, env = "HAVEN_MAX_PER_ORG", global = true, default_value_t = 2)]
    pub max_per_org: i64,

    /// How long a worker's claim on an operation lasts without a heartbeat.
    #[arg(long, env = "HAVEN_LEASE_DURATION", global = true, default_value = "30s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// Attempts for an operation failing on transient errors.
    #[arg(long, env = "HAVEN_MAX_ATTEMPTS", global = true, default_value_t = 5)]
    pub max_attempts: i64,

    /// How long a stopping process waits for running chunks.
    #[arg(long, env = "HAVEN_SHUTDOWN_TIMEOUT", global = true, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// How long after completion an import may be rolled back.
    #[arg(long, env = "HAVEN_IMPORT_ROLLBACK_WINDOW", global = true, default_value = "24h", value_parser = parse_duration)]
    pub import_rollback_window: Duration,

    /// How long update backups (and soft-deleted patients) are kept.
    #[arg(long, env = "HAVEN_BACKUP_RETENTION", global = true, default_value = "30d", value_parser = parse_duration)]
    pub backup_retention: Duration,

    /// How long export files can be downloaded.
    #[arg(long, env = "HAVEN_EXPORT_RETENTION", global = true, default_value = "7d", value_parser = parse_duration)]
    pub export_retention: Duration,

    /// How often expired exports, old backups and long-deleted patients are purged.
    #[arg(long, env = "HAVEN_CLEANUP_INTERVAL", global = true, default_value = "24h", value_parser = parse_duration)]
    pub cleanup_interval: Duration,

    /// Largest accepted upload, in bytes.
    #[arg(long, env = "HAVEN_MAX_UPLOAD_BYTES", global = true, default_value_t = 1 << 30)]
    pub max_upload_bytes: u64,

    /// How long a login token stays valid.
    #[arg(long, env = "HAVEN_TOKEN_TTL", global = true, default_value = "12h", value_parser = parse_duration)]
    pub token_ttl: Duration,

    /// Do not apply migrations on start.
    #[arg(long, global = true)]
    pub no_migrate: bool,

    /// Do not create the demo organization and admin on an empty database.
    #[arg(long, global = true)]
    pub no_bootstrap: bool,

    /// Log format: text or json.
    #[arg(long, env = "HAVEN_LOG_FORMAT", global = true, default_value = "text")]
    pub log_format: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field(
                "master_key",
                &self.master_key.as_ref().map(|_| "<redacted>"),
            )
            .field("smtp_url", &self.smtp_url.as_deref().map(redact_url))
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// Hides a password in `scheme://user:password@host`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!(
                "{}{}:<redacted>{}",
                &url[..scheme_end + 3],
                user,
                &url[at..]
            )
        }
        _ => url.to_string(),
    }
}

impl Config {
    /// The database URL in force: the flag/env, else SQLite in the data dir.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("haven.db").display()),
        }
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    pub fn blob_dir(&self) -> PathBuf {
        match &self.blob_store {
            Some(path) => PathBuf::from(path.strip_prefix("file://").unwrap_or(path)),
            None => self.data_dir.join("blobs"),
        }
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }

    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
    }
}

/// Parses `30s`, `15m`, `24h`, `30d` (and `500ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` needs a unit: s, m, h or d"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 15m, 24h, 30d"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written_in_the_spec() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("3x").is_err());
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://haven:s3cret@db/haven"),
            "postgres://haven:<redacted>@db/haven"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
