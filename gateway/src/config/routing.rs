//! `[routing]` and `[[group]]`: how a call is placed, retried and moved to another model.
//!
//! A group is a public model name (`prod/chat`) for ordered candidates (`provider/model` of a
//! configured provider). A call on the group starts on a candidate drawn by weight (a candidate
//! written without one weighs 1 when it is first and 0 after, so by default the list is a
//! fallback order) and falls back down the list. `[routing]` holds the defaults every group
//! and every direct `provider/model` call takes: no retries unless asked (the official SDKs
//! retry on their own), a retry budget, backoff and the deployments' breakers.

use std::time::Duration;

use serde::Deserialize;
use tollgate_engine::ModelRef;
use tollgate_engine::routing::{Balance, BreakerConfig};
use toml::Spanned;

use super::{ProviderConfig, Result, Source};
use crate::limits::ROUTE_ATTEMPTS_MAX;

/// `[routing]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingConfig {
    /// Retries of a failed attempt on the same candidate (on another of its deployments when
    /// it has one), for calls that name a `provider/model` and groups that set none.
    pub retries: u32,
    /// Attempts of one call, across candidates: at most `limits::ROUTE_ATTEMPTS_MAX`.
    pub attempts_max: u32,
    /// How calls that name a `provider/model` share its deployments.
    pub balance: Balance,
    /// The first retry's wait; each later one doubles, up to `backoff_max`.
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    /// An upstream's `Retry-After` up to this is waited out before retrying the candidate;
    /// a longer one moves the call to the next candidate at once.
    pub retry_after_max: Duration,
    /// Retries may be at most this percent of recent calls ...
    pub retry_budget_percent: u32,
    /// ... plus this many every ten seconds.
    pub retry_budget_floor: u32,
    /// When a deployment's breaker opens, and for how long.
    pub breaker: BreakerConfig,
}

impl Default for RoutingConfig {
    fn default() -> RoutingConfig {
        RoutingConfig {
            retries: 0,
            attempts_max: 4,
            balance: Balance::Weighted,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            retry_after_max: Duration::from_secs(10),
            retry_budget_percent: 20,
            retry_budget_floor: 10,
            breaker: BreakerConfig::default(),
        }
    }
}

/// `[routing]` as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    retries: Option<u32>,
    attempts_max: Option<u32>,
    balance: Option<RawBalance>,
    backoff_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    retry_after_max_ms: Option<u64>,
    retry_budget_percent: Option<u32>,
    retry_budget_floor: Option<u32>,
    breaker_failures: Option<u32>,
    breaker_window_ms: Option<u64>,
    breaker_cooldown_ms: Option<u64>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawBalance {
    Weighted,
    LeastInFlight,
    Latency,
}

impl From<RawBalance> for Balance {
    fn from(raw: RawBalance) -> Balance {
        match raw {
            RawBalance::Weighted => Balance::Weighted,
            RawBalance::LeastInFlight => Balance::LeastInFlight,
            RawBalance::Latency => Balance::Latency,
        }
    }
}

/// Microseconds of `ms` milliseconds, for the engine's monotonic clock.
fn us(ms: u64) -> i64 {
    i64::try_from(ms.saturating_mul(1_000)).unwrap_or(i64::MAX)
}

