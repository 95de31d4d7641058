//! What a browser sends the console, any bytes at all: a sign-in body, a `Cookie` header, the
//! `Origin`, `Host` and `Sec-Fetch-Site` headers a session's request is judged by, and the
//! query string of a spend request. None may panic; each is taken or refused with a message.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tollgate_gateway::console::sign_in_secret;
use tollgate_gateway::control::access::same_origin;
use tollgate_gateway::control::session::{COOKIE, cookie};
use tollgate_gateway::control::spend::Query;
use tollgate_gateway::http::error::Failure;

fuzz_target!(|data: &[u8]| {
    told(sign_in_secret(data).err());
    let text = String::from_utf8_lossy(data);
    if let Some(value) = cookie(&text, COOKIE) {
        assert!(text.contains(value));
    }
    told(Query::parse(&text).err());
    // The bytes split in three, as the headers a session's request is judged by.
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let mut headers = HeaderMap::new();
    for name in ["origin", "host", "sec-fetch-site"] {
        if let Some(value) = parts.next().and_then(|p| HeaderValue::from_bytes(p).ok()) {
            headers.insert(name, value);
        }
    }
    told(same_origin(&headers).err());
});

fn told(failure: Option<Failure>) {
    if let Some(failure) = failure {
        assert!(
            !failure.to_string().is_empty(),
            "refused without a word: {failure:?}"
        );
    }
}
