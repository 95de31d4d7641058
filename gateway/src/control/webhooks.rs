//! Alert delivery: every alert written to `alerts.jsonl` (a soft limit crossed, a burn-rate
//! forecast, a guard tripped, a key about to expire) goes to each configured `[[webhook]]`,
//! and with `[kafka]` to the alerts topic, in the order written, at least once.
//!
//! On the topic an alert is one record, its line as written, keyed by its id, published once
//! the brokers acknowledge it (`state/webhooks/kafka-alerts.cursor` moves only then).
//!
//! The alerts file is the outbox: each webhook keeps a cursor, the byte offset of the first
//! alert it has not delivered, in `state/webhooks/<name>.cursor` (written whole and renamed
//! into place). A delivery is a `POST` of the alert: as written (generic JSON, signed with
//! HMAC-SHA256 over the timestamp and the body when a secret is configured) or as a
//! Slack-compatible `{"text": ...}`. It carries the alert's id as `Idempotency-Key`. The
//! cursor moves past an alert only once the receiver answered 2xx. Otherwise the same alert is
//! sent again after a backoff that doubles up to [`WEBHOOK_BACKOFF_MAX`].
//!
//! **Invariant:** no alert is skipped and none is lost across a `kill -9`: the alert is in the
//! file before its delivery starts, and the cursor is moved only after a 2xx. So an alert is
//! delivered again only when the process died between the answer and the cursor's write, and
//! always with the same idempotency key.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, Request, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::watch;

use crate::clock::now_ms;
use crate::config::{WebhookConfig, WebhookFormat};
use crate::events::emit::ALERTS_FILE;
use crate::limits::{
    WEBHOOK_ALERT_BYTES_MAX, WEBHOOK_BACKOFF_MAX, WEBHOOK_BACKOFF_MIN, WEBHOOK_POLL,
};
use crate::metrics::{Counter, Metrics};
use crate::operator::report;
use crate::providers::SliceBody;
use crate::state::Gateway;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// The running deliveries, one task per webhook.
#[derive(Debug)]
pub struct WebhookTask {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One outlet's delivery state: where it sends, and how far it has come.
struct Hook {
    /// The webhook's name, or `kafka-alerts`: in reports and the cursor's file name.
    name: String,
    cursor_path: PathBuf,
    /// The byte offset in the alerts file of the first alert not yet delivered.
    offset: u64,
    target: Target,
}

/// Where an outlet sends.
enum Target {
    /// Boxed: one of a few per process, and twice the size of the other.
    Http(Box<HttpTarget>),
    Kafka(tollgate_sink::kafka::AlertPublisher),
}

/// A `[[webhook]]`.
struct HttpTarget {
    config: WebhookConfig,
    /// Its HMAC key, read from `secret_env` at start.
    secret: Option<Vec<u8>>,
    uri: Uri,
    client: Client<Https, SliceBody>,
}

impl WebhookTask {
    /// Starts a delivery for every `[[webhook]]` of `gateway`'s config and, with `[kafka]`,
    /// one to the alerts topic as `replica` (`None` when there is neither), each from its
    /// cursor; `env` reads the secrets.
    pub fn start(
        gateway: &Arc<Gateway>,
        env: &impl Fn(&str) -> Option<String>,
        replica: &str,
    ) -> io::Result<Option<WebhookTask>> {
        let config = &gateway.config;
        let kafka = config.kafka.as_ref().zip(config.alerts_topic.as_deref());
        if config.webhooks.is_empty() && kafka.is_none() {
            return Ok(None);
        }
        let alerts = config.events.dir.join(ALERTS_FILE);
        let cursors = config.state_dir.join("webhooks");
        std::fs::create_dir_all(&cursors)?;
        let (stop, stopped) = watch::channel(false);
        let mut hooks = Vec::new();
        for webhook in &config.webhooks {
            hooks.push(Hook::webhook(webhook.clone(), &cursors, env)?);
        }
        if let Some((kafka, topic)) = kafka {
            let mut kafka = kafka.clone();
            replica.clone_into(&mut kafka.origin);
            let publisher = tollgate_sink::kafka::AlertPublisher::new(&kafka, topic)
                .map_err(|e| io::Error::other(e.to_string()))?;
            hooks.push(Hook::at_cursor(
                "kafka-alerts".into(),
                &cursors,
                Target::Kafka(publisher),
            )?);
        }
        let mut tasks = Vec::new();
        for hook in hooks {
            let (alerts, metrics, stopped) = (
                alerts.clone(),
                Arc::clone(&gateway.metrics),
                stopped.clone(),
            );
            tasks.push(tokio::spawn(deliver_all(hook, alerts, metrics, stopped)));
        }
        Ok(Some(WebhookTask { stop, tasks }))
    }

