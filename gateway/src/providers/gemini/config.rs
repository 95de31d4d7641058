//! The `[[provider]]` fields only a `gemini` provider reads: Vertex AI's `project` and
//! `location` (both, or neither for the Gemini API), and the base URL they imply.

use crate::providers::config::FieldError;

/// Where a `gemini` provider lives on Vertex AI; requests go under
/// `/v1/projects/{project}/locations/{location}/publishers/google/...`, so both are checked to
/// be one path segment of letters, digits, `-` and `_`, at most 64 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vertex {
    /// The Google Cloud project id.
    pub project: String,
    /// The location (`us-central1`, or `global`).
    pub location: String,
}

/// A `gemini` table's Vertex AI placement: both `project` and `location`, or neither (the
/// Gemini API).
pub(crate) fn vertex(
    project: Option<String>,
    location: Option<String>,
) -> Result<Option<Vertex>, FieldError> {
    let segment_ok = |v: &str| {
        !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    match (project, location) {
        (None, None) => Ok(None),
        (Some(project), Some(location)) => {
            if !segment_ok(&project) {
                return Err(FieldError::new(
                    "project",
                    "must be a Google Cloud project id",
                ));
            }
            if !segment_ok(&location) {
                return Err(FieldError::new(
                    "location",
                    "must be a location like \"us-central1\" or \"global\"",
                ));
            }
            Ok(Some(Vertex { project, location }))
        }
        (Some(_), None) => Err(FieldError::new(
            "location",
            "Vertex AI needs `location` beside `project`",
        )),
        (None, Some(_)) => Err(FieldError::new(
            "project",
            "Vertex AI needs `project` beside `location`",
        )),
    }
}

/// The base URL when the table names none: the Gemini API's, or the Vertex AI endpoint of the
/// location (`global` has no location prefix).
#[must_use]
pub(crate) fn default_base_url(vertex: Option<&Vertex>) -> String {
    match vertex {
        None => "https://generativelanguage.googleapis.com".to_owned(),
        Some(v) if v.location == "global" => "https://aiplatform.googleapis.com".to_owned(),
        Some(v) => format!("https://{}-aiplatform.googleapis.com", v.location),
    }
}
