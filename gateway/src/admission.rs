//! Waiting for budget: when every level has room for a call's least cost but calls in flight
//! hold it, the call waits in its allocation's line for them to settle, first come, first
//! served, instead of being told its budget is spent.
//!
//! Only the call at the head of a line tries to reserve; the others wait their turn, so a
//! large call is not overtaken forever by small ones, and a newcomer joins the back of a line
//! that exists rather than taking room freed for the head. A settle wakes its allocation's
//! head; the head also retries every [`ADMISSION_RETRY_INTERVAL`], for room freed where no
//! wake-up is sent (a call of another allocation settling at the shared project or team, a
//! ledger hold expiring). A call leaves its line when it is admitted, refused, out of time
//! (`429 budget_busy`), or dropped because its client hung up. A call whose wait runs out
//! tries once more wherever it stands before it gives up: served then out of turn rather than
//! refused with room there.
//!
//! **Invariant:** nothing here reserves or gives back budget; it only orders the attempts.
//! With no line anywhere (the usual case) a call pays one atomic load for all of this.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tollgate_engine::{BudgetExhausted, Refused, Reservation};

use crate::config::AdmissionConfig;
use crate::limits::ADMISSION_RETRY_INTERVAL;

/// The lines of calls waiting for budget, by allocation.
#[derive(Debug)]
pub struct Waiting {
    lines: Mutex<HashMap<Arc<str>, VecDeque<Arc<Notify>>>>,
    /// Calls in every line: read without the lock on every call, so an empty table costs one
    /// load.
    queued: AtomicUsize,
    config: AdmissionConfig,
}

/// Why a call was not admitted.
#[derive(Debug)]
pub enum NotAdmitted {
    /// Settled spend leaves no room for the call's least cost: `402 budget_exceeded`.
    Spent(Box<BudgetExhausted>),
    /// Room is held by calls in flight and did not come back in time, or the lines are full:
    /// `429 budget_busy`, worth retrying after `retry_after`.
    Busy {
        /// The level that was busy when the call gave up, and its figures.
        at: Box<BudgetExhausted>,
        /// How long the call waited.
        waited: Duration,
    },
}

