//! The durable log as it is found on disk after anything at all happened to it: segment files
//! of any bytes (the input chooses how many and where each starts), read from the start, then
//! opened for appending, then read again; each record's payload decoded as a usage event. None
//! may panic. A reader gives records in offset order or stops at a named corruption; opening
//! cuts only the last segment's damaged tail and never a record a reader could read there;
//! what is appended next is read back whole at its offset.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use tollgate_engine::UsageEvent;
use tollgate_sink::log::{Log, read};

fuzz_target!(|data: &[u8]| {
    let Some((&shape, body)) = data.split_first() else {
        return;
    };
    let dir = scratch();
    let segments = usize::from(shape % 3) + 1;
    let mut base = 0u64;
    for (i, bytes) in body
        .chunks(body.len().div_ceil(segments).max(1))
        .enumerate()
    {
        let _ = std::fs::write(dir.join(format!("{base:020}.log")), bytes);
        base += u64::from(shape >> 2) + i as u64 + 1;
    }
    let before = records(&dir);
    let Ok((mut log, recovery)) = Log::open(&dir, 1 << 20) else {
        return;
    };
    assert_eq!(log.next_offset(), recovery.records);
    let after = records(&dir);
    assert!(
        after.len() >= before.len(),
        "opening lost records a reader could read: {} before, {} after",
        before.len(),
        after.len()
    );
    let payload = br#"{"appended":true}"#;
    let Ok(offset) = log.append(&[payload]) else {
        return;
    };
    let read_back = read(&dir, offset).ok().and_then(|mut r| r.next());
    if let Some(Ok((at, bytes))) = read_back {
        assert_eq!((at, bytes.as_slice()), (offset, &payload[..]));
    }
});

/// Every record a reader gives from offset 0, each payload also decoded as an event (and an
/// event that decodes encodes back to one that decodes the same).
fn records(dir: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
    let Ok(reader) = read(dir, 0) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    for item in reader.take(10_000) {
        let Ok((offset, payload)) = item else {
            break;
        };
        if let Some((last, _)) = out.last() {
            assert!(offset > *last, "offsets went from {last} to {offset}");
        }
        if let Ok(event) = UsageEvent::from_json(&payload) {
            let again = UsageEvent::from_json(&event.to_json());
            assert!(
                again.is_ok_and(|e| e == event),
                "an event changed on its way back"
            );
        }
        out.push((offset, payload));
    }
    out
}

/// A fresh, empty folder of this process's own (the log's files are real files).
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-fuzz-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}
