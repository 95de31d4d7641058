//! Where a call goes: the candidates it may try in order ([`Plan`]), the deployment each
//! attempt is placed on ([`place`]), and the process's retry budget.
//!
//! The decisions are the engine's ([`tollgate_engine::routing`]); this holds the configured
//! groups and feeds the engine each deployment's standing. The attempt loop that uses them is
//! `proxy::forward`.
//!
//! **Invariant:** a call is placed only on a deployment whose breaker passes it; a call that
//! failed on a deployment is placed elsewhere when another deployment of the candidate can
//! take it.

pub mod signals;

use std::collections::HashMap;
use std::sync::Arc;

use tollgate_engine::routing::{Balance, BreakerState, Pass, RetryBudget, Standing, choose};
use tollgate_engine::{Allocation, Level, ModelRef, UnixMs};

use crate::config::{Candidate, Config, DowngradeConfig, GroupConfig};
use crate::limits::{DEPLOYMENTS_MAX, RETRY_BUDGET_WINDOW_US};
use crate::providers::{Deployment, Provider};

/// How one call is retried and placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How a candidate's deployments share calls.
    pub balance: Balance,
    /// Retries on one candidate before the next.
    pub retries: u32,
    /// Attempts in all.
    pub attempts_max: u32,
}

/// A configured group: its candidates in fallback order with their weights.
#[derive(Debug)]
pub struct Group {
    /// The public name.
    pub name: Arc<str>,
    /// In fallback order, each with its share of first attempts and its declared window.
    pub candidates: Vec<Candidate>,
    /// Its retries and balancing.
    pub policy: Policy,
    /// The group serving calls the budget can no longer afford whole on this one.
    pub downgrade: Option<Arc<str>>,
}

/// The candidates of one call, in the order it tries them.
#[derive(Clone, Debug)]
pub enum Plan {
    /// A `provider/model` (or an alias of one): the one candidate.
    Direct(ModelRef, Policy),
    /// A group, starting at candidate `first` (drawn by weight), then down its list.
    Group {
        /// The group.
        group: Arc<Group>,
        /// Index of the first candidate tried.
        first: usize,
    },
}

impl Plan {
    /// The `n`th candidate to try (0 first), if there are that many.
    #[must_use]
    pub fn candidate(&self, n: usize) -> Option<&ModelRef> {
        match self {
            Plan::Direct(model, _) => (n == 0).then_some(model),
            Plan::Group { group, first } => {
                group.candidates.get(tried_as(*first, n)).map(|c| &c.model)
            }
        }
    }

    /// The declared context window of the `n`th candidate to try, if it declares one.
    #[must_use]
    pub fn context_tokens(&self, n: usize) -> Option<u64> {
        match self {
            Plan::Direct(..) => None,
            Plan::Group { group, first } => {
                group.candidates.get(tried_as(*first, n))?.context_tokens
            }
        }
    }

    /// Whether the `later`th candidate declares a larger window than the `n`th (any declared
    /// window is larger when the `n`th declares none): where a call the `n`th's window refused
    /// may go.
    #[must_use]
    pub fn wider(&self, later: usize, n: usize) -> bool {
        let own = self.context_tokens(n).unwrap_or(0);
        self.context_tokens(later)
            .is_some_and(|window| window > own)
    }

    /// Whether some candidate after the `n`th declares a larger window than it.
    #[must_use]
    pub fn has_wider_after(&self, n: usize) -> bool {
        (n + 1..)
            .map_while(|later| self.candidate(later).map(|_| later))
            .any(|later| self.wider(later, n))
    }

    /// How the call is retried and placed.
    #[must_use]
    pub fn policy(&self) -> Policy {
        match self {
            Plan::Direct(_, policy) => *policy,
            Plan::Group { group, .. } => group.policy,
        }
    }

    /// The group the client named, if it named one.
    #[must_use]
    pub fn group(&self) -> Option<&str> {
        match self {
            Plan::Direct(..) => None,
            Plan::Group { group, .. } => Some(&group.name),
        }
    }

