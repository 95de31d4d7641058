//! Notices of keys about to expire: each sample of the forecast task looks for usable keys
//! that stop working within `forecast.key_expiry_warning_ms` and writes a `key_expiring` alert
//! for each, so the owner rotates the key before an agent's calls start failing with 401.
//!
//! **Invariant:** a key is told once per expiry instant in a process life: a key given a new
//! expiry (rotated, or restored with another) is told again when that one nears; a revoked
//! or expired key is never told.

use std::collections::HashMap;
use std::sync::Arc;

use tollgate_engine::{KeyId, UnixMs};

use crate::state::Gateway;

/// The expiry instant each key was last told for.
#[derive(Debug, Default)]
pub struct Told {
    at: HashMap<KeyId, UnixMs>,
}

/// Tells every key of `gateway` that expires within the configured warning and has not been
/// told for that instant; forgets keys no longer about to expire.
pub fn sample(gateway: &Gateway, told: &mut Told, now: UnixMs) {
    let warning = gateway.config.key_expiry_warning;
    if warning.is_zero() {
        return;
    }
    let horizon = now.plus_ms(i64::try_from(warning.as_millis()).unwrap_or(i64::MAX));
    let due = gateway.keys.expiring(now, horizon);
    let mut still: HashMap<KeyId, UnixMs> = HashMap::with_capacity(due.len());
    for key in &due {
        let Some(expires_at) = key.expires_at() else {
            continue;
        };
        if told.at.get(&key.id()) != Some(&expires_at) {
            gateway
                .emitter
                .key_expiry_alert(Arc::as_ref(key), expires_at, now);
        }
        still.insert(key.id(), expires_at);
    }
    told.at = still;
}
