//! A `[[provider]]` table of `tollgate.toml`, parsed into a [`ProviderConfig`] before anything
//! starts: what the upstream speaks, where it is, which credential it takes and how long to wait.
//!
//! The fields every kind reads are checked here. A field only one kind reads is checked by that
//! kind's folder (`gemini::config`: Vertex AI's project and location; `bedrock::config`: the
//! region; `openai::azure::config`: the API version) and refused on every other kind. Checks run in a
//! fixed order and the first failure is the one reported. This file and
//! [`Provider::new`](super::Provider::new) are the only places that name every kind.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::ops::Range;
use std::time::Duration;

use http::Uri;
use serde::Deserialize;
use toml::Spanned;

use crate::limits;
pub use crate::providers::gemini::config::Vertex;
use crate::providers::{bedrock, gemini, openai};

/// What an upstream speaks: which adapter [`Provider::new`](super::Provider::new) makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// The OpenAI API: OpenAI itself, vLLM, Ollama, TGI, NIM, llama.cpp.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Azure OpenAI: the OpenAI API on deployments, `api-key` header, `api-version` query.
    Azure,
    /// AWS Bedrock's Converse API, SigV4-signed with the standard AWS environment variables.
    Bedrock,
    /// Google's `generateContent`: the Gemini API (`x-goog-api-key`), or Vertex AI when a
    /// `project` and `location` are set (an OAuth access token as the bearer).
    Gemini,
}

impl ProviderKind {
    /// The name used in config and listings.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Azure => "azure",
            ProviderKind::Bedrock => "bedrock",
            ProviderKind::Gemini => "gemini",
        }
    }
}

/// One `[[provider]]`, validated: a field one kind alone reads is `None` on every other kind.
///
/// Its endpoint fields (`base_url`, `api_key_env`, `api_version`, `region`, `vertex`) are
/// those of its first deployment; each deployment has its own, the provider's where it wrote
/// none.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// The name models are prefixed with (`openai` in `openai/gpt-4o`): 1 to 64 lower-case
    /// letters, digits, `-` or `_`, unique in the file.
    pub name: String,
    /// What it speaks, and so which adapter serves it.
    pub kind: ProviderKind,
    /// Base URL, including any path prefix (`https://api.openai.com/v1`), without a trailing
    /// `/`; `http` or `https`, with a host and no query.
    pub base_url: String,
    /// Environment variable with the credential; `None` for an upstream without one.
    pub api_key_env: Option<String>,
    /// Azure's `api-version` query parameter (set exactly when the kind is `azure`).
    pub api_version: Option<String>,
    /// The AWS region (set exactly when the kind is `bedrock`).
    pub region: Option<String>,
    /// Vertex AI's project and location (`gemini` only; `None` is the Gemini API).
    pub vertex: Option<Vertex>,
    /// An `openai` upstream that also serves Anthropic's Messages API under its base URL
    /// (`{base_url}/messages`: llama.cpp's server, recent vLLM), so `/v1/messages` reaches it.
    pub anthropic_messages: bool,
    /// Longest wait for the TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait from sending the request to the response head.
    pub first_byte_timeout: Duration,
    /// Longest silence inside a response body.
    pub idle_timeout: Duration,
    /// Where its calls go: one or more deployments (the provider's own endpoint alone, named
    /// after it, when it lists none). Never empty; at most `limits::DEPLOYMENTS_MAX`.
    pub deployments: Vec<DeploymentConfig>,
}

