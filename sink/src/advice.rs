//! Savings advice from the Parquet files: what a team, project, allocation or agent could
//! have saved and how, each with the amount, priced by the rate card exactly as the gateway
//! prices (integer nano-units, rounded once, upward, with the team's or project's
//! adjustment).
//!
//! Four kinds, each event counted in at most one of the first three:
//! - **cheaper model**: a served call whose answer was short (at most
//!   [`AdviceRules::short_answer_tokens`]) on a model the card has a cheaper one for from the
//!   same provider: its cost less the same usage's on the cheapest of those.
//! - **prompt caching**: a served call whose prompt began as one the same model was sent
//!   within [`AdviceRules::cache_window_ms`] before (the events' `prompt_prefix`), its
//!   uncached leading [`PREFIX_TOKENS`] billed at the cached price instead: a floor, since only
//!   the first 4 KiB are known to repeat.
//! - **failed** and **retried**: spend on calls that ended in an error (a client that hung
//!   up, an upstream that broke off) and on attempts that were followed by another.
//! - **loops**: missed, the served repeats of one key's call (same model, prompt prefix and
//!   prompt tokens) from the [`AdviceRules::loop_repeats`]th within
//!   [`AdviceRules::loop_window_ms`] on, each its cost; caught, the calls the loop guard
//!   refused (they cost nothing).
//!
//! **Invariant:** every amount is a difference of integers the card's own rounding made;
//! the events are read as the files state them (rows and cost checked against each footer).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use arrow_array::{Array, Decimal128Array, Int32Array, Int64Array, StringArray};
use arrow_array::{RecordBatch, TimestampMillisecondArray};
use tollgate_engine::{
    ModelPrice, ModelRef, PROMPT_PREFIX_BYTES, RateCard, RateVersion, TokenUsage, Tokens, UnixMs,
};

use crate::columnar::ColumnarError;
use crate::rollup::{column, for_each_batch};

/// The prompt tokens a shared prefix stands for: its bytes at four bytes a token.
pub const PREFIX_TOKENS: u64 = (PROMPT_PREFIX_BYTES / 4) as u64;

/// What advice is grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdviceBy {
    /// The team charged.
    Team,
    /// The project.
    Project,
    /// The allocation.
    Allocation,
    /// The agent the key names.
    Agent,
}

impl AdviceBy {
    /// The usage column that names the groups.
    #[must_use]
    pub fn column(self) -> &'static str {
        match self {
            AdviceBy::Team => "team",
            AdviceBy::Project => "project",
            AdviceBy::Allocation => "allocation",
            AdviceBy::Agent => "agent",
        }
    }

    /// The grouping named `name`, if there is one.
    #[must_use]
    pub fn parse(name: &str) -> Option<AdviceBy> {
        [
            AdviceBy::Team,
            AdviceBy::Project,
            AdviceBy::Allocation,
            AdviceBy::Agent,
        ]
        .into_iter()
        .find(|b| b.column() == name)
    }
}

/// When a call counts toward each kind of advice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdviceRules {
    /// The longest answer, in completion tokens, a cheaper model is suggested for.
    pub short_answer_tokens: u64,
    /// How long a provider keeps a prompt prefix cached: a call within this of the last one
    /// with its prefix could have read it from cache.
    pub cache_window_ms: i64,
    /// The calls alike within the loop window that make a loop (the loop guard's default).
    pub loop_repeats: u32,
    /// The loop guard's window.
    pub loop_window_ms: i64,
}

impl Default for AdviceRules {
    fn default() -> AdviceRules {
        AdviceRules {
            short_answer_tokens: 256,
            cache_window_ms: 300_000,
            loop_repeats: 5,
            loop_window_ms: 60_000,
        }
    }
}

/// A kind of advice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdviceKind {
    /// Short answers from a dear model: a cheaper one of the card.
    CheaperModel,
    /// Repeated prompt prefixes: prompt caching.
    PromptCaching,
    /// Calls that ended in an error and still cost.
    Failed,
    /// Attempts followed by another that cost.
    Retried,
    /// Repeats of a loop the guard let through.
    LoopsMissed,
    /// Calls the loop guard refused.
    LoopsCaught,
}