    /// Stops delivering; an alert being sent is sent again at the next start.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

impl Hook {
    /// `target` named `name`, from its cursor in `cursors` (the file's start without one).
    fn at_cursor(name: String, cursors: &Path, target: Target) -> io::Result<Hook> {
        let cursor_path = cursors.join(format!("{name}.cursor"));
        let offset = match File::open(&cursor_path) {
            Ok(file) => {
                // A cursor is a number: 20 digits at most.
                let mut text = String::new();
                file.take(32).read_to_string(&mut text)?;
                text.trim().parse().map_err(|e| {
                    io::Error::other(format!("{}: not a cursor: {e}", cursor_path.display()))
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(Hook {
            name,
            cursor_path,
            offset,
            target,
        })
    }

    fn webhook(
        config: WebhookConfig,
        cursors: &Path,
        env: &impl Fn(&str) -> Option<String>,
    ) -> io::Result<Hook> {
        let secret = match &config.secret_env {
            Some(name) => Some(
                env(name)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        io::Error::other(format!(
                            "webhook `{}`: ${name} (its secret_env) is not set",
                            config.name
                        ))
                    })?
                    .into_bytes(),
            ),
            None => None,
        };
        let uri: Uri = config
            .url
            .parse()
            .map_err(|e| io::Error::other(format!("webhook `{}`: url: {e}", config.name)))?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.timeout));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        let name = config.name.clone();
        let target = Target::Http(Box::new(HttpTarget {
            config,
            secret,
            uri,
            client,
        }));
        Hook::at_cursor(name, cursors, target)
    }

