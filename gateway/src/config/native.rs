//! `[default_provider]`: what a model name without a provider means on each route, so a client
//! that speaks a provider's own dialect works with the base URL and a key alone. Claude Code
//! pointed at the gateway asks `/v1/messages` for Anthropic's own names (`claude-opus-4-8[1m]`);
//! with `messages = "anthropic"` that is `anthropic/claude-opus-4-8`, priced and allow-listed
//! like any `provider/model`.
//!
//! A name with a `/` is always `provider/model` (or an alias); only a bare name is resolved here.
//! On `/v1/messages` a trailing `[1m]` is Claude Code's marker for a model's one-million-token
//! context window: Anthropic's model ids do not carry it (the long window is the model's own
//! on current models, and the retired beta header that once asked for it is forwarded as the
//! client sent it), so it is dropped from the name.

use serde::Deserialize;
use tollgate_engine::ModelRef;
use toml::Spanned;

use super::{ProviderConfig, Result, Source};
use crate::http::route::Api;

/// Claude Code's long-context marker on a model name.
const LONG_CONTEXT_MARKER: &str = "[1m]";

/// `[default_provider]` as written: a provider name per route.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaultProviders {
    chat_completions: Option<Spanned<String>>,
    completions: Option<Spanned<String>>,
    embeddings: Option<Spanned<String>>,
    responses: Option<Spanned<String>>,
    messages: Option<Spanned<String>>,
}

/// The provider a bare model name means, per route (none: a bare name is not found).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DefaultProviders {
    /// Indexed as [`Api::ALL`].
    by_route: [Option<String>; 5],
}

impl RawDefaultProviders {
    /// Each named provider must be configured.
    pub(super) fn validate(
        self,
        providers: &[ProviderConfig],
        source: &Source<'_>,
    ) -> Result<DefaultProviders> {
        let written = [
            self.chat_completions,
            self.completions,
            self.embeddings,
            self.responses,
            self.messages,
        ];
        let mut by_route: [Option<String>; 5] = Default::default();
        for ((api, name), slot) in Api::ALL.into_iter().zip(written).zip(&mut by_route) {
            let Some(name) = name else {
                continue;
            };
            if !providers.iter().any(|p| p.name == *name.get_ref()) {
                return Err(source.error(
                    &format!("default_provider.{}", api.as_str()),
                    name.span(),
                    format!("no provider named `{}`", name.get_ref()),
                ));
            }
            *slot = Some(name.into_inner());
        }
        Ok(DefaultProviders { by_route })
    }
}

impl DefaultProviders {
    /// What the bare name `asked` means on `api`, if the route has a default provider and the
    /// name makes a valid `provider/model`.
    #[must_use]
    pub fn resolve(&self, api: Api, asked: &str) -> Option<ModelRef> {
        let index = Api::ALL.iter().position(|a| *a == api)?;
        let provider = self.by_route.get(index)?.as_deref()?;
        if asked.contains('/') {
            return None;
        }
        let name = match api {
            Api::Messages => strip_suffix_ignore_case(asked, LONG_CONTEXT_MARKER),
            _ => asked,
        };
        ModelRef::parse(&format!("{provider}/{name}")).ok()
    }
}

fn strip_suffix_ignore_case<'a>(text: &'a str, suffix: &str) -> &'a str {
    let split = text.len().saturating_sub(suffix.len());
    match (text.get(..split), text.get(split..)) {
        (Some(head), Some(tail)) if tail.eq_ignore_ascii_case(suffix) => head,
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages_to(provider: &str) -> DefaultProviders {
        let mut defaults = DefaultProviders::default();
        defaults.by_route[4] = Some(provider.into());
        defaults
    }

    #[test]
    fn a_bare_name_resolves_through_its_routes_default_provider() {
        let defaults = messages_to("anthropic");
        let resolved = |api, asked| defaults.resolve(api, asked).map(|m| m.to_string());
        assert_eq!(
            resolved(Api::Messages, "claude-opus-4-8[1m]").as_deref(),
            Some("anthropic/claude-opus-4-8")
        );
        assert_eq!(
            resolved(Api::Messages, "claude-sonnet-4-5[1M]").as_deref(),
            Some("anthropic/claude-sonnet-4-5")
        );
        assert_eq!(
            resolved(Api::Messages, "claude-haiku-4-5").as_deref(),
            Some("anthropic/claude-haiku-4-5")
        );
        // A name with a provider is never re-resolved; other routes have no default here.
        assert_eq!(resolved(Api::Messages, "openai/gpt-4o"), None);
        assert_eq!(resolved(Api::ChatCompletions, "gpt-4o"), None);
        // The marker is a Messages thing, and a name it leaves empty is no name.
        assert_eq!(resolved(Api::Messages, "[1m]"), None);
        assert_eq!(resolved(Api::Messages, "a b"), None);
    }
}