impl RawRouting {
    /// Each value in its range; the field named on error.
    pub(super) fn validate(&self) -> std::result::Result<RoutingConfig, (&'static str, String)> {
        let defaults = RoutingConfig::default();
        let attempts_max = self.attempts_max.unwrap_or(defaults.attempts_max);
        if !(1..=ROUTE_ATTEMPTS_MAX).contains(&attempts_max) {
            return Err(("attempts_max", format!("must be 1 to {ROUTE_ATTEMPTS_MAX}")));
        }
        let retries = self.retries.unwrap_or(defaults.retries);
        if retries >= ROUTE_ATTEMPTS_MAX {
            return Err(("retries", format!("must be below {ROUTE_ATTEMPTS_MAX}")));
        }
        let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
        let backoff = ms(self.backoff_ms, defaults.backoff);
        let backoff_max = ms(self.backoff_max_ms, defaults.backoff_max);
        if backoff > backoff_max || backoff_max > Duration::from_secs(60) {
            return Err((
                "backoff_max_ms",
                "must be at least backoff_ms and at most 60000".into(),
            ));
        }
        let retry_after_max = ms(self.retry_after_max_ms, defaults.retry_after_max);
        if retry_after_max > Duration::from_secs(300) {
            return Err(("retry_after_max_ms", "must be at most 300000".into()));
        }
        let retry_budget_percent = self
            .retry_budget_percent
            .unwrap_or(defaults.retry_budget_percent);
        if retry_budget_percent > 100 {
            return Err(("retry_budget_percent", "must be 0 to 100".into()));
        }
        let breaker = BreakerConfig {
            failures: self.breaker_failures.unwrap_or(defaults.breaker.failures),
            window_us: self
                .breaker_window_ms
                .map_or(defaults.breaker.window_us, us),
            cooldown_us: self
                .breaker_cooldown_ms
                .map_or(defaults.breaker.cooldown_us, us),
        };
        if breaker.failures == 0 {
            return Err(("breaker_failures", "must be at least 1".into()));
        }
        if breaker.cooldown_us <= 0 || breaker.window_us <= 0 {
            return Err((
                "breaker_cooldown_ms",
                "the breaker's window and cooldown must be above 0".into(),
            ));
        }
        Ok(RoutingConfig {
            retries,
            attempts_max,
            balance: self.balance.map_or(defaults.balance, Balance::from),
            backoff,
            backoff_max,
            retry_after_max,
            retry_budget_percent,
            retry_budget_floor: self
                .retry_budget_floor
                .unwrap_or(defaults.retry_budget_floor),
            breaker,
        })
    }
}

/// One `[[group]]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// The public name clients send as `model`.
    pub name: String,
    /// In fallback order, some with a share of first attempts above 0.
    pub candidates: Vec<Candidate>,
    /// How each candidate's deployments share its calls.
    pub balance: Balance,
    /// Retries on one candidate before the next.
    pub retries: u32,
    /// Attempts of one call across the candidates.
    pub attempts_max: u32,
    /// The group that serves a call the budget can no longer afford whole on this one (it
    /// would be refused, or capped or stopped short): another group, taken once.
    pub downgrade: Option<String>,
}

/// One candidate of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// A configured provider's `provider/model`.
    pub model: ModelRef,
    /// Its share of the group's first attempts (0: a fallback only).
    pub weight: u32,
    /// Its context window in tokens, when declared: a call its window refuses (the provider's
    /// context-window error) falls back at once to a later candidate declaring a larger one.
    pub context_tokens: Option<u64>,
}

/// `downgrade = { at_percent = 90, to = "cheap" }` on a team, project or allocation: once its
/// settled spend reaches `at_percent` of its limit in the period, its calls are served by
/// group `to` (unless they name it already).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DowngradeConfig {
    /// 1 to 100.
    pub at_percent: u8,
    /// A configured group.
    pub to: String,
}

/// A `downgrade` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDowngrade {
    at_percent: Spanned<u8>,
    to: Spanned<String>,
}

/// A level's `downgrade`, its group configured and its threshold in range.
pub(super) fn downgrade(
    raw: Option<RawDowngrade>,
    field: &str,
    groups: &[GroupConfig],
    source: &Source<'_>,
) -> Result<Option<DowngradeConfig>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let at_percent = *raw.at_percent.get_ref();
    if !(1..=100).contains(&at_percent) {
        return Err(source.error(
            &format!("{field}.at_percent"),
            raw.at_percent.span(),
            "must be 1 to 100",
        ));
    }
    let to = raw.to.get_ref();
    if !groups.iter().any(|g| g.name == *to) {
        return Err(source.error(
            &format!("{field}.to"),
            raw.to.span(),
            format!("no group named `{to}`"),
        ));
    }
    Ok(Some(DowngradeConfig {
        at_percent,
        to: to.clone(),
    }))
}

/// A `[[group]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    name: Spanned<String>,
    candidates: Spanned<Vec<RawCandidate>>,
    balance: Option<RawBalance>,
    retries: Option<u32>,
    attempts_max: Option<u32>,
    downgrade: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCandidate {
    model: Spanned<String>,
    weight: Option<u32>,
    context_tokens: Option<u64>,
}

