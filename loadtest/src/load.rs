//! The load generator: N keep-alive connections, each sending one request after another for a
//! bounded time and count, recording every latency.
//!
//! It talks plain HTTP/1.1 to whatever URL it is given (the gateway, the mock provider direct,
//! or a pass-through proxy), so the three are measured the same way in one run. Latency is from
//! the first byte sent to the last byte of the answer read.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;

/// What to send and for how long.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Full URL of the endpoint (`http://127.0.0.1:8080/v1/chat/completions`).
    pub url: String,
    /// Bearer key, if any.
    pub key: Option<String>,
    /// Concurrent connections.
    pub connections: usize,
    /// How long to run after warm-up.
    pub duration: Duration,
    /// Warm-up, not recorded.
    pub warmup: Duration,
    /// Most requests in all (recorded ones), as a second bound.
    pub requests_max: u64,
    /// Model to ask for.
    pub model: String,
    /// Completion length.
    pub max_tokens: u64,
    /// Stream the answer.
    pub stream: bool,
    /// Approximate prompt size in bytes (agents send 200-400 KB).
    pub prompt_bytes: usize,
    /// A `"mock"` object for the mock provider (delays per token, errors), sent as is.
    pub mock: Option<serde_json::Value>,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Requests answered 2xx in the recorded window.
    pub ok: u64,
    /// Requests answered otherwise, or failed.
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Recorded window.
    pub elapsed: Duration,
    /// Latencies of 2xx answers, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl LoadReport {
    /// Requests per second.
    #[must_use]
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.ok as f64 / seconds
        } else {
            0.0
        }
    }

    /// The `q`-quantile latency in microseconds (`q` in 0..=1).
    #[must_use]
    pub fn quantile_us(&self, q: f64) -> u32 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let last = self.latencies_us.len() - 1;
        let index = ((last as f64) * q).round() as usize;
        self.latencies_us.get(index.min(last)).copied().unwrap_or(0)
    }

    /// One JSON line with every figure.
    #[must_use]
    pub fn to_json(&self, config: &LoadConfig) -> serde_json::Value {
        json!({
            "url": config.url,
            "connections": config.connections,
            "stream": config.stream,
            "prompt_bytes": config.prompt_bytes,
            "max_tokens": config.max_tokens,
            "ok": self.ok,
            "errors": self.errors,
            "first_error": self.first_error,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "requests_per_s": (self.rate() * 10.0).round() / 10.0,
            "p50_us": self.quantile_us(0.50),
            "p90_us": self.quantile_us(0.90),
            "p99_us": self.quantile_us(0.99),
            "max_us": self.latencies_us.last().copied().unwrap_or(0),
        })
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The URL.
    #[error("`{0}` is not an http:// URL with a host and port")]
    Url(String),
}

/// The request body for `config`: a chat completion with a prompt of about `prompt_bytes`.
#[must_use]
pub fn body(config: &LoadConfig) -> Bytes {
    // Words of ordinary text, so a tokenizer sees what it sees in real prompts.
    const TEXT: &str = "The quick brown fox jumps over the lazy dog near the riverbank. ";
    let repeats = config.prompt_bytes.div_ceil(TEXT.len()).max(1);
    let prompt = TEXT.repeat(repeats);
    let mut request = json!({
        "model": config.model,
        "max_tokens": config.max_tokens,
        "messages": [
            {"role": "system", "content": "You are a load test."},
            {"role": "user", "content": prompt},
        ],
    });
    if config.stream {
        request["stream"] = json!(true);
    }
    if let Some(mock) = &config.mock {
        request["mock"] = mock.clone();
    }
    Bytes::from(request.to_string())
}

/// The URL, its authority (for `Host`) and the address to connect to.
fn target(url: &str) -> Result<(Uri, http::uri::Authority, SocketAddr), LoadError> {
    let bad = || LoadError::Url(url.to_owned());
    let uri: Uri = url.parse().map_err(|_| bad())?;
    let authority = uri.authority().ok_or_else(bad)?.clone();
    let address: SocketAddr = authority.as_str().parse().map_err(|_| bad())?;
    Ok((uri, authority, address))
}

/// The one request every connection sends, over and over.
#[derive(Clone)]
struct Post {
    uri: Uri,
    /// For `Host`.
    authority: http::uri::Authority,
    /// Sent as a bearer token.
    key: Option<String>,
    body: Bytes,
}

