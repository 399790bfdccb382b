//! Safety rails, on by default: what may never be moved or touched, and how
//! many moves may be under way. Every proposal passes [`Rails::approve`];
//! the planners also ask the rails (as [`TargetFilter`]) which pods may move
//! and where, so they do not waste a proposal on a blocked target.
//!
//! | rail | default |
//! |---|---|
//! | namespace deny list | `kube-system`, `apollo` |
//! | namespace allow list | empty = every namespace not denied |
//! | control-plane nodes | never a source or target |
//! | DaemonSet, static/mirror pods, `apollo.ai-storage/no-migrate` | never moved |
//! | PodDisruptionBudget with no disruption left | not moved (needs Kubernetes) |
//! | per-pod cooldown | 30 min between moves of a pod |
//! | no ping-pong | never back to any node a pod left within `ping_pong_window` (2 h) |
//! | concurrent moves per node / cluster | 1 / 5 |
//! | failure backoff | 15 min for the pod and target after a failed move |
//! | blackout windows | none; disruptive actions held inside them |
//! | per-cycle cap | 5 policies |

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::placement::TargetFilter;
use crate::planner::{Proposal, Subject};
use crate::view::{NodeView, PlanningView, PodView};

/// A daily window in UTC, `HH:MM-HH:MM` (may wrap midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlackoutWindow {
    start_min: u32,
    end_min: u32,
}

impl BlackoutWindow {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("blackout window {s:?} is not HH:MM-HH:MM (UTC)");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let minutes = |t: &str| -> Result<u32, String> {
            let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
            let h: u32 = h.parse().map_err(|_| bad())?;
            let m: u32 = m.parse().map_err(|_| bad())?;
            if h > 23 || m > 59 {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        let (start_min, end_min) = (minutes(a)?, minutes(b)?);
        if start_min == end_min {
            return Err(format!("blackout window {s:?} is empty"));
        }
        Ok(Self { start_min, end_min })
    }

    /// Whether `t` falls inside the window.
    pub fn contains(&self, t: SystemTime) -> bool {
        let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let m = ((secs / 60) % (24 * 60)) as u32;
        if self.start_min < self.end_min {
            (self.start_min..self.end_min).contains(&m)
        } else {
            m >= self.start_min || m < self.end_min
        }
    }
}

impl std::fmt::Display for BlackoutWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start_min / 60,
            self.start_min % 60,
            self.end_min / 60,
            self.end_min % 60
        )
    }
}

/// Rail settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RailsConfig {
    /// Namespaces never touched.
    pub deny_namespaces: Vec<String>,
    /// If not empty, the only namespaces touched.
    pub allow_namespaces: Vec<String>,
    /// Minimum time between two moves of a pod.
    pub cooldown: Duration,
    /// How long a pod may not return to a node it left.
    pub ping_pong_window: Duration,
    /// Concurrent moves touching one node (as source or target).
    pub max_per_node: usize,
    /// Concurrent moves in the cluster.
    pub max_cluster: usize,
    /// Policies per planning cycle.
    pub max_per_cycle: usize,
    /// A move not reported within this no longer counts as under way.
    pub in_flight_timeout: Duration,
    /// Hold-off for a pod and its target after a failed move.
    pub failure_backoff: Duration,
    /// Daily windows (UTC) without disruptive actions.
    pub blackout: Vec<BlackoutWindow>,
}

