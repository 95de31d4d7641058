//! A bounded memory of recent event ids, so a stage after the log can drop an event delivered
//! twice (a shipper's resend after a failure) without remembering every event ever seen.

use std::collections::{HashSet, VecDeque};

/// A bounded set of recent event ids.
#[derive(Debug)]
pub struct Dedup {
    ids: HashSet<u128>,
    order: VecDeque<u128>,
    capacity: usize,
}

impl Dedup {
    /// Remembers at most `capacity` ids, forgetting the oldest first.
    #[must_use]
    pub fn new(capacity: usize) -> Dedup {
        Dedup {
            ids: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Remembers `id`; false when it was already there.
    pub fn insert(&mut self, id: u128) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dedup_window_forgets_the_oldest_first() {
        let mut seen = Dedup::new(3);
        assert!(seen.insert(1) && seen.insert(2) && seen.insert(3));
        assert!(!seen.insert(2));
        assert!(seen.insert(4));
        // 1 fell out of the window; 2, 3 and 4 are remembered.
        assert!(seen.insert(1));
        assert!(!seen.insert(4));
    }
}
