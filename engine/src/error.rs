//! The engine's one error type: structured fields, never a message to parse.

use std::sync::Arc;

pub use crate::budget::BudgetExhausted;
use crate::time::UnixMs;

/// `Result` with the engine's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can refuse, each with the fields a caller needs to answer well.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file (rate card, directory) was refused; names the file, line, column and field.
    #[error("{origin}:{line}:{column}: `{field}`: {reason}")]
    Config {
        /// The file name or other origin of the text.
        origin: String,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column of the offending value.
        column: usize,
        /// Dotted path of the field (`version[0].model[2].input_per_mtok`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A config file could not be read at all.
    #[error("cannot read {origin}: {source}")]
    ConfigRead {
        /// The path as given.
        origin: String,
        /// The operating system's error (not found, permission, ...).
        source: std::io::Error,
    },
    /// A config file is larger than [`crate::limits::CONFIG_BYTES_MAX`].
    #[error("{origin} is larger than the {limit_bytes}-byte limit for config files")]
    ConfigTooLarge {
        /// The path as given.
        origin: String,
        /// The most bytes a config file may hold.
        limit_bytes: u64,
    },
    /// A budget level has no room for the reservation; nothing was reserved anywhere.
    #[error("{0}")]
    BudgetExhausted(Box<BudgetExhausted>),
    /// A presented API key is not usable.
    #[error("invalid API key: {0}")]
    KeyRejected(KeyRejection),
    /// The key or its allocation may not use this model.
    #[error("model `{model}` is not on the allow-list of {scope} `{name}`")]
    ModelNotAllowed {
        /// The model asked for.
        model: Arc<str>,
        /// `key` or `allocation`.
        scope: &'static str,
        /// The key id or allocation name whose list refused it.
        name: Arc<str>,
    },
    /// The model has no price in force; it is refused rather than metered as free.
    #[error("model `{model}` has no price on the rate card in force at {at}")]
    ModelNotPriced {
        /// The model asked for.
        model: Arc<str>,
        /// When the price was looked up.
        at: UnixMs,
    },
    /// A resource unit has no price in force.
    #[error(
        "no price for `{unit}` (cluster {cluster:?}, partition {partition:?}, instance type {instance_type:?}) on the rate card in force at {at}"
    )]
    ResourceNotPriced {
        /// The unit (`gpu_hour`, ...).
        unit: &'static str,
        /// The cluster asked for.
        cluster: Option<Arc<str>>,
        /// The partition asked for.
        partition: Option<Arc<str>>,
        /// The instance type asked for.
        instance_type: Option<Arc<str>>,
        /// When the price was looked up.
        at: UnixMs,
    },
    /// A model name is not of the form `provider/model`.
    #[error("`{0}` is not a model name of the form `provider/model`")]
    BadModelRef(String),
    /// A name refers to nothing known.
    #[error("unknown {kind} `{name}`")]
    Unknown {
        /// What kind of thing (`team`, `project`, `allocation`, `key`).
        kind: &'static str,
        /// The name given (capped in length where it came from outside).
        name: String,
    },
    /// A name is already taken.
    #[error("{kind} `{name}` already exists")]
    Duplicate {
        /// What kind of thing (`team`, `project`, `allocation`).
        kind: &'static str,
        /// The name given, which stays with what already holds it.
        name: String,
    },
    /// A newly generated key's hash collides with a stored one; generate another secret.
    #[error("key id collision; generate a new secret")]
    KeyCollision,
    /// An operator's role and team do not go together: a team-admin names its team, and
    /// only a team-admin does.
    #[error("role `{role}` {reason}")]
    OperatorTeam {
        /// The role asked for.
        role: &'static str,
        /// What is wrong (`needs a team`, `takes no team`).
        reason: &'static str,
    },
    /// Too little randomness was supplied for a key secret.
    #[error("a key secret needs {needed} random bytes, got {got}")]
    NotEnoughEntropy {
        /// Random bytes a secret takes ([`crate::limits::KEY_SECRET_BYTES`]).
        needed: usize,
        /// Random bytes the caller passed.
        got: usize,
    },
}

/// Why a presented key was refused. All answer 401; the reason is for logs and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    /// No key was presented.
    #[error("no key presented")]
    Missing,
    /// The key is not of tollgate's form or not known.
    #[error("unknown key")]
    Unknown,
    /// The key's expiry has passed.
    #[error("key expired")]
    Expired,
    /// The key was revoked.
    #[error("key revoked")]
    Revoked,
}