impl AdviceKind {
    /// As the CLI writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AdviceKind::CheaperModel => "cheaper_model",
            AdviceKind::PromptCaching => "prompt_caching",
            AdviceKind::Failed => "failed",
            AdviceKind::Retried => "retried",
            AdviceKind::LoopsMissed => "loops_missed",
            AdviceKind::LoopsCaught => "loops_caught",
        }
    }
}

/// One line of advice: a group, a kind and what it is about (`gpt-4o -> gpt-4o-mini`, a
/// status, a model), the calls it covers, what they cost and what could be saved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advice {
    /// The group's value; `None` for events without one.
    pub group: Option<String>,
    /// The kind, `None` only in a default value.
    pub kind: Option<AdviceKind>,
    /// What it is about.
    pub about: String,
    /// Calls it covers.
    pub calls: u64,
    /// What they cost, billed, in nano-units.
    pub spent_nanos: i128,
    /// What could have been saved, in nano-units.
    pub saving_nanos: i128,
}

/// One served or refused model call, as advice reads it.
struct Call {
    ts: UnixMs,
    group: Option<String>,
    team: String,
    project: String,
    key: Option<String>,
    request: String,
    attempt: i32,
    model: Option<ModelRef>,
    version: Option<String>,
    usage: TokenUsage,
    cost: i128,
    status: String,
    prefix: Option<String>,
}

/// The advice for the model calls under `data_dir/usage` with `from <= ts < to`, grouped by
/// `by`, priced by `card`: by saving, largest first, then group, kind and subject.
pub fn advise(
    data_dir: &Path,
    card: &RateCard,
    by: AdviceBy,
    window: (Option<UnixMs>, Option<UnixMs>),
    rules: AdviceRules,
) -> Result<Vec<Advice>, ColumnarError> {
    let calls = read_calls(data_dir, by, window)?;
    let mut advice: BTreeMap<(Option<String>, AdviceKind, String), Advice> = BTreeMap::new();
    let mut add = |call: &Call, kind: AdviceKind, about: String, saving: i128| {
        let line = advice
            .entry((call.group.clone(), kind, about.clone()))
            .or_insert_with(|| Advice {
                group: call.group.clone(),
                kind: Some(kind),
                about,
                ..Advice::default()
            });
        line.calls += 1;
        line.spent_nanos += call.cost;
        line.saving_nanos += saving;
    };
    let last_attempt = last_attempts(&calls);
    let cached_before = cache_hits(&calls, rules.cache_window_ms);
    let loop_repeats = loop_repeats(&calls, rules);
    for (i, call) in calls.iter().enumerate() {
        if call.status == "loop_detected" {
            add(
                call,
                AdviceKind::LoopsCaught,
                "refused by the loop guard".into(),
                0,
            );
            continue;
        }
        let final_attempt = last_attempt.get(&call.request) == Some(&call.attempt);
        if call.cost > 0 && !final_attempt {
            add(call, AdviceKind::Retried, call.status.clone(), call.cost);
            continue;
        }
        if call.cost > 0 && call.status != "ok" {
            add(call, AdviceKind::Failed, call.status.clone(), call.cost);
            continue;
        }
        if call.status != "ok" {
            continue;
        }
        if loop_repeats[i] {
            let about = call
                .model
                .as_ref()
                .map_or_else(String::new, |m| m.as_str().to_owned());
            add(call, AdviceKind::LoopsMissed, about, call.cost);
            continue;
        }
        let Some((version, price)) = priced(card, call) else {
            continue;
        };
        let adjustment = version.adjustment(&call.team, &call.project);
        if call.usage.output.0 <= rules.short_answer_tokens
            && let Some((cheaper, cost)) = cheapest_alternative(version, price, call, adjustment)
        {
            let saving = call.cost - i128::from(cost);
            if saving > 0 {
                let about = format!("{} -> {}", price.model.as_str(), cheaper.model.as_str());
                add(call, AdviceKind::CheaperModel, about, saving);
                continue;
            }
        }
        if cached_before[i] {
            let uncached = call
                .usage
                .input
                .0
                .saturating_sub(call.usage.cached.0)
                .saturating_sub(call.usage.cache_write.0);
            let moved = uncached.min(PREFIX_TOKENS);
            let cached_usage = TokenUsage {
                cached: Tokens(call.usage.cached.0 + moved),
                ..call.usage
            };
            let saving = i128::from(price.cost(&call.usage, adjustment).billed.0)
                - i128::from(price.cost(&cached_usage, adjustment).billed.0);
            if saving > 0 {
                add(
                    call,
                    AdviceKind::PromptCaching,
                    price.model.as_str().to_owned(),
                    saving,
                );
            }
        }
    }
    let mut lines: Vec<Advice> = advice.into_values().collect();
    lines.sort_by(|a, b| {
        b.saving_nanos
            .cmp(&a.saving_nanos)
            .then_with(|| a.group.cmp(&b.group))
            .then_with(|| a.kind.cmp(&b.kind))
            .then_with(|| a.about.cmp(&b.about))
    });
    Ok(lines)
}

