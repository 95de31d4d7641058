//! What an upstream's answer says to routing: how long it asks to be left alone, and whether
//! it refused a prompt as too long for the model's context window. Both read outside bytes
//! (a header, an error body) and are fuzzed with the answers (`tests/fuzz`, target `answers`).

use std::time::Duration;

use http::HeaderMap;

use crate::limits::RETRY_AFTER_DEFAULT;

/// The longest wait read from an upstream: a day.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(86_400);

/// The wait an upstream asked for: `retry-after-ms` (OpenAI, Azure), else `Retry-After` in
/// seconds; a `Retry-After` the gateway cannot read (an HTTP date) is taken as
/// `RETRY_AFTER_DEFAULT`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_millis(ms.min(86_400_000.0) as u64).min(RETRY_AFTER_MAX));
    }
    let value = headers.get(http::header::RETRY_AFTER)?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(RETRY_AFTER_DEFAULT, |s| Duration::from_secs(s.min(86_400))),
    )
}

/// Whether an error body is a provider saying the prompt does not fit the model's context
/// window: OpenAI's `context_length_exceeded`, Anthropic's "prompt is too long", llama.cpp's
/// `exceed_context_size_error`, Bedrock's "input is too long", Gemini's "exceeds the maximum
/// number of tokens", and the "maximum context length" of OpenAI-compatible servers.
#[must_use]
pub fn context_window_refused(body: &[u8]) -> bool {
    const MARKERS: [&str; 7] = [
        "context_length_exceeded",
        "exceed_context_size",
        "maximum context length",
        "context window",
        "prompt is too long",
        "input is too long",
        "exceeds the maximum number of tokens",
    ];
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    MARKERS.iter().any(|marker| text.contains(marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(name: &'static str, value: &'static str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(name, http::HeaderValue::from_static(value));
        retry_after(&headers)
    }

    #[test]
    fn retry_after_reads_seconds_milliseconds_and_takes_a_date_as_a_second() {
        assert_eq!(wait("retry-after", "7"), Some(Duration::from_secs(7)));
        assert_eq!(
            wait("retry-after-ms", "250"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            wait("retry-after-ms", "1.5"),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            wait("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(RETRY_AFTER_DEFAULT)
        );
        assert_eq!(wait("retry-after", "99999999999"), Some(RETRY_AFTER_MAX));
        assert_eq!(wait("retry-after-ms", "-5"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn context_window_refusals_are_told_from_other_client_errors() {
        for body in [
            r#"{"error":{"code":"context_length_exceeded","message":"..."}}"#,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
            r#"{"error":{"code":400,"type":"exceed_context_size_error"}}"#,
            r#"{"message":"Input is too long for requested model."}"#,
            r#"{"error":{"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."}}"#,
        ] {
            assert!(context_window_refused(body.as_bytes()), "{body}");
        }
        for body in [
            r#"{"error":{"message":"invalid model"}}"#,
            "",
            "\u{0}\u{ff}",
        ] {
            assert!(!context_window_refused(body.as_bytes()), "{body}");
        }
    }
}
