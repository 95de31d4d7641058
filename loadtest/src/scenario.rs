//! Scenarios: what an agent fleet sends, read from TOML.
//!
//! A scenario names the fleet (agents spread over allocations the run creates under projects the
//! gateway already knows), the call mix, the shape of agent tasks (a task is a loop of calls that
//! re-sends a growing context), retries, the mock provider's behaviour, and the load model:
//! closed (every agent loops as fast as answers come) or open (calls arrive at a constant rate
//! whatever the answers do, timed from when they were due, so a stalled gateway shows up as
//! latency rather than as a politely slower generator). Five scenarios are bundled (see
//! [`BUNDLED`]); [`load`] takes a bundled name or a file.

use std::collections::HashSet;
use std::io::Read as _;
use std::path::Path;

use serde::Deserialize;

/// Largest scenario file read.
const SCENARIO_BYTES_MAX: u64 = 1 << 20;
/// Most agents a scenario may run (each holds a keep-alive connection).
pub const AGENTS_MAX: u32 = 20_000;
/// Largest context an agent re-sends, in tokens (about 400 KB of text).
pub const CONTEXT_TOKENS_MAX: u32 = 100_000;

/// The scenarios shipped with the harness, by name.
pub const BUNDLED: [(&str, &str); 5] = [
    ("smoke", include_str!("../scenarios/smoke.toml")),
    ("agent-fleet", include_str!("../scenarios/agent-fleet.toml")),
    ("overhead", include_str!("../scenarios/overhead.toml")),
    ("streams", include_str!("../scenarios/streams.toml")),
    ("runaway", include_str!("../scenarios/runaway.toml")),
];

/// A whole scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports and in the names of the allocations a run creates.
    pub name: String,
    /// One line on what it shows.
    #[serde(default)]
    pub description: String,
    /// Seconds the load runs (after setup).
    pub seconds: u32,
    /// Seed of every random choice, so a run can be repeated.
    #[serde(default = "one")]
    pub seed: u64,
    /// Closed or open loop.
    pub load: Load,
    /// Agents and the allocations they charge.
    pub fleet: Fleet,
    /// The call mix, by weight.
    #[serde(rename = "call")]
    pub calls: Vec<Call>,
    /// How agents turn a task into calls.
    #[serde(default)]
    pub task: Task,
    /// What an agent does with a failed call.
    #[serde(default)]
    pub retry: Retry,
    /// How the mock provider behind the gateway behaves for these calls.
    #[serde(default)]
    pub mock: MockShape,
    /// Present in the `overhead` scenario: the same calls direct, through a bare proxy and
    /// through the gateway, at each connection count.
    #[serde(default)]
    pub overhead: Option<Overhead>,
}

fn one() -> u64 {
    1
}

/// The load model.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Load {
    /// Every agent runs its loop: send, wait for the answer, think, send again.
    Closed,
    /// Calls arrive at `rate_per_s` whatever the answers do; each is the next step of the next
    /// agent in turn. More than `in_flight_max` unanswered calls and a due call is counted as
    /// `not_sent` (the generator's limit, reported, never hidden).
    Open {
        /// Calls per second.
        rate_per_s: u32,
        /// Most calls in flight at once.
        in_flight_max: u32,
    },
}

/// The agents and what they charge.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Number of agents.
    pub agents: u32,
    /// Pause between an answer and the agent's next call, in milliseconds.
    #[serde(default)]
    pub think_ms: u32,
    /// Pause after a `402 budget_exceeded` before the agent tries a new task.
    #[serde(default = "budget_pause_ms")]
    pub budget_pause_ms: u32,
    /// Allocations the run creates (their names get the run's tag) and their share of agents.
    #[serde(rename = "allocation")]
    pub allocations: Vec<AllocationShape>,
    /// Agents that have gone into a runaway loop: each sends its first call again and again,
    /// word for word, on a key of its own (the first agents of the first allocation with
    /// agents, so the rest of that allocation shows whether a guard's action stays on the
    /// looping key). At most `agents`.
    #[serde(default)]
    pub looping_agents: u32,
}

