//! A node's forecast reduced to what the planners need: the peak of the upper
//! bound over the horizon and when it first crosses the overload threshold.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apollo_placement::snapshot::NodeForecast;
use apollo_proto::{ResourcePrediction, Timestamp};

/// Forecast outlook of one node. Fractions are 0-1 of capacity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outlook {
    /// Horizon read.
    pub horizon: Duration,
    /// Peak upper-bound CPU over the horizon.
    pub peak_cpu: f64,
    /// Peak upper-bound memory over the horizon.
    pub peak_memory: f64,
    /// Time from the reading until the upper bound first reaches the
    /// threshold it was read against (CPU or memory); `None` if it does not.
    pub crossing_in: Option<Duration>,
}

impl Outlook {
    /// The placement core's form (used by its headroom factor).
    pub fn as_node_forecast(&self) -> NodeForecast {
        NodeForecast {
            horizon_minutes: (self.horizon.as_secs() / 60) as u32,
            peak_cpu: self.peak_cpu.min(1.0),
            peak_memory: self.peak_memory.min(1.0),
            ..NodeForecast::default()
        }
    }
}

/// Converts a protobuf timestamp.
pub fn to_system_time(ts: &Timestamp) -> Option<SystemTime> {
    if ts.seconds < 0 || !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos as u32))
}

/// Converts to a protobuf timestamp.
pub fn to_timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Reads a prediction (values in percent, as the forecaster publishes them)
/// over `[now, now + horizon]` against `threshold` (0-1). Points without a
/// timestamp count as inside the window. `None` when no point is in it.
pub fn outlook(
    p: &ResourcePrediction,
    now: SystemTime,
    horizon: Duration,
    threshold: f64,
) -> Option<Outlook> {
    let until = now + horizon;
    let fraction = |v: f64| {
        if v.is_finite() {
            (v / 100.0).clamp(0.0, 1.5)
        } else {
            0.0
        }
    };
    let mut out = Outlook {
        horizon,
        ..Outlook::default()
    };
    let mut any = false;
    for b in &p.upper_bound {
        let at = b.timestamp.as_ref().and_then(to_system_time);
        if let Some(t) = at {
            if t > until || t + Duration::from_secs(60) < now {
                continue;
            }
        }
        any = true;
        let (cpu, mem) = (fraction(b.cpu_usage), fraction(b.memory_usage));
        out.peak_cpu = out.peak_cpu.max(cpu);
        out.peak_memory = out.peak_memory.max(mem);
        if out.crossing_in.is_none() && cpu.max(mem) >= threshold {
            out.crossing_in = Some(at.map_or(Duration::ZERO, |t| {
                t.duration_since(now).unwrap_or_default()
            }));
        }
    }
    any.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apollo_proto::TimestampedResources;

    #[test]
    fn peak_and_crossing_come_from_the_upper_bound_in_the_window() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |mins: u64, cpu: f64| TimestampedResources {
            timestamp: Some(to_timestamp(now + Duration::from_secs(mins * 60))),
            cpu_usage: cpu,
            memory_usage: 40.0,
            ..Default::default()
        };
        let p = ResourcePrediction {
            node_name: "n".into(),
            upper_bound: vec![at(5, 60.0), at(10, 92.0), at(20, 95.0), at(90, 120.0)],
            ..Default::default()
        };
        let o = outlook(&p, now, Duration::from_secs(30 * 60), 0.9).unwrap();
        assert!((o.peak_cpu - 0.95).abs() < 1e-9, "{o:?}");
        assert_eq!(o.crossing_in, Some(Duration::from_secs(600)));
        let none = outlook(&p, now, Duration::from_secs(60), 0.9);
        assert!(none.is_none());
    }
}
