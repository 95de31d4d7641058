//! The books: setting a run up on the gateway, and checking afterwards that nothing was lost or
//! counted twice.
//!
//! A run creates its own allocations (named with the run's tag, so runs never mix) and keys
//! through the admin API, and prices every answer itself from the usage it reports and the
//! prices and adjustments the gateway publishes. Afterwards three independent views must agree
//! to the nano-unit: the harness's own record, the Parquet files (read here with the parquet
//! crate, as a data team would) and the gateway's budget table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow_array::Array as _;
use arrow_array::cast::AsArray as _;
use arrow_array::types::{Decimal128Type, Int32Type};
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
    let mut prices = Prices {
        models: model_prices(admin).await?,
        ..Prices::default()
    };
    let allocations = create_allocations(admin, scenario, tag).await?;
    prices.adjustment_ppm = adjustments(admin, &allocations).await?;
    // Agents over allocations by weight (largest remainder), then keys over agents.
    let weights: Vec<u64> = scenario
        .fleet
        .allocations
        .iter()
        .map(|a| u64::from(a.agents_weight))
        .collect();
    let counts = apportion(u64::from(agents), &weights);
    let mut fleet = Vec::new();
    let mut loopers = 0u32;
    for (index, (name, &count)) in allocations.iter().zip(&counts).enumerate() {
        let allocation = u16::try_from(index)
            .map_err(|_| BooksError::Answer("more than 65535 allocations".into()))?;
        // The fleet's first agents are its looping ones, each on a key of its own.
        let looping_here = u64::from(scenario.fleet.looping_agents - loopers).min(count);
        for _ in 0..looping_here {
            let key = create_key(
                admin,
                name,
                &format!("{name}-looper{loopers}"),
                &format!("{}-looper{loopers}", scenario.name),
            )
            .await?;
            fleet.push(Agent {
                allocation,
                key,
                looping: true,
            });
            loopers += 1;
        }
        let working = count - looping_here;
        if working == 0 {
            continue;
        }
        let keys = create_keys(admin, scenario, name, working).await?;
        for agent in 0..working {
            let key = keys[usize::try_from(agent).unwrap_or(0) % keys.len()].clone();
            fleet.push(Agent {
                allocation,
                key,
                looping: false,
            });
        }
    }
    Ok(Setup {
        allocations,
        agents: fleet,
        prices,
    })
}

/// The input and output prices per million tokens of every model the gateway lists.
async fn model_prices(admin: &Admin) -> Result<BTreeMap<String, (u64, u64)>, BooksError> {
    let models = admin.get("models").await?;
    let mut prices = BTreeMap::new();
    for model in models["models"].as_array().into_iter().flatten() {
        let price = |field: &str| {
            model[field]
                .as_str()
                .and_then(|t| parse_nanos(t).ok())
                .ok_or_else(|| BooksError::Answer(format!("models: `{field}` of {model}")))
        };
        if let Some(name) = model["model"].as_str() {
            prices.insert(
                name.to_owned(),
                (price("input_per_mtok")?, price("output_per_mtok")?),
            );
        }
    }
    Ok(prices)
}

/// Creates the scenario's allocations, named `<name>-<tag>`, each with its limit (if any)
/// over the whole run; returns their names.
async fn create_allocations(
    admin: &Admin,
    scenario: &Scenario,
    tag: &str,
) -> Result<Vec<String>, BooksError> {
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
    Ok(allocations)
}

/// Each allocation's price adjustment (ppm), as the gateway lists it, in `allocations` order.
async fn adjustments(admin: &Admin, allocations: &[String]) -> Result<Vec<i64>, BooksError> {
    let listed = admin.get("allocations").await?;
    let mut adjustments = Vec::with_capacity(allocations.len());
    for name in allocations {
        let ppm = listed["allocations"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["name"].as_str() == Some(name))
            .and_then(|a| a["price_adjustment_ppm"].as_i64())
            .ok_or_else(|| BooksError::Answer(format!("allocation {name} not listed")))?;
        adjustments.push(ppm);
    }
    Ok(adjustments)
}

/// Keys for the `agents` of allocation `name`: one per agent, at least one and at most
/// [`KEYS_PER_ALLOCATION_MAX`] (agents share them), each for a user of its own.
async fn create_keys(
    admin: &Admin,
    scenario: &Scenario,
    name: &str,
    agents: u64,
) -> Result<Vec<std::sync::Arc<str>>, BooksError> {
    let keys_wanted = u32::try_from(agents)
        .unwrap_or(u32::MAX)
        .clamp(1, KEYS_PER_ALLOCATION_MAX);
    let mut keys = Vec::new();
    for user in 0..keys_wanted {
        keys.push(create_key(admin, name, &format!("{name}-user{user}"), &scenario.name).await?);
    }
    Ok(keys)
}