/// The version that priced `call` (the one it names, else the one in force at its start) and
/// its model's price there.
fn priced<'c>(card: &'c RateCard, call: &Call) -> Option<(&'c RateVersion, &'c ModelPrice)> {
    let version = call
        .version
        .as_deref()
        .and_then(|id| card.version(id))
        .or_else(|| card.at(call.ts))?;
    let price = version.model(call.model.as_ref()?.as_str())?;
    Some((version, price))
}

/// The cheapest model of `version` from `price`'s provider that answers in text (an output
/// price above zero) and could have given `call`'s answer, with what `call`'s usage would
/// have cost there; `None` when none is cheaper.
fn cheapest_alternative<'v>(
    version: &'v RateVersion,
    price: &ModelPrice,
    call: &Call,
    adjustment: tollgate_engine::Adjustment,
) -> Option<(&'v ModelPrice, u64)> {
    version
        .models()
        .filter(|m| {
            price.output_per_mtok.0 > 0
                && m.model != price.model
                && m.model.provider() == price.model.provider()
                && m.output_per_mtok.0 > 0
                && m.max_output_tokens >= call.usage.output.0
        })
        .map(|m| (m, m.cost(&call.usage, adjustment).billed.0))
        .filter(|&(_, cost)| i128::from(cost) < call.cost)
        .min_by(|a, b| {
            a.1.cmp(&b.1)
                .then_with(|| a.0.model.as_str().cmp(b.0.model.as_str()))
        })
}

/// The last attempt of every request.
fn last_attempts(calls: &[Call]) -> HashMap<String, i32> {
    let mut last: HashMap<String, i32> = HashMap::new();
    for call in calls {
        let entry = last.entry(call.request.clone()).or_insert(call.attempt);
        *entry = (*entry).max(call.attempt);
    }
    last
}

/// For each call (in time order), whether a served call before it sent the same model the
/// same prompt prefix within `window_ms`.
fn cache_hits(calls: &[Call], window_ms: i64) -> Vec<bool> {
    let mut last: HashMap<(&str, &str), UnixMs> = HashMap::new();
    calls
        .iter()
        .map(|call| {
            let (Some(model), Some(prefix)) = (&call.model, &call.prefix) else {
                return false;
            };
            if call.status != "ok" {
                return false;
            }
            let key = (model.as_str(), prefix.as_str());
            let hit = last
                .get(&key)
                .is_some_and(|&at| call.ts.0.saturating_sub(at.0) <= window_ms);
            last.insert(key, call.ts);
            hit
        })
        .collect()
}

/// For each call (in time order), whether it is a served repeat the loop guard at `rules`
/// would have refused: the same key, model, prompt prefix and prompt tokens as at least
/// `loop_repeats - 1` served calls in the `loop_window_ms` before it.
fn loop_repeats(calls: &[Call], rules: AdviceRules) -> Vec<bool> {
    type Alike<'a> = (&'a str, &'a str, &'a str, u64);
    let mut seen: HashMap<Alike<'_>, std::collections::VecDeque<UnixMs>> = HashMap::new();
    let before = usize::try_from(rules.loop_repeats.saturating_sub(1)).unwrap_or(usize::MAX);
    calls
        .iter()
        .map(|call| {
            let (Some(key), Some(model), Some(prefix)) = (&call.key, &call.model, &call.prefix)
            else {
                return false;
            };
            if call.status != "ok" || before == 0 {
                return false;
            }
            let times = seen
                .entry((
                    key.as_str(),
                    model.as_str(),
                    prefix.as_str(),
                    call.usage.input.0,
                ))
                .or_default();
            while times
                .front()
                .is_some_and(|&at| call.ts.0.saturating_sub(at.0) >= rules.loop_window_ms)
            {
                times.pop_front();
            }
            let repeat = times.len() >= before;
            times.push_back(call.ts);
            repeat
        })
        .collect()
}

