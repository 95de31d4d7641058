//! Criterion benches of the pipeline: encoding usage events to Parquet from memory, and
//! appending them to the durable log.
//!
//! `cargo bench -p tollgate-benches --bench sink`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate_engine::{EventId, Nanos, UnixMs, UsageEvent};
use tollgate_sink::columnar;
use tollgate_sink::log::{Log, SEGMENT_BYTES_MAX};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: usize = 100_000;

fn events() -> Vec<UsageEvent> {
    (0..EVENTS)
        .map(|i| {
            let mut e = UsageEvent::sample();
            let ts = UnixMs(1_764_000_000_000 + i as i64);
            e.event_id = EventId::v7(ts, &(i as u128).to_le_bytes()[..10].try_into().unwrap());
            e.ts_ms = ts;
            e.cost_nanos = Nanos(1_000 + i as u64);
            e
        })
        .collect()
}

fn parquet(c: &mut Criterion) {
    let events = events();
    let mut group = c.benchmark_group("parquet");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(10);
    group.bench_function("encode 100k events to an Arrow batch", |b| {
        b.iter(|| columnar::encode(black_box(&events)).unwrap())
    });
    let dir = std::env::temp_dir().join(format!("tollgate-bench-parquet-{}", std::process::id()));
    let path = dir.join("bench.parquet");
    group.bench_function("encode and write 100k events to a zstd file", |b| {
        b.iter(|| columnar::write_file(&path, black_box(&events)).unwrap())
    });
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

fn log(c: &mut Criterion) {
    let payloads: Vec<Vec<u8>> = events()
        .iter()
        .take(1_000)
        .map(UsageEvent::to_json)
        .collect();
    let dir = std::env::temp_dir().join(format!("tollgate-bench-log-{}", std::process::id()));
    let (mut log, _) = Log::open(&dir, SEGMENT_BYTES_MAX).unwrap();
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Elements(1));
    group.bench_function("append one event (no sync)", |b| {
        let mut i = 0;
        b.iter(|| {
            log.append(&[&payloads[i % payloads.len()]]).unwrap();
            i += 1;
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

fn log_to_parquet(c: &mut Criterion) {
    let payloads: Vec<Vec<u8>> = events().iter().map(UsageEvent::to_json).collect();
    let root = std::env::temp_dir().join(format!("tollgate-bench-e2e-{}", std::process::id()));
    let mut group = c.benchmark_group("log_to_parquet");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(10);
    let mut round = 0u32;
    group.bench_function(
        "100k logged events read, decoded and written to Parquet",
        |b| {
            b.iter_batched(
                || {
                    round += 1;
                    let dir = root.join(round.to_string());
                    let (mut log, _) = Log::open(&dir.join("log"), SEGMENT_BYTES_MAX).unwrap();
                    log.append(&payloads).unwrap();
                    log.sync().unwrap();
                    columnar::ParquetSink::new(
                        &dir.join("log"),
                        &dir.join("data"),
                        1_000_000,
                        usize::MAX,
                    )
                },
                |sink| assert_eq!(sink.run(u64::MAX).unwrap().events, EVENTS as u64),
                criterion::BatchSize::PerIteration,
            )
        },
    );
    group.finish();
    let _ = std::fs::remove_dir_all(root);
}

criterion_group!(benches, parquet, log, log_to_parquet);
criterion_main!(benches);
