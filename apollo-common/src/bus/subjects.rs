//! APOLLO's subject scheme (prefix `apollo` by default):
//!
//! | subject | payload |
//! |---|---|
//! | `apollo.insight.workload.<namespace>.<pod>` | `WorkloadSignature` |
//! | `apollo.insight.cluster.<node>` | `ClusterInsight` |
//! | `apollo.forecast.<node>` | `ResourcePrediction` |
//! | `apollo.alert.<kind>.<node>` | `ResourceAlert` |
//! | `apollo.policy.scheduling.<namespace>.<pod>` | `SchedulingPolicy` |
//! | `apollo.policy.orchestration.<action>.<namespace>` | `OrchestrationPolicy` |
//! | `apollo.feedback.scheduling.<namespace>.<pod>` | `SchedulingResult` |
//! | `apollo.feedback.orchestration.<action>.<namespace>` | `ExecutionResult` |
//!
//! Names are encoded into single subject tokens reversibly: bytes outside
//! `[A-Za-z0-9_-]` become `%XX` (so `my.pod` is `my%2Epod`), which keeps
//! Kubernetes names with dots one token and `*`/`>`/spaces harmless.

use super::BusError;

/// Encodes a name as one NATS subject token.
pub fn encode_token(name: &str) -> Result<String, BusError> {
    if name.is_empty() {
        return Err(BusError::EmptyToken);
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

/// Decodes a token produced by [`encode_token`].
pub fn decode_token(token: &str) -> Result<String, BusError> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = token
                .get(i + 1..i + 3)
                .ok_or_else(|| BusError::BadToken(token.to_string()))?;
            let b =
                u8::from_str_radix(hex, 16).map_err(|_| BusError::BadToken(token.to_string()))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BusError::BadToken(token.to_string()))
}

/// Builds and parses subjects under one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

/// The subject families metrics are labelled with (see
/// [`Subjects::family_of`]).
pub const SUBJECT_FAMILIES: [&str; 8] = [
    "insight.cluster",
    "insight.workload",
    "forecast",
    "alert",
    "policy.scheduling",
    "policy.orchestration",
    "feedback.scheduling",
    "feedback.orchestration",
];

impl Default for Subjects {
    fn default() -> Self {
        Self::new("apollo")
    }
}

impl Subjects {
    /// Subjects under `prefix` (normally `apollo`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The first token(s) of every subject.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `apollo.insight.workload.<ns>.<pod>`
    pub fn workload(&self, namespace: &str, pod: &str) -> Result<String, BusError> {
        Ok(format!(
            "{}.insight.workload.{}.{}",
            self.prefix,
            encode_token(namespace)?,
            encode_token(pod)?
        ))
    }

    /// `apollo.insight.cluster.<node>`
    pub fn cluster(&self, node: &str) -> Result<String, BusError> {
        Ok(format!(
            "{}.insight.cluster.{}",
            self.prefix,
            encode_token(node)?
        ))
    }

    /// `apollo.forecast.<node>`
    pub fn forecast(&self, node: &str) -> Result<String, BusError> {
        Ok(format!("{}.forecast.{}", self.prefix, encode_token(node)?))
    }

    /// `apollo.alert.<kind>.<node>`
    pub fn alert(&self, kind: &str, node: &str) -> Result<String, BusError> {
        Ok(format!(
            "{}.alert.{}.{}",
            self.prefix,
            encode_token(kind)?,
            encode_token(node)?
        ))
    }

    /// `apollo.policy.scheduling.<ns>.<pod>`
    pub fn scheduling_policy(&self, namespace: &str, pod: &str) -> Result<String, BusError> {
        Ok(format!(
            "{}.policy.scheduling.{}.{}",
            self.prefix,
            encode_token(namespace)?,
            encode_token(pod)?
        ))
    }

    /// `apollo.policy.orchestration.<action>.<ns>`
    pub fn orchestration_policy(&self, action: &str, namespace: &str) -> Result<String, BusError> {
        Ok(format!(
            "{}.policy.orchestration.{}.{}",
            self.prefix,
            encode_token(action)?,
            encode_token(namespace)?
        ))
    }

    /// `apollo.feedback.scheduling.<ns>.<pod>`
    pub fn scheduling_feedback(&self, namespace: &str, pod: &str) -> Result<String, BusError> {
        Ok(format!(
            "{}.feedback.scheduling.{}.{}",
            self.prefix,
            encode_token(namespace)?,
            encode_token(pod)?
        ))
    }

