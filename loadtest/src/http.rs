//! The harness's HTTP client: one pooled hyper client for every agent, and small helpers for
//! the gateway's admin API.
//!
//! Each agent's calls reuse keep-alive connections from the pool, as an SDK's do; the pool holds
//! as many connections as there are agents in flight.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client as Legacy;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The pooled client.
pub type Client = Legacy<HttpConnector, Full<Bytes>>;

/// Largest admin answer read.
const ADMIN_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Patience for one admin call.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A client with a pool sized for a fleet.
#[must_use]
pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    Legacy::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No answer.
    #[error("{method} {url}: {message}")]
    Transport {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// An answer that is not a success.
    #[error("{method} {url}: {status}: {body}")]
    Status {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// Status.
        status: StatusCode,
        /// The answer's text.
        body: String,
    },
}

/// The gateway's admin API.
#[derive(Clone)]
pub struct Admin {
    client: Client,
    /// `http://host:port`.
    origin: String,
    token: String,
}

impl Admin {
    /// The admin API of the gateway at `origin` (`http://host:port`), with its token.
    #[must_use]
    pub fn new(client: Client, origin: &str, token: &str) -> Admin {
        Admin {
            client,
            origin: origin.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    /// `GET /admin/v1/{path}`.
    pub async fn get(&self, path: &str) -> Result<Value, AdminError> {
        self.call(Method::GET, path, None).await
    }

    /// `POST /admin/v1/{path}` with a JSON body.
    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, AdminError> {
        self.call(Method::POST, path, body).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AdminError> {
        let url = format!("{}/admin/v1/{path}", self.origin);
        let transport = |message: String| AdminError::Transport {
            method: method.clone(),
            url: url.clone(),
            message,
        };
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| transport(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| transport(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), ADMIN_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| transport(e.to_string()))?
                .to_bytes();
            Ok::<_, AdminError>((status, body))
        };
        let (status, body) = tokio::time::timeout(ADMIN_TIMEOUT, exchange)
            .await
            .map_err(|_| transport("timed out".into()))??;
        if !status.is_success() {
            return Err(AdminError::Status {
                method,
                url,
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| transport(format!("answer is not JSON: {e}")))
    }
}
