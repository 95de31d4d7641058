//! Criterion benches of the engine's hot paths: key resolve, reserve+settle (alone, raced by a
//! second thread, spread over a million allocations, grown once), a stream's piece against its
//! hold, cost, estimate, event JSON, token counting, and a rate limit's take (one replica's, and
//! its slice of one the replicas share). Figures and the machine they came from are in BENCHMARKS.md.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tollgate_engine::estimate::{RequestShape, estimate};
use tollgate_engine::identity::test_directory;
use tollgate_engine::lease::RateSlice;
use tollgate_engine::tokens::count_tokens;
use tollgate_engine::{
    Adjustment, AllocationSpec, AllowList, Ask, BudgetSpec, Directory, Gcra, KeyLimits, KeySpec,
    KeyStore, ModelRef, Nanos, Period, RateCard, StreamBudget, TokenUsage, UnixMs, UsageEvent,
    reserve, reserve_within,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: UnixMs = UnixMs(1_768_435_200_000);

fn key_spec() -> KeySpec {
    KeySpec {
        user: "ada".into(),
        agent: None,
        expires_at: Some(NOW.plus_ms(86_400_000)),
        models: AllowList::Any,
        limits: KeyLimits::default(),
        scopes: tollgate_engine::identity::Scopes::NONE,
        created_at: NOW,
        revoked: false,
        tight: None,
    }
}

fn random_bytes(i: u64) -> [u8; 20] {
    let mut r = [0u8; 20];
    r[..8].copy_from_slice(&i.to_le_bytes());
    r[8..16].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    r
}

fn key_resolve(c: &mut Criterion) {
    let (_dir, alloc) = test_directory(
        BudgetSpec::limited(Nanos(u64::MAX / 2), Period::Month),
        BudgetSpec::unlimited(Period::Month),
        BudgetSpec::unlimited(Period::Month),
    )
    .unwrap();
    let store = KeyStore::new();
    let mut secrets = Vec::new();
    for i in 0..100_000u64 {
        let (_, secret) = store.create(&alloc, key_spec(), &random_bytes(i)).unwrap();
        if i % 1000 == 0 {
            secrets.push(secret.expose().to_owned());
        }
    }
    let mut g = c.benchmark_group("key_resolve");
    g.bench_function("hit_100k_keys", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % secrets.len();
            black_box(store.resolve(black_box(&secrets[i]), NOW).unwrap());
        })
    });
    let unknown = "tg_ffffffffffffffffffffffffffffffffffffffff";
    g.bench_function("miss", |b| {
        b.iter(|| black_box(store.resolve(black_box(unknown), NOW).is_err()))
    });
    g.finish();
}

