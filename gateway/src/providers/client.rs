//! Upstream providers at run time: one pooled HTTP client each, its base URL and credential.
//!
//! The credential is read from the environment once at start and kept as a sensitive header
//! value (hyper leaves those out of its debug output); it is never logged. A client's own
//! `Authorization` or `x-api-key` (its virtual key) is never forwarded.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use http_body::{Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use tollgate_engine::UnixMs;

use crate::config::{ProviderConfig, ProviderKind};
use crate::limits::UPSTREAM_IDLE_CONNECTIONS_MAX;
use crate::providers::bedrock::{self, Credentials};
use crate::providers::wire::Api;

/// A request body made of slices of the client's body (shared, not copied) and the few bytes
/// the gateway rewrote.
#[derive(Debug, Default)]
pub struct SliceBody {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl SliceBody {
    /// A body of `chunks`, in order.
    #[must_use]
    pub fn new(chunks: impl IntoIterator<Item = Bytes>) -> SliceBody {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        SliceBody { chunks, remaining }
    }

    /// Total length in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.remaining
    }

    /// The chunks, in order (for hashing a body before it is sent).
    pub fn chunks(&self) -> impl Iterator<Item = &Bytes> {
        self.chunks.iter()
    }

    /// Whether the body is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl http_body::Body for SliceBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.chunks.pop_front() {
            Some(chunk) => {
                self.remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, SliceBody>;

/// One configured provider, ready to send to.
pub struct Upstream {
    /// Its config.
    pub config: ProviderConfig,
    name: Arc<str>,
    base: Uri,
    credential: Option<HeaderValue>,
    aws: Option<Credentials>,
    client: HttpClient,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Why a provider could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The credential's environment variable is unset or not a header value.
    #[error("provider `{provider}`: environment variable `{var}` is not set or not valid")]
    Credential {
        /// Provider.
        provider: String,
        /// Variable.
        var: String,
    },
    /// The base URL does not parse.
    #[error("provider `{provider}`: {reason}")]
    BaseUrl {
        /// Provider.
        provider: String,
        /// Why.
        reason: String,
    },
    /// The system's TLS roots could not be loaded.
    #[error("loading TLS root certificates: {0}")]
    Tls(std::io::Error),
}

/// Checks that a base URL is `http` or `https` with a host (config validation).
pub fn check_base_url(url: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("`{url}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}` must not have a query"));
    }
    Ok(())
}

