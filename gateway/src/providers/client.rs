//! Sending to providers: one pooled HTTP client each (TLS by rustls), and the request body made
//! of slices of the client's.
//!
//! Only the client headers a provider reads are forwarded (API versions and feature flags); a
//! client's own `Authorization` or `x-api-key` (its virtual key) never is. Credentials are the
//! adapters', held as sensitive header values (hyper leaves those out of its debug output).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, Method, Request, Uri};
use http_body::{Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::limits::{UPSTREAM_IDLE_CONNECTIONS_MAX, UPSTREAM_POOL_IDLE_TIMEOUT};
use crate::providers::config::ProviderConfig;

/// A request body made of slices of the client's body (shared, not copied) and the few bytes
/// the gateway rewrote.
#[derive(Clone, Debug, Default)]
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

/// One provider's pooled HTTP client and base URL. What a provider's requests say and how they
/// are authenticated is its adapter's; this only sends them.
pub struct Upstream {
    base: Uri,
    client: HttpClient,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
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
        /// Which `[[provider]]` table to fix, by name.
        provider: String,
        /// The variable's name (never its value).
        var: String,
    },
    /// The base URL does not parse.
    #[error("provider `{provider}`: {reason}")]
    BaseUrl {
        /// Which `[[provider]]` table to fix, by name.
        provider: String,
        /// What is wrong with it, as the URL parser says.
        reason: String,
    },
    /// The system's TLS roots could not be loaded.
    #[error("loading TLS root certificates: {0}")]
    Tls(std::io::Error),
}

impl Upstream {
    /// Builds the provider's client: its connect timeout from the table, at most
    /// `UPSTREAM_IDLE_CONNECTIONS_MAX` idle connections kept.
    pub fn new(config: &ProviderConfig) -> Result<Upstream, SetupError> {
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
            .pool_idle_timeout(UPSTREAM_POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Upstream { base, client })
    }

    /// Builds a POST of `body` to `path` (appended to the base URL's path) with the client
    /// headers in `forwarded` that providers read; the adapter adds the credential.
    pub fn request(
        &self,
        path: &str,
        body: SliceBody,
        forwarded: &HeaderMap,
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
        Ok(request)
    }

    /// Sends `request` (no timeout here: the caller bounds the wait for the head).
    pub async fn send(
        &self,
        request: Request<SliceBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(request).await
    }
}

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
    HeaderName::from_static("anthropic-version"),
    HeaderName::from_static("anthropic-beta"),
    header::ACCEPT,
    HeaderName::from_static("openai-beta"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

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
}
