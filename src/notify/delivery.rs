//! Delivery workers: claim pending deliveries with a lease (any number of processes),
//! send them on their channel, and record the attempt: delivered, retried later with
//! backoff, or failed for good. A channel that is down delays its own deliveries
//! only; operations never wait for a notification.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;

use super::email::{self, Mailer};
use super::{sms, webhook, NotifySettings};
use crate::crypto::Keyring;
use crate::store::notify::{DeliveryJob, DeliveryResult, Recipient};
use crate::store::Store;

const LEASE: Duration = Duration::from_secs(120);
const BATCH: i64 = 16;
/// Mail and SMS: retried for about a day (backoff from 5 s, capped at an hour).
const PERSONAL_MAX_ATTEMPTS: i64 = 30;
const PERSONAL_RETRY_BASE: Duration = Duration::from_secs(5);
const RETRY_CAP: Duration = Duration::from_secs(3600);
/// A webhook failing for this long is disabled (its admins are told in-app).
const WEBHOOK_FAILING_LIMIT: chrono::Duration = chrono::Duration::hours(24);

pub struct Notifier {
    store: Arc<dyn Store>,
    keyring: Keyring,
    settings: NotifySettings,
    mailer: Mailer,
    http: reqwest::Client,
    worker_id: String,
    wake: Notify,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Notifier {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Keyring,
        settings: NotifySettings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Self> {
        Ok(Notifier {
            mailer: Mailer::from_settings(&settings)?,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            store,
            keyring,
            settings,
            worker_id: format!(
                "notify-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            wake: Notify::new(),
            metrics,
        })
    }

    pub fn settings(&self) -> &NotifySettings {
        &self.settings
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Looks for deliveries now (an event was just written by this process).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivers until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let wait = match self
                .store
                .claim_deliveries(&self.worker_id, LEASE, BATCH)
                .await
            {
                Ok(jobs) if !jobs.is_empty() => {
                    futures::future::join_all(jobs.into_iter().map(|job| self.deliver(job))).await;
                    continue;
                }
                Ok(_) => match self.store.next_delivery_at().await {
                    Ok(Some(at)) => (at - Utc::now())
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                        .clamp(Duration::from_millis(20), Duration::from_millis(500)),
                    _ => Duration::from_millis(500),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "claiming notification deliveries failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn deliver(&self, job: DeliveryJob) {
        let id = job.delivery.id;
        let result = match (job.delivery.channel.as_str(), &job.recipient) {
            (_, Recipient::Gone) => DeliveryResult::Failed {
                status_code: None,
                error: "the recipient no longer exists".into(),
            },
            ("email", Recipient::User { email, .. }) => self.send_mail(&job, email).await,
            ("sms", Recipient::User { phone_number, .. }) => {
                self.send_sms(&job, phone_number.as_deref()).await
            }
            ("webhook", Recipient::Webhook(hook)) => self.send_webhook(&job, hook).await,
            _ => DeliveryResult::Failed {
                status_code: None,
                error: "the delivery does not match its recipient".into(),
            },
        };
        let outcome = match &result {
            DeliveryResult::Delivered { .. } => "delivered",
            DeliveryResult::Retry { .. } => "retry",
            DeliveryResult::Failed { .. } => "failed",
        };
        self.metrics.delivery(&job.delivery.channel, outcome);
        if let DeliveryResult::Failed { error, .. } | DeliveryResult::Retry { error, .. } = &result
        {
            tracing::info!(delivery_id = %id, channel = %job.delivery.channel, attempt = job.delivery.attempts, error = %error, "notification not delivered");
        }
        match self
            .store
            .finish_delivery(id, &self.worker_id, result)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::debug!(delivery_id = %id, "delivery lease lost"),
            Err(e) => tracing::warn!(delivery_id = %id, error = %e, "recording a delivery failed"),
        }
    }

    /// A retry after `base * 2^(attempt-1)`, or a failure after `max` attempts.
    fn retry_or_fail(
        attempt: i64,
        max: i64,
        base: Duration,
        status_code: Option<i64>,
        error: String,
    ) -> DeliveryResult {
        if attempt >= max {
            return DeliveryResult::Failed {
                status_code,
                error: format!("{error}; gave up after {attempt} attempts"),
            };
        }
        let exp = (attempt - 1).clamp(0, 20) as u32;
        let wait = base.saturating_mul(1u32 << exp.min(20)).min(RETRY_CAP);
        DeliveryResult::Retry {
            at: Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
            status_code,
            error,
        }
    }

    async fn send_mail(&self, job: &DeliveryJob, to: &str) -> DeliveryResult {
        let message = match email::compose(
            &self.settings,
            &job.event,
            to,
            job.operation_error.as_deref(),
        ) {
            Ok(m) => m,
            Err(e) => {
                return DeliveryResult::Failed {
                    status_code: None,
                    error: e.to_string(),
                }
            }
        };
        match self
            .mailer
            .send(message, &job.delivery.id.to_string())
            .await
        {
            Ok(()) => DeliveryResult::Delivered { status_code: None },
            Err(e) => Self::retry_or_fail(
                job.delivery.attempts,
                PERSONAL_MAX_ATTEMPTS,
                PERSONAL_RETRY_BASE,
                None,
                format!(
                    "the mail server did not accept the mail ({})",
                    mail_error_kind(&e)
                ),
            ),
        }
    }

    async fn send_sms(&self, job: &DeliveryJob, phone: Option<&str>) -> DeliveryResult {
        let (Some(gateway), Some(phone)) = (self.settings.sms_gateway_url.as_deref(), phone) else {
            return DeliveryResult::Failed {
                status_code: None,
                error: "no SMS gateway configured, or no phone number".into(),
            };
        };
        let text = format!("Haven: {}", job.event.message());
        match sms::send(
            &self.http,
            gateway,
            self.settings.sms_gateway_token.as_deref(),
            phone,
            &text,
        )
        .await
        {
            Ok(code) => DeliveryResult::Delivered {
                status_code: Some(code as i64),
            },
            Err((code, error)) => Self::retry_or_fail(
                job.delivery.attempts,
                PERSONAL_MAX_ATTEMPTS,
                PERSONAL_RETRY_BASE,
                code.map(|c| c as i64),
                error,
            ),
        }
    }

    async fn send_webhook(
        &self,
        job: &DeliveryJob,
        hook: &crate::store::notify::Webhook,
    ) -> DeliveryResult {
        if !hook.enabled {
            return DeliveryResult::Failed {
                status_code: None,
                error: "the webhook is disabled".into(),
            };
        }
        let result = self.post_webhook(job, hook).await;
        let ok = matches!(result, DeliveryResult::Delivered { .. });
        let now = Utc::now();
        match self
            .store
            .webhook_health(hook.organization_id, hook.id, ok, now)
            .await
        {
            Ok(Some(since)) if now - since > WEBHOOK_FAILING_LIMIT => {
                let reason = "its deliveries kept failing for more than a day";
                if let Err(e) = self
                    .store
                    .disable_webhook(hook.organization_id, hook.id, reason, now)
                    .await
                {
                    tracing::warn!(webhook_id = %hook.id, error = %e, "disabling a failing webhook failed");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(webhook_id = %hook.id, error = %e, "recording webhook health failed")
            }
        }
        result
    }

    async fn post_webhook(
        &self,
        job: &DeliveryJob,
        hook: &crate::store::notify::Webhook,
    ) -> DeliveryResult {
        let attempt = job.delivery.attempts;
        let max = self.settings.webhook_max_attempts;
        let base = self.settings.webhook_retry_base;
        let secret = match self
            .keyring
            .open(&hook.sealed_secret, &webhook::secret_aad(hook.id))
            .ok()
            .and_then(|s| String::from_utf8(s).ok())
        {
            Some(s) => s,
            None => {
                return DeliveryResult::Failed {
                    status_code: None,
                    error: "the webhook secret cannot be decrypted with the configured master key"
                        .into(),
                }
            }
        };
        // Resolved and checked at every delivery, and the connection pinned to the
        // checked addresses: a DNS answer that turned private is refused.
        let (url, addrs) =
            match webhook::resolve_target(&hook.url, self.settings.allow_private_webhooks).await {
                Ok(target) => target,
                Err(webhook::TargetError::Unresolvable) => {
                    return Self::retry_or_fail(
                        attempt,
                        max,
                        base,
                        None,
                        "the webhook host cannot be resolved".into(),
                    )
                }
                Err(e) => {
                    return DeliveryResult::Failed {
                        status_code: None,
                        error: format!("the webhook URL {e}"),
                    }
                }
            };
        let body = serde_json::json!({
            "type": job.event.event_type.as_str(),
            "timestamp": crate::domain::rfc3339(&job.event.created_at),
            "data": job.event.to_json(),
        })
        .to_string();
        let message_id = format!("msg_{}", job.delivery.id.simple());
        let timestamp = Utc::now().timestamp();
        let signature = match webhook::sign(&secret, &message_id, timestamp, &body) {
            Ok(s) => s,
            Err(e) => {
                return DeliveryResult::Failed {
                    status_code: None,
                    error: e.to_string(),
                }
            }
        };
        let host = url.host_str().unwrap_or_default().to_string();
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .resolve_to_addrs(&host, &addrs)
            .build()
        {
            Ok(c) => c,
            Err(_) => {
                return Self::retry_or_fail(
                    attempt,
                    max,
                    base,
                    None,
                    "HTTP client setup failed".into(),
                )
            }
        };
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => DeliveryResult::Delivered {
                status_code: Some(response.status().as_u16() as i64),
            },
            Ok(response) => {
                let code = response.status().as_u16();
                let error = if response.status().is_redirection() {
                    format!("the endpoint answered {code}; redirects are not followed")
                } else {
                    format!("the endpoint answered {code}")
                };
                Self::retry_or_fail(attempt, max, base, Some(code as i64), error)
            }
            Err(e) => Self::retry_or_fail(
                attempt,
                max,
                base,
                None,
                format!("the endpoint could not be reached ({})", sms::kind(&e)),
            ),
        }
    }
}

/// An SMTP error described without addresses or server text.
fn mail_error_kind(err: &anyhow::Error) -> &'static str {
    match err.downcast_ref::<lettre::transport::smtp::Error>() {
        Some(e) if e.is_permanent() => "permanent error",
        Some(e) if e.is_transient() => "temporary error",
        Some(_) => "connection failed",
        None => "write failed",
    }
}
