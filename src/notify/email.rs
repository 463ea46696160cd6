//! Notification mail: composed from the event (no patient data), sent through SMTP
//! (`--smtp-url`) or written as `.eml` files to `<data-dir>/outbox/` without one.

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Event, EventType, NotifySettings};

/// Where mail goes.
pub enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox(std::path::PathBuf),
}

impl Mailer {
    /// From the settings: `smtp://` (STARTTLS when offered), `smtp://…?tls=required`
    /// (STARTTLS or nothing), `smtps://` (TLS from the start); user and password from
    /// the URL. Without a URL, the outbox directory.
    pub fn from_settings(settings: &NotifySettings) -> anyhow::Result<Self> {
        let Some(text) = &settings.smtp_url else {
            return Ok(Mailer::Outbox(settings.outbox_dir.clone()));
        };
        let url = url::Url::parse(text).map_err(|_| anyhow::anyhow!("--smtp-url is not a URL"))?;
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("--smtp-url has no host"))?
            .to_string();
        let tls = TlsParameters::new(host.clone())?;
        let required = url
            .query_pairs()
            .any(|(k, v)| k == "tls" && v == "required");
        let (tls, default_port) = match url.scheme() {
            "smtps" => (Tls::Wrapper(tls), 465),
            "smtp" if required => (Tls::Required(tls), 587),
            "smtp" => (Tls::Opportunistic(tls), 25),
            other => anyhow::bail!("--smtp-url: unknown scheme {other} (smtp or smtps)"),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(url.port().unwrap_or(default_port))
            .tls(tls)
            .timeout(Some(std::time::Duration::from_secs(30)));
        if !url.username().is_empty() {
            let user = percent_decode(url.username());
            let password = percent_decode(url.password().unwrap_or(""));
            builder = builder.credentials(
                lettre::transport::smtp::authentication::Credentials::new(user, password),
            );
        }
        Ok(Mailer::Smtp(builder.build()))
    }

    /// Sends one mail; `name` names the `.eml` file in the outbox (the delivery id).
    pub async fn send(&self, message: Message, name: &str) -> anyhow::Result<()> {
        match self {
            Mailer::Smtp(transport) => {
                transport.send(message).await?;
                Ok(())
            }
            Mailer::Outbox(dir) => {
                let dir = dir.clone();
                let path = dir.join(format!("{name}.eml"));
                let bytes = message.formatted();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::create_dir_all(&dir)?;
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&path)?;
                    file.write_all(&bytes)?;
                    file.sync_all()
                })
                .await??;
                Ok(())
            }
        }
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// What went wrong, in words a data manager can act on, without the message itself
/// (which may name columns of their file).
pub fn failure_category(error: Option<&str>) -> &'static str {
    let error = error.unwrap_or_default();
    if error.contains("on_error is abort") || error.contains("invalid") {
        "invalid rows in the data (see the error report)"
    } else if error.contains("attempts") || error.contains("unavailable") {
        "the database or the file store was unavailable"
    } else if error.contains("depends on") {
        "an operation it depended on did not complete"
    } else if error.contains("CSV") || error.contains("file") {
        "the file could not be read"
    } else {
        "the operation could not be completed"
    }
}

/// The mail of one event, to `to`. The subject names the operation's type and status,
/// the body its id and the link to its page; nothing from its data.
pub fn compose(
    settings: &NotifySettings,
    event: &Event,
    to: &str,
    error: Option<&str>,
) -> anyhow::Result<Message> {
    let link = format!("{}/operations/{}", settings.public_url, event.operation_id);
    let kind = &event.operation_type;
    let what = event.event_type.verb();
    let subject = format!("Haven: your {kind} operation {what}");
    let detail = match event.event_type {
        EventType::Scheduled => "It is scheduled; you will be told when it has run.".to_string(),
        EventType::Completed if kind == "export" => {
            "The export file is ready. Log in and download it from the operation's page; the link expires with the file.".to_string()
        }
        EventType::Completed => "It completed.".to_string(),
        EventType::Failed => format!("It failed: {}.", failure_category(error)),
        EventType::Cancelled => "It was cancelled; any partial change was undone.".to_string(),
        EventType::RolledBack => "Its changes were rolled back.".to_string(),
        EventType::Started | EventType::Progress => format!("It is {what}."),
    };
    let text = format!(
        "Your {kind} operation {id} {what}.\n\n{detail}\n\nOperation page: {link}\n\n-- Haven\n",
        id = event.operation_id
    );
    let html = format!(
        "<!doctype html><html><body><p>Your {kind} operation <code>{id}</code> {what}.</p>\
         <p>{detail}</p><p><a href=\"{link}\">Open the operation page</a></p>\
         <p>&mdash; Haven</p></body></html>",
        id = event.operation_id
    );
    let from: Mailbox = settings
        .smtp_from
        .parse()
        .map_err(|_| anyhow::anyhow!("--smtp-from is not a mail address"))?;
    let to: Mailbox = to
        .parse()
        .map_err(|_| anyhow::anyhow!("the user's email address is not valid"))?;
    Ok(Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(text),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html),
                ),
        )?)
}