impl Default for RailsConfig {
    fn default() -> Self {
        Self {
            deny_namespaces: vec!["kube-system".into(), "apollo".into()],
            allow_namespaces: Vec::new(),
            cooldown: Duration::from_secs(30 * 60),
            ping_pong_window: Duration::from_secs(2 * 3600),
            max_per_node: 1,
            max_cluster: 5,
            max_per_cycle: 5,
            in_flight_timeout: Duration::from_secs(15 * 60),
            failure_backoff: Duration::from_secs(15 * 60),
            blackout: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct Move {
    from: String,
    to: String,
    at: SystemTime,
}

/// The rails and what they remember: recent moves, moves under way, backoffs.
#[derive(Debug, Clone)]
pub struct Rails {
    cfg: RailsConfig,
    now: SystemTime,
    last_move: HashMap<String, Move>,
    /// Nodes each pod left, with when: no return within `ping_pong_window`.
    departed: HashMap<String, Vec<(String, SystemTime)>>,
    in_flight: HashMap<String, Move>,
    backoff: HashMap<String, SystemTime>,
    /// Kubernetes metadata for cordons and taints, when available.
    kubernetes: Option<std::sync::Arc<crate::kubernetes::Metadata>>,
}

/// A proposal the rails refused, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    /// The proposal.
    pub proposal: Proposal,
    /// Which rail.
    pub rail: &'static str,
    /// Details.
    pub detail: String,
}

impl Rails {
    /// Rails with these settings.
    pub fn new(cfg: RailsConfig) -> Self {
        Self {
            cfg,
            now: UNIX_EPOCH,
            last_move: HashMap::new(),
            departed: HashMap::new(),
            in_flight: HashMap::new(),
            backoff: HashMap::new(),
            kubernetes: None,
        }
    }

    /// Kubernetes metadata the target rail checks (cordoned nodes, taints
    /// the pod does not tolerate); `None` without Kubernetes.
    pub fn set_kubernetes(&mut self, meta: Option<std::sync::Arc<crate::kubernetes::Metadata>>) {
        self.kubernetes = meta;
    }

    /// The settings.
    pub fn config(&self) -> &RailsConfig {
        &self.cfg
    }

    /// Sets the clock for the next checks and forgets expired state.
    pub fn tick(&mut self, now: SystemTime) {
        self.now = now;
        let timeout = self.cfg.in_flight_timeout;
        self.in_flight
            .retain(|_, m| now.duration_since(m.at).unwrap_or_default() < timeout);
        self.backoff.retain(|_, until| *until > now);
        let keep = self.cfg.cooldown.max(self.cfg.ping_pong_window);
        self.last_move
            .retain(|_, m| now.duration_since(m.at).unwrap_or_default() < keep);
        let window = self.cfg.ping_pong_window;
        self.departed.retain(|_, left| {
            left.retain(|(_, at)| now.duration_since(*at).unwrap_or_default() < window);
            !left.is_empty()
        });
    }

    /// Whether a namespace may be touched.
    pub fn namespace_allowed(&self, ns: &str) -> Result<(), String> {
        if self.cfg.deny_namespaces.iter().any(|d| d == ns) {
            return Err(format!("namespace {ns} is denied"));
        }
        if !self.cfg.allow_namespaces.is_empty()
            && !self.cfg.allow_namespaces.iter().any(|a| a == ns)
        {
            return Err(format!("namespace {ns} is not in the allow list"));
        }
        Ok(())
    }

    /// The blackout window `t` is in, if any.
    pub fn blackout_at(&self, t: SystemTime) -> Option<BlackoutWindow> {
        self.cfg.blackout.iter().copied().find(|w| w.contains(t))
    }

    fn moves_touching(&self, node: &str) -> usize {
        self.in_flight
            .values()
            .filter(|m| m.from == node || m.to == node)
            .count()
    }

    fn pod_rail(&self, pod: &PodView) -> Option<(&'static str, String)> {
        if let Err(e) = self.namespace_allowed(&pod.namespace) {
            return Some(("namespace", e));
        }
        if pod.node_bound() {
            return Some((
                "node-bound",
                format!("{} is a DaemonSet or static pod", pod.key()),
            ));
        }
        if pod.no_migrate {
            return Some((
                "no-migrate",
                format!(
                    "{} is annotated {}",
                    pod.key(),
                    crate::view::NO_MIGRATE_ANNOTATION
                ),
            ));
        }
        if pod.disruption_allowed == Some(false) {
            return Some((
                "pdb",
                format!(
                    "{}: its PodDisruptionBudget allows no disruption",
                    pod.key()
                ),
            ));
        }
        let key = pod.key();
        if self.in_flight.contains_key(&key) {
            return Some(("in-flight", format!("{key} is already being moved")));
        }
        if let Some(m) = self.last_move.get(&key) {
            let since = self.now.duration_since(m.at).unwrap_or_default();
            if since < self.cfg.cooldown {
                return Some((
                    "cooldown",
                    format!(
                        "{key} moved {}s ago (cooldown {}s)",
                        since.as_secs(),
                        self.cfg.cooldown.as_secs()
                    ),
                ));
            }
        }
        if self.backoff.contains_key(&format!("pod/{key}")) {
            return Some(("failure-backoff", format!("{key} failed to move recently")));
        }
        None
    }

    fn target_rail(&self, pod: &PodView, node: &NodeView) -> Option<(&'static str, String)> {
        if node.control_plane {
            return Some((
                "control-plane",
                format!("{} is a control-plane node", node.name),
            ));
        }
        if let Some(Err(e)) = self
            .kubernetes
            .as_ref()
            .map(|m| m.admits(&pod.key(), &node.name))
        {
            return Some(("taint", e));
        }
        if let Some(left) = self.departed.get(&pod.key()) {
            if let Some((_, at)) = left.iter().rev().find(|(n, _)| *n == node.name) {
                let since = self.now.duration_since(*at).unwrap_or_default();
                if since < self.cfg.ping_pong_window {
                    return Some((
                        "ping-pong",
                        format!("{} left {} {}s ago", pod.key(), node.name, since.as_secs()),
                    ));
                }
            }
        }
        if self.backoff.contains_key(&format!("node/{}", node.name)) {
            return Some((
                "failure-backoff",
                format!("a move to {} failed recently", node.name),
            ));
        }
        if self.moves_touching(&node.name) >= self.cfg.max_per_node {
            return Some((
                "node-cap",
                format!(
                    "{} already has {} move(s) under way",
                    node.name, self.cfg.max_per_node
                ),
            ));
        }
        None
    }

    /// Admits proposals in order (most urgent first), at most the per-cycle
    /// cap, recording admitted moves as under way.
    pub fn approve(
        &mut self,
        view: &PlanningView,
        proposals: Vec<Proposal>,
    ) -> (Vec<Proposal>, Vec<Blocked>) {
        let mut approved = Vec::new();
        let mut blocked = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for p in proposals {
            match self.check(view, &p, approved.len(), &mut seen) {
                Ok(()) => {
                    if let (Some(key), Some((from, to))) = (p.pod_key(), p.nodes()) {
                        let m = Move {
                            from: from.to_string(),
                            to: to.to_string(),
                            at: self.now,
                        };
                        self.in_flight.insert(key.clone(), m.clone());
                        self.departed
                            .entry(key.clone())
                            .or_default()
                            .push((m.from.clone(), m.at));
                        self.last_move.insert(key, m);
                    }
                    approved.push(p);
                }
                Err((rail, detail)) => blocked.push(Blocked {
                    proposal: p,
                    rail,
                    detail,
                }),
            }
        }
        (approved, blocked)
    }

    fn check(
        &self,
        view: &PlanningView,
        p: &Proposal,
        admitted: usize,
        seen: &mut HashSet<String>,
    ) -> Result<(), (&'static str, String)> {
        if admitted >= self.cfg.max_per_cycle {
            return Err((
                "cycle-cap",
                format!("{} policies already this cycle", self.cfg.max_per_cycle),
            ));
        }
        self.namespace_allowed(&p.namespace)
            .map_err(|e| ("namespace", e))?;
        if p.disruptive {
            if let Some(w) = self.blackout_at(self.now) {
                return Err(("blackout", format!("inside blackout window {w}")));
            }
        }
        if let Subject::Migration { pod, from, to, .. } = &p.subject {
            if from == to || from.is_empty() || to.is_empty() {
                return Err(("same-node", format!("source {from:?} and target {to:?}")));
            }
            let key = format!("{}/{pod}", p.namespace);
            if !seen.insert(key.clone()) {
                return Err((
                    "duplicate",
                    format!("{key} already has a policy this cycle"),
                ));
            }
            let src = view.node(from);
            if src.is_some_and(|n| n.control_plane) {
                return Err(("control-plane", format!("{from} is a control-plane node")));
            }
            if let Some(pv) = view.pod(&p.namespace, pod) {
                if let Some(r) = self.pod_rail(pv) {
                    return Err(r);
                }
                if let Some(t) = view.node(to) {
                    if let Some(r) = self.target_rail(pv, t) {
                        return Err(r);
                    }
                }
            }
            if self.moves_touching(from) >= self.cfg.max_per_node {
                return Err((
                    "node-cap",
                    format!(
                        "{from} already has {} move(s) under way",
                        self.cfg.max_per_node
                    ),
                ));
            }
            if self.in_flight.len() >= self.cfg.max_cluster {
                return Err((
                    "cluster-cap",
                    format!("{} moves under way in the cluster", self.in_flight.len()),
                ));
            }
        }
        Ok(())
    }

    /// Remembers a move issued before a restart (read back from the policy
    /// stream) as [`approve`](Self::approve) recorded it: under way since
    /// `at` (until reported or `in_flight_timeout`), the pod in cooldown,
    /// its source node departed.
    pub fn remember(&mut self, pod_key: String, from: &str, to: &str, at: SystemTime) {
        let m = Move {
            from: from.to_string(),
            to: to.to_string(),
            at,
        };
        self.in_flight.insert(pod_key.clone(), m.clone());
        self.departed
            .entry(pod_key.clone())
            .or_default()
            .push((m.from.clone(), at));
        self.last_move.insert(pod_key, m);
    }

    /// How far back moves matter to the rails (cooldown, ping-pong window,
    /// moves under way).
    pub fn memory(&self) -> std::time::Duration {
        self.cfg
            .cooldown
            .max(self.cfg.ping_pong_window)
            .max(self.cfg.in_flight_timeout)
    }

    /// A move finished (reported by the executor or a subscriber). A failure
    /// backs off the pod and its target.
    pub fn finish(&mut self, pod_key: &str, target: &str, success: bool) {
        self.in_flight.remove(pod_key);
        if !success {
            let until = self.now + self.cfg.failure_backoff;
            self.backoff.insert(format!("pod/{pod_key}"), until);
            self.backoff.insert(format!("node/{target}"), until);
            // A failed move did not happen: the pod may return to its node.
            if let Some(m) = self.last_move.remove(pod_key) {
                if let Some(left) = self.departed.get_mut(pod_key) {
                    if let Some(i) = left.iter().rposition(|(n, at)| *n == m.from && *at == m.at) {
                        left.remove(i);
                    }
                }
            }
        }
    }

    /// Moves under way.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

impl TargetFilter for Rails {
    fn pod_blocked(&self, pod: &PodView) -> Option<String> {
        self.pod_rail(pod).map(|(_, d)| d)
    }

    fn target_allowed(&self, pod: &PodView, node: &NodeView) -> bool {
        self.target_rail(pod, node).is_none()
    }

    fn moves_left(&self, node: &str) -> usize {
        self.cfg
            .max_per_node
            .saturating_sub(self.moves_touching(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blackout_windows_parse_and_wrap_midnight() {
        let w = BlackoutWindow::parse("22:30-02:00").unwrap();
        let at = |h: u64, m: u64| UNIX_EPOCH + Duration::from_secs(86_400 * 10 + h * 3600 + m * 60);
        assert!(w.contains(at(23, 0)));
        assert!(w.contains(at(1, 59)));
        assert!(!w.contains(at(2, 0)));
        assert!(!w.contains(at(12, 0)));
        assert_eq!(w.to_string(), "22:30-02:00");
        assert!(BlackoutWindow::parse("25:00-01:00").is_err());
        assert!(BlackoutWindow::parse("0100").is_err());
    }
}