    /// `apollo.feedback.orchestration.<action>.<ns>`
    pub fn orchestration_feedback(
        &self,
        action: &str,
        namespace: &str,
    ) -> Result<String, BusError> {
        Ok(format!(
            "{}.feedback.orchestration.{}.{}",
            self.prefix,
            encode_token(action)?,
            encode_token(namespace)?
        ))
    }

    /// Wildcard over every subject of a family, e.g. `family("insight.cluster")`
    /// is `apollo.insight.cluster.>`.
    pub fn all(&self, family: &str) -> String {
        format!("{}.{}.>", self.prefix, family)
    }

    /// The family of `subject` for metric labels, from a fixed set so a
    /// stray subject cannot grow the label space: `insight.cluster`,
    /// `insight.workload`, `forecast`, `alert`, `policy.scheduling`,
    /// `policy.orchestration`, `feedback.scheduling`,
    /// `feedback.orchestration`, else `other`.
    pub fn family_of(&self, subject: &str) -> &'static str {
        let Some(rest) = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('.'))
        else {
            return "other";
        };
        SUBJECT_FAMILIES
            .into_iter()
            .find(|f| {
                rest.strip_prefix(f)
                    .is_some_and(|tail| tail.starts_with('.'))
            })
            .unwrap_or("other")
    }

    /// The decoded tokens after `family` in `subject`, or `None` when the
    /// subject is not of that family.
    pub fn parse(&self, family: &str, subject: &str) -> Option<Vec<String>> {
        let head = format!("{}.{}.", self.prefix, family);
        let rest = subject.strip_prefix(&head)?;
        rest.split('.').map(|t| decode_token(t).ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_awkward_names() {
        for name in ["plain", "my.pod-0", "a*b>c d", "ümlaut", "100%", "x_y"] {
            let token = encode_token(name).unwrap();
            assert!(!token.contains(['.', '*', '>', ' ']), "{token}");
            assert_eq!(decode_token(&token).unwrap(), name);
        }
        assert!(encode_token("").is_err());
        assert!(decode_token("%G1").is_err());
        assert!(decode_token("abc%4").is_err());
    }

    #[test]
    fn families_come_from_a_fixed_set() {
        let s = Subjects::new("t1");
        assert_eq!(s.family_of("t1.insight.workload.ml.p"), "insight.workload");
        assert_eq!(s.family_of("t1.forecast.n"), "forecast");
        assert_eq!(s.family_of("t1.alert.overload.n"), "alert");
        assert_eq!(
            s.family_of("t1.policy.orchestration.migrate.ns"),
            "policy.orchestration"
        );
        assert_eq!(s.family_of("t1.forecastx.n"), "other");
        assert_eq!(s.family_of("t2.forecast.n"), "other");
        assert_eq!(s.family_of("t1.insight.anything.n"), "other");
    }

    #[test]
    fn subjects_follow_the_scheme() {
        let s = Subjects::default();
        assert_eq!(
            s.workload("ml", "trainer.0").unwrap(),
            "apollo.insight.workload.ml.trainer%2E0"
        );
        assert_eq!(
            s.cluster("node-1").unwrap(),
            "apollo.insight.cluster.node-1"
        );
        assert_eq!(s.forecast("n").unwrap(), "apollo.forecast.n");
        assert_eq!(s.alert("overload", "n").unwrap(), "apollo.alert.overload.n");
        assert_eq!(
            s.scheduling_policy("ns", "p").unwrap(),
            "apollo.policy.scheduling.ns.p"
        );
        assert_eq!(
            s.orchestration_policy("migrate", "ns").unwrap(),
            "apollo.policy.orchestration.migrate.ns"
        );
        assert_eq!(
            s.scheduling_feedback("ns", "p").unwrap(),
            "apollo.feedback.scheduling.ns.p"
        );
        assert_eq!(
            s.orchestration_feedback("scale_up", "ns").unwrap(),
            "apollo.feedback.orchestration.scale_up.ns"
        );
        assert_eq!(s.all("insight.cluster"), "apollo.insight.cluster.>");
        assert_eq!(
            s.parse("insight.workload", "apollo.insight.workload.ml.trainer%2E0")
                .unwrap(),
            vec!["ml".to_string(), "trainer.0".to_string()]
        );
        assert!(s.parse("insight.cluster", "apollo.forecast.n").is_none());
    }
}
