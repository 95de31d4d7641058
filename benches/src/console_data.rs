//! A month of usage for the console's load-time figure: `allocations` allocations (ten to a
//! project, ten projects to a team) with `per_hour` events each every hour of the last `days`
//! days, written as the gateway's Parquet writer lays them out (one file per hour partition),
//! and the `tollgate.toml` that names every allocation and points `[console] data_dir` at the
//! files. The mix of models, users and agents is the `agent-fleet` scenario's, scaled up.
//!
//! `cargo run --release -p tollgate-benches --bin console-data -- DIR [allocations] [days] [per_hour]`
//! (defaults 1,000, 30, 8: 5,760,000 events). `loadtest/scripts/console-load.sh` runs it and
//! times the console.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use tollgate_engine::{EventId, Nanos, Tokens, UnixMs, UsageEvent};
use tollgate_sink::columnar::{partition, write_file_at};

/// The models the agent-fleet scenario calls, by weight, with a price per call in nanos.
const MODELS: [(&str, &str, u32, u64); 4] = [
    ("openai", "gpt-4o-mini", 45, 60_000),
    ("anthropic", "claude-sonnet-4-5", 25, 2_400_000),
    ("openai", "gpt-4o", 15, 900_000),
    ("anthropic", "claude-haiku-4-5", 15, 300_000),
];

const HOUR_MS: i64 = 3_600_000;

/// A small, fast, seeded generator (SplitMix64): the same folder for the same arguments.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .expect("usage: console-data DIR [allocations] [days] [per_hour]");
    let mut number = |default: u64| args.next().map_or(default, |a| a.parse().unwrap());
    let (allocations, days, per_hour) = (number(1_000), number(30), number(8));
    let dir = Path::new(&dir);
    let now = UnixMs(
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap(),
    );
    let last_hour = now.0 - now.0 % HOUR_MS;
    let hours = i64::try_from(days * 24).unwrap();
    let names: Vec<(Arc<str>, Arc<str>, Arc<str>)> = (0..allocations)
        .map(|a| {
            (
                Arc::from(format!("team-{:02}", a / 100)),
                Arc::from(format!("project-{:03}", a / 10)),
                Arc::from(format!("alloc-{a:04}")),
            )
        })
        .collect();
    let weight_total: u32 = MODELS.iter().map(|m| m.2).sum();
    let mut random = Seeded(42);
    let mut events = Vec::with_capacity(usize::try_from(allocations * per_hour).unwrap());
    let mut written = 0u64;
    let mut cost_total = 0u128;
    for h in (0..hours).rev() {
        let start = last_hour - h * HOUR_MS;
        events.clear();
        for (team, project, allocation) in &names {
            for _ in 0..per_hour {
                let ts = UnixMs(start + i64::try_from(random.below(3_600_000)).unwrap());
                let mut pick = u32::try_from(random.below(u64::from(weight_total))).unwrap();
                let (provider, model, _, price) = *MODELS
                    .iter()
                    .find(|m| {
                        let hit = pick < m.2;
                        pick = pick.saturating_sub(m.2);
                        hit
                    })
                    .unwrap();
                let mut e = UsageEvent::sample();
                e.event_id = EventId::v7(
                    ts,
                    &random.next().to_le_bytes().repeat(2)[..10]
                        .try_into()
                        .unwrap(),
                );
                e.ts_ms = ts;
                e.request_id = Arc::from(format!("req_{:016x}", random.next()));
                e.team = Some(Arc::clone(team));
                e.project = Some(Arc::clone(project));
                e.allocation = Some(Arc::clone(allocation));
                e.cost_center = Some(Arc::from("cc-1"));
                e.user = Some(Arc::from(format!("user-{}@acme.example", random.below(4))));
                e.agent = Some(Arc::from(format!("agent-{}", random.below(20))));
                e.provider = Some(Arc::from(provider));
                e.model = Some(Arc::from(model));
                e.deployment = Some(Arc::from(provider));
                e.tokens_in = Tokens(1_000 + random.below(60_000));
                e.tokens_out = Tokens(20 + random.below(400));
                let cost = price / 2 + random.below(price);
                e.cost_nanos = Nanos(cost);
                e.list_cost_nanos = Nanos(cost);
                cost_total += u128::from(cost);
                events.push(e);
            }
        }
        events.sort_by_key(|e| e.ts_ms);
        let path = dir
            .join("data/usage")
            .join(partition(UnixMs(start)))
            .join(format!(
                "part-{written}-{}.parquet",
                written + events.len() as u64 - 1
            ));
        write_file_at(&path, &events, UnixMs(start + HOUR_MS)).unwrap();
        written += events.len() as u64;
    }
    std::fs::write(dir.join("tollgate.toml"), config(&names)).unwrap();
    println!(
        "{written} events over {hours} hours for {allocations} allocations, costing {cost_total} nanos, in {}",
        dir.join("data").display()
    );
}

/// The gateway's config: every team, project and allocation, the console on over the files.
fn config(names: &[(Arc<str>, Arc<str>, Arc<str>)]) -> String {
    let mut out = String::from(
        "rate_card = \"rates.toml\"\n\n[server]\nlisten = \"127.0.0.1:0\"\n\n[parquet]\nenabled = false\n\n\
         [console]\nenabled = true\ndata_dir = \"data\"\nsecure_cookie = \"never\"\n",
    );
    let mut last = (String::new(), String::new());
    for (team, project, allocation) in names {
        if **team != *last.0 {
            let _ = write!(
                out,
                "\n[[team]]\nname = \"{team}\"\nbudget = {{ limit = \"100000.00\", period = \"month\" }}\n"
            );
            last.0 = team.to_string();
        }
        if **project != *last.1 {
            let _ = write!(
                out,
                "\n[[project]]\nname = \"{project}\"\nteam = \"{team}\"\n"
            );
            last.1 = project.to_string();
        }
        let _ = write!(
            out,
            "\n[[allocation]]\nname = \"{allocation}\"\nproject = \"{project}\"\n\
             budget = {{ limit = \"5000.00\", period = \"month\" }}\n"
        );
    }
    out
}
