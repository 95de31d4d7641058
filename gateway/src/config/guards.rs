//! `[guards]`: the runaway-loop detector and the spend-velocity ceilings.
//!
//! ```toml
//! [guards.loop]
//! repeats = 5          # the same call 5 times ...
//! window_ms = 60000    # ... within a minute is a loop
//! growing_calls = 8    # so are 8 calls in a row carrying back one answer with more context
//! messages = 2         # the last messages a call is known by
//! action = "throttle"  # alert | throttle | block
//!
//! [[guards.velocity]]
//! scope = "allocation" # key | agent | allocation
//! name = "research"    # only this one; without a name, every one without an entry of its own
//! per_minute = "2.00"  # spend per minute, in the rate card's currency
//! action = "block"
//! ```

use serde::{Deserialize, Serialize};
use tollgate_engine::Nanos;
use tollgate_engine::guard::{Action, LOOP_WINDOW_CALLS, LoopRule};
use tollgate_engine::money::deserialize_amount;
use toml::Spanned;

use super::{Result, Source};
use crate::limits::GUARD_MESSAGES_MAX;

/// `[guards]`, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardsConfig {
    /// `[guards.loop]`, when loops are watched for.
    pub loops: Option<LoopConfig>,
    /// `[[guards.velocity]]` in file order; at most one per scope and name.
    pub velocity: Vec<VelocityConfig>,
}

/// `[guards.loop]`, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopConfig {
    /// When a key's calls are a loop.
    pub rule: LoopRule,
    /// The last messages (1 to `limits::GUARD_MESSAGES_MAX`) a call is known by, with the model.
    pub messages: usize,
    /// What a loop gets.
    pub action: Action,
}

/// What a velocity ceiling is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One virtual key (named by its id).
    Key,
    /// Every key of one agent (by the agent's name).
    Agent,
    /// Every key of one allocation.
    Allocation,
}

impl Scope {
    /// Every scope, in the order the request path judges them.
    pub const ALL: [Scope; 3] = [Scope::Key, Scope::Agent, Scope::Allocation];

    /// As configs, errors and the admin API write it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Agent => "agent",
            Scope::Allocation => "allocation",
        }
    }

    /// The scope `text` names.
    #[must_use]
    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One `[[guards.velocity]]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VelocityConfig {
    /// What the ceiling is over.
    pub scope: Scope,
    /// The one key id, agent or allocation it is for; `None`: each of the scope without an
    /// entry of its own.
    pub name: Option<String>,
    /// Spend per minute at which calls are refused (or an alert raised), in nanos.
    pub per_minute: Nanos,
    /// What a call past the ceiling gets.
    pub action: Action,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGuards {
    #[serde(rename = "loop")]
    loops: Option<Spanned<RawLoop>>,
    #[serde(default)]
    velocity: Vec<Spanned<RawVelocity>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoop {
    #[serde(default = "default_repeats")]
    repeats: u32,
    #[serde(default = "default_window_ms")]
    window_ms: u64,
    #[serde(default = "default_growing_calls")]
    growing_calls: u32,
    #[serde(default = "default_messages")]
    messages: usize,
    #[serde(default = "default_action")]
    action: Action,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVelocity {
    scope: Scope,
    name: Option<String>,
    #[serde(deserialize_with = "deserialize_amount")]
    per_minute: Nanos,
    #[serde(default = "default_action")]
    action: Action,
}

fn default_repeats() -> u32 {
    5
}

fn default_window_ms() -> u64 {
    60_000
}

fn default_growing_calls() -> u32 {
    8
}

fn default_messages() -> usize {
    2
}

fn default_action() -> Action {
    Action::Throttle
}

impl RawGuards {
    pub(super) fn validate(self, source: &Source<'_>) -> Result<GuardsConfig> {
        let loops = self
            .loops
            .map(|raw| {
                let span = raw.span();
                let raw = raw.into_inner();
                let calls_max = u32::try_from(LOOP_WINDOW_CALLS).unwrap_or(u32::MAX);
                if !(2..=calls_max).contains(&raw.repeats) {
                    let reason = format!("must be from 2 to {calls_max}");
                    return Err(source.error("guards.loop.repeats", span, reason));
                }
                if raw.growing_calls == 1 {
                    let reason = "must be 0 (off) or at least 2";
                    return Err(source.error("guards.loop.growing_calls", span, reason));
                }
                let window_ms = i64::try_from(raw.window_ms).unwrap_or(0);
                if !(1..=86_400_000).contains(&window_ms) {
                    let reason = "must be from 1 to 86400000 (a day)";
                    return Err(source.error("guards.loop.window_ms", span, reason));
                }
                if !(1..=GUARD_MESSAGES_MAX).contains(&raw.messages) {
                    let reason = format!("must be from 1 to {GUARD_MESSAGES_MAX}");
                    return Err(source.error("guards.loop.messages", span, reason));
                }
                Ok(LoopConfig {
                    rule: LoopRule {
                        repeats: raw.repeats,
                        window_ms,
                        growing_calls: raw.growing_calls,
                    },
                    messages: raw.messages,
                    action: raw.action,
                })
            })
            .transpose()?;
        let mut velocity: Vec<VelocityConfig> = Vec::with_capacity(self.velocity.len());
        for (i, raw) in self.velocity.into_iter().enumerate() {
            let span = raw.span();
            let raw = raw.into_inner();
            if raw.per_minute == Nanos(0) {
                let field = format!("guards.velocity[{i}].per_minute");
                return Err(source.error(&field, span, "must be more than 0"));
            }
            if raw.scope == Scope::Key
                && let Some(name) = &raw.name
                && tollgate_engine::KeyId::parse(name).is_err()
            {
                let field = format!("guards.velocity[{i}].name");
                let reason = "a key is named by its id: `key_` and 16 hex digits";
                return Err(source.error(&field, span, reason));
            }
            if velocity
                .iter()
                .any(|v| v.scope == raw.scope && v.name == raw.name)
            {
                let field = format!("guards.velocity[{i}]");
                let reason = "a second ceiling for the same scope and name";
                return Err(source.error(&field, span, reason));
            }
            velocity.push(VelocityConfig {
                scope: raw.scope,
                name: raw.name,
                per_minute: raw.per_minute,
                action: raw.action,
            });
        }
        Ok(GuardsConfig { loops, velocity })
    }
}
