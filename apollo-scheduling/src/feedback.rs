//! Idempotent `ReportSchedulingResult`: the scheduler may report the same
//! request id more than once (retries) or long after the policy (late
//! reports). [`SeenIds`] remembers reported ids for a TTL, bounded in count,
//! so a repeat is answered "duplicate" without touching the state again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Message of the answer to a repeated report.
pub const DUPLICATE: &str = "duplicate";

#[derive(Debug, Default)]
struct Inner {
    seen: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
}

/// A TTL- and size-bounded set of request ids.
#[derive(Debug)]
pub struct SeenIds {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl SeenIds {
    /// Remembers up to `capacity` ids for `ttl` each.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl,
            inner: Mutex::default(),
        }
    }

    /// Records `id`; returns false when it was already recorded (a duplicate).
    pub fn first_time(&self, id: &str) -> bool {
        self.first_time_at(id, Instant::now())
    }

    /// [`SeenIds::first_time`] at a given instant (for tests).
    pub fn first_time_at(&self, id: &str, now: Instant) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Expire from the front: entries are in insertion order.
        while let Some((old, at)) = g.order.front().cloned() {
            if now.saturating_duration_since(at) <= self.ttl && g.order.len() < self.capacity {
                break;
            }
            g.order.pop_front();
            if g.seen.get(&old) == Some(&at) {
                g.seen.remove(&old);
            }
        }
        if let Some(&at) = g.seen.get(id) {
            if now.saturating_duration_since(at) <= self.ttl {
                return false;
            }
        }
        g.seen.insert(id.to_string(), now);
        g.order.push_back((id.to_string(), now));
        true
    }

    /// Remembers `id` as reported at `at` (rebuilding the set after a
    /// restart, oldest first); it expires a TTL after `at`.
    pub fn remember_at(&self, id: &str, at: std::time::SystemTime) {
        let now = Instant::now();
        let age = std::time::SystemTime::now()
            .duration_since(at)
            .unwrap_or_default();
        if age > self.ttl {
            return;
        }
        self.first_time_at(id, now.checked_sub(age).unwrap_or(now));
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_detected_until_ttl() {
        let s = SeenIds::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(s.first_time_at("a", t0));
        assert!(!s.first_time_at("a", t0 + Duration::from_secs(30)));
        assert!(s.first_time_at("b", t0));
        assert!(s.first_time_at("a", t0 + Duration::from_secs(61)));
    }

    #[test]
    fn remembered_ids_are_duplicates_until_their_ttl() {
        let s = SeenIds::new(10, Duration::from_secs(60));
        let now = std::time::SystemTime::now();
        s.remember_at("old", now - Duration::from_secs(120));
        s.remember_at("recent", now - Duration::from_secs(10));
        assert!(s.first_time("old"), "past its TTL: not remembered");
        assert!(!s.first_time("recent"));
    }

    #[test]
    fn capacity_bounds_memory() {
        let s = SeenIds::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(s.first_time_at(&format!("id{i}"), t0));
        }
        assert!(s.len() <= 3);
        assert!(!s.first_time_at("id9", t0));
    }
}