/// One deployment of a provider: an endpoint with its own credential (and region, API
/// version or Vertex project), its share of the calls and its concurrency cap.
#[derive(Clone, Debug)]
pub struct DeploymentConfig {
    /// Unique within the provider; recorded in each usage event as `deployment`.
    pub name: String,
    /// Its share under weighted balancing, at least 1.
    pub weight: u32,
    /// Most calls it serves at once; beyond it calls go to other deployments or wait for none
    /// (the call fails over or is refused as unavailable).
    pub in_flight_max: Option<u64>,
    /// Its quota of requests a minute (a provider's rate limit for this endpoint): past it,
    /// calls go to other deployments.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Its quota of tokens a minute, charged after each call: while over it, calls go to
    /// other deployments.
    pub tokens_per_minute: Option<NonZeroU32>,
    /// `azure` only: the deployment's own name for a model where it differs from the model's
    /// name in `azure/<model>` (Azure deployments are named per resource).
    pub azure_deployments: BTreeMap<String, String>,
    /// The provider's table with this deployment's endpoint in it, `deployments` empty: what
    /// its adapter and client are made from.
    pub endpoint: Box<ProviderConfig>,
}

/// A `[[provider]]` table as written.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProvider {
    name: Spanned<String>,
    kind: ProviderKind,
    base_url: Option<Spanned<String>>,
    api_key_env: Option<String>,
    api_version: Option<String>,
    region: Option<String>,
    project: Option<String>,
    location: Option<String>,
    #[serde(default)]
    anthropic_messages: bool,
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    #[serde(default)]
    deployment: Vec<Spanned<RawDeployment>>,
}

/// A `[[provider.deployment]]` as written: what differs from its provider.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeployment {
    name: Spanned<String>,
    base_url: Option<Spanned<String>>,
    api_key_env: Option<String>,
    api_version: Option<String>,
    region: Option<String>,
    project: Option<String>,
    location: Option<String>,
    weight: Option<Spanned<u32>>,
    in_flight_max: Option<u64>,
    requests_per_minute: Option<NonZeroU32>,
    tokens_per_minute: Option<NonZeroU32>,
    azure_deployments: Option<BTreeMap<String, String>>,
}

/// A field of one `[[provider]]` table that is wrong, and why.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// The field's name in the table (`region`, `base_url`).
    pub field: &'static str,
    /// The value's place in the file when one was written; `None` points at the whole table.
    pub span: Option<Range<usize>>,
    /// What is wrong, for the operator.
    pub reason: String,
}

impl FieldError {
    /// An error pointing at the whole table.
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> FieldError {
        FieldError {
            field,
            span: None,
            reason: reason.into(),
        }
    }
}

/// A refused `[[provider]]` table, placed in the file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Invalid {
    /// The field's path in the file (`provider[1].region`).
    pub field: String,
    /// Where in the file: the value, or the whole table.
    pub span: Range<usize>,
    /// What is wrong, for the operator.
    pub reason: String,
}

/// Checks the `[[provider]]` tables in order; the first error is returned.
pub(crate) fn providers(tables: Vec<Spanned<RawProvider>>) -> Result<Vec<ProviderConfig>, Invalid> {
    let mut providers: Vec<ProviderConfig> = Vec::with_capacity(tables.len());
    for (i, table) in tables.into_iter().enumerate() {
        let span = table.span();
        let provider = table
            .into_inner()
            .validate(&providers)
            .map_err(|(deployment, e)| Invalid {
                field: match deployment {
                    Some(j) => format!("provider[{i}].deployment[{j}].{}", e.field),
                    None => format!("provider[{i}].{}", e.field),
                },
                span: e.span.unwrap_or(span),
                reason: e.reason,
            })?;
        providers.push(provider);
    }
    Ok(providers)
}