    /// The cheaper group for a call the budget can no longer afford whole on this plan.
    #[must_use]
    pub fn downgrade(&self) -> Option<&str> {
        match self {
            Plan::Direct(..) => None,
            Plan::Group { group, .. } => group.downgrade.as_deref(),
        }
    }
}

/// The index in its group of the `n`th candidate a plan starting at `first` tries.
fn tried_as(first: usize, n: usize) -> usize {
    match n {
        0 => first,
        n if n - 1 < first => n - 1,
        n => n,
    }
}

/// A level's downgrade: past `at_percent` of its limit, calls go to group `to`.
#[derive(Clone, Debug)]
struct Threshold {
    at_percent: u8,
    to: Arc<str>,
}

/// The configured groups and the retry budget every call shares.
#[derive(Debug)]
pub struct Router {
    groups: HashMap<String, Arc<Group>>,
    /// Downgrades by level (as `Level::ALL`), by name.
    thresholds: [HashMap<Arc<str>, Threshold>; 3],
    direct: Policy,
    /// Retries as a share of recent calls.
    pub retry_budget: RetryBudget,
}

impl Router {
    /// The groups of `config`, and its retry budget.
    #[must_use]
    pub fn new(config: &Config) -> Router {
        let routing = &config.routing;
        let group = |g: &GroupConfig| Group {
            name: Arc::from(g.name.as_str()),
            candidates: g.candidates.clone(),
            policy: Policy {
                balance: g.balance,
                retries: g.retries,
                attempts_max: g.attempts_max,
            },
            downgrade: g.downgrade.as_deref().map(Arc::from),
        };
        let thresholds = |levels: Vec<(&str, &Option<DowngradeConfig>)>| {
            levels
                .into_iter()
                .filter_map(|(name, d)| {
                    let d = d.as_ref()?;
                    let threshold = Threshold {
                        at_percent: d.at_percent,
                        to: Arc::from(d.to.as_str()),
                    };
                    Some((Arc::from(name), threshold))
                })
                .collect::<HashMap<Arc<str>, Threshold>>()
        };
        Router {
            groups: config
                .groups
                .iter()
                .map(|g| (g.name.clone(), Arc::new(group(g))))
                .collect(),
            thresholds: [
                thresholds(
                    config
                        .allocations
                        .iter()
                        .map(|a| (a.name.as_str(), &a.downgrade))
                        .collect(),
                ),
                thresholds(
                    config
                        .projects
                        .iter()
                        .map(|p| (p.name.as_str(), &p.downgrade))
                        .collect(),
                ),
                thresholds(
                    config
                        .teams
                        .iter()
                        .map(|t| (t.name.as_str(), &t.downgrade))
                        .collect(),
                ),
            ],
            direct: Policy {
                balance: routing.balance,
                retries: routing.retries,
                attempts_max: routing.attempts_max,
            },
            retry_budget: RetryBudget::new(
                routing.retry_budget_percent,
                routing.retry_budget_floor,
                RETRY_BUDGET_WINDOW_US,
            ),
        }
    }

    /// The plan of a call naming `asked`, when it names a group: its first candidate drawn by
    /// weight with `random`.
    #[must_use]
    pub fn group_plan(&self, asked: &str, random: u64) -> Option<Plan> {
        let group = self.groups.get(asked)?;
        let total: u64 = group.candidates.iter().map(|c| u64::from(c.weight)).sum();
        let mut point = random % total.max(1);
        let mut first = 0;
        for (i, candidate) in group.candidates.iter().enumerate() {
            let weight = u64::from(candidate.weight);
            if point < weight {
                first = i;
                break;
            }
            point -= weight;
        }
        Some(Plan::Group {
            group: Arc::clone(group),
            first,
        })
    }

