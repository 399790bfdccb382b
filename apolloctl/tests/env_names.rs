//! One meaning per environment variable across the four services.
//!
//! Deployments put the settings every service reads in one shared ConfigMap
//! (and compose in one `.env`), so an `APOLLO_*` name read by two services
//! must mean the same there: same help text, same default and same value
//! type. This renders every service's clap `Command` and fails on a name
//! shared with different meaning, and on names that differ only by a plural
//! `S` (too easy to set the wrong one).

use std::collections::BTreeMap;

use clap::CommandFactory;

/// Names whose default is per service by design: each service listens on
/// its own port. Their help text and type must still agree.
const DEFAULT_PER_SERVICE: &[&str] = &["APOLLO_GRPC_ADDR"];

/// What one service says about one environment variable.
#[derive(Debug, Clone, PartialEq)]
struct Meaning {
    help: String,
    defaults: Vec<String>,
    value_type: String,
    takes_value: bool,
}

fn meanings(service: &str, command: clap::Command) -> Vec<(String, String, Meaning)> {
    let mut out = Vec::new();
    for arg in command.get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let meaning = Meaning {
            help: arg.get_help().map(|h| h.to_string()).unwrap_or_default(),
            defaults: arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect(),
            value_type: format!("{:?}", arg.get_value_parser().type_id()),
            takes_value: arg.get_action().takes_values(),
        };
        out.push((
            env.to_string_lossy().into_owned(),
            service.to_string(),
            meaning,
        ));
    }
    out
}

fn all_services() -> Vec<(String, String, Meaning)> {
    let mut all = Vec::new();
    all.extend(meanings("apollo-ingest", apollo_ingest::Config::command()));
    all.extend(meanings(
        "apollo-forecaster",
        apollo_forecaster::Config::command(),
    ));
    all.extend(meanings(
        "apollo-scheduling",
        apollo_scheduling::config::Config::command(),
    ));
    all.extend(meanings(
        "apollo-orchestration",
        apollo_orchestration::Config::command(),
    ));
    all
}

/// Every conflict between two services' readings of one name.
fn conflicts(all: &[(String, String, Meaning)]) -> Vec<String> {
    let mut by_name: BTreeMap<&str, Vec<(&str, &Meaning)>> = BTreeMap::new();
    for (env, service, meaning) in all {
        by_name.entry(env).or_default().push((service, meaning));
    }
    let mut problems = Vec::new();
    for (env, readers) in &by_name {
        let (first_service, first) = readers[0];
        for &(service, meaning) in &readers[1..] {
            let mut differs = Vec::new();
            if meaning.help != first.help {
                differs.push(format!("help {:?} vs {:?}", first.help, meaning.help));
            }
            if meaning.defaults != first.defaults && !DEFAULT_PER_SERVICE.contains(env) {
                differs.push(format!(
                    "default {:?} vs {:?}",
                    first.defaults, meaning.defaults
                ));
            }
            if meaning.value_type != first.value_type || meaning.takes_value != first.takes_value {
                differs.push(format!(
                    "value type {} vs {}",
                    first.value_type, meaning.value_type
                ));
            }
            if !differs.is_empty() {
                problems.push(format!(
                    "{env}: {first_service} and {service} differ: {}",
                    differs.join("; ")
                ));
            }
        }
    }
    for name in by_name.keys() {
        let plural = format!("{name}S");
        if by_name.contains_key(plural.as_str()) {
            problems.push(format!(
                "{name} and {plural} differ only by a plural S: rename one"
            ));
        }
    }
    problems
}

#[test]
fn every_environment_variable_has_one_meaning_across_services() {
    let all = all_services();
    let services: std::collections::BTreeSet<&str> =
        all.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(services.len(), 4, "all four services render their flags");
    assert!(
        all.iter().any(|(env, _, _)| env == "APOLLO_NATS_URL"),
        "shared settings are found"
    );
    let problems = conflicts(&all);
    assert!(
        problems.is_empty(),
        "environment variables with more than one meaning:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_name_shared_with_another_meaning_is_reported() {
    let meaning = |help: &str, default: &str, value_type: &str| Meaning {
        help: help.into(),
        defaults: vec![default.into()],
        value_type: value_type.into(),
        takes_value: true,
    };
    let same = meaning("Stale after.", "2m", "Duration");
    let ok = vec![
        ("APOLLO_X".to_string(), "a".to_string(), same.clone()),
        ("APOLLO_X".to_string(), "b".to_string(), same),
    ];
    assert!(conflicts(&ok).is_empty());
    for other in [
        meaning("Other help.", "2m", "Duration"),
        meaning("Stale after.", "5m", "Duration"),
        meaning("Stale after.", "2m", "f64"),
    ] {
        let bad = vec![
            (
                "APOLLO_X".to_string(),
                "a".to_string(),
                meaning("Stale after.", "2m", "Duration"),
            ),
            ("APOLLO_X".to_string(), "b".to_string(), other),
        ];
        assert_eq!(conflicts(&bad).len(), 1, "{bad:?}");
    }
    let plural = vec![
        (
            "APOLLO_H".to_string(),
            "a".to_string(),
            meaning("h", "1", "u32"),
        ),
        (
            "APOLLO_HS".to_string(),
            "b".to_string(),
            meaning("h", "1", "u32"),
        ),
    ];
    assert_eq!(conflicts(&plural).len(), 1);
}
