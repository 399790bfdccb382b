//! The decision of a policy, from the ranking and what the cluster data says.
//!
//! # Rules, checked in this order
//!
//! 1. **ALLOW, no data**: no node with a fresh insight (none at all, or all
//!    older than `--stale-after`). The reason says which. No preferences.
//! 2. **REJECT**: no node fits now and the pod would not fit on any node even
//!    if that node were empty (capacity, GPU count and model, required CSD).
//!    The reason names what is missing and the exclusion counts.
//! 3. **DELAY**: no node fits now, but the forecast shows enough CPU and
//!    memory freeing on some node within the horizon. The reason names the
//!    node and when (minutes and RFC 3339 time).
//! 4. **ALLOW, overloaded**: every node that fits is predicted to overload;
//!    preferences list them least bad first.
//! 5. **ALLOW, nothing fits**: no node fits now and nothing predicts that one
//!    will; the scheduler's own retry handles it. No preferences.
//! 6. **REQUIRE**: the pod has a hard need (requires a CSD, or restricts GPU
//!    models) that only some nodes meet. Preferences list only nodes meeting it
//!    (the scorer excludes the others), and a `node-in` constraint names them.
//! 7. **PREFER**: the best node is clearly better: its score leads the second
//!    by at least `--prefer-gap` points, or it is the only feasible node of
//!    several.
//! 8. **ALLOW** otherwise, with preferences.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use apollo_proto::{NodePreference, SchedulingDecision};

use crate::scorer::Ranking;

/// A forecast that capacity frees up.
#[derive(Debug, Clone, PartialEq)]
pub struct DelayHint {
    /// Node expected to have room.
    pub node: String,
    /// When.
    pub at: SystemTime,
    /// How long from now.
    pub after: Duration,
}

/// Everything the rules look at.
#[derive(Debug, Clone, Default)]
pub struct DecisionInput<'a> {
    /// Nodes with fresh data in the snapshot.
    pub fresh_nodes: usize,
    /// Nodes known but left out because their data is stale.
    pub stale_nodes: usize,
    /// The ranking.
    pub ranking: Option<&'a Ranking>,
    /// Ranking without the predicted-overload exclusion (only computed when
    /// nothing else fits).
    pub relaxed: Option<&'a Ranking>,
    /// Whether the pod fits some node when empty.
    pub fits_when_empty: bool,
    /// A hard need that only some nodes meet, described (e.g. "requires a CSD").
    pub partial_hard_need: Option<String>,
    /// A forecast of capacity freeing within the horizon.
    pub delay: Option<DelayHint>,
    /// What the pod asks for, for REJECT messages (e.g. "4 GPU, 32 CPU").
    pub demand_summary: String,
    /// Score gap for PREFER.
    pub prefer_gap: i32,
}

/// Outcome of the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Decision.
    pub kind: SchedulingDecision,
    /// Node preferences (empty for REJECT, DELAY and the no-data ALLOW).
    pub preferences: Vec<NodePreference>,
    /// Why, in a sentence.
    pub reason: String,
}

fn prefs(r: &Ranking) -> Vec<NodePreference> {
    r.top
        .iter()
        .map(|n| NodePreference {
            node_name: n.node.clone(),
            score: n.score.clamp(1, 100),
            reason: n.reason.clone(),
        })
        .collect()
}

fn exclusions(r: &Ranking) -> String {
    let parts = r.excluded.nonzero();
    if parts.is_empty() {
        return "none".into();
    }
    let mut s = String::new();
    for (i, (why, n)) in parts.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{why} {n}");
    }
    s
}

/// Applies the rules in the module docs.
pub fn decide(input: &DecisionInput<'_>) -> Decision {
    let allow = |reason: String, preferences| Decision {
        kind: SchedulingDecision::Allow,
        preferences,
        reason,
    };
    let Some(ranking) = input.ranking.filter(|_| input.fresh_nodes > 0) else {
        let reason = if input.stale_nodes > 0 {
            format!(
                "no fresh cluster data: all {} known nodes have stale insights; default scheduling",
                input.stale_nodes
            )
        } else {
            "no cluster data yet; default scheduling".to_string()
        };
        return allow(reason, Vec::new());
    };

    if ranking.feasible == 0 {
        if !input.fits_when_empty {
            return Decision {
                kind: SchedulingDecision::Reject,
                preferences: Vec::new(),
                reason: format!(
                    "pod ({}) fits no node even when empty; excluded now: {}",
                    input.demand_summary,
                    exclusions(ranking)
                ),
            };
        }
        if let Some(d) = &input.delay {
            let at = chrono::DateTime::<chrono::Utc>::from(d.at)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            return Decision {
                kind: SchedulingDecision::Delay,
                preferences: Vec::new(),
                reason: format!(
                    "no node fits now ({}); forecast frees capacity on {} in ~{} min (at {at})",
                    exclusions(ranking),
                    d.node,
                    d.after.as_secs().div_ceil(60)
                ),
            };
        }
        if let Some(relaxed) = input.relaxed.filter(|r| r.feasible > 0) {
            return allow(
                format!(
                    "every fitting node is predicted to overload ({} nodes); least loaded first",
                    relaxed.feasible
                ),
                prefs(relaxed),
            );
        }
        return allow(
            format!(
                "no node fits now ({}) and no forecast shows capacity freeing; default scheduling",
                exclusions(ranking)
            ),
            Vec::new(),
        );
    }

    let best = &ranking.top[0];
    if let Some(need) = &input.partial_hard_need {
        return Decision {
            kind: SchedulingDecision::Require,
            preferences: prefs(ranking),
            reason: format!(
                "pod {need}: {} of {} nodes qualify and fit; best {} ({})",
                ranking.feasible, input.fresh_nodes, best.node, best.reason
            ),
        };
    }
    let gap = ranking.top.get(1).map(|second| best.score - second.score);
    let only_one = ranking.feasible == 1 && input.fresh_nodes > 1;
    if only_one || gap.is_some_and(|g| g >= input.prefer_gap) {
        let why = match gap {
            Some(g) => format!("leads by {g} points"),
            None => format!("only fitting node of {}", input.fresh_nodes),
        };
        return Decision {
            kind: SchedulingDecision::Prefer,
            preferences: prefs(ranking),
            reason: format!(
                "best node {} {why} ({}); {} feasible",
                best.node, best.reason, ranking.feasible
            ),
        };
    }
    allow(
        format!(
            "{} feasible nodes, no clear winner; best {} ({})",
            ranking.feasible, best.node, best.reason
        ),
        prefs(ranking),
    )
}