/// The model calls in the window, in time order (ties in file order).
fn read_calls(
    data_dir: &Path,
    by: AdviceBy,
    (from, to): (Option<UnixMs>, Option<UnixMs>),
) -> Result<Vec<Call>, ColumnarError> {
    let wanted = [
        "ts",
        "kind",
        "team",
        "project",
        "allocation",
        "agent",
        "key_id",
        "request_id",
        "attempt",
        "provider",
        "model",
        "rate_card_version",
        "tokens_in",
        "tokens_out",
        "tokens_cached",
        "tokens_cache_write",
        "tokens_reasoning",
        "cost",
        "status",
        "prompt_prefix",
    ];
    let mut calls = Vec::new();
    for_each_batch(data_dir, &wanted, |batch, _written| {
        let columns = Columns::of(&batch, by)?;
        for i in 0..batch.num_rows() {
            let ts = UnixMs(columns.ts.value(i));
            if from.is_some_and(|f| ts < f) || to.is_some_and(|e| ts >= e) {
                continue;
            }
            if columns.kind.value(i) != "tokens" {
                continue;
            }
            calls.push(columns.call(i, ts));
        }
        Ok(())
    })?;
    calls.sort_by_key(|c| c.ts);
    Ok(calls)
}

/// The columns advice reads, typed; `prompt_prefix` is absent from files written before it.
struct Columns<'a> {
    ts: &'a TimestampMillisecondArray,
    kind: &'a StringArray,
    group: &'a StringArray,
    team: &'a StringArray,
    project: &'a StringArray,
    key: &'a StringArray,
    request: &'a StringArray,
    attempt: &'a Int32Array,
    provider: &'a StringArray,
    model: &'a StringArray,
    version: &'a StringArray,
    tokens: [&'a Int64Array; 5],
    cost: &'a Decimal128Array,
    status: &'a StringArray,
    prefix: Option<&'a StringArray>,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch, by: AdviceBy) -> Result<Columns<'a>, ColumnarError> {
        Ok(Columns {
            ts: column(batch, "ts")?,
            kind: column(batch, "kind")?,
            group: column(batch, by.column())?,
            team: column(batch, "team")?,
            project: column(batch, "project")?,
            key: column(batch, "key_id")?,
            request: column(batch, "request_id")?,
            attempt: column(batch, "attempt")?,
            provider: column(batch, "provider")?,
            model: column(batch, "model")?,
            version: column(batch, "rate_card_version")?,
            tokens: [
                column(batch, "tokens_in")?,
                column(batch, "tokens_out")?,
                column(batch, "tokens_cached")?,
                column(batch, "tokens_cache_write")?,
                column(batch, "tokens_reasoning")?,
            ],
            cost: column(batch, "cost")?,
            status: column(batch, "status")?,
            prefix: column(batch, "prompt_prefix").ok(),
        })
    }

    fn call(&self, i: usize, ts: UnixMs) -> Call {
        let text = |a: &StringArray| (!a.is_null(i)).then(|| a.value(i).to_owned());
        let tokens = |n: usize| Tokens(u64::try_from(self.tokens[n].value(i)).unwrap_or(0));
        let model = match (text(self.provider), text(self.model)) {
            (Some(provider), Some(model)) => ModelRef::parse(&format!("{provider}/{model}")).ok(),
            _ => None,
        };
        Call {
            ts,
            group: text(self.group),
            team: text(self.team).unwrap_or_default(),
            project: text(self.project).unwrap_or_default(),
            key: text(self.key),
            request: self.request.value(i).to_owned(),
            attempt: self.attempt.value(i),
            model,
            version: text(self.version),
            usage: TokenUsage {
                input: tokens(0),
                output: tokens(1),
                cached: tokens(2),
                cache_write: tokens(3),
                reasoning: tokens(4),
            },
            cost: self.cost.value(i),
            status: self.status.value(i).to_owned(),
            prefix: self.prefix.and_then(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tollgate_engine::{KeyId, Nanos, PromptPrefix, Status, UsageEvent};

    const CARD: &str = r#"
currency = "USD"
default_max_output_tokens = 4096

[[version]]
id = "v1"
effective_from = 2026-01-01T00:00:00Z

[[version.model]]
name = "openai/gpt-4o"
input_per_mtok = "2.50"
cached_input_per_mtok = "1.25"
output_per_mtok = "10.00"

[[version.model]]
name = "openai/gpt-4o-mini"
input_per_mtok = "0.15"
cached_input_per_mtok = "0.075"
output_per_mtok = "0.60"

[[version.model]]
name = "openai/text-embedding-3-small"
input_per_mtok = "0.02"
output_per_mtok = "0"

[[version.adjustment]]
team = "research"
percent = "-20"
"#;

    /// 2026-06-01T00:00:00Z.
    const T0: i64 = 1_780_272_000_000;

    /// A served call of `team` at `T0 + at_s` seconds; the caller sets what differs.
    fn call(team: &str, at_s: i64, model: &str, tokens: (u64, u64), cost: u64) -> UsageEvent {
        let (provider, name) = model.split_once('/').unwrap();
        let mut e = UsageEvent::sample();
        e.ts_ms = UnixMs(T0 + at_s * 1_000);
        e.request_id = Arc::from(format!("req-{team}-{at_s}"));
        e.team = Some(Arc::from(team));
        e.project = Some(Arc::from(format!("{team}-project")));
        e.key_id = Some(KeyId(if team == "research" { 0xaa } else { 0xbb }));
        e.provider = Some(Arc::from(provider));
        e.model = Some(Arc::from(name));
        (e.tokens_in, e.tokens_out) = (Tokens(tokens.0), Tokens(tokens.1));
        (e.tokens_cached, e.tokens_cache_write, e.tokens_reasoning) =
            (Tokens(0), Tokens(0), Tokens(0));
        (
            e.quantity_micros,
            e.unit,
            e.cluster,
            e.partition,
            e.instance_type,
        ) = (None, None, None, None, None);
        (e.cost_nanos, e.list_cost_nanos) = (Nanos(cost), Nanos(cost));
        e.rate_card_version = Some(Arc::from("v1"));
        e.prompt_prefix = None;
        e.status = Status::Ok;
        e
    }

    /// Calls whose savings are worked out by hand below, in nano-units (a token of gpt-4o
    /// costs 2,500 in, 1,250 cached, 10,000 out; of gpt-4o-mini 150, 75 and 600; research
    /// pays 20 % less).
    fn crafted() -> Vec<UsageEvent> {
        let prefix = |p: u64| Some(PromptPrefix(p));
        let mut events = vec![
            // Short answers from gpt-4o: 1000*2500 + 100*10000 = 3,500,000 each; on
            // gpt-4o-mini 1000*150 + 100*600 = 210,000.
            call("support", 0, "openai/gpt-4o", (1_000, 100), 3_500_000),
            call("support", 1, "openai/gpt-4o", (1_000, 100), 3_500_000),
            // A long answer: no advice.
            call("support", 2, "openai/gpt-4o", (1_000, 1_000), 12_500_000),
            // An embedding: never sent to a chat model.
            call(
                "support",
                3,
                "openai/text-embedding-3-small",
                (500, 0),
                10_000,
            ),
            // research: 7,000,000 listed, 5,600,000 billed; on gpt-4o-mini 420,000 listed,
            // 336,000 billed.
            call("research", 4, "openai/gpt-4o", (2_000, 200), 5_600_000),
        ];
        // One prompt prefix re-sent to gpt-4o (300 tokens out: not short). The second call,
        // two minutes on, could have read 1,024 tokens cached (saving 1,024*1,250); the third
        // comes eight minutes later, past the cache; the fourth a minute after that, with
        // only 500 tokens left uncached (saving 500*1,250).
        for (at_s, tokens_in, cached, cost) in [
            (600, 5_000, 0, 15_500_000),
            (720, 6_000, 0, 18_000_000),
            (1_200, 5_500, 0, 16_750_000),
            (1_260, 4_000, 3_500, 8_625_000),
        ] {
            let mut e = call("support", at_s, "openai/gpt-4o", (tokens_in, 300), cost);
            e.tokens_cached = Tokens(cached);
            e.prompt_prefix = prefix(0xc0de);
            events.push(e);
        }
        // A stream the client hung up on, and an attempt that broke off and was retried.
        let mut closed = call("support", 1_300, "openai/gpt-4o", (100, 15), 400_000);
        closed.status = Status::ClientClosed;
        let mut broke = call("support", 1_310, "openai/gpt-4o", (100, 5), 300_000);
        broke.status = Status::UpstreamError;
        let mut retried = call("support", 1_311, "openai/gpt-4o", (100, 500), 5_250_000);
        retried.request_id = Arc::clone(&broke.request_id);
        retried.attempt = 2;
        let mut free_failure = call("support", 1_320, "openai/gpt-4o", (100, 0), 0);
        free_failure.status = Status::UpstreamError;
        events.extend([closed, broke, retried, free_failure]);
        // research's agent loops on gpt-4o-mini: six calls alike, five seconds apart, 624,000
        // billed each. The fifth and sixth are repeats the guard would refuse; the second to
        // fourth re-send the prefix: 3,976*150 + 1,024*75 + 50*600 = 703,200 listed, 562,560
        // billed, saving 61,440 each.
        for n in 0..6 {
            let mut e = call(
                "research",
                2_000 + n * 5,
                "openai/gpt-4o-mini",
                (5_000, 50),
                624_000,
            );
            e.prompt_prefix = prefix(0x100b);
            events.push(e);
        }
        // Two more the loop guard refused.
        for n in 0..2 {
            let mut e = call("research", 2_030 + n, "openai/gpt-4o-mini", (0, 0), 0);
            e.status = Status::LoopDetected;
            events.push(e);
        }
        events
    }

    fn line(
        group: &str,
        kind: AdviceKind,
        about: &str,
        calls: u64,
        spent: i128,
        saving: i128,
    ) -> Advice {
        Advice {
            group: Some(group.to_owned()),
            kind: Some(kind),
            about: about.to_owned(),
            calls,
            spent_nanos: spent,
            saving_nanos: saving,
        }
    }

    #[test]
    fn a_crafted_data_set_gets_the_savings_worked_out_by_hand_to_the_unit() {
        let root = std::env::temp_dir().join(format!("tollgate-advice-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let events = crafted();
        let (first, second) = events.split_at(7);
        crate::columnar::write_file(&root.join("usage/date=2026-06-01/hour=00/a.parquet"), first)
            .unwrap();
        crate::columnar::write_file(
            &root.join("usage/date=2026-06-01/hour=00/b.parquet"),
            second,
        )
        .unwrap();
        let card = RateCard::from_toml(CARD, "card.toml").unwrap();
        let advice = advise(
            &root,
            &card,
            AdviceBy::Team,
            (None, None),
            AdviceRules::default(),
        )
        .unwrap();
        use AdviceKind as K;
        let cheaper = "openai/gpt-4o -> openai/gpt-4o-mini";
        assert_eq!(
            advice,
            vec![
                line("support", K::CheaperModel, cheaper, 2, 7_000_000, 6_580_000),
                line(
                    "research",
                    K::CheaperModel,
                    cheaper,
                    1,
                    5_600_000,
                    5_264_000
                ),
                line(
                    "support",
                    K::PromptCaching,
                    "openai/gpt-4o",
                    2,
                    26_625_000,
                    1_905_000
                ),
                line(
                    "research",
                    K::LoopsMissed,
                    "openai/gpt-4o-mini",
                    2,
                    1_248_000,
                    1_248_000
                ),
                line("support", K::Failed, "client_closed", 1, 400_000, 400_000),
                line("support", K::Retried, "upstream_error", 1, 300_000, 300_000),
                line(
                    "research",
                    K::PromptCaching,
                    "openai/gpt-4o-mini",
                    3,
                    1_872_000,
                    184_320
                ),
                line(
                    "research",
                    K::LoopsCaught,
                    "refused by the loop guard",
                    2,
                    0,
                    0
                ),
            ]
        );
        // A window that ends before the loop holds none of it; by agent, one group.
        let early = advise(
            &root,
            &card,
            AdviceBy::Team,
            (None, Some(UnixMs(T0 + 1_000_000))),
            AdviceRules::default(),
        )
        .unwrap();
        assert!(
            early.iter().all(|a| a.kind != Some(K::LoopsMissed)),
            "{early:?}"
        );
        let by_agent = advise(
            &root,
            &card,
            AdviceBy::Agent,
            (None, None),
            AdviceRules::default(),
        )
        .unwrap();
        assert!(
            by_agent
                .iter()
                .all(|a| a.group.as_deref() == Some("coder-7"))
        );
        let total = |lines: &[Advice]| lines.iter().map(|a| a.saving_nanos).sum::<i128>();
        assert_eq!(total(&by_agent), total(&advice));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
