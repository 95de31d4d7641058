//! A lease-log record, as a replica or coordinator reads it from Kafka: decoded, or refused
//! with its reason (a newer version, a malformed record), never a panic. Whatever decodes
//! encodes back to the same record, folds into a lease book without a panic, and an ask among
//! them is answered within the limits it is proposed under.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_engine::lease::{AskFor, Charge, Decision, Folded, LeaseBook, LeaseRecord, Terms};
use tollgate_engine::time::Period;
use tollgate_gateway::control::leases::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let mut book = LeaseBook::new();
    // One record per line: a log's worth folded in order.
    for line in data.split(|&b| b == b'\n') {
        let Ok(record) = decode(line) else { continue };
        assert_eq!(decode(&encode(&record)), Ok(record.clone()), "a decoded record encodes back");
        book.apply(&record);
        if let LeaseRecord::Ask { replica, ask, team, on, allocation, want_nanos, least_nanos } = &record {
            let charge = Charge {
                level: *on,
                name: allocation.clone(),
                period: Period::Total,
                index: 0,
            };
            let limit = want_nanos / 2;
            let terms = Terms { team: team.clone(), limits: vec![(charge.clone(), limit)], epoch: i64::MAX };
            let asked = AskFor { replica, ask: *ask, on: *on, allocation, want_nanos: *want_nanos, least_nanos: *least_nanos };
            let before = book.net(team, &charge);
            if let Decision::Grant(grant) = book.propose(&asked, &terms, "fuzz") {
                // Nothing came between: the grant follows the tree's last and counts, and it
                // takes the level no further than its limit.
                assert!(matches!(book.apply(&grant), Folded::Granted { .. }), "{grant:?}");
                let after = book.net(team, &charge);
                assert!(after <= limit.max(before), "{before} -> {after} under {limit}");
            }
        }
    }
});
