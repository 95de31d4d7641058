//! The books: setting a run up on the gateway, and checking afterwards that nothing was lost or
//! counted twice.
//!
//! A run creates its own allocations (named with the run's tag, so runs never mix) and keys
//! through the admin API, and prices every answer itself from the usage it reports and the
//! prices and adjustments the gateway publishes. Afterwards three independent views must agree
//! to the nano-unit: the harness's own record, the Parquet files (read here with the parquet
//! crate, as a data team would) and the gateway's budget table.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow_array::Array as _;
use arrow_array::cast::AsArray as _;
use arrow_array::types::Decimal128Type;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use serde_json::{Value, json};

use crate::fleet::{Agent, Attempt, Prices};
use crate::http::{Admin, AdminError};
use crate::scenario::{Scenario, parse_nanos};

/// Most keys a run creates per allocation; agents share them (keys carry the user).
const KEYS_PER_ALLOCATION_MAX: u32 = 8;

/// Why the books could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum BooksError {
    /// The admin API.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The admin API answered something unexpected.
    #[error("admin API: {0}")]
    Answer(String),
    /// A Parquet file.
    #[error("reading {}: {message}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A run's allocations, agents and prices on the gateway.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Allocation names as created.
    pub allocations: Vec<String>,
    /// Agents with their allocation and key.
    pub agents: Vec<Agent>,
    /// What the harness prices with.
    pub prices: Prices,
}

/// Creates the run's allocations and keys and reads the prices in force.
pub async fn prepare(
    admin: &Admin,
    scenario: &Scenario,
    agents: u32,
    tag: &str,
) -> Result<Setup, BooksError> {
    let models = admin.get("models").await?;
    let mut prices = Prices::default();
    for model in models["models"].as_array().into_iter().flatten() {
        let price = |field: &str| {
            model[field]
                .as_str()
                .and_then(|t| parse_nanos(t).ok())
                .ok_or_else(|| BooksError::Answer(format!("models: `{field}` of {model}")))
        };
        if let Some(name) = model["model"].as_str() {
            prices.models.insert(
                name.to_owned(),
                (price("input_per_mtok")?, price("output_per_mtok")?),
            );
        }
    }
    let mut allocations = Vec::new();
    for shape in &scenario.fleet.allocations {
        let name = format!("{}-{tag}", shape.name);
        let mut budget = json!({ "period": "total" });
        if let Some(limit) = &shape.limit {
            budget["limit"] = json!(limit);
        }
        admin
            .post(
                "allocations",
                Some(&json!({ "name": name, "project": shape.project, "budget": budget })),
            )
            .await?;
        allocations.push(name);
    }
    let listed = admin.get("allocations").await?;
    for name in &allocations {
        let ppm = listed["allocations"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["name"].as_str() == Some(name))
            .and_then(|a| a["price_adjustment_ppm"].as_i64())
            .ok_or_else(|| BooksError::Answer(format!("allocation {name} not listed")))?;
        prices.adjustment_ppm.push(ppm);
    }
    // Agents over allocations by weight (largest remainder), then keys over agents.
    let weights: Vec<u64> = scenario
        .fleet
        .allocations
        .iter()
        .map(|a| u64::from(a.agents_weight))
        .collect();
    let counts = apportion(u64::from(agents), &weights);
    let mut fleet = Vec::new();
    for (index, (name, &count)) in allocations.iter().zip(&counts).enumerate() {
        let keys_wanted = u32::try_from(count)
            .unwrap_or(u32::MAX)
            .clamp(1, KEYS_PER_ALLOCATION_MAX);
        let mut keys = Vec::new();
        for user in 0..keys_wanted {
            let created = admin
                .post(
                    "keys",
                    Some(&json!({
                        "allocation": name, "user": format!("{name}-user{user}"),
                        "agent": scenario.name,
                    })),
                )
                .await?;
            let key = created["key"]
                .as_str()
                .ok_or_else(|| BooksError::Answer(format!("keys: no secret in {created}")))?;
            keys.push(std::sync::Arc::<str>::from(key));
        }
        let allocation = u16::try_from(index)
            .map_err(|_| BooksError::Answer("more than 65535 allocations".into()))?;
        for agent in 0..count {
            let key = keys[usize::try_from(agent).unwrap_or(0) % keys.len()].clone();
            fleet.push(Agent { allocation, key });
        }
    }
    Ok(Setup {
        allocations,
        agents: fleet,
        prices,
    })
}

