//! The credential a caller presents: `Authorization: Bearer ...` (OpenAI's SDKs) or
//! `x-api-key` (Anthropic's). What it resolves to is the engine's key store's business.

use http::HeaderMap;
use http::header;

/// The presented key, if the headers carry one in either form.
#[must_use]
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().ok()?;
        let (scheme, key) = text.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers.get("x-api-key")?.to_str().ok().map(str::trim)
}

#[cfg(test)]
mod tests {
    use http::header::HeaderValue;

    use super::*;

    #[test]
    fn keys_come_from_either_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tg_abc"),
        );
        assert_eq!(presented_key(&headers), Some("tg_abc"));
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("tg_def"));
        assert_eq!(presented_key(&headers), Some("tg_def"));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(presented_key(&headers), None);
    }
}