impl RawProvider {
    /// Checks one table; `earlier` are the tables above it, whose names it must not repeat.
    /// An error names the deployment it is in, if it is in one.
    fn validate(
        mut self,
        earlier: &[ProviderConfig],
    ) -> Result<ProviderConfig, (Option<usize>, FieldError)> {
        let name = checked_name(&self.name, earlier).map_err(|e| (None, e))?;
        let written = std::mem::take(&mut self.deployment);
        if written.is_empty() {
            let mut provider = self.endpoint(name.clone()).map_err(|e| (None, e))?;
            provider.deployments = vec![DeploymentConfig {
                name,
                weight: 1,
                in_flight_max: None,
                requests_per_minute: None,
                tokens_per_minute: None,
                azure_deployments: BTreeMap::new(),
                endpoint: Box::new(provider.clone()),
            }];
            return Ok(provider);
        }
        if written.len() > limits::DEPLOYMENTS_MAX {
            return Err((
                None,
                FieldError::new(
                    "deployment",
                    format!("at most {} deployments", limits::DEPLOYMENTS_MAX),
                ),
            ));
        }
        let mut deployments: Vec<DeploymentConfig> = Vec::with_capacity(written.len());
        for (j, raw) in written.into_iter().enumerate() {
            let deployment = self
                .clone()
                .deployment(raw.into_inner(), &name, &deployments)
                .map_err(|e| (Some(j), e))?;
            deployments.push(deployment);
        }
        let Some(first) = deployments.first() else {
            return Err((None, FieldError::new("deployment", "no deployment")));
        };
        let mut provider = (*first.endpoint).clone();
        provider.deployments = deployments;
        Ok(provider)
    }

    /// One deployment: the provider's table with the deployment's fields written over it,
    /// checked as a table of its own.
    fn deployment(
        mut self,
        raw: RawDeployment,
        provider: &str,
        earlier: &[DeploymentConfig],
    ) -> Result<DeploymentConfig, FieldError> {
        let name = raw.name.get_ref();
        if !is_provider_name(name) || earlier.iter().any(|d| d.name == *name) {
            return Err(FieldError {
                field: "name",
                span: Some(raw.name.span()),
                reason: format!(
                    "`{name}`: must be 1 to 64 lower-case letters, digits, `-` or `_`, used once in its provider"
                ),
            });
        }
        let weight = match raw.weight {
            Some(w) if *w.get_ref() == 0 => {
                return Err(FieldError {
                    field: "weight",
                    span: Some(w.span()),
                    reason: "must be at least 1 (leave a deployment out to send it nothing)".into(),
                });
            }
            Some(w) => w.into_inner(),
            None => 1,
        };
        if raw.in_flight_max == Some(0) {
            return Err(FieldError::new("in_flight_max", "must be at least 1"));
        }
        let azure_deployments = match raw.azure_deployments {
            Some(names) if self.kind != ProviderKind::Azure => {
                only_for(ProviderKind::Azure, "azure_deployments", Some(names))?;
                BTreeMap::new()
            }
            Some(names) => {
                if names
                    .iter()
                    .any(|(model, name)| model.is_empty() || name.is_empty())
                {
                    return Err(FieldError::new(
                        "azure_deployments",
                        "maps a model's name to the deployment's, neither empty",
                    ));
                }
                names
            }
            None => BTreeMap::new(),
        };
        self.base_url = raw.base_url.or(self.base_url);
        self.api_key_env = raw.api_key_env.or(self.api_key_env);
        self.api_version = raw.api_version.or(self.api_version);
        self.region = raw.region.or(self.region);
        self.project = raw.project.or(self.project);
        self.location = raw.location.or(self.location);
        let endpoint = self.endpoint(provider.to_owned())?;
        Ok(DeploymentConfig {
            name: name.clone(),
            weight,
            in_flight_max: raw.in_flight_max,
            requests_per_minute: raw.requests_per_minute,
            tokens_per_minute: raw.tokens_per_minute,
            azure_deployments,
            endpoint: Box::new(endpoint),
        })
    }