/// Splits `total` over `weights` in proportion, by largest remainder (sums exactly to
/// `total` when some weight is positive).
#[must_use]
pub fn apportion(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u64 = weights.iter().sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut counts: Vec<u64> = weights.iter().map(|w| total * w / sum).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((total * weights[i]) % sum));
    let mut left = total - counts.iter().sum::<u64>();
    for i in order {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

/// The three views of a run and whether they agree.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Books {
    /// Attempts the harness made.
    pub attempts: u64,
    /// Attempts the gateway answered (a status and a request id came back).
    pub answered: u64,
    /// Attempts with no answer at all (their event may or may not exist).
    pub unanswered: u64,
    /// Answered attempts the harness priced itself.
    pub priced: u64,
    /// The harness's total over the attempts it priced, in nano-units.
    pub harness_cost_nanos: u128,
    /// Events of the run's allocations in the Parquet files.
    pub parquet_events: u64,
    /// Their total cost, in nano-units.
    pub parquet_cost_nanos: u128,
    /// The Parquet cost of exactly the attempts the harness priced.
    pub parquet_cost_of_priced_nanos: u128,
    /// Spend of the run's allocations in the gateway's budget table.
    pub gateway_spent_nanos: u128,
    /// Calls refused with `402 budget_exceeded`, by allocation.
    pub refused_by_allocation: std::collections::BTreeMap<String, u64>,
    /// Disagreements; empty when the books balance.
    pub problems: Vec<String>,
}