fn budget_pause_ms() -> u32 {
    500
}

/// One allocation of the fleet.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationShape {
    /// Name (the run adds its tag: `<name>-<tag>`).
    pub name: String,
    /// A project the gateway's config has.
    pub project: String,
    /// Budget for the run, a decimal amount in the card's currency (`"0.50"`); none = unlimited.
    #[serde(default)]
    pub limit: Option<String>,
    /// Relative share of agents on it.
    #[serde(default = "weight_one")]
    pub agents_weight: u32,
}

fn weight_one() -> u32 {
    1
}

/// One kind of call in the mix.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// Relative weight.
    #[serde(default = "weight_one")]
    pub weight: u32,
    /// Which API.
    pub api: Api,
    /// Model as the gateway names it (`provider/model`).
    pub model: String,
    /// Percent of these calls that stream.
    #[serde(default)]
    pub stream_percent: u8,
    /// Completion tokens asked for (the mock answers with exactly this many).
    #[serde(default = "max_tokens")]
    pub max_tokens: u32,
}

fn max_tokens() -> u32 {
    64
}

/// The API a call uses.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI `/v1/chat/completions`.
    Chat,
    /// OpenAI `/v1/completions`.
    Completions,
    /// OpenAI `/v1/embeddings`.
    Embeddings,
    /// OpenAI `/v1/responses`.
    Responses,
    /// Anthropic `/v1/messages`.
    Messages,
}

impl Api {
    /// Path under the base URL.
    #[must_use]
    pub fn path(self) -> &'static str {
        match self {
            Api::Chat => "/chat/completions",
            Api::Completions => "/completions",
            Api::Embeddings => "/embeddings",
            Api::Responses => "/responses",
            Api::Messages => "/messages",
        }
    }

    /// Name in reports.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
            Api::Responses => "responses",
            Api::Messages => "messages",
        }
    }
}

/// The shape of an agent's task: `steps` calls, each re-sending the context, which grows by
/// what the step added.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Fewest calls in a task.
    pub steps_min: u32,
    /// Most calls in a task.
    pub steps_max: u32,
    /// Context of the first call, in tokens.
    pub context_tokens_start: u32,
    /// Tokens the context grows by at each step.
    pub context_tokens_step: u32,
    /// Largest context (agents trim beyond it), at most [`CONTEXT_TOKENS_MAX`].
    pub context_tokens_max: u32,
}

impl Default for Task {
    fn default() -> Task {
        Task {
            steps_min: 1,
            steps_max: 1,
            context_tokens_start: 250,
            context_tokens_step: 0,
            context_tokens_max: 250,
        }
    }
}

/// Retries of failed calls (429, 5xx other than budget, broken connections).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts per call, the first included (1 = no retry).
    pub attempts_max: u32,
    /// Backoff before the first retry, doubled at each further one (capped by `Retry-After`).
    pub backoff_ms: u32,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts_max: 1,
            backoff_ms: 100,
        }
    }
}

/// Per-call steering of the mock provider (sent in the body's `"mock"` object).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockShape {
    /// Wait before the answer starts.
    #[serde(default)]
    pub first_byte_ms: u32,
    /// Wait before each streamed token.
    #[serde(default)]
    pub token_ms: u32,
    /// Percent of calls the provider fails with a 500.
    #[serde(default)]
    pub error_percent: u8,
    /// Percent of streamed calls whose connection the provider breaks half-way.
    #[serde(default)]
    pub reset_percent: u8,
}

/// The overhead comparison.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overhead {
    /// Connection counts to measure at.
    pub connections: Vec<u32>,
    /// Seconds per measured run.
    pub seconds_per_run: u32,
    /// Seconds of warm-up before each (not recorded).
    #[serde(default = "one_u32")]
    pub warmup_s: u32,
}

