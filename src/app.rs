//! Starting Haven: open the store, bootstrap, serve HTTP, run commands. `serve` is the
//! testable entry point: it takes a bound listener and a shutdown signal.

use std::future::{Future, IntoFuture};
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::auth;
use crate::blobs::BlobStore;
use crate::cli::{AdminCommand, AuditCommand, Cli, Command};
use crate::config::Config;
use crate::crypto::{Keyring, MasterKey};
use crate::domain::permission::Role;
use crate::domain::{new_id, now};
use crate::engine::{Engine, EngineSettings};
use crate::http::{router, AppState};
use crate::store::{Organization, Store, StoreError, User};

/// The binary's body: runs the command and turns errors into an exit code.
pub fn main(cli: Cli) -> ExitCode {
    init_logging(&cli.config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_command(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn run_command(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let store = open_store(&config).await?;
            let keyring = load_keyring(&config)?;
            let listener = TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            let addr = listener.local_addr()?;
            if !config.no_bootstrap {
                if let Some((email, password)) = bootstrap(store.as_ref()).await? {
                    println!("Haven created the organization \"Demo Clinic\" and its first admin.");
                    println!("login: {email} password: {password}");
                    println!("This password is shown once. Change it after logging in.");
                }
            }
            crate::audit::seal_unkeyed_chains(store.as_ref()).await?;
            let engine = start_engine(store.clone(), keyring, &config)?;
            engine.blobs.check().await?;
            println!(
                "Haven is listening on http://{addr}/ (open it in a browser to log in; API under http://{addr}/api/v2/)"
            );
            serve(store, Arc::new(config), engine, listener, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker => {
            let store = open_store(&config).await?;
            crate::audit::seal_unkeyed_chains(store.as_ref()).await?;
            let keyring = load_keyring(&config)?;
            let engine = Arc::new(Engine::new(
                store,
                keyring,
                blob_store(&config)?,
                EngineSettings::from_config(&config),
            ));
            engine.blobs.check().await?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let notifier = start_notifier(&engine, &config)?;
            let delivering = tokio::spawn(notifier.run(stopped.clone()));
            let loop_engine = engine.clone();
            tokio::spawn(checkpoint_wal_periodically(
                engine.store.clone(),
                stopped.clone(),
            ));
            let worker = tokio::spawn(async move { loop_engine.run(stopped).await });
            tracing::info!(workers = engine.settings.workers, "worker started");
            shutdown_signal().await;
            let _ = stop.send(true);
            let _ = worker.await;
            let _ = delivering.await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            use std::io::Write;
            // A closed pipe (`haven openapi | head`) is not an error worth a panic.
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                crate::http::openapi::document_json()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let store = open_store_without_migrating(&config).await?;
            store.migrate().await.context("applying migrations")?;
            println!("migrations applied ({})", store.backend());
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin(AdminCommand::CreateOrg { name }) => {
            let store = open_store(&config).await?;
            let org = create_organization(store.as_ref(), &name).await?;
            println!("{}", org.id);
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin(AdminCommand::CreateUser {
            org,
            email,
            role,
            password_stdin,
        }) => {
            let store = open_store(&config).await?;
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_string()
            } else {
                std::env::var("HAVEN_PASSWORD")
                    .context("set HAVEN_PASSWORD or pass --password-stdin to give the password")?
            };
            let role = Role::parse(&role).with_context(|| {
                format!("unknown role `{role}`: use admin, data_manager, analyst or viewer")
            })?;
            let user = create_user(store.as_ref(), org, &email, role, &password).await?;
            println!("{}", user.id);
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify { org, expect_head }) => {
            let store = open_store(&config).await?;
            let keys = crate::audit::AuditKeys::from_keyring(&load_keyring(&config)?);
            let orgs = match org {
                Some(id) => vec![id],
                None => store.list_organization_ids().await?,
            };
            let mut intact = true;
            for org in orgs {
                let result =
                    crate::audit::verify(store.as_ref(), org, &keys, expect_head.as_ref()).await?;
                match result.broken {
                    None => println!(
                        "organization {org}: {} entries, chain intact, head {}",
                        result.entries_checked, result.head
                    ),
                    Some(b) => {
                        intact = false;
                        let entry = b
                            .entry_id
                            .map(|id| id.to_string())
                            .unwrap_or_else(|| "(missing)".into());
                        println!(
                            "organization {org}: BROKEN at entry {entry} (seq {}): {}",
                            b.seq, b.reason
                        );
                    }
                }
                if result.unkeyed_entries > 0 {
                    println!(
                        "organization {org}: the first {} entries were written before the chain was keyed",
                        result.unkeyed_entries
                    );
                }
            }
            Ok(if intact {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Opens the configured database (creating the data dir) and migrates unless told not to.
/// The master key: `HAVEN_MASTER_KEY` when set, else the key file (generated with
/// mode 0600 on first start).
pub fn load_keyring(config: &Config) -> anyhow::Result<Keyring> {
    let key = match &config.master_key {
        Some(b64) => {
            MasterKey::from_base64(b64).context("HAVEN_MASTER_KEY must be base64 of 32 bytes")?
        }
        None => MasterKey::load_or_create(&config.master_key_path()).with_context(|| {
            format!(
                "reading the master key {}",
                config.master_key_path().display()
            )
        })?,
    };
    let mut keyring = Keyring::new(key);
    for path in &config.previous_master_key_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the previous master key {}", path.display()))?;
        let old = MasterKey::from_base64(&text)
            .with_context(|| format!("{} must hold base64 of 32 bytes", path.display()))?;
        keyring = keyring.with_old_key(old);
    }
    Ok(keyring)
}

///
/// The audit chain's keys, derived from the master key, are bound to the process here:
/// every audit entry the store appends from now on is keyed with them.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    crate::audit::install_keys(crate::audit::AuditKeys::from_keyring(&load_keyring(
        config,
    )?));
    let store = open_store_without_migrating(config).await?;
    if !config.no_migrate {
        store.migrate().await.context("applying migrations")?;
    }
    Ok(store)
}

async fn open_store_without_migrating(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    // Owner-only when Haven creates it: it holds the database, the key and the blobs.
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    }
    crate::store::connect(&config.database_url())
        .await
        .context("opening the database")
}

fn blob_store(config: &Config) -> anyhow::Result<BlobStore> {
    let blobs = match config.blob_store.as_deref() {
        Some(url) if url.starts_with("s3://") => BlobStore::s3(url)?,
        Some(url) if url.contains("://") && !url.starts_with("file://") => {
            anyhow::bail!("--blob-store {url}: expected a directory or s3://bucket/prefix")
        }
        _ => BlobStore::new(config.blob_dir()),
    };
    blobs
        .ensure_dirs()
        .with_context(|| format!("cannot create the blob store {}", blobs.location()))?;
    Ok(blobs)
}

/// Builds the engine of this process (its loop starts with `serve`).
pub fn start_engine(
    store: Arc<dyn Store>,
    keyring: Keyring,
    config: &Config,
) -> anyhow::Result<Arc<Engine>> {
    Ok(Arc::new(Engine::new(
        store,
        keyring,
        blob_store(config)?,
        EngineSettings::from_config(config),
    )))
}

/// Serves the API and runs the engine's workers until `shutdown` resolves.
pub async fn serve(
    store: Arc<dyn Store>,
    config: Arc<Config>,
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let hub = crate::notify::hub::EventHub::new();
    // Built first: nothing is started when it fails (the web UI's templates load here).
    let app = router(AppState {
        store: store.clone(),
        config: config.clone(),
        engine: engine.clone(),
        hub: hub.clone(),
        login_hashing: crate::auth::HashingGate::for_this_machine(),
    })?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let notifier = start_notifier(&engine, &config)?;
    let delivering = tokio::spawn(notifier.run(stopped.clone()));
    let feeding = tokio::spawn(hub.run(store.clone(), stopped.clone()));
    tokio::spawn(checkpoint_wal_periodically(store, stopped.clone()));
    let mut draining = stopped.clone();
    let workers = tokio::spawn(engine.run(stopped));
    // On the signal the engine stops claiming at once (its running attempts commit
    // their chunk and release their operations) while the HTTP server stops accepting
    // and lets in-flight requests finish; requests still running after
    // `--shutdown-timeout` are cut off, so a slow client cannot hold the process.
    let stop_on_signal = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            let _ = stop.send(true);
        }
    };
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop_on_signal)
    .into_future();
    let drain_deadline = async {
        let _ = draining.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(config.shutdown_timeout).await;
    };
    let served = tokio::select! {
        served = server => served.context("HTTP server failed"),
        () = drain_deadline => {
            tracing::warn!(
                "requests still in flight after the shutdown timeout were cut off"
            );
            Ok(())
        }
    };
    let _ = stop.send(true);
    let _ = workers.await;
    let _ = delivering.await;
    let _ = feeding.await;
    served
}

