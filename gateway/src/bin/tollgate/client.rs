//! The CLI's client of the admin API: one request, one JSON answer, errors in words.

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Largest admin answer read.
const ANSWER_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL or request could not be built (a malformed `--url`, or no TLS roots).
    #[error("bad request to {url}: {reason}")]
    Request {
        /// The full URL: the base URL and the path.
        url: String,
        /// The request builder's or TLS setup's error, in words.
        reason: String,
    },
    /// The gateway could not be reached, or its answer broke off or passed
    /// [`ANSWER_BYTES_MAX`].
    #[error("cannot reach tollgate at {url}: {reason}")]
    Unreachable {
        /// The full URL called.
        url: String,
        /// The connection's or the body read's error, in words.
        reason: String,
    },
    /// The gateway answered with an error.
    #[error("tollgate answered {status}: {message}")]
    Refused {
        /// The HTTP status, never a success.
        status: StatusCode,
        /// The error message from the body.
        message: String,
        /// The error's `param`, where it names one (`records[3].allocation`).
        param: Option<String>,
    },
}

/// Calls `method path` on the admin API (or `/v1/usage`) at `base_url` with `token`; returns
/// the JSON answer.
pub async fn call(
    base_url: &str,
    token: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let url = format!("{}{path}", base_url.trim_end_matches('/'));
    let bad = |reason: String| ClientError::Request {
        url: url.clone(),
        reason,
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| bad(e.to_string()))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(&url)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| bad(e.to_string()))?;
    let unreachable = |reason: String| ClientError::Unreachable {
        url: url.clone(),
        reason,
    };
    let response = client
        .request(request)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status();
    let bytes = Limited::new(response.into_body(), ANSWER_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    if !status.is_success() {
        let message = value
            .pointer("/error/message")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| value.to_string(), str::to_owned);
        let param = value
            .pointer("/error/param")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        return Err(ClientError::Refused {
            status,
            message,
            param,
        });
    }
    Ok(value)
}
