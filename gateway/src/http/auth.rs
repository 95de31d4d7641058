//! The credential a caller presents: `Authorization: Bearer ...` (OpenAI's SDKs) or
//! `x-api-key` (Anthropic's). What a virtual key resolves to is the engine's key store's
//! business; the operator's admin token is checked here, by its hash only.

use http::HeaderMap;
use http::header;
use tollgate_engine::KeyHash;

/// The operator's admin token, kept as its hash (the token itself is never held). Without one
/// the admin API refuses everything and the ledger takes metering keys only.
#[derive(Debug, Default)]
pub struct AdminToken(Option<KeyHash>);

impl AdminToken {
    /// The token in `value` (the variable named by `admin.token_env`); empty means none.
    #[must_use]
    pub fn new(value: Option<String>) -> AdminToken {
        AdminToken(value.filter(|t| !t.is_empty()).map(|t| KeyHash::of(&t)))
    }

    /// Whether `presented` is the admin token (constant-time on the hash); never with none set.
    #[must_use]
    pub fn matches(&self, presented: &str) -> bool {
        self.0
            .as_ref()
            .is_some_and(|token| token.matches(&KeyHash::of(presented)))
    }
}

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

    #[test]
    fn the_admin_token_matches_itself_only_and_none_matches_nothing() {
        let token = AdminToken::new(Some("s3cret".to_owned()));
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cret "));
        assert!(!token.matches(""));
        assert!(!AdminToken::new(Some(String::new())).matches(""));
        assert!(!AdminToken::new(None).matches(""));
    }
}