/// Builds the notification delivery workers of this process (every process delivers:
/// deliveries are claimed with a lease, like operations).
pub fn start_notifier(
    engine: &Engine,
    config: &Config,
) -> anyhow::Result<Arc<crate::notify::delivery::Notifier>> {
    Ok(Arc::new(crate::notify::delivery::Notifier::new(
        engine.store.clone(),
        engine.keyring.clone(),
        crate::notify::NotifySettings::from_config(config),
        engine.metrics.clone(),
    )?))
}

/// How often the SQLite write-ahead log is checkpointed and truncated.
const WAL_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// Empties SQLite's write-ahead log every few minutes: it keeps the old content of every
/// page written since the last checkpoint, deleted and replaced patient values included,
/// in plaintext. SQLite's own automatic checkpoint copies the log back but does not
/// truncate it. (PostgreSQL: nothing to do.)
async fn checkpoint_wal_periodically(
    store: Arc<dyn Store>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WAL_CHECKPOINT_INTERVAL) => {}
            _ = stopped.changed() => return,
        }
        if let Err(e) = store.checkpoint_wal().await {
            tracing::warn!(error = %e, "checkpointing the write-ahead log failed");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
    tracing::info!("shutting down");
}

/// On an empty database, creates "Demo Clinic" and `admin@demo.local` with a random
/// password, returned so that it can be printed once.
pub async fn bootstrap(store: &dyn Store) -> anyhow::Result<Option<(String, String)>> {
    if store.count_organizations().await? > 0 {
        return Ok(None);
    }
    let org = create_organization(store, "Demo Clinic").await?;
    let password = auth::random_password();
    let email = "admin@demo.local";
    create_user(store, org.id, email, Role::Admin, &password).await?;
    Ok(Some((email.to_string(), password)))
}

