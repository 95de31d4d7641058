//! The atomics the budget table is built from, swapped for loom's under `cfg(loom)`.
//!
//! Everything hand-written and concurrent imports its atomics from here (tokio's `src/loom`
//! pattern), so `RUSTFLAGS="--cfg loom" cargo test -p tollgate-engine --lib loom` model-checks
//! the very code that ships. The 128-bit word is `portable_atomic::AtomicU128`, lock-free on
//! x86_64 (`cmpxchg16b`) and aarch64 (`casp`/LSE); loom has no 128-bit atomic, so under loom it
//! is a mutex-backed cell with the same single-word semantics.

#[cfg(not(loom))]
pub(crate) use portable_atomic::AtomicU128;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom_u128::AtomicU128;

#[cfg(loom)]
mod loom_u128 {
    use loom::sync::Mutex;
    use std::sync::atomic::Ordering;

    /// A 128-bit cell whose operations are each one step for loom's scheduler.
    #[derive(Debug)]
    pub(crate) struct AtomicU128(Mutex<u128>);

    impl AtomicU128 {
        pub(crate) fn new(value: u128) -> Self {
            Self(Mutex::new(value))
        }

        pub(crate) fn load(&self, _order: Ordering) -> u128 {
            *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        pub(crate) fn compare_exchange(
            &self,
            current: u128,
            new: u128,
            _success: Ordering,
            _failure: Ordering,
        ) -> Result<u128, u128> {
            let mut value = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *value == current {
                *value = new;
                Ok(current)
            } else {
                Err(*value)
            }
        }
    }
}

/// Whether the 128-bit atomic word is lock-free on this CPU (it is on every x86_64 CPU with
/// `cmpxchg16b`, i.e. all from the last fifteen years, and on aarch64 with LSE).
#[must_use]
pub fn wide_atomics_lock_free() -> bool {
    #[cfg(not(loom))]
    {
        AtomicU128::is_lock_free()
    }
    #[cfg(loom)]
    {
        false
    }
}
