//! Resident memory of one million allocations plus one million keys (the engine's goal: under
//! 500 MB). Run with `cargo run --release -p tollgate-benches --bin engine-footprint`.
//! Linux only: it reads `/proc/self/statm`.

use std::num::NonZeroU32;
use std::time::Instant;

use tollgate_engine::{
    AllocationSpec, AllowList, BudgetSpec, Directory, KeyHash, KeyLimits, KeySpec, KeyStore, Nanos,
    Period, UnixMs,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn resident_bytes() -> u64 {
    use std::io::Read;
    let mut statm = String::new();
    if let Ok(file) = std::fs::File::open("/proc/self/statm") {
        let _ = file.take(4096).read_to_string(&mut statm);
    }
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    const ALLOCATIONS: usize = 1_000_000;
    const KEYS: usize = 1_000_000;
    let before = resident_bytes();
    let started = Instant::now();
    let limited = |l| BudgetSpec::limited(Nanos(l), Period::Month);
    let dir = Directory::new();
    for t in 0..100 {
        dir.add_team(&format!("team-{t:03}"), "acme", limited(1 << 50))
            .unwrap();
    }
    for p in 0..10_000 {
        dir.add_project(
            &format!("project-{p:05}"),
            &format!("team-{:03}", p % 100),
            limited(1 << 45),
        )
        .unwrap();
    }
    for a in 0..ALLOCATIONS {
        dir.add_allocation(AllocationSpec {
            name: format!("alloc-{a:07}"),
            project: format!("project-{:05}", a % 10_000),
            cost_center: format!("cc-{:04}", a % 1_000),
            models: AllowList::Any,
            budget: limited(1 << 40),
            tight: Default::default(),
        })
        .unwrap();
    }
    let after_allocations = resident_bytes();
    let store = KeyStore::new();
    let records = (0..KEYS).map(|k| {
        let spec = KeySpec {
            user: format!("user-{k:07}@acme.example"),
            agent: None,
            expires_at: Some(UnixMs(1_800_000_000_000)),
            models: AllowList::Any,
            limits: KeyLimits {
                requests_per_minute: NonZeroU32::new(600),
                tokens_per_minute: NonZeroU32::new(1_000_000),
            },
            scopes: tollgate_engine::identity::Scopes::NONE,
            created_at: UnixMs(1_768_435_200_000),
            revoked: false,
            tight: None,
        };
        let alloc = dir
            .allocation(&format!("alloc-{:07}", k % ALLOCATIONS))
            .unwrap();
        (
            alloc,
            KeyHash::of(&format!("tg_{k:040x}")),
            "tg_0000abcd".to_owned(),
            spec,
        )
    });
    store.restore_many(records).unwrap();
    let after_keys = resident_bytes();
    let mb = |b: u64| b as f64 / 1_048_576.0;
    println!(
        "allocations: {ALLOCATIONS}, keys: {KEYS}, built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "resident for allocations: {:.0} MiB",
        mb(after_allocations - before)
    );
    println!(
        "resident for keys:        {:.0} MiB",
        mb(after_keys - after_allocations)
    );
    println!(
        "resident total:           {:.0} MiB (goal: under 500 MB = 477 MiB)",
        mb(after_keys - before)
    );
    // Keep everything alive to the measurement.
    assert_eq!(store.len(), KEYS);
    assert_eq!(dir.allocation_count(), ALLOCATIONS);
}