    /// The endpoint and timeouts of a table whose name was checked.
    fn endpoint(self, name: String) -> Result<ProviderConfig, FieldError> {
        let kind = self.kind;
        let region = match kind {
            ProviderKind::Bedrock => Some(bedrock::config::region(self.region)?),
            _ => only_for(ProviderKind::Bedrock, "region", self.region)?,
        };
        if self.anthropic_messages && kind != ProviderKind::Openai {
            return Err(FieldError::new(
                "anthropic_messages",
                "only an `openai` provider can also serve Anthropic's Messages API",
            ));
        }
        let vertex = match kind {
            ProviderKind::Gemini => gemini::config::vertex(self.project, self.location)?,
            _ => {
                only_for(ProviderKind::Gemini, "project", self.project)?;
                only_for(ProviderKind::Gemini, "location", self.location)?;
                None
            }
        };
        let base_url = match self.base_url {
            Some(url) => {
                let base_url = url.get_ref().trim_end_matches('/').to_owned();
                checked_base_url(base_url, Some(url.span()))?
            }
            None => match default_base_url(kind, region.as_deref(), vertex.as_ref()) {
                Some(base_url) => checked_base_url(base_url, None)?,
                None => return Err(FieldError::new("base_url", "missing field `base_url`")),
            },
        };
        if self.api_key_env.as_deref().is_some_and(str::is_empty) {
            return Err(FieldError::new(
                "api_key_env",
                "must name an environment variable",
            ));
        }
        let api_version = match kind {
            ProviderKind::Azure => Some(openai::azure::config::api_version(self.api_version)?),
            _ => only_for(ProviderKind::Azure, "api_version", self.api_version)?,
        };
        let ms = |value: Option<u64>, default| value.map_or(default, Duration::from_millis);
        Ok(ProviderConfig {
            name,
            kind,
            base_url,
            api_key_env: self.api_key_env,
            api_version,
            region,
            vertex,
            anthropic_messages: self.anthropic_messages,
            connect_timeout: ms(self.connect_timeout_ms, limits::UPSTREAM_CONNECT_TIMEOUT),
            first_byte_timeout: ms(
                self.first_byte_timeout_ms,
                limits::UPSTREAM_FIRST_BYTE_TIMEOUT,
            ),
            idle_timeout: ms(self.idle_timeout_ms, limits::UPSTREAM_IDLE_TIMEOUT),
            deployments: Vec::new(),
        })
    }
}

/// A provider's (or a deployment's) name: 1 to 64 lower-case letters, digits, `-` or `_`.
fn is_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The provider is the first part of `provider/model`, so its name follows the rule of model
/// names; and it names one provider only.
fn checked_name(raw: &Spanned<String>, earlier: &[ProviderConfig]) -> Result<String, FieldError> {
    let name = raw.get_ref();
    let reason = if !is_provider_name(name) {
        "must be 1 to 64 lower-case letters, digits, `-` or `_`".to_owned()
    } else if earlier.iter().any(|p| p.name == *name) {
        format!("provider `{name}` is defined twice")
    } else {
        return Ok(name.clone());
    };
    Err(FieldError {
        field: "name",
        span: Some(raw.span()),
        reason,
    })
}

/// Refuses `field` when it is set: only an `owner` provider reads it.
fn only_for<T>(
    owner: ProviderKind,
    field: &'static str,
    value: Option<T>,
) -> Result<Option<T>, FieldError> {
    match value {
        Some(_) => Err(FieldError::new(
            field,
            format!("`{field}` is for {} providers only", owner.as_str()),
        )),
        None => Ok(None),
    }
}

/// The base URL of a kind whose endpoint follows from its other fields, when none is written.
fn default_base_url(
    kind: ProviderKind,
    region: Option<&str>,
    vertex: Option<&Vertex>,
) -> Option<String> {
    match kind {
        ProviderKind::Gemini => Some(gemini::config::default_base_url(vertex)),
        ProviderKind::Bedrock => region.map(bedrock::config::default_base_url),
        ProviderKind::Openai | ProviderKind::Anthropic | ProviderKind::Azure => None,
    }
}

fn checked_base_url(url: String, span: Option<Range<usize>>) -> Result<String, FieldError> {
    match check_base_url(&url) {
        Ok(()) => Ok(url),
        Err(reason) => Err(FieldError {
            field: "base_url",
            span,
            reason,
        }),
    }
}

