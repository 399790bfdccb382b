//! The outbox's spool file: what NATS had not stored by the end of a
//! shutdown is written here (`--outbox-spool PATH`) and published first on
//! the next start.
//!
//! One JSON object per line, in outbox order: `{"subject": ..., "policy":
//! {...}}` or `{"subject": ..., "result": {...}}`, the message as
//! protobuf-JSON. A message published again from the spool has the same
//! subject and content, hence the same `Nats-Msg-Id`, so JetStream drops it
//! if an earlier attempt was stored after all (within the stream's
//! duplicate window, `--duplicate-window`, 2 minutes by default).
//!
//! The file is written whole to `PATH.tmp`, synced, then renamed over
//! `PATH`, so a crash mid-write leaves the previous spool or none, never
//! half of one. It is removed once everything loaded from it is stored. On
//! load every line is checked: an undecodable line, or one whose subject is
//! not an orchestration policy or result subject under this service's
//! prefix, is skipped, logged and counted, never published.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use apollo_common::bus::{from_json, to_json, Subjects};
use apollo_proto::{ExecutionResult, OrchestrationPolicy};
use serde::{Deserialize, Serialize};

use crate::outbox::Outgoing;

/// Longest spool file read on start (a larger one is not a spool this
/// service wrote).
pub const MAX_SPOOL_BYTES: u64 = 256 << 20;

/// Errors reading or writing the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The file could not be read, written or renamed.
    #[error("outbox spool {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_SPOOL_BYTES`].
    #[error("outbox spool {path} is {size} bytes, more than the {MAX_SPOOL_BYTES} a spool can be")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
}

/// One line of the spool.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<serde_json::Value>,
}

