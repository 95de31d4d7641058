//! Burn-rate forecasts of every limited budget level (allocation, project, team): a task
//! samples each level's spend every `forecast.interval_ms` into its [`Burn`], keeps the
//! forecasts for the admin API, `/metrics` and `tollgate spend`, and writes an alert to
//! `alerts.jsonl` when a level is on pace to run out before its period ends ("on pace to run
//! out on 2026-12-11, 19 days early"), once per period and again when the date moves much
//! earlier. The same loop tells keys about to expire ([`super::expiry`]).
//!
//! **Invariant:** nothing here touches the request path; the forecasts are swapped in whole
//! once per sample, so a reader sees one sample's view.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tollgate_engine::forecast::{Burn, Forecast};
use tollgate_engine::{Level, UnixMs};

use super::expiry;
use crate::clock::now_ms;
use crate::state::Gateway;

/// A level of a budget tree, by kind and name.
pub type LevelName = (Level, Arc<str>);

/// The latest forecast of every limited level that has one.
#[derive(Debug, Default)]
pub struct Forecasts {
    table: ArcSwap<HashMap<LevelName, Forecast>>,
}

impl Forecasts {
    /// The forecast of `level` `name`, if its spend has been sampled twice.
    #[must_use]
    pub fn get(&self, level: Level, name: &str) -> Option<Forecast> {
        self.table.load().get(&(level, Arc::from(name))).copied()
    }

    /// Every forecast that gives a date, for `/metrics`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let table = self.table.load();
        let mut dated: Vec<(&LevelName, i64)> = table
            .iter()
            .filter_map(|(level, f)| Some((level, f.runs_out_at?.0)))
            .collect();
        if dated.is_empty() {
            return;
        }
        dated.sort_by(|a, b| (a.0.0.as_str(), &a.0.1).cmp(&(b.0.0.as_str(), &b.0.1)));
        let name = "tollgate_budget_runs_out_timestamp_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} When the budget runs out at the pace it is spent (burn-rate forecast).\n\
             # TYPE {name} gauge"
        );
        for ((level, budget), at) in dated {
            let _ = writeln!(
                out,
                "{name}{{level=\"{}\",name=\"{}\"}} {}",
                level.as_str(),
                crate::metrics::escape_label(budget),
                at.div_euclid(1_000)
            );
        }
    }
}

/// The running forecast task.
#[derive(Debug)]
pub struct ForecastTask {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ForecastTask {
    /// Samples every limited level of `gateway`'s directory every `interval` into `forecasts`,
    /// and looks for keys about to expire as often.
    #[must_use]
    pub fn start(gateway: Arc<Gateway>, forecasts: Arc<Forecasts>, interval: Duration) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut burns: HashMap<LevelName, Burn> = HashMap::new();
            let mut told = expiry::Told::default();
            while !*stopped.borrow() {
                let now = now_ms();
                sample(&gateway, &forecasts, &mut burns, now);
                expiry::sample(&gateway, &mut told, now);
                tokio::select! {
                    _ = stopped.changed() => {}
                    () = tokio::time::sleep(interval) => {}
                }
            }
        });
        ForecastTask { stop, task }
    }

    /// Stops sampling.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// One sample of every limited level: each burn observes its level, an alert is written for
/// each forecast worth telling, and the forecasts are swapped in.
fn sample(
    gateway: &Gateway,
    forecasts: &Forecasts,
    burns: &mut HashMap<LevelName, Burn>,
    now: UnixMs,
) {
    let mut table = HashMap::new();
    let mut seen: HashSet<LevelName> = HashSet::new();
    for allocation in gateway.directory.allocations() {
        for (level, cell) in Level::ALL.into_iter().zip(allocation.budget_cells()) {
            if cell.limit().is_none() {
                continue;
            }
            let key = (level, Arc::clone(allocation.level_name(level)));
            if !seen.insert(key.clone()) {
                continue;
            }
            let budget = cell.snapshot(now);
            let burn = burns.entry(key.clone()).or_default();
            let Some(forecast) = burn.observe(now, &budget) else {
                continue;
            };
            if burn.alert(now, budget.period_index, &forecast) {
                gateway
                    .emitter
                    .forecast_alert(level, &key.1, &budget, &forecast, now);
            }
            table.insert(key, forecast);
        }
    }
    // Levels gone from the directory (none are removed today) would keep their burns.
    burns.retain(|key, _| seen.contains(key));
    forecasts.table.store(Arc::new(table));
}
