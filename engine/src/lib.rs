//! Tollgate's domain core: money, rate cards, identity, budgets and the usage event.
//!
//! The engine does no network I/O and never reads the clock or a random source: callers pass
//! `now` and random bytes in, and get decisions and events back, so everything here is
//! deterministic and tested without sleeps. The one file it reads is its own config.
//!
//! The request path through the engine is: [`KeyStore::resolve`] a presented key, check the
//! model ([`VirtualKey::check_model`]) and its price ([`RateCard::at`]), bound the cost
//! ([`estimate::estimate`]), [`reservation::reserve`] it at every level, and after the call
//! [`Reservation::settle`] the actual cost ([`ModelPrice::cost`]) and record a [`UsageEvent`].
#![warn(missing_docs)]

pub mod budget;
pub mod config;
pub mod error;
pub mod estimate;
pub mod event;
pub mod forecast;
pub mod guard;
mod hold;
pub mod identity;
pub mod ids;
pub mod learned;
pub mod lease;
mod lease_cell;
pub mod ledger;
pub mod limits;
pub mod money;
pub mod operator;
mod rate_slice;
pub mod ratecard;
pub mod ratelimit;
pub mod reservation;
pub mod routing;
pub mod stream;
mod sync;
pub mod time;
pub mod tokens;

pub use budget::{
    BudgetCell, BudgetExhausted, BudgetSnapshot, BudgetSpec, Level, SoftLimitCrossed, Tight,
};
pub use error::{Error, KeyRejection, Result};
pub use event::{Charged, EventId, EventKind, Status, UsageEvent, UsageSource};
pub use identity::{
    Allocation, AllocationSpec, AllowList, Directory, KeyHash, KeyLimits, KeySecret, KeySpec,
    KeyStore, Scopes, VirtualKey,
};
pub use ids::{KeyId, ModelRef, PROMPT_PREFIX_BYTES, PromptPrefix};
pub use learned::OutputSketch;
pub use money::{Adjustment, Micros, Nanos, PricePerMTok, PricePerUnit};
pub use ratecard::{Cost, ModelPrice, RateCard, RateVersion, ResourcePrice, ResourceUnit, Site};
pub use ratelimit::{Gcra, RetryAfter};
pub use reservation::{
    Ask, Refused, Reservation, Settlement, book, book_elsewhere, reserve, reserve_within,
};
pub use stream::{Next, StreamBudget};
pub use sync::wide_atomics_lock_free;
pub use time::{Period, UnixMs};
pub use tokens::{TokenUsage, Tokens};
