//! `[console]`: the web console at `/console`, off unless turned on.
//!
//! ```toml
//! [console]
//! enabled = true
//! data_dir = "data"          # the Parquet its charts and exports read (default: [parquet] dir)
//! session_ttl_ms = 28800000  # a sign-in lasts 8 hours, then asks again
//! secure_cookie = "auto"     # auto | always | never: `Secure` behind TLS (X-Forwarded-Proto)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Result, Source, ms, resolve};
use crate::limits;

/// `[console]`, validated; `None` in [`super::Config`] when it is off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// The data folder the console's rollups and exports read (`usage/` under it).
    pub data_dir: PathBuf,
    /// How long a sign-in lasts (then the session cookie is refused and expires).
    pub session_ttl: Duration,
    /// When the session cookie is marked `Secure`.
    pub secure_cookie: SecureCookie,
}

/// When the session cookie carries `Secure` (sent over TLS only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecureCookie {
    /// When the sign-in came over TLS, as the proxy in front says (`X-Forwarded-Proto:
    /// https`); the gateway itself speaks plain HTTP.
    Auto,
    /// Always: the console is reached over TLS only.
    Always,
    /// Never: plain HTTP on a trusted network (a laptop's demo).
    Never,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsole {
    #[serde(default)]
    enabled: bool,
    data_dir: Option<String>,
    session_ttl_ms: Option<u64>,
    secure_cookie: Option<SecureCookie>,
}

impl RawConsole {
    /// `None` when off; `parquet_dir` is where the gateway writes its own Parquet, the data
    /// folder unless `data_dir` names another (a sink's, with Kafka).
    pub(super) fn validate(
        self,
        source: &Source<'_>,
        base: &Path,
        parquet_dir: Option<&Path>,
    ) -> Result<Option<ConsoleConfig>> {
        if !self.enabled {
            return Ok(None);
        }
        let session_ttl = ms(self.session_ttl_ms, limits::CONSOLE_SESSION_TTL);
        if session_ttl < limits::CONSOLE_SESSION_TTL_MIN
            || session_ttl > limits::CONSOLE_SESSION_TTL_MAX
        {
            return Err(source.error(
                "console.session_ttl_ms",
                0..0,
                "must be from 60000 (a minute) to 604800000 (a week)",
            ));
        }
        let data_dir = match (self.data_dir, parquet_dir) {
            (Some(dir), _) => resolve(base, &dir),
            (None, Some(dir)) => dir.to_owned(),
            (None, None) => {
                return Err(source.error(
                    "console.data_dir",
                    0..0,
                    "name the data folder the console reads: [parquet] is off here",
                ));
            }
        };
        Ok(Some(ConsoleConfig {
            data_dir,
            session_ttl,
            secure_cookie: self.secure_cookie.unwrap_or(SecureCookie::Auto),
        }))
    }
}