/// A key of allocation `name` for `user` and `agent`; its secret.
async fn create_key(
    admin: &Admin,
    name: &str,
    user: &str,
    agent: &str,
) -> Result<std::sync::Arc<str>, BooksError> {
    let created = admin
        .post(
            "keys",
            Some(&json!({ "allocation": name, "user": user, "agent": agent })),
        )
        .await?;
    let key = created["key"]
        .as_str()
        .ok_or_else(|| BooksError::Answer(format!("keys: no secret in {created}")))?;
    Ok(std::sync::Arc::from(key))
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
    let mut books = Books::of_attempts(allocations, attempts);
    let names: HashSet<&str> = allocations.iter().map(String::as_str).collect();
    let (rows, spent) = settled(admin, parquet_dir, &names, books.answered, settle).await?;
    books.parquet_events = rows.len() as u64;
    books.gateway_spent_nanos = spent;
    books.compare(attempts, &rows);
    Ok(books)
}

/// The files' events and the table's spend once they have settled: events of calls counted
/// after their last byte land moments later, so this polls until the files hold every one of
/// the `answered` calls and nothing is in flight, or `settle` runs out.
async fn settled(
    admin: &Admin,
    parquet_dir: &Path,
    names: &HashSet<&str>,
    answered: u64,
    settle: Duration,
) -> Result<(Vec<Row>, u128), BooksError> {
    let deadline = Instant::now() + settle;
    loop {
        admin.post("events/flush", None).await?;
        let rows = read_rows(parquet_dir, names)?;
        let (spent, in_flight) = budget_of(&admin.get("allocations").await?, names);
        if (rows.len() as u64 >= answered && in_flight == 0) || Instant::now() >= deadline {
            return Ok((rows, spent));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Books {
    /// The harness's side alone: attempts made, answered and not, and refusals for budget
    /// by allocation.
    fn of_attempts(allocations: &[String], attempts: &[Attempt]) -> Books {
        let mut books = Books {
            attempts: attempts.len() as u64,
            ..Books::default()
        };
        books.answered = attempts.iter().filter(|a| a.request_id.is_some()).count() as u64;
        books.unanswered = books.attempts - books.answered;
        for attempt in attempts.iter().filter(|a| a.status == 402) {
            if let Some(name) = allocations.get(usize::from(attempt.allocation)) {
                *books.refused_by_allocation.entry(name.clone()).or_insert(0) += 1;
            }
        }
        books
    }

    /// Compares the answered attempts with the files' `rows` and the totals with each other,
    /// adding every disagreement to `problems`. A call the gateway retried or failed over has
    /// an event per attempt at a provider, numbered from 1: one call's events are counted
    /// against its highest attempt number, so a doubled attempt or a lost one shows.
    fn compare(&mut self, attempts: &[Attempt], rows: &[Row]) {
        let mut by_request: HashMap<&str, Events> = HashMap::new();
        for Row {
            request_id,
            attempt,
            cost,
        } in rows
        {
            let entry = by_request.entry(request_id.as_str()).or_default();
            entry.count += 1;
            entry.cost += cost;
            entry.last_attempt = entry.last_attempt.max(*attempt);
            self.parquet_cost_nanos += u128::try_from(*cost).unwrap_or(0);
            if *cost < 0 {
                self.problems
                    .push(format!("event of {request_id} has a negative cost"));
            }
        }
        let seen = self.match_answers(attempts, &by_request);
        let strangers = by_request.keys().filter(|id| !seen.contains(*id)).count() as u64;
        if strangers > self.unanswered {
            self.problems.push(format!(
                "{strangers} events match no call the harness made ({} calls went unanswered)",
                self.unanswered
            ));
        }
        if self.parquet_cost_nanos != self.gateway_spent_nanos {
            self.problems.push(format!(
                "Parquet total {} != budget table {} (nano-units)",
                self.parquet_cost_nanos, self.gateway_spent_nanos
            ));
        }
        if self.harness_cost_nanos != self.parquet_cost_of_priced_nanos {
            self.problems.push(format!(
                "harness priced {} calls at {} but their events cost {} (nano-units)",
                self.priced, self.harness_cost_nanos, self.parquet_cost_of_priced_nanos
            ));
        }
    }

    /// Finds each answered attempt's events (`by_request`: their count and cost): none is
    /// lost, one is doubled, and the harness's price is set beside the events' cost. Returns
    /// the request ids answered.
    fn match_answers<'a>(
        &mut self,
        attempts: &'a [Attempt],
        by_request: &HashMap<&str, Events>,
    ) -> HashSet<&'a str> {
        let mut missing = 0u64;
        let mut seen: HashSet<&str> = HashSet::new();
        for attempt in attempts.iter().filter(|a| a.request_id.is_some()) {
            let id = attempt.request_id.as_deref().unwrap_or_default();
            if !seen.insert(id) {
                self.problems
                    .push(format!("request id {id} answered twice"));
                continue;
            }
            match by_request.get(id) {
                None => missing += 1,
                Some(&Events {
                    count,
                    cost,
                    last_attempt,
                }) => {
                    if count > last_attempt {
                        self.problems.push(format!(
                            "request {id}: {count} events for {last_attempt} attempts (doubled)"
                        ));
                    } else if count < last_attempt {
                        self.problems.push(format!(
                            "request {id}: {count} events for {last_attempt} attempts (lost)"
                        ));
                    }
                    if let Some(priced) = attempt.cost_nanos {
                        self.priced += 1;
                        self.harness_cost_nanos += priced;
                        self.parquet_cost_of_priced_nanos += u128::try_from(cost).unwrap_or(0);
                    }
                }
            }
        }
        if missing > 0 {
            self.problems.push(format!(
                "{missing} answered calls have no event in the Parquet files (lost)"
            ));
        }
        seen
    }
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
/// One event in the Parquet files, as the books read it.
struct Row {
    request_id: String,
    attempt: u32,
    /// Nano-units.
    cost: i128,
}

/// One call's events: how many, their cost, and the highest attempt number among them.
#[derive(Clone, Copy, Default)]
struct Events {
    count: u32,
    cost: i128,
    last_attempt: u32,
}

fn read_rows(dir: &Path, names: &HashSet<&str>) -> Result<Vec<Row>, BooksError> {
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
            ["request_id", "attempt", "allocation", "cost"],
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
            let (ids, attempt, allocation, cost) = (
                column("request_id")?,
                column("attempt")?,
                column("allocation")?,
                column("cost")?,
            );
            let attempt = attempt
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| error("`attempt` is not a 32-bit integer".into()))?;
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
                    rows.push(Row {
                        request_id: ids.value(row).to_owned(),
                        attempt: u32::try_from(attempt.value(row)).unwrap_or(0),
                        cost: cost.value(row),
                    });
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

    fn attempt(allocation: u16, id: Option<&str>, status: u16, cost: Option<u128>) -> Attempt {
        Attempt {
            allocation,
            agent: 0,
            guarded: false,
            request_id: id.map(Box::from),
            status,
            broken: false,
            usage: None,
            cost_nanos: cost,
        }
    }

    fn row(request_id: &str, attempt: u32, cost: i128) -> Row {
        Row {
            request_id: request_id.to_owned(),
            attempt,
            cost,
        }
    }

    #[test]
    fn a_call_retried_by_the_gateway_balances_with_an_event_per_attempt() {
        let allocations = ["a-t".to_owned()];
        let attempts = [attempt(0, Some("r1"), 200, Some(10))];
        let mut books = Books::of_attempts(&allocations, &attempts);
        books.gateway_spent_nanos = 10;
        books.compare(&attempts, &[row("r1", 2, 10), row("r1", 1, 0)]);
        assert!(books.balanced(), "{:?}", books.problems);
    }

    #[test]
    fn balanced_books_have_no_problems() {
        let allocations = ["a-t".to_owned(), "b-t".to_owned()];
        let attempts = [
            attempt(0, Some("r1"), 200, Some(10)),
            attempt(1, Some("r2"), 402, None),
            attempt(0, None, 0, None),
        ];
        let mut books = Books::of_attempts(&allocations, &attempts);
        assert_eq!(
            (books.attempts, books.answered, books.unanswered),
            (3, 2, 1)
        );
        assert_eq!(books.refused_by_allocation.get("b-t"), Some(&1));
        books.gateway_spent_nanos = 10;
        books.compare(&attempts, &[row("r1", 1, 10), row("r2", 1, 0)]);
        assert!(books.balanced(), "{:?}", books.problems);
        assert_eq!(
            (
                books.priced,
                books.harness_cost_nanos,
                books.parquet_cost_nanos
            ),
            (1, 10, 10)
        );
    }

    #[test]
    fn lost_doubled_and_stray_events_and_unequal_totals_are_problems() {
        let allocations = ["a-t".to_owned()];
        let attempts = [
            attempt(0, Some("r1"), 200, Some(10)),
            attempt(0, Some("r1"), 200, Some(10)),
            attempt(0, Some("r2"), 200, Some(5)),
            attempt(0, Some("r3"), 200, None),
            attempt(0, None, 0, None),
        ];
        let mut books = Books::of_attempts(&allocations, &attempts);
        books.gateway_spent_nanos = 7;
        let rows = [
            row("r1", 1, 4),
            row("r1", 1, 4),
            row("r2", 2, 5),
            row("x1", 1, 1),
            row("x2", 1, -1),
        ];
        books.compare(&attempts, &rows);
        assert_eq!(
            books.problems,
            [
                "event of x2 has a negative cost",
                "request r1: 2 events for 1 attempts (doubled)",
                "request id r1 answered twice",
                "request r2: 1 events for 2 attempts (lost)",
                "1 answered calls have no event in the Parquet files (lost)",
                "2 events match no call the harness made (1 calls went unanswered)",
                "Parquet total 14 != budget table 7 (nano-units)",
                "harness priced 2 calls at 15 but their events cost 13 (nano-units)",
            ]
        );
    }

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