fn reserve_settle(c: &mut Criterion) {
    let mut g = c.benchmark_group("reserve_settle");
    let limited = |l| BudgetSpec::limited(Nanos(l), Period::Month);
    let (_dir, one_level) = test_directory(
        limited(u64::MAX / 2),
        BudgetSpec::unlimited(Period::Month),
        BudgetSpec::unlimited(Period::Total),
    )
    .unwrap();
    g.bench_function("uncontended_allocation_limit", |b| {
        b.iter(|| {
            reserve(&one_level, NOW, Nanos(black_box(1_000)))
                .unwrap()
                .settle(Nanos(700))
        })
    });
    let (_dir, three_levels) = test_directory(
        limited(u64::MAX / 2),
        limited(u64::MAX / 2),
        limited(u64::MAX / 2),
    )
    .unwrap();
    g.bench_function("uncontended_three_limits", |b| {
        b.iter(|| {
            reserve(&three_levels, NOW, Nanos(black_box(1_000)))
                .unwrap()
                .settle(Nanos(700))
        })
    });
    // The same with a lease on the allocation (replicas sharing budgets by `[leases]`): one
    // more compare-and-swap to hold and one to settle.
    let leased = Directory::leased();
    leased.add_team("t", "o", limited(u64::MAX / 2)).unwrap();
    leased.add_project("p", "t", limited(u64::MAX / 2)).unwrap();
    let on_lease = leased
        .add_allocation(AllocationSpec {
            name: "a".into(),
            project: "p".into(),
            cost_center: "cc".into(),
            models: AllowList::Any,
            budget: limited(u64::MAX / 2),
            tight: tollgate_engine::Tight::Clamp,
        })
        .unwrap();
    if let Some(lease) = on_lease.budget.lease() {
        lease.grant(i64::MAX, u64::MAX / 4);
    }
    g.bench_function("uncontended_three_limits_leased", |b| {
        b.iter(|| {
            reserve(&on_lease, NOW, Nanos(black_box(1_000)))
                .unwrap()
                .settle(Nanos(700))
        })
    });
    g.bench_function("refused", |b| {
        let (_dir, empty) = test_directory(limited(0), limited(0), limited(0)).unwrap();
        b.iter(|| black_box(reserve(&empty, NOW, Nanos(black_box(1_000))).is_err()))
    });
    // A call whose bound is more than the room: it holds what the tightest level has (the
    // project's 500,000), the allocation's larger grant is evened out.
    let (_dir, tight) = test_directory(
        limited(u64::MAX / 2),
        limited(500_000),
        limited(u64::MAX / 2),
    )
    .unwrap();
    g.bench_function("partial_hold_three_limits", |b| {
        let ask = Ask {
            least: Nanos(1_000),
            most: Nanos(black_box(900_000)),
        };
        // Given back unspent, so the project's room is the same at every iteration.
        b.iter(|| reserve_within(&tight, NOW, ask).unwrap().release())
    });
    // A streamed call's hold grown once at every level before it settles.
    g.bench_function("reserve_extend_settle_three_limits", |b| {
        b.iter(|| {
            let mut r = reserve(&three_levels, NOW, Nanos(black_box(1_000))).unwrap();
            r.extend(Ask::exactly(Nanos(black_box(1_000)))).unwrap();
            r.settle(Nanos(1_700))
        })
    });

    // A second thread hammers the same allocation for the whole measurement.
    let stop = Arc::new(AtomicBool::new(false));
    let rival = {
        let (stop, alloc) = (Arc::clone(&stop), Arc::clone(&three_levels));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = reserve(&alloc, NOW, Nanos(1_000)) {
                    r.settle(Nanos(700));
                }
            }
        })
    };
    g.bench_function("two_threads_one_allocation", |b| {
        b.iter(|| {
            reserve(&three_levels, NOW, Nanos(black_box(1_000)))
                .unwrap()
                .settle(Nanos(700))
        })
    });
    stop.store(true, Ordering::Relaxed);
    rival.join().unwrap();

    // One million allocations over 1,000 projects and 100 teams; each iteration picks one at
    // random, so the counters are mostly out of cache, as in a large fleet.
    let dir = Directory::new();
    for t in 0..100 {
        dir.add_team(&format!("t{t}"), "org", limited(u64::MAX / 2))
            .unwrap();
    }
    for p in 0..1_000 {
        dir.add_project(
            &format!("p{p}"),
            &format!("t{}", p % 100),
            limited(u64::MAX / 2),
        )
        .unwrap();
    }
    let allocations: Vec<_> = (0..1_000_000)
        .map(|a| {
            dir.add_allocation(AllocationSpec {
                name: format!("a{a}"),
                project: format!("p{}", a % 1_000),
                cost_center: "cc".into(),
                models: AllowList::Any,
                budget: limited(u64::MAX / 2),
                tight: Default::default(),
            })
            .unwrap()
        })
        .collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    g.bench_function("one_million_allocations", |b| {
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let a = &allocations[(x % 1_000_000) as usize];
            reserve(a, NOW, Nanos(1_000)).unwrap().settle(Nanos(700))
        })
    });
    g.finish();
}

const CARD: &str = r#"
default_max_output_tokens = 8192
[[version]]
id = "v1"
effective_from = 2026-01-01T00:00:00Z
[[version.model]]
name = "anthropic/claude-sonnet-4-5"
input_per_mtok = "3"
cached_input_per_mtok = "0.30"
cache_write_per_mtok = "3.75"
output_per_mtok = "15"
max_output_tokens = 64000
[[version.adjustment]]
team = "research"
percent = "-12.5"
"#;