impl Upstream {
    /// Builds the provider's client, reading its credential with `env` (the process
    /// environment in the binary).
    pub fn new(
        config: ProviderConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Upstream, SetupError> {
        let credential = match &config.api_key_env {
            None => None,
            Some(var) => {
                let value = env(var).filter(|v| !v.is_empty());
                let header = value.and_then(|secret| match config.kind {
                    // Bedrock API keys are bearer tokens too.
                    ProviderKind::Openai | ProviderKind::Bedrock => {
                        HeaderValue::try_from(format!("Bearer {secret}")).ok()
                    }
                    ProviderKind::Anthropic | ProviderKind::Azure => {
                        HeaderValue::try_from(secret).ok()
                    }
                });
                let Some(mut header) = header else {
                    return Err(SetupError::Credential {
                        provider: config.name.clone(),
                        var: var.clone(),
                    });
                };
                header.set_sensitive(true);
                Some(header)
            }
        };
        // Bedrock without an API key signs with the standard AWS variables.
        let aws = match (config.kind, &credential) {
            (ProviderKind::Bedrock, None) => {
                let get = |var: &str| env(var).filter(|v| !v.is_empty());
                let missing = |var: &str| SetupError::Credential {
                    provider: config.name.clone(),
                    var: var.to_owned(),
                };
                Some(Credentials {
                    access_key_id: get("AWS_ACCESS_KEY_ID")
                        .ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?,
                    secret_access_key: get("AWS_SECRET_ACCESS_KEY")
                        .ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?,
                    session_token: get("AWS_SESSION_TOKEN"),
                })
            }
            _ => None,
        };
        let base: Uri = config.base_url.parse().map_err(|e| SetupError::BaseUrl {
            provider: config.name.clone(),
            reason: format!("{e}"),
        })?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(SetupError::Tls)?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(UPSTREAM_IDLE_CONNECTIONS_MAX)
            .build(https);
        Ok(Upstream {
            name: Arc::from(config.name.as_str()),
            config,
            base,
            credential,
            aws,
            client,
        })
    }

    /// The provider's name.
    #[must_use]
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The path and query (under the base URL) of `api` for `model` (the model's name at the
    /// provider: an Azure deployment's name, a Bedrock model id); `stream` picks Bedrock's
    /// ConverseStream.
    #[must_use]
    pub fn path(&self, api: Api, model: &str, stream: bool) -> String {
        match (self.config.kind, &self.config.api_version) {
            (ProviderKind::Azure, version) => {
                let version = version.as_deref().unwrap_or_default();
                match api {
                    // The Responses API lives on Azure's v1 surface, not on a deployment.
                    Api::Responses => format!("/openai/v1/responses?api-version={version}"),
                    _ => format!(
                        "/openai/deployments/{}{}?api-version={version}",
                        percent_encode_segment(model),
                        api.upstream_path()
                    ),
                }
            }
            // An OpenAI-compatible server's Messages API sits beside its other routes.
            (ProviderKind::Openai, _) if api == Api::Messages => "/messages".to_owned(),
            (ProviderKind::Openai | ProviderKind::Anthropic, _) => api.upstream_path().to_owned(),
            (ProviderKind::Bedrock, _) => format!(
                "/model/{}/{}",
                percent_encode_segment(model),
                if stream {
                    "converse-stream"
                } else {
                    "converse"
                }
            ),
        }
    }

    /// Builds a POST of `body` to `path` (appended to the base URL's path), with the
    /// provider's credential and the client headers in `forwarded`.
    pub fn request(
        &self,
        path: &str,
        body: SliceBody,
        forwarded: &HeaderMap,
        now: UnixMs,
    ) -> Result<Request<SliceBody>, http::Error> {
        let base_path = self.base.path().trim_end_matches('/');
        let mut uri = Uri::builder().path_and_query(format!("{base_path}{path}"));
        if let Some(scheme) = self.base.scheme() {
            uri = uri.scheme(scheme.clone());
        }
        if let Some(authority) = self.base.authority() {
            uri = uri.authority(authority.clone());
        }
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri.build()?)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .body(body)?;
        let headers = request.headers_mut();
        for name in FORWARDED_HEADERS {
            for value in forwarded.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        match self.config.kind {
            ProviderKind::Openai => {
                if let Some(credential) = &self.credential {
                    headers.insert(header::AUTHORIZATION, credential.clone());
                }
            }
            ProviderKind::Azure => {
                if let Some(credential) = &self.credential {
                    headers.insert(AZURE_API_KEY, credential.clone());
                }
            }
            ProviderKind::Anthropic => {
                if let Some(credential) = &self.credential {
                    headers.insert(X_API_KEY, credential.clone());
                }
                if !headers.contains_key(ANTHROPIC_VERSION) {
                    headers.insert(ANTHROPIC_VERSION, HeaderValue::from_static("2023-06-01"));
                }
            }
            ProviderKind::Bedrock => {
                headers.remove(ANTHROPIC_VERSION);
                headers.remove(HeaderName::from_static("anthropic-beta"));
                match (&self.credential, &self.aws) {
                    (Some(credential), _) => {
                        headers.insert(header::AUTHORIZATION, credential.clone());
                    }
                    (None, Some(aws)) => self.sign(&mut request, aws, now)?,
                    (None, None) => {}
                }
            }
        }
        Ok(request)
    }

    /// Signs `request` with SigV4 for Bedrock: host, date, content type and session token.
    fn sign(
        &self,
        request: &mut Request<SliceBody>,
        aws: &Credentials,
        now: UnixMs,
    ) -> Result<(), http::Error> {
        let date = bedrock::amz_date(now);
        let payload = bedrock::payload_hash(request.body().chunks().map(|c| &c[..]));
        let host = self.base.authority().map_or("", |a| a.as_str()).to_owned();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let mut signed = vec![
            ("content-type", "application/json"),
            ("host", host.as_str()),
            ("x-amz-date", date.as_str()),
        ];
        if let Some(token) = &aws.session_token {
            signed.push(("x-amz-security-token", token.as_str()));
        }
        let region = self.config.region.as_deref().unwrap_or_default();
        let authorization = bedrock::authorization(
            &bedrock::Signable {
                method: "POST",
                path: &path,
                query: &query,
                headers: &signed,
                payload_sha256: &payload,
            },
            aws,
            region,
            bedrock::SIGNING_SERVICE,
            &date,
        );
        let headers = request.headers_mut();
        headers.insert(
            HeaderName::from_static("x-amz-date"),
            HeaderValue::try_from(date)?,
        );
        if let Some(token) = &aws.session_token {
            let mut value = HeaderValue::try_from(token.as_str())?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-amz-security-token"), value);
        }
        let mut value = HeaderValue::try_from(authorization)?;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
        Ok(())
    }

    /// Sends `request` (no timeout here: the caller bounds the wait for the head).
    pub async fn send(
        &self,
        request: Request<SliceBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(request).await
    }
}

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const AZURE_API_KEY: HeaderName = HeaderName::from_static("api-key");
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// A path segment with everything but unreserved characters percent-encoded (RFC 3986).
#[must_use]
pub fn percent_encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Client headers passed to the upstream: the API version and feature flags a provider reads.
/// Everything else (the client's key above all) stays at the gateway.
const FORWARDED_HEADERS: [HeaderName; 4] = [
    ANTHROPIC_VERSION,
    HeaderName::from_static("anthropic-beta"),
    header::ACCEPT,
    HeaderName::from_static("openai-beta"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn base_urls_are_checked() {
        assert!(check_base_url("http://127.0.0.1:8000/v1").is_ok());
        assert!(check_base_url("https://api.openai.com/v1").is_ok());
        assert!(check_base_url("ftp://x").is_err());
        assert!(check_base_url("api.openai.com").is_err());
        assert!(check_base_url("http://x/v1?a=b").is_err());
    }

    #[test]
    fn azure_paths_name_the_deployment_and_the_api_version() {
        let config = ProviderConfig {
            name: "azure".into(),
            kind: ProviderKind::Azure,
            base_url: "https://acme.openai.azure.com".into(),
            api_key_env: None,
            api_version: Some("2024-10-21".into()),
            region: None,
            anthropic_messages: false,
            connect_timeout: std::time::Duration::from_secs(1),
            first_byte_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
        };
        let upstream = Upstream::new(config, |_| None).unwrap();
        assert_eq!(
            upstream.path(Api::ChatCompletions, "gpt-4o prod", false),
            "/openai/deployments/gpt-4o%20prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            upstream.path(Api::Embeddings, "emb", false),
            "/openai/deployments/emb/embeddings?api-version=2024-10-21"
        );
        assert_eq!(
            upstream.path(Api::Responses, "x", true),
            "/openai/v1/responses?api-version=2024-10-21"
        );
    }

    #[tokio::test]
    async fn slice_bodies_send_their_chunks_in_order() {
        let body = SliceBody::new([
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"c"),
        ]);
        assert_eq!(body.len(), 3);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"abc");
    }

    #[tokio::test]
    async fn requests_carry_the_provider_credential_and_never_the_clients_key() {
        let var = "ANTHROPIC_API_KEY";
        let config = ProviderConfig {
            name: "anthropic".into(),
            kind: ProviderKind::Anthropic,
            base_url: "http://127.0.0.1:9".into(),
            api_key_env: Some(var.into()),
            api_version: None,
            region: None,
            anthropic_messages: false,
            connect_timeout: std::time::Duration::from_secs(1),
            first_byte_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
        };
        assert!(matches!(
            Upstream::new(config.clone(), |_| None),
            Err(SetupError::Credential { .. })
        ));
        let env = |name: &str| (name == var).then(|| "sk-ant-provider".to_owned());
        let upstream = Upstream::new(config, env).unwrap();
        let mut client_headers = HeaderMap::new();
        client_headers.insert(X_API_KEY, HeaderValue::from_static("tg_virtual"));
        client_headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tg_v"),
        );
        client_headers.insert("anthropic-beta", HeaderValue::from_static("tools-2024"));
        let request = upstream
            .request(
                "/v1/messages",
                SliceBody::new([Bytes::from_static(b"{}")]),
                &client_headers,
                UnixMs(0),
            )
            .unwrap();
        assert_eq!(request.uri(), "http://127.0.0.1:9/v1/messages");
        assert_eq!(request.headers()[X_API_KEY], "sk-ant-provider");
        assert!(request.headers()[X_API_KEY].is_sensitive());
        assert!(request.headers().get(header::AUTHORIZATION).is_none());
        assert_eq!(request.headers()["anthropic-beta"], "tools-2024");
        assert_eq!(request.headers()[ANTHROPIC_VERSION], "2023-06-01");
        assert_eq!(request.headers()[header::CONTENT_LENGTH], "2");
    }
}