/// The groups in order; the first error stops. A group's name is used once, by no alias and
/// as no configured `provider/model` prefix; its candidates are `provider/model`s of
/// configured providers (never a group: groups do not nest), each once.
pub(super) fn groups(
    tables: Vec<Spanned<RawGroup>>,
    providers: &[ProviderConfig],
    aliases: &[(String, ModelRef)],
    routing: &RoutingConfig,
    source: &Source<'_>,
) -> Result<Vec<GroupConfig>> {
    let names: Vec<String> = tables
        .iter()
        .map(|t| t.get_ref().name.get_ref().clone())
        .collect();
    let mut groups: Vec<GroupConfig> = Vec::with_capacity(tables.len());
    for (i, table) in tables.into_iter().enumerate() {
        let span = table.span();
        let raw = table.into_inner();
        let field = |f: &str| format!("group[{i}].{f}");
        let name = raw.name.get_ref().clone();
        let prefix = name.split_once('/').map(|(p, _)| p);
        let taken = if name.is_empty() || name.len() > 128 || name.chars().any(char::is_whitespace)
        {
            Some("must be 1 to 128 characters without spaces".to_owned())
        } else if groups.iter().any(|g| g.name == name) {
            Some(format!("group `{name}` is defined twice"))
        } else if aliases.iter().any(|(a, _)| *a == name) {
            Some(format!("`{name}` is also an alias"))
        } else if prefix.is_some_and(|p| providers.iter().any(|c| c.name == p)) {
            Some(format!(
                "`{name}` would hide models of provider `{}`: name groups apart from providers",
                prefix.unwrap_or_default()
            ))
        } else {
            None
        };
        if let Some(reason) = taken {
            return Err(source.error(&field("name"), raw.name.span(), reason));
        }
        let candidates = candidates(&raw.candidates, &names, providers, source, i)?;
        let retries = raw.retries.unwrap_or(routing.retries);
        let attempts_max = raw.attempts_max.unwrap_or(routing.attempts_max);
        if !(1..=ROUTE_ATTEMPTS_MAX).contains(&attempts_max) || retries >= ROUTE_ATTEMPTS_MAX {
            return Err(source.error(
                &field("attempts_max"),
                span,
                format!("attempts_max must be 1 to {ROUTE_ATTEMPTS_MAX} and retries below it"),
            ));
        }
        let downgrade = match raw.downgrade {
            Some(to) if *to.get_ref() == name || !names.contains(to.get_ref()) => {
                return Err(source.error(
                    &field("downgrade"),
                    to.span(),
                    format!("`{}` must name another group", to.get_ref()),
                ));
            }
            to => to.map(Spanned::into_inner),
        };
        groups.push(GroupConfig {
            name,
            candidates,
            balance: raw.balance.map_or(routing.balance, Balance::from),
            retries,
            attempts_max,
            downgrade,
        });
    }
    Ok(groups)
}

/// A group's candidates: each a configured `provider/model`, once; some weight above 0.
fn candidates(
    raw: &Spanned<Vec<RawCandidate>>,
    group_names: &[String],
    providers: &[ProviderConfig],
    source: &Source<'_>,
    i: usize,
) -> Result<Vec<Candidate>> {
    let mut candidates: Vec<Candidate> = Vec::with_capacity(raw.get_ref().len());
    for (j, candidate) in raw.get_ref().iter().enumerate() {
        let field = format!("group[{i}].candidates[{j}].model");
        let written = candidate.model.get_ref();
        let span = candidate.model.span();
        if group_names.iter().any(|g| g == written) {
            return Err(source.error(
                &field,
                span,
                format!(
                    "`{written}` is a group: a candidate is a `provider/model` (groups do not nest)"
                ),
            ));
        }
        let model = ModelRef::parse(written)
            .map_err(|e| source.error(&field, span.clone(), e.to_string()))?;
        if !providers.iter().any(|p| p.name == model.provider()) {
            return Err(source.error(
                &field,
                span,
                format!("no provider named `{}`", model.provider()),
            ));
        }
        if candidates.iter().any(|c| c.model == model) {
            return Err(source.error(&field, span, format!("`{written}` is listed twice")));
        }
        if candidate.context_tokens == Some(0) {
            return Err(source.error(
                &format!("group[{i}].candidates[{j}].context_tokens"),
                span,
                "must be at least 1",
            ));
        }
        candidates.push(Candidate {
            model,
            weight: candidate.weight.unwrap_or(u32::from(j == 0)),
            context_tokens: candidate.context_tokens,
        });
    }
    if candidates.is_empty() {
        return Err(source.error(
            &format!("group[{i}].candidates"),
            raw.span(),
            "a group needs at least one candidate",
        ));
    }
    if candidates.iter().all(|c| c.weight == 0) {
        return Err(source.error(
            &format!("group[{i}].candidates"),
            raw.span(),
            "every weight is 0: some candidate must take first attempts",
        ));
    }
    Ok(candidates)
}
