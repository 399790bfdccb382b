//! Alert lifecycles with hysteresis.
//!
//! An overload alert is RAISED at the first refresh whose forecast upper
//! bound crosses the threshold within the horizon. It is CLEARED only after
//! the whole upper bound has stayed below `threshold - margin` for
//! `clear_after` consecutive refreshes; a bound between the two lines keeps
//! it raised. Upper bounds hovering around the threshold therefore do not
//! make alerts flap. Anomaly alerts use the same machine without a margin.

/// A lifecycle change to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The condition started.
    Raised,
    /// The condition ended.
    Cleared,
}

/// Hysteresis state of one alert (node x kind x resource).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertMachine {
    raised: bool,
    calm: u32,
    active_streak: u32,
    since_clear: Option<u32>,
}

impl AlertMachine {
    /// Whether the alert is raised.
    pub fn is_raised(&self) -> bool {
        self.raised
    }

    /// Feeds one refresh: `active` = the condition holds, `calm` = it is
    /// clearly over (below the clear line). The first raise is immediate;
    /// within `4 * clear_after` refreshes of a clear, a new raise needs the
    /// condition on `clear_after` consecutive refreshes, so a condition at
    /// the edge cannot alternate raise and clear.
    pub fn update(&mut self, active: bool, calm: bool, clear_after: u32) -> Option<Transition> {
        let k = clear_after.max(1);
        if !self.raised {
            self.active_streak = if active { self.active_streak + 1 } else { 0 };
            let recent = self.since_clear.is_some_and(|s| s < 4 * k);
            self.since_clear = self.since_clear.map(|s| s.saturating_add(1));
            let need = if recent { k } else { 1 };
            if self.active_streak >= need {
                self.raised = true;
                self.calm = 0;
                self.active_streak = 0;
                return Some(Transition::Raised);
            }
            return None;
        }
        if calm && !active {
            self.calm += 1;
            if self.calm >= k {
                self.raised = false;
                self.calm = 0;
                self.since_clear = Some(0);
                return Some(Transition::Cleared);
            }
        } else {
            self.calm = 0;
        }
        None
    }

    /// Ends a raised alert at once (e.g. the node disappeared).
    pub fn force_clear(&mut self) -> Option<Transition> {
        let was = self.raised;
        *self = Self::default();
        was.then_some(Transition::Cleared)
    }
}

/// First step (0-based) whose value reaches `threshold`, with the value.
pub fn first_crossing(upper: &[f64], threshold: f64) -> Option<(usize, f64)> {
    upper
        .iter()
        .enumerate()
        .find(|(_, v)| **v >= threshold)
        .map(|(i, v)| (i, *v))
}

/// The overload conditions of one forecast: (`active`, `calm`).
pub fn overload_condition(upper: &[f64], threshold: f64, margin: f64) -> (bool, bool) {
    let max = upper.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (max >= threshold, max < threshold - margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_once_and_clears_after_k_calm_refreshes() {
        let mut m = AlertMachine::default();
        let feed = |m: &mut AlertMachine, upper: f64| {
            let (a, c) = overload_condition(&[upper], 90.0, 5.0);
            m.update(a, c, 3)
        };
        assert_eq!(feed(&mut m, 80.0), None);
        assert_eq!(feed(&mut m, 91.0), Some(Transition::Raised));
        assert_eq!(feed(&mut m, 95.0), None);
        // Hovering between the clear line and the threshold: stays raised.
        for _ in 0..10 {
            assert_eq!(feed(&mut m, 87.0), None);
            assert_eq!(feed(&mut m, 90.5), None);
        }
        assert_eq!(feed(&mut m, 80.0), None);
        assert_eq!(feed(&mut m, 80.0), None);
        assert_eq!(feed(&mut m, 86.0), None); // resets the calm count
        assert_eq!(feed(&mut m, 80.0), None);
        assert_eq!(feed(&mut m, 80.0), None);
        assert_eq!(feed(&mut m, 80.0), Some(Transition::Cleared));
        assert!(!m.is_raised());
        // Right after a clear, one active refresh is not enough...
        assert_eq!(feed(&mut m, 95.0), None);
        assert_eq!(feed(&mut m, 80.0), None);
        assert_eq!(feed(&mut m, 95.0), None);
        assert_eq!(feed(&mut m, 95.0), None);
        // ...three in a row are.
        assert_eq!(feed(&mut m, 95.0), Some(Transition::Raised));
        assert_eq!(m.force_clear(), Some(Transition::Cleared));
        assert_eq!(m.force_clear(), None);
    }

    #[test]
    fn crossing_finds_first_step() {
        assert_eq!(
            first_crossing(&[1.0, 89.0, 90.0, 95.0], 90.0),
            Some((2, 90.0))
        );
        assert_eq!(first_crossing(&[1.0, 2.0], 90.0), None);
    }
}
