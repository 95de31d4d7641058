//! The `[[provider]]` field only an `azure` provider reads: `api_version`, the `api-version`
//! query parameter Azure OpenAI requires on every call.

use crate::providers::config::FieldError;

/// An `azure` table's API version: required (Azure names no default).
pub(crate) fn api_version(api_version: Option<String>) -> Result<String, FieldError> {
    api_version.ok_or_else(|| {
        FieldError::new(
            "api_version",
            "an azure provider needs `api_version` (like \"2024-10-21\")",
        )
    })
}