fn one_u32() -> u32 {
    1
}

/// Why a scenario could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Reading the file.
    #[error("reading scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than any scenario.
    #[error("scenario {path} is larger than {SCENARIO_BYTES_MAX} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// TOML or a field.
    #[error("scenario {path}: {message}")]
    Parse {
        /// The file (or bundled name).
        path: String,
        /// What and where.
        message: String,
    },
    /// A value out of range.
    #[error("scenario {path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Loads a bundled scenario by name (`smoke`, `agent-fleet`, `overhead`, `streams`, `runaway`)
/// or a file.
pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
    if let Some((name, text)) = BUNDLED.iter().find(|(n, _)| *n == name_or_path) {
        return parse(text, name);
    }
    let path = Path::new(name_or_path);
    let read_error = |source| ScenarioError::Read {
        path: name_or_path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    file.take(SCENARIO_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > SCENARIO_BYTES_MAX {
        return Err(ScenarioError::TooLarge {
            path: name_or_path.to_owned(),
        });
    }
    parse(&text, name_or_path)
}

/// Parses and checks a scenario's text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
    let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
        path: origin.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    check(&scenario).map_err(|(field, message)| ScenarioError::Invalid {
        path: origin.to_owned(),
        field,
        message,
    })?;
    Ok(scenario)
}

