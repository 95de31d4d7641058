//! Reading a request body, the one way every route does: capped in bytes (the declared length
//! refused before a byte is read) and in time.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;

use crate::http::error::Failure;

/// The bounds on one body.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Most bytes read.
    pub bytes_max: usize,
    /// Longest wait for the whole body.
    pub timeout: Duration,
}

/// Reads `body` whole within `limits`.
pub async fn read(
    headers: &HeaderMap,
    body: Incoming,
    limits: BodyLimits,
) -> Result<Bytes, Failure> {
    let limit = limits.bytes_max;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Failure::BodyTooLarge { limit_bytes: limit });
    }
    let collect = Limited::new(body, limit).collect();
    match tokio::time::timeout(limits.timeout, collect).await {
        Err(_) => Err(Failure::BadRequest(format!(
            "request body not received within {} ms",
            limits.timeout.as_millis()
        ))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Failure::BodyTooLarge { limit_bytes: limit })
        }
        Ok(Err(e)) => Err(Failure::BadRequest(format!(
            "reading the request body: {e}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}