    /// The group a call on `allocation` goes to at `now` because some level's settled spend
    /// has reached its downgrade threshold (the most specific level first).
    #[must_use]
    pub fn downgrade_at(&self, allocation: &Allocation, now: UnixMs) -> Option<&str> {
        if self.thresholds.iter().all(HashMap::is_empty) {
            return None;
        }
        let levels = Level::ALL.into_iter().zip(allocation.budget_cells());
        for ((level, cell), thresholds) in levels.zip(&self.thresholds) {
            let Some(threshold) = thresholds.get(&**allocation.level_name(level)) else {
                continue;
            };
            let snapshot = cell.snapshot(now);
            let Some(limit) = snapshot.limit else {
                continue;
            };
            let spent = u128::from(snapshot.spent.0) * 100;
            if spent >= u128::from(limit.0) * u128::from(threshold.at_percent) {
                return Some(&threshold.to);
            }
        }
        None
    }

    /// The plan of a call naming one `provider/model`.
    #[must_use]
    pub fn direct_plan(&self, model: ModelRef) -> Plan {
        Plan::Direct(model, self.direct)
    }
}

/// Whether a deployment of `provider` other than `except` could take a call at `now_us`: a look
/// that takes nothing (no quota, no probe).
#[must_use]
pub fn available_elsewhere(provider: &Provider, now_us: i64, except: usize) -> bool {
    provider.deployments.iter().enumerate().any(|(i, d)| {
        i != except
            && d.health
                .standing(now_us, d.weight, d.in_flight_max)
                .available
            && d.tokens_left(now_us)
            && d.requests.as_ref().is_none_or(|r| r.check(now_us).is_ok())
    })
}

/// An attempt on a deployment, counted in its calls in flight until dropped.
#[derive(Debug)]
pub struct Serving {
    provider: Arc<Provider>,
    index: usize,
}

impl Serving {
    /// Counts an attempt on deployment `index` of `provider`.
    #[must_use]
    pub fn start(provider: &Arc<Provider>, index: usize) -> Serving {
        if let Some(deployment) = provider.deployments.get(index) {
            deployment.health.started();
        }
        Serving {
            provider: Arc::clone(provider),
            index,
        }
    }
}

impl Serving {
    /// Charges a finished call's tokens to its deployment's quota.
    pub fn charge_tokens(&self, now_us: i64, tokens: u64) {
        if let Some(quota) = self
            .provider
            .deployments
            .get(self.index)
            .and_then(|d| d.tokens.as_ref())
        {
            quota.charge(now_us, tokens);
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(deployment) = self.provider.deployments.get(self.index) {
            deployment.health.ended();
        }
    }
}

/// Each deployment's calls in flight, breaker and recent time to first byte, in Prometheus
/// text: `tollgate_deployment_in_flight`, `tollgate_deployment_attempts_total`,
/// `tollgate_deployment_breaker_state` (one series per
/// state, 1 for the one it is in), `tollgate_deployment_breaker_opened_total` and
/// `tollgate_deployment_ttfb_ms` (absent until measured lately).
pub fn render(out: &mut String, providers: &HashMap<String, Arc<Provider>>, now_us: i64) {
    use std::fmt::Write as _;
    let mut sorted: Vec<&Arc<Provider>> = providers.values().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let rows: Vec<(String, &Deployment)> = sorted
        .iter()
        .flat_map(|p| {
            p.deployments.iter().map(move |d| {
                (
                    format!("provider=\"{}\",deployment=\"{}\"", p.name, d.name),
                    d,
                )
            })
        })
        .collect();
    let mut series =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&Deployment) -> Option<u64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, d) in &rows {
                if let Some(value) = value(d) {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        };
    series(
        "tollgate_deployment_in_flight",
        "gauge",
        "Calls a deployment is serving now.",
        &|d| Some(d.health.in_flight()),
    );
    series(
        "tollgate_deployment_attempts_total",
        "counter",
        "Attempts sent to a deployment.",
        &|d| Some(d.health.attempts()),
    );
    series(
        "tollgate_deployment_breaker_opened_total",
        "counter",
        "Times a deployment's breaker opened.",
        &|d| Some(d.health.breaker.opened()),
    );
    series(
        "tollgate_deployment_ttfb_ms",
        "gauge",
        "A deployment's recent time to its answers' heads (a decaying average), while measured lately.",
        &|d| d.health.latency_us(now_us).map(|us| us / 1_000),
    );
    out.push_str("# HELP tollgate_deployment_breaker_state A deployment's circuit breaker: 1 for the state it is in.\n# TYPE tollgate_deployment_breaker_state gauge\n");
    for (labels, d) in &rows {
        let state = d.health.breaker.state(now_us);
        for candidate in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            let _ = writeln!(
                out,
                "tollgate_deployment_breaker_state{{{labels},state=\"{}\"}} {}",
                candidate.as_str(),
                u8::from(candidate == state)
            );
        }
    }
}