fn pricing(c: &mut Criterion) {
    let card = RateCard::from_toml(CARD, "bench").unwrap();
    let model = ModelRef::parse("anthropic/claude-sonnet-4-5").unwrap();
    let usage = TokenUsage::new(98_000, 90_000, 2_000, 1_200, 300);
    let mut g = c.benchmark_group("pricing");
    g.bench_function("cost_lookup_and_compute", |b| {
        b.iter(|| {
            card.price_tokens(
                black_box(&model),
                black_box(&usage),
                "research",
                "chatbot",
                NOW,
            )
            .unwrap()
        })
    });
    let price = card.at(NOW).unwrap().model(model.as_str()).unwrap();
    // What a stream held short of its bound pays per upstream piece: its running cost against
    // a hold that covers it (the piece path), and a hold grown by the piece (the extension).
    let (_dir, roomy) = test_directory(
        BudgetSpec::limited(Nanos(u64::MAX / 2), Period::Month),
        BudgetSpec::unlimited(Period::Month),
        BudgetSpec::unlimited(Period::Total),
    )
    .unwrap();
    g.bench_function("stream_piece_within_hold", |b| {
        let shape = RequestShape {
            body_bytes: 400_000,
            extra_input_tokens: 0,
            max_output_tokens: Some(32_000),
        };
        let mut running = StreamBudget::new(price, Adjustment::NONE, shape);
        let mut held = reserve(&roomy, NOW, Nanos(running.bound().0 - 1)).unwrap();
        b.iter(|| running.take(&mut held, black_box(0)))
    });
    g.bench_function("stream_piece_extending_the_hold", |b| {
        let shape = RequestShape {
            body_bytes: 1_000,
            extra_input_tokens: 0,
            max_output_tokens: Some(u64::MAX / 4),
        };
        b.iter_batched(
            || {
                let running = StreamBudget::new(price, Adjustment::NONE, shape);
                let held = reserve(&roomy, NOW, Nanos(1)).unwrap();
                (running, held)
            },
            |(mut running, mut held)| {
                running.take(&mut held, black_box(64));
                held
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("estimate", |b| {
        let shape = RequestShape {
            body_bytes: 400_000,
            extra_input_tokens: 0,
            max_output_tokens: Some(4_096),
        };
        b.iter(|| estimate(black_box(price), Adjustment::NONE, black_box(shape)))
    });
    g.finish();
}

fn event_json(c: &mut Criterion) {
    let event = UsageEvent::sample();
    let mut out = Vec::with_capacity(1024);
    let mut g = c.benchmark_group("usage_event");
    g.bench_function("encode_json", |b| {
        b.iter(|| {
            out.clear();
            black_box(&event).write_json(&mut out);
            black_box(out.len())
        })
    });
    let json = event.to_json();
    g.bench_function("decode_json", |b| {
        b.iter(|| UsageEvent::from_json(black_box(&json)).unwrap())
    });
    g.finish();
}

fn token_counting(c: &mut Criterion) {
    // English-like prose with code, repeated to size.
    let unit = "The gateway reserves budget before the call; fn settle(actual: Nanos) -> Settlement { .. } \
                returns what was crossed. Agents resend their whole context at every step.\n";
    let text = |bytes: usize| unit.repeat(bytes / unit.len() + 1)[..bytes].to_owned();
    let (small, large) = (text(1_024), text(100 * 1_024));
    let _ = count_tokens("gpt-4o", "warm the encoding up");
    let mut g = c.benchmark_group("count_tokens_o200k");
    g.bench_function("1KB", |b| {
        b.iter(|| count_tokens("gpt-4o", black_box(&small)))
    });
    g.sample_size(20);
    g.bench_function("100KB", |b| {
        b.iter(|| count_tokens("gpt-4o", black_box(&large)))
    });
    g.finish();
    let mut g = c.benchmark_group("tokenizer_load");
    g.sample_size(10);
    g.bench_function("o200k_base_cold", |b| {
        b.iter_batched(|| (), |()| tiktoken_cold_load(), BatchSize::PerIteration)
    });
    g.finish();
}

/// A key's requests per minute: this replica's own GCRA (no `[leases]`) against its slice of
/// the limit the replicas share (`[leases]`), and a shared tokens limit's check and charge.
fn rate_limits(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit");
    let local = Gcra::per_minute(NonZeroU32::MAX);
    let mut now_us = 0i64;
    g.bench_function("local_gcra_take", |b| {
        b.iter(|| {
            now_us += 1;
            black_box(local.take(now_us, 1).is_ok())
        })
    });
    let slice = RateSlice::new();
    let epoch = NOW.0 + 60_000;
    slice.grant(epoch, u64::MAX / 4);
    g.bench_function("shared_slice_take", |b| {
        b.iter(|| black_box(slice.take(black_box(NOW.0), 1).is_ok()))
    });
    let tokens = RateSlice::new();
    tokens.grant(epoch, u64::MAX / 4);
    g.bench_function("shared_slice_check_and_charge", |b| {
        b.iter(|| {
            let ok = tokens.check(black_box(NOW.0)).is_ok();
            tokens.charge(NOW.0, 40);
            black_box(ok)
        })
    });
    g.finish();
}

/// A cold load of `o200k_base`, not the shared singleton, to show what loading once saves.
fn tiktoken_cold_load() -> usize {
    tiktoken_rs::o200k_base().map_or(0, |bpe| bpe.count_ordinary("x"))
}

criterion_group!(
    benches,
    key_resolve,
    reserve_settle,
    pricing,
    event_json,
    token_counting,
    rate_limits
);
criterion_main!(benches);