impl Post {
    fn of(config: &LoadConfig) -> Result<(Post, SocketAddr), LoadError> {
        let (uri, authority, address) = target(&config.url)?;
        let post = Post {
            uri,
            authority,
            key: config.key.clone(),
            body: body(config),
        };
        Ok((post, address))
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, http::Error> {
        let mut request = Request::post(self.uri.clone())
            .header(header::HOST, self.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        request.body(Full::new(self.body.clone()))
    }
}

/// Runs the load and reports.
pub async fn run(config: &LoadConfig) -> Result<LoadReport, LoadError> {
    let (post, address) = Post::of(config)?;
    let start = Instant::now() + config.warmup;
    let end = start + config.duration;
    let per_connection_max = config
        .requests_max
        .div_ceil(config.connections.max(1) as u64);
    let mut tasks = Vec::with_capacity(config.connections);
    for _ in 0..config.connections.max(1) {
        let post = post.clone();
        tasks.push(tokio::spawn(async move {
            connection(address, post, start, end, per_connection_max).await
        }));
    }
    let mut report = LoadReport::default();
    for task in tasks {
        if let Ok(part) = task.await {
            report.ok += part.ok;
            report.errors += part.errors;
            if report.first_error.is_none() {
                report.first_error = part.first_error;
            }
            report.latencies_us.extend(part.latencies_us);
        }
    }
    report.elapsed = Instant::now().min(end).saturating_duration_since(start);
    report.latencies_us.sort_unstable();
    Ok(report)
}

/// One connection's loop: send `post`, read the whole answer, record it if it was sent at or
/// after `start`, until `end` or `requests_max` recorded answers; a broken connection is
/// opened again.
async fn connection(
    address: SocketAddr,
    post: Post,
    start: Instant,
    end: Instant,
    requests_max: u64,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut sender = None;
    let mut recorded = 0u64;
    while Instant::now() < end && recorded < requests_max {
        if sender.is_none() {
            match open(address).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    note(&mut report, e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        // The connection takes the next request only once it has finished with the last one.
        if s.ready().await.is_err() {
            sender = None;
            continue;
        }
        let Ok(request) = post.request() else {
            note(&mut report, "building the request".into());
            break;
        };
        let sent = Instant::now();
        let outcome = exchange(s, request).await;
        let latency = sent.elapsed();
        if outcome.is_err() {
            sender = None;
        }
        if sent >= start {
            recorded += u64::from(report.record(outcome, latency));
        }
    }
    report
}

/// Sends `request` and reads the whole answer: its status and body, or why there was none.
async fn exchange(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Bytes), String> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, collected.to_bytes()))
}

impl LoadReport {
    /// Records one exchange that took `latency`: a 2xx with its latency, any other answer or
    /// a failure as an error. Returns whether it counts against the request bound (an answer
    /// does, a failure does not).
    fn record(
        &mut self,
        outcome: Result<(http::StatusCode, Bytes), String>,
        latency: Duration,
    ) -> bool {
        match outcome {
            Ok((status, _)) if status.is_success() => {
                self.ok += 1;
                self.latencies_us
                    .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                true
            }
            Ok((status, answer)) => {
                note(
                    self,
                    format!("{status}: {}", String::from_utf8_lossy(&answer)),
                );
                true
            }
            Err(e) => {
                note(self, e);
                false
            }
        }
    }
}

/// What holding many streams open measured.
#[derive(Clone, Debug, Default)]
pub struct HoldReport {
    /// Streams that received their first bytes.
    pub opened: u64,
    /// Streams that failed to open.
    pub failed: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Time until every stream had its first bytes (or gave up).
    pub ramp: Duration,
}

/// Opens `config.connections` streaming requests at once, waits until each has its first bytes,
/// calls `holding` with the report while all are open, then drops them.
pub async fn hold<F: std::future::Future<Output = ()>>(
    config: &LoadConfig,
    holding: impl FnOnce(&HoldReport) -> F,
) -> Result<HoldReport, LoadError> {
    let (post, address) = Post::of(config)?;
    let started = Instant::now();
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(1024);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let post = post.clone();
        let opened = opened_tx.clone();
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            match open_stream(address, &post).await {
                Ok(stream) => {
                    let _ = opened.send(Ok(())).await;
                    hold_stream(stream, stop).await;
                }
                Err(e) => {
                    let _ = opened.send(Err(e)).await;
                }
            }
        }));
    }
    drop(opened_tx);
    let mut report = HoldReport::default();
    while let Some(outcome) = opened_rx.recv().await {
        match outcome {
            Ok(()) => report.opened += 1,
            Err(e) => {
                report.failed += 1;
                report.first_error.get_or_insert(e);
            }
        }
        if report.opened + report.failed == config.connections as u64 {
            break;
        }
    }
    report.ramp = started.elapsed();
    holding(&report).await;
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    Ok(report)
}

/// A streamed answer that has sent its first bytes, with the connection it holds.
type OpenStream = (http1::SendRequest<Full<Bytes>>, hyper::body::Incoming);

/// Opens a connection and sends `post`; the stream once its first bytes came.
async fn open_stream(address: SocketAddr, post: &Post) -> Result<OpenStream, String> {
    let mut sender = open(address).await?;
    let request = post.request().map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let mut body = response.into_body();
    match body.frame().await {
        Some(Ok(_)) => Ok((sender, body)),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("stream ended before its first bytes".into()),
    }
}

/// Holds the stream (reading as it comes) until it ends or `stop` changes.
async fn hold_stream(stream: OpenStream, mut stop: tokio::sync::watch::Receiver<bool>) {
    let (_sender, mut body) = stream;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            frame = body.frame() => if frame.is_none() { break },
        }
    }
}

fn note(report: &mut LoadReport, error: String) {
    report.errors += 1;
    if report.first_error.is_none() {
        report.first_error = Some(error.chars().take(300).collect());
    }
}

async fn open(address: SocketAddr) -> Result<http1::SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect {address}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_asked_prompt_size() {
        let config = LoadConfig {
            url: "http://127.0.0.1:1/v1/chat/completions".into(),
            key: None,
            connections: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            requests_max: 1,
            model: "openai/gpt-4o-mini".into(),
            max_tokens: 16,
            stream: true,
            prompt_bytes: 400_000,
            mock: None,
        };
        let body = body(&config);
        assert!((400_000..401_000).contains(&body.len()), "{}", body.len());
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["stream"], true);
    }

    #[test]
    fn quantiles_come_from_the_sorted_latencies() {
        let report = LoadReport {
            ok: 5,
            latencies_us: vec![10, 20, 30, 40, 50],
            elapsed: Duration::from_secs(1),
            ..LoadReport::default()
        };
        assert_eq!(report.quantile_us(0.5), 30);
        assert_eq!(report.quantile_us(0.99), 50);
        assert!((report.rate() - 5.0).abs() < 1e-9);
    }
}
