//! AWS Signature Version 4 for Bedrock's requests, checked against AWS's own test vectors
//! (get-vanilla, post-vanilla) and a botocore-signed Converse call.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use tollgate_engine::UnixMs;

/// SigV4's name for the service.
pub const SIGNING_SERVICE: &str = "bedrock";

/// AWS credentials (from the environment; never logged).
#[derive(Clone)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`: names the key in the `Authorization` header.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`: derives the signing key; never sent.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, set for temporary credentials: sent as `x-amz-security-token`.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// `YYYYMMDDTHHMMSSZ`.
#[must_use]
pub fn amz_date(now: UnixMs) -> String {
    let c = now.to_civil();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Hex SHA-256 of a payload made of `chunks`.
#[must_use]
pub fn payload_hash<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for chunk in chunks {
        hasher.update(chunk);
    }
    hex(&hasher.finalize())
}

/// Percent-encodes everything but unreserved characters, keeping `/` when asked.
fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && byte == b'/')
        {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// One request to sign: the wire path (already percent-encoded as sent), the query, and the
/// headers to sign (names in any case).
pub struct Signable<'a> {
    /// `GET`, `POST`.
    pub method: &'a str,
    /// The path as sent on the wire.
    pub path: &'a str,
    /// The query string as sent, without `?`.
    pub query: &'a str,
    /// Headers to sign, `host` and `x-amz-date` among them.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body.
    pub payload_sha256: &'a str,
}

/// The `Authorization` header value of a SigV4-signed request (AWS4-HMAC-SHA256), for services
/// other than S3 (whose canonical URI is encoded twice).
#[must_use]
pub fn authorization(
    request: &Signable<'_>,
    credentials: &Credentials,
    region: &str,
    service: &str,
    amz_date: &str,
) -> String {
    let date = amz_date.get(..8).unwrap_or(amz_date);
    let canonical_uri = if request.path.is_empty() {
        "/".to_owned()
    } else {
        uri_encode(request.path, true)
    };
    let mut query: Vec<(String, String)> = request
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(n, v)| {
            let value = v.split_whitespace().collect::<Vec<_>>().join(" ");
            (n.to_ascii_lowercase(), value)
        })
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method, request.payload_sha256
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        payload_hash([canonical_request.as_bytes()])
    );
    let k_date = hmac(
        format!("AWS4{}", credentials.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_credentials(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_owned),
        }
    }

    /// AWS's SigV4 test suite: get-vanilla and post-vanilla.
    #[test]
    fn signs_the_official_vanilla_vectors() {
        let empty = payload_hash([&b""[..]]);
        for (method, signature) in [
            (
                "GET",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "POST",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
        ] {
            let request = Signable {
                method,
                path: "/",
                query: "",
                headers: &[
                    ("Host", "example.amazonaws.com"),
                    ("X-Amz-Date", "20150830T123600Z"),
                ],
                payload_sha256: &empty,
            };
            let header = authorization(
                &request,
                &example_credentials(None),
                "us-east-1",
                "service",
                "20150830T123600Z",
            );
            assert_eq!(
                header,
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={signature}"
                )
            );
        }
    }

    /// A Converse call signed by botocore with the suite's credentials: the model id's `%3A`
    /// is encoded again in the canonical URI, and the service is `bedrock`.
    #[test]
    fn signs_a_converse_call_as_botocore_does() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"Hello"}]}],"inferenceConfig":{"maxTokens":256}}"#;
        let hash = payload_hash([&body[..]]);
        assert_eq!(
            hash,
            "d8695502972bd4d482308b656a524b7a7efcebba591a06801fadba6b39700dd1"
        );
        let path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
        for (token, signature) in [
            (
                None,
                "64f8b26588dfac9e89af81426efe952738412726e956ba41b7da0e7956c9c6f4",
            ),
            (
                Some("SESSIONTOKENEXAMPLE"),
                "dd0478723d9f699c522b5c2c45aa317e936ddd2e6c347421774fd80c0fd200e7",
            ),
        ] {
            let mut headers = vec![
                ("Content-Type", "application/json"),
                ("Host", "bedrock-runtime.us-east-1.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ];
            if let Some(token) = token {
                headers.push(("X-Amz-Security-Token", token));
            }
            let request = Signable {
                method: "POST",
                path,
                query: "",
                headers: &headers,
                payload_sha256: &hash,
            };
            let header = authorization(
                &request,
                &example_credentials(token),
                "us-east-1",
                SIGNING_SERVICE,
                "20150830T123600Z",
            );
            assert!(
                header.ends_with(&format!("Signature={signature}")),
                "{header}"
            );
            assert!(header.contains("/20150830/us-east-1/bedrock/aws4_request"));
        }
    }
}