/// The deployments of one candidate a call has failed on (bit `i` for deployment `i`).
pub type Tried = u32;

/// The deployment of `provider` to place an attempt on at `now_us`, and whether it is its
/// breaker's probe; `None` when none can take it. Deployments in `tried` are avoided while
/// another can take the call.
#[must_use]
pub fn place(
    provider: &Provider,
    balance: Balance,
    now_us: i64,
    random: u64,
    tried: Tried,
) -> Option<(usize, Pass)> {
    let deployments = &provider.deployments;
    if let [only] = deployments.as_slice() {
        // One deployment: nothing to balance.
        let standing = only
            .health
            .standing(now_us, only.weight, only.in_flight_max);
        let pass = (standing.available && only.tokens_left(now_us) && only.take_request(now_us))
            .then(|| only.health.breaker.pass(now_us))
            .filter(|pass| *pass != Pass::No)?;
        return Some((0, pass));
    }
    let count = deployments.len().min(DEPLOYMENTS_MAX);
    let mut standings = [Standing {
        weight: 0,
        in_flight: 0,
        latency_us: None,
        available: false,
    }; DEPLOYMENTS_MAX];
    for (slot, deployment) in standings.iter_mut().zip(deployments) {
        *slot = deployment
            .health
            .standing(now_us, deployment.weight, deployment.in_flight_max);
        slot.available &= deployment.tokens_left(now_us);
    }
    let standings = &mut standings[..count];
    let untried = |i: usize| tried & (1 << i) == 0;
    if standings
        .iter()
        .enumerate()
        .any(|(i, s)| s.available && untried(i))
    {
        for (i, s) in standings.iter_mut().enumerate() {
            s.available &= untried(i);
        }
    }
    // The chosen one's request quota may be spent, or its half-open breaker may have given its
    // probe to another call since: then the others.
    for _ in 0..count {
        let chosen = choose(balance, standings, random)?;
        let deployment = deployments.get(chosen)?;
        let pass = if deployment.take_request(now_us) {
            deployment.health.breaker.pass(now_us)
        } else {
            Pass::No
        };
        if pass != Pass::No {
            return Some((chosen, pass));
        }
        if let Some(s) = standings.get_mut(chosen) {
            s.available = false;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(weights: &[u32]) -> Arc<Group> {
        Arc::new(Group {
            name: Arc::from("prod/chat"),
            candidates: weights
                .iter()
                .enumerate()
                .map(|(i, w)| Candidate {
                    model: ModelRef::parse(&format!("p/m{i}")).unwrap(),
                    weight: *w,
                    context_tokens: None,
                })
                .collect(),
            policy: Policy {
                balance: Balance::Weighted,
                retries: 0,
                attempts_max: 4,
            },
            downgrade: None,
        })
    }

    fn order(plan: &Plan) -> Vec<String> {
        (0..)
            .map_while(|n| plan.candidate(n))
            .map(|m| m.model().to_owned())
            .collect()
    }

    #[test]
    fn a_plan_starts_at_its_first_candidate_then_falls_back_down_the_list() {
        let group = group(&[1, 1, 0]);
        let plan = Plan::Group {
            group: Arc::clone(&group),
            first: 1,
        };
        assert_eq!(order(&plan), ["m1", "m0", "m2"]);
        let plan = Plan::Group { group, first: 0 };
        assert_eq!(order(&plan), ["m0", "m1", "m2"]);
        let direct = Plan::Direct(ModelRef::parse("p/x").unwrap(), plan.policy());
        assert_eq!(order(&direct), ["x"]);
    }
}
