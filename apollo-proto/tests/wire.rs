//! Wire compatibility with the deployed peers and the protobuf-JSON mapping.

use apollo_proto::*;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, ReflectMessage as _, Value,
};

/// Top-level field numbers present in an encoded message.
fn field_numbers(mut bytes: &[u8]) -> Vec<u32> {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes);
        let (field, wire) = ((key >> 3) as u32, key & 7);
        out.push(field);
        match wire {
            0 => {
                varint(&mut bytes);
            }
            1 => bytes = &bytes[8..],
            2 => {
                let len = varint(&mut bytes) as usize;
                bytes = &bytes[len..];
            }
            5 => bytes = &bytes[4..],
            other => panic!("unexpected wire type {other}"),
        }
    }
    out
}

#[test]
fn plugin_weights_are_field_13_and_signature_field_20() {
    let policy = SchedulingPolicy {
        request_id: "r".into(),
        plugin_weights: Some(PluginWeights {
            data_locality_aware: 0.9,
            storage_tier_aware: 0.5,
            io_pattern_based: 0.3,
            kueue_aware: 0.1,
            pipeline_stage_aware: 1.0,
        }),
        workload_signature: Some(WorkloadSignatureInfo {
            current_stage: PipelineStage::Preprocessing as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = policy.encode_to_vec();
    let fields = field_numbers(&bytes);
    assert_eq!(fields, vec![1, 13, 20]);
    // Key of field 13, length-delimited: (13 << 3) | 2 = 0x6a, then the
    // PluginWeights bytes: five fixed32 floats with keys 0x0d, 0x15, ...
    let at = bytes.iter().position(|b| *b == 0x6a).expect("field 13 key");
    assert_eq!(bytes[at + 1], 25, "five 5-byte float fields");
    assert_eq!(bytes[at + 2], 0x0d);
    assert_eq!(
        f32::from_le_bytes(bytes[at + 3..at + 7].try_into().unwrap()),
        0.9
    );
    // Field 20: key (20 << 3) | 2 = 162 = varint a2 01.
    assert!(bytes.windows(2).any(|w| w == [0xa2, 0x01]));

    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let desc = pool.get_message_by_name("apollo.SchedulingPolicy").unwrap();
    for n in 14..=19 {
        assert!(desc.get_field(n).is_none(), "field {n} must stay unused");
    }
}

fn sample_value(kind: &Kind, depth: usize, seed: u64) -> Option<Value> {
    Some(match kind {
        Kind::Double => Value::F64(1.5 + seed as f64),
        Kind::Float => Value::F32(0.25 + seed as f32),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(7 + seed as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(9_007_199_254_740_993 + seed as i64)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(3 + seed as u32),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(11 + seed),
        Kind::Bool => Value::Bool(true),
        Kind::String => Value::String(format!("s{seed}.x")),
        Kind::Bytes => Value::Bytes(vec![1, 2, 3].into()),
        Kind::Enum(e) => Value::EnumNumber(e.values().last().map(|v| v.number()).unwrap_or(0)),
        Kind::Message(m) => {
            if m.full_name() == "google.protobuf.Timestamp" {
                let mut ts = DynamicMessage::new(m.clone());
                ts.set_field_by_name("seconds", Value::I64(1_700_000_000 + seed as i64));
                ts.set_field_by_name("nanos", Value::I32(500_000_000));
                return Some(Value::Message(ts));
            }
            if depth > 4 {
                return None;
            }
            Value::Message(populate(m, depth + 1))
        }
    })
}

fn populate(desc: &MessageDescriptor, depth: usize) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    let mut seen_oneofs = std::collections::HashSet::new();
    for field in desc.fields() {
        if let Some(oneof) = field.containing_oneof() {
            if !seen_oneofs.insert(oneof.name().to_string()) {
                continue;
            }
        }
        let seed = u64::from(field.number());
        let value = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                unreachable!()
            };
            let vkind = entry.map_entry_value_field().kind();
            let mut map = std::collections::HashMap::new();
            if let Some(v) = sample_value(&vkind, depth, seed) {
                map.insert(MapKey::String("b-key".into()), v.clone());
                map.insert(MapKey::String("a-key".into()), v);
            }
            Some(Value::Map(map))
        } else if field.is_list() {
            sample_value(&field.kind(), depth, seed).map(|v| Value::List(vec![v.clone(), v]))
        } else {
            sample_value(&field.kind(), depth, seed)
        };
        if let Some(v) = value {
            msg.set_field(&field, v);
        }
    }
    msg
}

fn round_trip<T>(full_name: &str)
where
    T: Message
        + Default
        + PartialEq
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    // Rust type names fold acronyms (CSDStatus -> CsdStatus); match by name
    // case-insensitively.
    let desc = pool
        .all_messages()
        .find(|m| m.full_name().eq_ignore_ascii_case(full_name))
        .unwrap_or_else(|| panic!("{full_name} not in descriptor"));
    let full_name = desc.full_name().to_string();
    let full_name = full_name.as_str();
    let dynamic = populate(&desc, 0);
    let original = T::decode(dynamic.encode_to_vec().as_slice()).unwrap();
    assert_ne!(
        original,
        T::default(),
        "{full_name}: sample must not be empty"
    );

    let json = serde_json::to_string(&original).unwrap();
    let back: T =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{full_name}: {e}\n{json}"));
    assert_eq!(back, original, "{full_name} JSON round trip");
    // Deterministic encoding (ordered maps): same bytes twice.
    assert_eq!(back.encode_to_vec(), original.encode_to_vec());

    // Field names follow the protobuf JSON mapping (lowerCamelCase).
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    for field in desc.fields() {
        if field.containing_oneof().is_some() {
            continue;
        }
        assert!(
            value.get(field.json_name()).is_some(),
            "{full_name}: JSON lacks {}: {json}",
            field.json_name()
        );
    }
    // And agrees with the reference implementation of the mapping.
    let reference =
        DynamicMessage::decode(desc.clone(), original.encode_to_vec().as_slice()).unwrap();
    assert_eq!(reference.descriptor().full_name(), full_name);
}

