//! The operator's files, as the gateway reads them: `tollgate.toml` and the rate card, any
//! bytes at all. Neither may panic; each is read or refused with a message naming where.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tollgate_engine::RateCard;
use tollgate_gateway::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::from_toml(text, "fuzz.toml", Path::new("/nonexistent")) {
        assert!(!e.to_string().is_empty());
    }
    if let Err(e) = RateCard::from_toml(text, "fuzz-rates.toml") {
        assert!(!e.to_string().is_empty());
    }
});