impl Books {
    /// Nothing lost, nothing doubled, every total equal.
    #[must_use]
    pub fn balanced(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the books of a finished run: flushes the gateway's events, then compares the
/// harness's record, the Parquet files under `parquet_dir` and the budget table, waiting up to
/// `settle` for the last events to reach the files (longer when a Kafka sink writes them).
pub async fn check(
    admin: &Admin,
    allocations: &[String],
    attempts: &[Attempt],
    parquet_dir: &Path,
    settle: Duration,
) -> Result<Books, BooksError> {
    let mut books = Books {
        attempts: attempts.len() as u64,
        ..Books::default()
    };
    let answered: Vec<&Attempt> = attempts.iter().filter(|a| a.request_id.is_some()).collect();
    books.answered = answered.len() as u64;
    books.unanswered = books.attempts - books.answered;
    for attempt in attempts.iter().filter(|a| a.status == 402) {
        if let Some(name) = allocations.get(usize::from(attempt.allocation)) {
            *books.refused_by_allocation.entry(name.clone()).or_insert(0) += 1;
        }
    }
    let names: HashSet<&str> = allocations.iter().map(String::as_str).collect();
    // Events of calls counted after their last byte land moments later: poll until the files
    // hold every answered call and nothing is in flight, or the wait runs out.
    let deadline = Instant::now() + settle;
    let (rows, spent) = loop {
        admin.post("events/flush", None).await?;
        let rows = read_rows(parquet_dir, &names)?;
        let (spent, in_flight) = budget_of(&admin.get("allocations").await?, &names);
        if (rows.len() as u64 >= books.answered && in_flight == 0) || Instant::now() >= deadline {
            break (rows, spent);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    books.parquet_events = rows.len() as u64;
    books.gateway_spent_nanos = spent;
    let mut by_request: HashMap<&str, (u32, i128)> = HashMap::new();
    for (request_id, cost) in &rows {
        let entry = by_request.entry(request_id.as_str()).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += cost;
        books.parquet_cost_nanos += u128::try_from(*cost).unwrap_or(0);
        if *cost < 0 {
            books
                .problems
                .push(format!("event of {request_id} has a negative cost"));
        }
    }
    let mut missing = 0u64;
    let mut seen: HashSet<&str> = HashSet::new();
    for attempt in &answered {
        let id = attempt.request_id.as_deref().unwrap_or_default();
        if !seen.insert(id) {
            books
                .problems
                .push(format!("request id {id} answered twice"));
            continue;
        }
        match by_request.get(id) {
            None => missing += 1,
            Some(&(count, cost)) => {
                if count > 1 {
                    books
                        .problems
                        .push(format!("request {id}: {count} events (doubled)"));
                }
                if let Some(priced) = attempt.cost_nanos {
                    books.priced += 1;
                    books.harness_cost_nanos += priced;
                    books.parquet_cost_of_priced_nanos += u128::try_from(cost).unwrap_or(0);
                }
            }
        }
    }
    if missing > 0 {
        books.problems.push(format!(
            "{missing} answered calls have no event in the Parquet files (lost)"
        ));
    }
    let strangers = rows
        .iter()
        .filter(|(id, _)| !seen.contains(id.as_str()))
        .count() as u64;
    if strangers > books.unanswered {
        books.problems.push(format!(
            "{strangers} events match no call the harness made ({} calls went unanswered)",
            books.unanswered
        ));
    }
    if books.parquet_cost_nanos != books.gateway_spent_nanos {
        books.problems.push(format!(
            "Parquet total {} != budget table {} (nano-units)",
            books.parquet_cost_nanos, books.gateway_spent_nanos
        ));
    }
    if books.harness_cost_nanos != books.parquet_cost_of_priced_nanos {
        books.problems.push(format!(
            "harness priced {} calls at {} but their events cost {} (nano-units)",
            books.priced, books.harness_cost_nanos, books.parquet_cost_of_priced_nanos
        ));
    }
    Ok(books)
}

/// Spend and in-flight holds (nano-units) of the named allocations.
fn budget_of(listed: &Value, names: &HashSet<&str>) -> (u128, u128) {
    let mut spent = 0u128;
    let mut in_flight = 0u128;
    for allocation in listed["allocations"].as_array().into_iter().flatten() {
        if allocation["name"]
            .as_str()
            .is_some_and(|n| names.contains(n))
        {
            spent += u128::from(allocation["budget"]["spent_nanos"].as_u64().unwrap_or(0));
            in_flight += allocation["budget"]["in_flight"]
                .as_str()
                .and_then(|t| parse_nanos(t).ok())
                .map_or(1, u128::from);
        }
    }
    (spent, in_flight)
}

/// `(request_id, cost in nano-units)` of every event of the named allocations in the files.
fn read_rows(dir: &Path, names: &HashSet<&str>) -> Result<Vec<(String, i128)>, BooksError> {
    let mut files = Vec::new();
    collect_files(&dir.join("usage"), &mut files);
    let mut rows = Vec::new();
    for path in files {
        let error = |message: String| BooksError::Parquet {
            path: path.clone(),
            message,
        };
        let file = std::fs::File::open(&path).map_err(|e| error(e.to_string()))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| error(e.to_string()))?;
        let mask = ProjectionMask::columns(
            builder.parquet_schema(),
            ["request_id", "allocation", "cost"],
        );
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| error(e.to_string()))?;
        for batch in reader {
            let batch = batch.map_err(|e| error(e.to_string()))?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .cloned()
                    .ok_or_else(|| error(format!("no `{name}` column")))
            };
            let (ids, allocation, cost) = (
                column("request_id")?,
                column("allocation")?,
                column("cost")?,
            );
            let ids = ids
                .as_string_opt::<i32>()
                .ok_or_else(|| error("`request_id` is not text".into()))?;
            let allocation = allocation
                .as_string_opt::<i32>()
                .ok_or_else(|| error("`allocation` is not text".into()))?;
            let cost = cost
                .as_primitive_opt::<Decimal128Type>()
                .ok_or_else(|| error("`cost` is not a decimal".into()))?;
            for row in 0..batch.num_rows() {
                if allocation.is_valid(row) && names.contains(allocation.value(row)) {
                    rows.push((ids.value(row).to_owned(), cost.value(row)));
                }
            }
        }
    }
    Ok(rows)
}

/// Every `*.parquet` file under `dir` (temporary files and the checkpoint are skipped).
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "parquet") {
            files.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_apportioned_exactly() {
        assert_eq!(apportion(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(
            apportion(2000, &[3, 2, 3, 1, 4, 2]).iter().sum::<u64>(),
            2000
        );
        assert_eq!(apportion(1, &[0, 5]), vec![0, 1]);
        assert_eq!(apportion(5, &[0, 0]), vec![0, 0]);
    }
}
