//! Checks `apollo.proto` against the deployed peers' wire contract
//! (`tests/fixtures/wire-contract.md`, or the document named by
//! `APOLLO_WIRE_CONTRACT`): every listed element must exist with the same
//! number, label, type and name. A missing contract fails the test.

use std::path::PathBuf;

use prost_reflect::{Cardinality, DescriptorPool, Kind};

fn contract_path() -> PathBuf {
    std::env::var_os("APOLLO_WIRE_CONTRACT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire-contract.md")
        })
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Double => "double".into(),
        Kind::Float => "float".into(),
        Kind::Int32 => "int32".into(),
        Kind::Int64 => "int64".into(),
        Kind::Uint32 => "uint32".into(),
        Kind::Uint64 => "uint64".into(),
        Kind::Bool => "bool".into(),
        Kind::String => "string".into(),
        Kind::Bytes => "bytes".into(),
        Kind::Message(m) => m.full_name().into(),
        Kind::Enum(e) => e.full_name().into(),
        other => format!("{other:?}"),
    }
}

#[test]
fn proto_keeps_every_element_of_the_wire_contract() {
    let checked = check_contract(&contract_path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(checked > 400, "only {checked} contract items checked");
}

#[test]
fn a_missing_contract_fails_the_check() {
    let missing =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/no-such-contract.md");
    let err = check_contract(&missing).expect_err("a missing contract must not pass");
    assert!(err.contains("no-such-contract.md"), "{err}");
}

/// Checks every element of the contract at `path`; returns how many were checked.
fn check_contract(path: &std::path::Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("wire contract {} unreadable: {e}", path.display()))?;
    let pool = DescriptorPool::decode(apollo_proto::FILE_DESCRIPTOR_SET).unwrap();
    let elements = text
        .split("## Elements")
        .nth(1)
        .ok_or_else(|| format!("{}: no Elements section", path.display()))?;
    let mut checked = 0;
    for block in elements.split("\n### ").skip(1) {
        let mut lines = block.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let (kind, name) = (head[0], head[1]);
        let items: Vec<&str> = lines.filter_map(|l| l.strip_prefix("- ")).collect();
        match kind {
            "enum" => {
                let e = pool
                    .get_enum_by_name(name)
                    .unwrap_or_else(|| panic!("enum {name} missing"));
                for item in items {
                    let (num, value) = item.split_once(": ").unwrap();
                    let v = e
                        .get_value_by_name(value)
                        .unwrap_or_else(|| panic!("{name}.{value} missing"));
                    assert_eq!(v.number(), num.parse::<i32>().unwrap(), "{name}.{value}");
                    checked += 1;
                }
            }
            "message" => {
                let m = pool
                    .get_message_by_name(name)
                    .unwrap_or_else(|| panic!("message {name} missing"));
                for item in items {
                    let (num, rest) = item.split_once(": ").unwrap();
                    let num: u32 = num.parse().unwrap();
                    let f = m
                        .get_field(num)
                        .unwrap_or_else(|| panic!("{name} field {num} missing"));
                    let parts: Vec<&str> = rest.split_whitespace().collect();
                    let (repeated, parts) = match parts[0] {
                        "repeated" => (true, &parts[1..]),
                        _ => (false, &parts[..]),
                    };
                    assert_eq!(f.name(), parts[1], "{name} field {num} name");
                    if let Some(map) = parts[0].strip_prefix("map<") {
                        assert!(f.is_map(), "{name}.{} must be a map", f.name());
                        let Kind::Message(entry) = f.kind() else {
                            unreachable!()
                        };
                        let (k, v) = map.trim_end_matches('>').split_once(',').unwrap();
                        assert_eq!(kind_name(&entry.map_entry_key_field().kind()), k);
                        assert_eq!(kind_name(&entry.map_entry_value_field().kind()), v);
                    } else {
                        assert!(!f.is_map());
                        assert_eq!(kind_name(&f.kind()), parts[0], "{name}.{} type", f.name());
                        assert_eq!(
                            f.cardinality() == Cardinality::Repeated,
                            repeated,
                            "{name}.{} label",
                            f.name()
                        );
                    }
                    if parts.get(2) == Some(&"oneof") {
                        assert_eq!(
                            f.containing_oneof()
                                .map(|o| o.name().to_string())
                                .as_deref(),
                            parts.get(3).copied()
                        );
                    }
                    checked += 1;
                }
            }
            "service" => {
                let s = pool
                    .get_service_by_name(name)
                    .unwrap_or_else(|| panic!("service {name} missing"));
                for item in items {
                    let (method, sig) = item.split_once(": ").unwrap();
                    let m = s
                        .methods()
                        .find(|m| m.name() == method)
                        .unwrap_or_else(|| panic!("{name}.{method} missing"));
                    let (input, output) = sig.split_once(" -> ").unwrap();
                    assert_eq!(
                        m.is_client_streaming(),
                        input.starts_with("stream "),
                        "{name}.{method}"
                    );
                    assert_eq!(
                        m.is_server_streaming(),
                        output.starts_with("stream "),
                        "{name}.{method}"
                    );
                    assert_eq!(m.input().full_name(), input.trim_start_matches("stream "));
                    assert_eq!(m.output().full_name(), output.trim_start_matches("stream "));
                    checked += 1;
                }
            }
            other => panic!("unknown element kind {other}"),
        }
    }
    Ok(checked)
}