/// What [`load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Messages to publish, in order: (subject, message).
    pub messages: Vec<(String, Outgoing)>,
    /// Lines skipped, each with its line number and why.
    pub rejected: Vec<(usize, String)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `messages` to `path` (atomically: a temporary file renamed over
/// it); with no messages, removes `path`. Returns how many were written.
pub fn write(path: &Path, messages: &[(String, Outgoing)]) -> Result<usize, SpoolError> {
    if messages.is_empty() {
        return remove(path).map(|()| 0);
    }
    let mut text = Vec::new();
    for (subject, message) in messages {
        let (policy, result) = match message {
            Outgoing::Policy(p) => (Some(json_value(p)), None),
            Outgoing::Result(r) => (None, Some(json_value(r))),
        };
        let line = Line {
            subject: subject.clone(),
            policy,
            result,
        };
        // A `Line` of JSON values always serialises.
        if let Ok(bytes) = serde_json::to_vec(&line) {
            text.extend_from_slice(&bytes);
            text.push(b'\n');
        }
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&text).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename itself survives a power loss once the directory is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(messages.len())
}

/// Removes the spool (nothing left to publish); a missing file is fine.
pub fn remove(path: &Path) -> Result<(), SpoolError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Reads the spool at `path` (none: nothing to publish), checking every
/// line against `subjects`.
pub fn load(path: &Path, subjects: &Subjects) -> Result<Loaded, SpoolError> {
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(io(path)(e)),
    };
    if size > MAX_SPOOL_BYTES {
        return Err(SpoolError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    let mut out = Loaded::default();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(raw, subjects) {
            Ok(m) => out.messages.push(m),
            Err(why) => out.rejected.push((i + 1, why)),
        }
    }
    Ok(out)
}

fn parse_line(raw: &[u8], subjects: &Subjects) -> Result<(String, Outgoing), String> {
    let line: Line = serde_json::from_slice(raw).map_err(|e| format!("not a spool line: {e}"))?;
    let prefix = subjects.prefix();
    let (family, message) = match (line.policy, line.result) {
        (Some(p), None) => (
            "policy",
            Outgoing::Policy(decode::<OrchestrationPolicy>(p, "policy")?),
        ),
        (None, Some(r)) => (
            "feedback",
            Outgoing::Result(decode::<ExecutionResult>(r, "result")?),
        ),
        _ => return Err("needs exactly one of policy and result".into()),
    };
    let expected = format!("{prefix}.{family}.orchestration.");
    if !line.subject.starts_with(&expected) || line.subject.len() == expected.len() {
        return Err(format!(
            "subject {:?} is not under {expected}>",
            line.subject
        ));
    }
    let id = match &message {
        Outgoing::Policy(p) => &p.request_id,
        Outgoing::Result(r) => &r.request_id,
    };
    if id.trim().is_empty() {
        return Err("no request_id".into());
    }
    Ok((line.subject, message))
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value, what: &str) -> Result<T, String> {
    let bytes = serde_json::to_vec(&v).map_err(|e| format!("{what}: {e}"))?;
    from_json(&bytes).map_err(|e| format!("{what}: {e}"))
}

fn json_value<T: Serialize>(msg: &T) -> serde_json::Value {
    // The same protobuf-JSON the bus publishes.
    to_json(msg)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(id: &str) -> OrchestrationPolicy {
        OrchestrationPolicy {
            request_id: id.into(),
            reason: "hot node\nline two".into(),
            ..Default::default()
        }
    }

    #[test]
    fn what_is_written_is_read_back_in_order_with_the_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.spool");
        let s = Subjects::new("apollo");
        let messages = vec![
            (
                "apollo.policy.orchestration.migrate.ml".to_string(),
                Outgoing::Policy(policy("p1")),
            ),
            (
                "apollo.feedback.orchestration.migrate.ml".to_string(),
                Outgoing::Result(ExecutionResult {
                    request_id: "p1".into(),
                    success: true,
                    metrics: [("took_ms".to_string(), "12".to_string())].into(),
                    ..Default::default()
                }),
            ),
            (
                "apollo.policy.orchestration.scale_up.ml".to_string(),
                Outgoing::Policy(policy("p2")),
            ),
        ];
        assert_eq!(write(&path, &messages).unwrap(), 3);
        assert!(!path.with_extension("tmp").exists());
        let loaded = load(&path, &s).unwrap();
        assert!(loaded.rejected.is_empty(), "{:?}", loaded.rejected);
        assert_eq!(loaded.messages, messages);
        // Same content, same bytes on the bus: the same Nats-Msg-Id.
        for ((_, a), (_, b)) in loaded.messages.iter().zip(&messages) {
            let bytes = |m: &Outgoing| match m {
                Outgoing::Policy(p) => to_json(p).unwrap(),
                Outgoing::Result(r) => to_json(r).unwrap(),
            };
            assert_eq!(bytes(a), bytes(b));
        }
        // Nothing left: the file goes.
        write(&path, &[]).unwrap();
        assert!(!path.exists());
        assert!(load(&path, &s).unwrap().messages.is_empty());
    }

    #[test]
    fn bad_lines_are_skipped_with_the_reason_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.spool");
        let good = serde_json::json!({"subject": "apollo.policy.orchestration.migrate.ml", "policy": {"requestId": "p1"}});
        let cases = [
            ("not json", "not a spool line"),
            (
                r#"{"subject":"apollo.policy.orchestration.migrate.ml"}"#,
                "exactly one",
            ),
            (
                r#"{"subject":"apollo.insight.cluster.n1","policy":{"requestId":"x"}}"#,
                "is not under apollo.policy.orchestration.>",
            ),
            (
                r#"{"subject":"other.policy.orchestration.migrate.ml","policy":{"requestId":"x"}}"#,
                "is not under",
            ),
            (
                r#"{"subject":"apollo.feedback.orchestration.migrate.ml","policy":{"requestId":"x"}}"#,
                "is not under apollo.policy",
            ),
            (
                r#"{"subject":"apollo.policy.orchestration.migrate.ml","policy":{"requestId":""}}"#,
                "no request_id",
            ),
            (
                r#"{"subject":"apollo.policy.orchestration.migrate.ml","policy":{"action":"NOT_AN_ACTION","requestId":"x"}}"#,
                "policy:",
            ),
            (
                r#"{"subject":"apollo.policy.orchestration.migrate.ml","policy":{"requestId":"x"},"extra":1}"#,
                "unknown field",
            ),
        ];
        let mut text = String::new();
        for (line, _) in &cases {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&good.to_string());
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        let loaded = load(&path, &Subjects::new("apollo")).unwrap();
        assert_eq!(loaded.messages.len(), 1);
        assert_eq!(loaded.rejected.len(), cases.len());
        for ((line, why), (_, expected)) in loaded.rejected.iter().zip(&cases) {
            assert!(why.contains(expected), "line {line}: {why}");
        }
    }

    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.spool");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_SPOOL_BYTES + 1).unwrap();
        assert!(matches!(
            load(&path, &Subjects::new("apollo")),
            Err(SpoolError::TooLarge { .. })
        ));
    }
}