/// A value out of range: the field and what is wrong.
type Problem = (&'static str, String);

/// Every range a parsed scenario must be within; the first problem, section by section.
fn check(scenario: &Scenario) -> Result<(), Problem> {
    if !is_name(&scenario.name) {
        return Err(("name", "letters, digits and dashes, at most 32".into()));
    }
    if scenario.seconds == 0 || scenario.seconds > 86_400 {
        return Err(("seconds", "between 1 and 86400".into()));
    }
    check_fleet(&scenario.fleet)?;
    check_calls(&scenario.calls)?;
    check_task(&scenario.task)?;
    if scenario.retry.attempts_max == 0 || scenario.retry.attempts_max > 10 {
        return Err(("retry.attempts_max", "between 1 and 10".into()));
    }
    if scenario.mock.error_percent > 100 || scenario.mock.reset_percent > 100 {
        return Err(("mock", "percentages are at most 100".into()));
    }
    if let Load::Open {
        rate_per_s,
        in_flight_max,
    } = scenario.load
        && (rate_per_s == 0 || in_flight_max == 0)
    {
        return Err((
            "load",
            "open mode needs rate_per_s and in_flight_max above 0".into(),
        ));
    }
    if let Some(overhead) = &scenario.overhead
        && (overhead.connections.is_empty()
            || overhead
                .connections
                .iter()
                .any(|&c| c == 0 || c > AGENTS_MAX)
            || overhead.seconds_per_run == 0)
    {
        return Err((
            "overhead",
            "connections (each 1 or more) and seconds_per_run are needed".into(),
        ));
    }
    Ok(())
}

/// Agents within [`AGENTS_MAX`]; allocations named once each, their limits exact amounts,
/// some of them given agents.
fn check_fleet(fleet: &Fleet) -> Result<(), Problem> {
    if fleet.agents == 0 || fleet.agents > AGENTS_MAX {
        return Err(("fleet.agents", format!("between 1 and {AGENTS_MAX}")));
    }
    if fleet.allocations.is_empty() {
        return Err(("fleet.allocation", "at least one allocation".into()));
    }
    let mut names = HashSet::new();
    for allocation in &fleet.allocations {
        if !is_name(&allocation.name) || !names.insert(allocation.name.as_str()) {
            return Err((
                "fleet.allocation.name",
                format!(
                    "`{}` is not a unique name of letters, digits and dashes",
                    allocation.name
                ),
            ));
        }
        if let Some(limit) = &allocation.limit {
            parse_nanos(limit).map_err(|m| ("fleet.allocation.limit", m))?;
        }
    }
    if fleet.looping_agents > fleet.agents {
        return Err(("fleet.looping_agents", "at most fleet.agents".into()));
    }
    if fleet.allocations.iter().all(|a| a.agents_weight == 0) {
        return Err((
            "fleet.allocation.agents_weight",
            "some allocation needs agents".into(),
        ));
    }
    Ok(())
}

/// Some call with a weight; each a `provider/model` streamed at most always.
fn check_calls(calls: &[Call]) -> Result<(), Problem> {
    if calls.is_empty() || calls.iter().all(|c| c.weight == 0) {
        return Err(("call", "at least one call with a weight".into()));
    }
    for call in calls {
        if call.stream_percent > 100 {
            return Err(("call.stream_percent", "at most 100".into()));
        }
        if !call.model.contains('/') {
            return Err((
                "call.model",
                format!("`{}` is not provider/model", call.model),
            ));
        }
    }
    Ok(())
}

/// Steps between 1 and 1000; the context growing within [`CONTEXT_TOKENS_MAX`].
fn check_task(task: &Task) -> Result<(), Problem> {
    if task.steps_min == 0 || task.steps_min > task.steps_max || task.steps_max > 1_000 {
        return Err((
            "task.steps_min",
            "1 <= steps_min <= steps_max <= 1000".into(),
        ));
    }
    if task.context_tokens_max > CONTEXT_TOKENS_MAX
        || task.context_tokens_start > task.context_tokens_max
    {
        return Err((
            "task.context_tokens_max",
            format!("context_tokens_start <= context_tokens_max <= {CONTEXT_TOKENS_MAX}"),
        ));
    }
    Ok(())
}

fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 32
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A decimal amount (`"12.50"`) in nano-units, exactly; refuses more than nine decimals,
/// signs and exponents.
pub fn parse_nanos(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a decimal amount with at most 9 decimals");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || fraction.len() > 9
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let mut nanos: u64 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        nanos = nanos
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or_else(bad)?;
    }
    for _ in fraction.len()..9 {
        nanos = nanos.checked_mul(10).ok_or_else(bad)?;
    }
    Ok(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_scenarios_parse() {
        for (name, text) in BUNDLED {
            let scenario = parse(text, name).unwrap();
            assert_eq!(scenario.name, name);
        }
        assert!(load("overhead").unwrap().overhead.is_some());
    }

    #[test]
    fn bad_scenarios_say_what_and_where() {
        let base = BUNDLED[0].1;
        let check = |text: &str, expect: &str| {
            let message = parse(text, "x.toml").unwrap_err().to_string();
            assert!(message.contains(expect), "{message}");
        };
        check("name = ", "x.toml");
        check(&base.replace("seconds = ", "seconds = 0 #"), "seconds");
        check(&format!("{base}\nsurprise = 1\n"), "surprise");
        check(
            &base.replace("stream_percent = 50", "stream_percent = 150"),
            "stream_percent",
        );
        check(&base.replace("limit = \"", "limit = \"-"), "limit");
        check(
            &base.replace("agents = 16", "agents = 16\nlooping_agents = 17"),
            "fleet.looping_agents",
        );
        assert!(
            load("/nonexistent/scenario.toml")
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/scenario.toml")
        );
    }

    #[test]
    fn amounts_are_exact() {
        assert_eq!(parse_nanos("12.5"), Ok(12_500_000_000));
        assert_eq!(parse_nanos("0.000000001"), Ok(1));
        assert_eq!(parse_nanos("3"), Ok(3_000_000_000));
        for bad in [
            "",
            ".5",
            "1.0000000001",
            "-1",
            "1e3",
            "1.2.3",
            "99999999999999",
        ] {
            assert!(parse_nanos(bad).is_err(), "{bad}");
        }
    }
}