/// Checks that a base URL is `http` or `https` with a host and no query (the gateway appends
/// each call's path and query to it).
fn check_base_url(url: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("`{url}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}` must not have a query"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[[provider]]` tables of `text`, checked.
    fn check(text: &str) -> Result<Vec<ProviderConfig>, Invalid> {
        #[derive(Deserialize)]
        struct File {
            provider: Vec<Spanned<RawProvider>>,
        }
        providers(toml::from_str::<File>(text).unwrap().provider)
    }

    fn refusal(table: &str) -> (String, String) {
        let e = check(&format!("[[provider]]\nname = \"p\"\n{table}")).unwrap_err();
        (e.field, e.reason)
    }

    #[test]
    fn a_field_of_one_kind_is_refused_on_every_other() {
        for (table, field, owner) in [
            (
                "kind = \"openai\"\nbase_url = \"http://x\"\nregion = \"r\"",
                "region",
                "bedrock",
            ),
            (
                "kind = \"gemini\"\napi_version = \"1\"",
                "api_version",
                "azure",
            ),
            (
                "kind = \"azure\"\nbase_url = \"http://x\"\napi_version = \"1\"\nlocation = \"l\"",
                "location",
                "gemini",
            ),
        ] {
            let (path, reason) = refusal(table);
            assert_eq!(path, format!("provider[0].{field}"));
            assert_eq!(reason, format!("`{field}` is for {owner} providers only"));
        }
        assert_eq!(
            refusal("kind = \"anthropic\"\nbase_url = \"http://x\"\nanthropic_messages = true").0,
            "provider[0].anthropic_messages"
        );
    }

    #[test]
    fn checks_run_in_a_fixed_order_and_the_first_failure_is_reported() {
        // An azure table without a base URL or an API version: the base URL is checked first.
        assert_eq!(refusal("kind = \"azure\"").0, "provider[0].base_url");
        assert_eq!(
            refusal("kind = \"azure\"\nbase_url = \"http://x\"").0,
            "provider[0].api_version"
        );
        // The region comes before Vertex AI's fields, and both before the base URL.
        assert_eq!(
            refusal("kind = \"gemini\"\nregion = \"r\"\nproject = \"p\"").0,
            "provider[0].region"
        );
        assert_eq!(
            refusal("kind = \"gemini\"\nproject = \"p\"\nbase_url = \"ftp://x\"").0,
            "provider[0].location"
        );
        let e = check(
            "[[provider]]\nname = \"p\"\nkind = \"gemini\"\n[[provider]]\nname = \"p\"\nkind = \"azure\"",
        )
        .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("provider[1].name", "provider `p` is defined twice")
        );
    }

    #[test]
    fn kinds_whose_endpoint_follows_from_their_fields_need_no_base_url() {
        let providers = check(
            "[[provider]]\nname = \"b\"\nkind = \"bedrock\"\nregion = \"eu-west-1\"\n\
             [[provider]]\nname = \"g\"\nkind = \"gemini\"\n\
             [[provider]]\nname = \"v\"\nkind = \"gemini\"\nproject = \"p\"\nlocation = \"global\"\n\
             [[provider]]\nname = \"o\"\nkind = \"openai\"\nbase_url = \"http://h:1/v1///\"",
        )
        .unwrap();
        let urls: Vec<&str> = providers.iter().map(|p| p.base_url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://bedrock-runtime.eu-west-1.amazonaws.com",
                "https://generativelanguage.googleapis.com",
                "https://aiplatform.googleapis.com",
                "http://h:1/v1",
            ]
        );
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(check_base_url("http://127.0.0.1:8000/v1").is_ok());
        assert!(check_base_url("https://api.openai.com/v1").is_ok());
        assert!(check_base_url("ftp://x").is_err());
        assert!(check_base_url("api.openai.com").is_err());
        assert!(check_base_url("http://x/v1?a=b").is_err());
    }
}