    /// One delivery of `alert` (a line of the file): whether it was taken.
    async fn send(&mut self, alert: &[u8]) -> Result<(), String> {
        let parsed: Value = serde_json::from_slice(alert).map_err(|e| format!("not JSON: {e}"))?;
        let id = parsed["id"]
            .as_str()
            .map_or_else(|| format!("alert-at-{}", self.offset), str::to_owned);
        match &mut self.target {
            Target::Http(http) => http.send(alert, &parsed, &id).await,
            Target::Kafka(publisher) => publisher
                .publish(&id, alert)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// The counters of its deliveries: taken, and failed.
    fn counters(&self) -> (Counter, Counter) {
        match self.target {
            Target::Http(_) => (Counter::WebhookDelivered, Counter::WebhookFailed),
            Target::Kafka(_) => (Counter::AlertsPublished, Counter::AlertsPublishFailed),
        }
    }

    /// Moves the cursor past `bytes` more of the file, durably: written whole to a temporary
    /// file, synced, and renamed over the old one.
    fn advance(&mut self, bytes: u64) -> io::Result<()> {
        self.offset += bytes;
        let temporary = self.cursor_path.with_extension("cursor.tmp");
        std::fs::write(&temporary, self.offset.to_string())?;
        File::open(&temporary)?.sync_all()?;
        std::fs::rename(&temporary, &self.cursor_path)
    }
}

impl HttpTarget {
    /// One `POST` of `alert` (`parsed`, with id `id`): whether the receiver answered 2xx.
    async fn send(&self, alert: &[u8], parsed: &Value, id: &str) -> Result<(), String> {
        let body = match self.config.format {
            WebhookFormat::Json => Bytes::copy_from_slice(alert),
            WebhookFormat::Slack => Bytes::from(json!({ "text": message(parsed) }).to_string()),
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .header(
                header::USER_AGENT,
                concat!("tollgate/", env!("CARGO_PKG_VERSION")),
            )
            .header("idempotency-key", id);
        if let Some(secret) = &self.secret {
            let timestamp = now_ms().0.div_euclid(1_000);
            request = request.header(
                "tollgate-signature",
                format!("t={timestamp},v1={}", signature(secret, timestamp, &body)),
            );
        }
        let request = request
            .body(SliceBody::new([body]))
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(self.config.timeout, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {:?}", self.config.timeout))?
            .map_err(|e| e.to_string())?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", answer.status()))
        }
    }
}

/// `hex(HMAC-SHA256(secret, "{timestamp}.{body}"))`: what a receiver computes to check an
/// alert came from this gateway, and recently (the timestamp is signed with the body).
#[must_use]
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut hex = String::with_capacity(64);
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) {
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        for byte in mac.finalize().into_bytes() {
            let _ = write!(hex, "{byte:02x}");
        }
    }
    hex
}

/// What a person reads of an alert: its own `message`, or one made of its fields.
fn message(alert: &Value) -> String {
    if let Some(message) = alert["message"].as_str() {
        return message.to_owned();
    }
    match alert["kind"].as_str() {
        Some("soft_limit_crossed") => format!(
            "{} `{}` has spent {} % of its {} budget",
            alert["level"].as_str().unwrap_or("budget"),
            alert["name"].as_str().unwrap_or("?"),
            alert["percent"],
            alert["period"].as_str().unwrap_or("")
        ),
        _ => alert.to_string(),
    }
}

/// The next whole line of `path` from `offset` (without its newline), if one is there.
fn next_line(path: &Path, offset: u64) -> io::Result<Option<Vec<u8>>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut line = Vec::new();
    file.take(WEBHOOK_ALERT_BYTES_MAX).read_to_end(&mut line)?;
    Ok(line.iter().position(|&b| b == b'\n').map(|end| {
        line.truncate(end);
        line
    }))
}

/// Delivers `hook`'s alerts in order until told to stop.
async fn deliver_all(
    mut hook: Hook,
    alerts: PathBuf,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = WEBHOOK_BACKOFF_MIN;
    let mut failing = false;
    while !*stopped.borrow() {
        let wait = match next_line(&alerts, hook.offset) {
            Ok(Some(line))
                if line.is_empty() || serde_json::from_slice::<Value>(&line).is_err() =>
            {
                // A line torn by a kill -9 mid-write: nothing to deliver, and never a reason
                // to stop delivering the rest.
                report(&format!(
                    "alerts to `{}`: skipping a line of {ALERTS_FILE} at byte {} that is not an alert",
                    hook.name, hook.offset
                ));
                advance_or_report(&mut hook, line.len() as u64 + 1);
                continue;
            }
            Ok(Some(line)) => match hook.send(&line).await {
                Ok(()) => {
                    metrics.add(hook.counters().0, 1);
                    if failing {
                        report(&format!("alerts to `{}`: delivering again", hook.name));
                    }
                    failing = false;
                    backoff = WEBHOOK_BACKOFF_MIN;
                    advance_or_report(&mut hook, line.len() as u64 + 1);
                    continue;
                }
                Err(e) => {
                    metrics.add(hook.counters().1, 1);
                    if !failing {
                        report(&format!(
                            "alerts to `{}`: {e}; the alert is sent again, backing off up to {:?}",
                            hook.name, WEBHOOK_BACKOFF_MAX
                        ));
                    }
                    failing = true;
                    let wait = backoff;
                    backoff = (backoff * 2).min(WEBHOOK_BACKOFF_MAX);
                    wait
                }
            },
            Ok(None) => WEBHOOK_POLL,
            Err(e) if e.kind() == io::ErrorKind::NotFound => WEBHOOK_POLL,
            Err(e) => {
                report(&format!(
                    "alerts to `{}`: reading {ALERTS_FILE}: {e}",
                    hook.name
                ));
                WEBHOOK_BACKOFF_MAX
            }
        };
        tokio::select! {
            _ = stopped.changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn advance_or_report(hook: &mut Hook, bytes: u64) {
    if let Err(e) = hook.advance(bytes) {
        // The next start sends it again (same idempotency key): at least once holds.
        report(&format!(
            "alerts to `{}`: writing its cursor: {e}",
            hook.name
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_timestamp_and_the_body() {
        // `printf '1700000000.{}' | openssl dgst -sha256 -hmac key`
        assert_eq!(
            signature(b"key", 1_700_000_000, b"{}"),
            "9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }
}