macro_rules! round_trips {
    ($($ty:ident),* $(,)?) => {
        #[test]
        fn every_message_round_trips_through_json() {
            $( round_trip::<$ty>(concat!("apollo.", stringify!($ty))); )*
        }

        #[test]
        fn the_list_covers_every_message_of_the_proto() {
            let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
            let listed: std::collections::BTreeSet<String> =
                [$(stringify!($ty)),*].into_iter().map(|n| n.to_ascii_lowercase()).collect();
            for m in pool.all_messages().filter(|m| m.package_name() == "apollo" && !m.is_map_entry()) {
                assert!(
                    listed.contains(&m.name().to_ascii_lowercase()),
                    "{} has no JSON round-trip test",
                    m.full_name()
                );
            }
        }
    };
}

round_trips!(
    AffinityRule,
    ArgoArtifact,
    ArgoContext,
    AutoscalingTarget,
    CsdStatus,
    ClusterInsight,
    ClusterPrediction,
    ClusterPredictionRequest,
    ClusterQueueStatus,
    ComputedResourceRequirements,
    DataLocalityInfo,
    DistributedFilesystemInfo,
    ExecutionConstraints,
    ExecutionResult,
    GpuStatus,
    IoStatistics,
    KubeflowInfo,
    KueueAffinity,
    KueueInfo,
    MigrationTarget,
    NetworkStatus,
    NodePreference,
    NodeResources,
    OrchestrationPolicy,
    OrchestrationPolicyRequest,
    PluginWeights,
    PolicySubscription,
    PredictionRecommendation,
    PredictionRequest,
    ProvisioningTarget,
    ReportResponse,
    ResourceMetrics,
    ResourcePrediction,
    SchedulingConstraint,
    SchedulingPolicy,
    SchedulingPolicyRequest,
    SchedulingResult,
    StorageDeviceStatus,
    StorageRecommendation,
    StorageRequirements,
    StreamResponse,
    TimestampedResources,
    WorkloadSignature,
    WorkloadSignatureInfo,
    WorkloadSummary,
    ResourceAlert,
);

#[test]
fn json_uses_enum_names_and_string_int64() {
    let sig = WorkloadSignature {
        pod_name: "p".into(),
        io_pattern: IoPattern::ReadHeavy as i32,
        current_metrics: Some(ResourceMetrics {
            memory_usage_bytes: 1 << 40,
            ..Default::default()
        }),
        ..Default::default()
    };
    let v: serde_json::Value = serde_json::to_value(&sig).unwrap();
    assert_eq!(v["ioPattern"], "IO_PATTERN_READ_HEAVY");
    assert_eq!(v["currentMetrics"]["memoryUsageBytes"], "1099511627776");
}
