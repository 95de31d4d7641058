//! A control-topic record, as a replica reads it from Kafka: decoded, or refused with its
//! reason (a newer version, a malformed record), never a panic. Whatever decodes encodes back
//! to a record that decodes to the same change from the same replica.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_gateway::control::replicate::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok((origin, change)) = decode(data) {
        let again = decode(&encode(&change, &origin));
        assert_eq!(again, Ok((origin, change.clone())), "a decoded change encodes back");
        assert!(!change.entity().is_empty());
    }
});