pub async fn create_organization(store: &dyn Store, name: &str) -> anyhow::Result<Organization> {
    let name = name.trim();
    anyhow::ensure!(!name.is_empty(), "the organization needs a name");
    let org = Organization {
        id: new_id(),
        name: name.to_string(),
        created_at: now(),
    };
    store.create_organization(&org).await?;
    Ok(org)
}

/// Creates a user after checking the email, the organization and the password policy.
pub async fn create_user(
    store: &dyn Store,
    org: Uuid,
    email: &str,
    role: Role,
    password: &str,
) -> anyhow::Result<User> {
    let email = email.trim().to_lowercase();
    anyhow::ensure!(
        email.split('@').count() == 2 && email.contains('.'),
        "`{email}` is not an email address"
    );
    anyhow::ensure!(
        store.get_organization(org).await?.is_some(),
        "no organization has the id {org}"
    );
    auth::check_password_policy(password).map_err(anyhow::Error::msg)?;
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password)).await??;
    let user = User {
        id: new_id(),
        organization_id: org,
        email: email.clone(),
        role,
        created_at: now(),
    };
    match store.create_user(&user, &hash).await {
        Ok(()) => Ok(user),
        Err(StoreError::Duplicate(_)) => {
            anyhow::bail!("a user with the email {email} exists already")
        }
        Err(e) => Err(e.into()),
    }
}