/// What an attempt that ends the call's turn comes to, after `waited`.
fn settled_by(
    tried: Result<Reservation, Refused>,
    waited: Duration,
) -> Result<(Reservation, Duration), NotAdmitted> {
    match tried {
        Ok(reservation) => Ok((reservation, waited)),
        Err(Refused::Exhausted(at)) => Err(NotAdmitted::Spent(at)),
        Err(Refused::Busy(at)) => Err(NotAdmitted::Busy { at, waited }),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Waiting {
    /// No line yet.
    #[must_use]
    pub fn new(config: AdmissionConfig) -> Waiting {
        Waiting {
            lines: Mutex::new(HashMap::new()),
            queued: AtomicUsize::new(0),
            config,
        }
    }

    /// Calls waiting now, across allocations.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Reserves for a call on `allocation` with `attempt` (which reserves at every level or
    /// says why not): at once when the allocation has no line and the budget has room, else
    /// in line until there is room, the budget is found spent, or the wait runs out.
    /// Returns the reservation and how long the call waited for it. A call that may not `wait`
    /// is busy at once when holds in flight take the room, and joins no line.
    pub async fn admit(
        &self,
        allocation: &Arc<str>,
        wait: bool,
        mut attempt: impl FnMut() -> Result<Reservation, Refused>,
    ) -> Result<(Reservation, Duration), NotAdmitted> {
        if !wait || self.queued.load(Ordering::Acquire) == 0 || !self.has_line(allocation) {
            let tried = attempt();
            if !matches!(tried, Err(Refused::Busy(_))) || !wait || self.config.wait_max.is_zero() {
                return settled_by(tried, Duration::ZERO);
            }
        }
        self.wait(allocation, attempt).await
    }

    /// Whether `allocation` has a line now.
    fn has_line(&self, allocation: &str) -> bool {
        lock(&self.lines)
            .get(allocation)
            .is_some_and(|line| !line.is_empty())
    }

    /// Joins the back of `allocation`'s line and tries each time the call is at its head and
    /// woken or due to retry.
    async fn wait(
        &self,
        allocation: &Arc<str>,
        mut attempt: impl FnMut() -> Result<Reservation, Refused>,
    ) -> Result<(Reservation, Duration), NotAdmitted> {
        let started = Instant::now();
        let deadline = started + self.config.wait_max;
        let Some(place) = self.join(allocation) else {
            // Every line is full: busy at once, with the figures of one more try.
            return settled_by(attempt(), Duration::ZERO);
        };
        loop {
            if place.at_head() {
                let tried = attempt();
                if !matches!(tried, Err(Refused::Busy(_))) || Instant::now() >= deadline {
                    return settled_by(tried, started.elapsed());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                // Out of time before reaching the head: the figures of one last try.
                return settled_by(attempt(), started.elapsed());
            }
            let pause = ADMISSION_RETRY_INTERVAL.min(deadline - now);
            tokio::select! {
                () = place.notify.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// A place at the back of `allocation`'s line, if the lines have room for one more.
    fn join<'w>(&'w self, allocation: &Arc<str>) -> Option<Place<'w>> {
        let mut lines = lock(&self.lines);
        if self.queued.load(Ordering::Relaxed) >= self.config.queued_max {
            return None;
        }
        let notify = Arc::new(Notify::new());
        lines
            .entry(Arc::clone(allocation))
            .or_default()
            .push_back(Arc::clone(&notify));
        self.queued.fetch_add(1, Ordering::AcqRel);
        Some(Place {
            waiting: self,
            allocation: Arc::clone(allocation),
            notify,
        })
    }

    /// Wakes the head of `allocation`'s line, if it has one: a call of it settled.
    pub fn settled(&self, allocation: &str) {
        if self.queued.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(head) = lock(&self.lines).get(allocation).and_then(VecDeque::front) {
            head.notify_one();
        }
    }
}

/// A call's place in its allocation's line; leaving it (admitted, refused, out of time, or
/// dropped with its request) wakes whoever is at the head next.
struct Place<'w> {
    waiting: &'w Waiting,
    allocation: Arc<str>,
    notify: Arc<Notify>,
}

impl Place<'_> {
    fn at_head(&self) -> bool {
        lock(&self.waiting.lines)
            .get(&self.allocation)
            .and_then(VecDeque::front)
            .is_some_and(|head| Arc::ptr_eq(head, &self.notify))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut lines = lock(&self.waiting.lines);
        let Some(line) = lines.get_mut(&self.allocation) else {
            return;
        };
        if let Some(at) = line.iter().position(|n| Arc::ptr_eq(n, &self.notify)) {
            line.remove(at);
            self.waiting.queued.fetch_sub(1, Ordering::AcqRel);
        }
        // The next call may find room this one did not take (or left).
        match line.front() {
            Some(head) => head.notify_one(),
            None => {
                lines.remove(&self.allocation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use tollgate_engine::identity::test_directory;
    use tollgate_engine::{Ask, BudgetSpec, Nanos, Period, UnixMs, reserve_within};

    use super::*;

    const NOW: UnixMs = UnixMs(1_768_435_200_000);

    fn config(wait_ms: u64, queued_max: usize) -> AdmissionConfig {
        AdmissionConfig {
            wait_max: Duration::from_millis(wait_ms),
            queued_max,
            ..AdmissionConfig::default()
        }
    }

    fn ask(amount: u64) -> Ask {
        Ask::exactly(Nanos(amount))
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_budget_waits_for_the_call_ahead_and_a_spent_one_does_not() {
        let (_dir, a) = test_directory(
            BudgetSpec::limited(Nanos(1_000), Period::Month),
            BudgetSpec::unlimited(Period::Month),
            BudgetSpec::unlimited(Period::Total),
        )
        .unwrap();
        let waiting = Arc::new(Waiting::new(config(5_000, 16)));
        let name = Arc::clone(&a.name);
        let first = reserve_within(&a, NOW, ask(800)).unwrap();
        // The second call waits in line; the first settles at 300 a second later.
        let settle = {
            let (waiting, name) = (Arc::clone(&waiting), Arc::clone(&name));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                first.settle(Nanos(300));
                waiting.settled(&name);
            })
        };
        let started = Instant::now();
        let (second, waited) = waiting
            .admit(&name, true, || reserve_within(&a, NOW, ask(600)))
            .await
            .unwrap();
        assert_eq!(waited, Duration::from_secs(1));
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "woken by the settle"
        );
        assert_eq!(waiting.queued(), 0);
        settle.await.unwrap();
        second.settle(Nanos(600));
        // 900 spent: a call needing 600 is refused as spent, at once.
        let refused = waiting
            .admit(&name, true, || reserve_within(&a, NOW, ask(600)))
            .await;
        assert!(matches!(refused, Err(NotAdmitted::Spent(_))), "{refused:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_runs_out_as_busy_and_the_line_is_served_in_order() {
        let (_dir, a) = test_directory(
            BudgetSpec::limited(Nanos(1_000), Period::Month),
            BudgetSpec::unlimited(Period::Month),
            BudgetSpec::unlimited(Period::Total),
        )
        .unwrap();
        let a = Arc::new(a);
        let waiting = Arc::new(Waiting::new(config(2_000, 16)));
        let held = reserve_within(&a, NOW, ask(1_000)).unwrap();
        // Nothing settles: the wait runs out as busy, never as spent.
        let started = Instant::now();
        let Err(NotAdmitted::Busy { waited, at }) = waiting
            .admit(&a.name, true, || reserve_within(&a, NOW, ask(10)))
            .await
        else {
            panic!("the room is held, not spent");
        };
        assert_eq!(waited, Duration::from_secs(2));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!((at.remaining, at.requested), (Nanos(0), Nanos(10)));
        // Three calls line up in order; the hold is given back; each is served in turn.
        let order = Arc::new(AtomicU64::new(0));
        let mut calls = Vec::new();
        for i in 0..3u64 {
            let (waiting, a, order) = (Arc::clone(&waiting), Arc::clone(&a), Arc::clone(&order));
            calls.push(tokio::spawn(async move {
                let (r, _) = waiting
                    .admit(&a.name, true, || reserve_within(&a, NOW, ask(400)))
                    .await
                    .unwrap();
                let served = order.fetch_add(1, Ordering::SeqCst);
                drop(r);
                (i, served)
            }));
            // Each joins the line before the next is spawned.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(waiting.queued(), 3);
        drop(held);
        waiting.settled(&a.name);
        for call in calls {
            let (i, served) = call.await.unwrap();
            assert_eq!(i, served, "first come, first served");
        }
        assert_eq!(waiting.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn full_lines_refuse_at_once_and_a_dropped_call_leaves_its_line() {
        let (_dir, a) = test_directory(
            BudgetSpec::limited(Nanos(100), Period::Month),
            BudgetSpec::unlimited(Period::Month),
            BudgetSpec::unlimited(Period::Total),
        )
        .unwrap();
        let a = Arc::new(a);
        let waiting = Arc::new(Waiting::new(config(60_000, 1)));
        let held = reserve_within(&a, NOW, ask(100)).unwrap();
        let queued = {
            let (waiting, a) = (Arc::clone(&waiting), Arc::clone(&a));
            tokio::spawn(async move {
                waiting
                    .admit(&a.name, true, || reserve_within(&a, NOW, ask(50)))
                    .await
                    .map(drop)
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(waiting.queued(), 1);
        let started = Instant::now();
        let full = waiting
            .admit(&a.name, true, || reserve_within(&a, NOW, ask(50)))
            .await;
        assert!(matches!(full, Err(NotAdmitted::Busy { waited, .. }) if waited.is_zero()));
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no wait when the lines are full"
        );
        // The client of the queued call hangs up: its place goes with it.
        queued.abort();
        let _ = queued.await;
        assert_eq!(waiting.queued(), 0);
        drop(held);
    }
}
