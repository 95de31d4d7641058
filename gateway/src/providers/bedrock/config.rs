//! The `[[provider]]` field only a `bedrock` provider reads: the AWS `region`, which names the
//! endpoint and is part of every SigV4 signature.

use crate::providers::config::FieldError;

/// A `bedrock` table's region: required, letters, digits and `-` (`us-east-1`).
pub(crate) fn region(region: Option<String>) -> Result<String, FieldError> {
    match region {
        Some(region)
            if !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            Ok(region)
        }
        _ => Err(FieldError::new(
            "region",
            "a bedrock provider needs `region` (like \"us-east-1\")",
        )),
    }
}

/// The Bedrock runtime endpoint of `region`, when the table names no base URL.
#[must_use]
pub(crate) fn default_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}
