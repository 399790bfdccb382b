//! The bus against real nats-servers configured for each authentication
//! mode and for TLS: the right settings connect, wrong ones stop
//! `Bus::connect` with an error that says what was refused (and never shows
//! the secret), and a user denied a subject gets an error naming the
//! subject and the permission, counted in a metric.

use std::time::Duration;

use apollo_common::{
    bus::{Bus, BusError, PermissionViolation},
    config::{NatsArgs, StreamArgs},
    testing::{TestCa, TestNats},
};
use tokio_util::sync::CancellationToken;

const READY: Duration = Duration::from_secs(20);

fn args(server: &TestNats) -> (NatsArgs, StreamArgs) {
    server.bus_args()
}

async fn connect(nats: &NatsArgs, streams: &StreamArgs) -> Result<Bus, BusError> {
    Bus::connect("auth-test", nats, streams, CancellationToken::new()).await
}

/// Connects and waits until the streams are in place; a publish then
/// round-trips through JetStream.
async fn assert_works(nats: &NatsArgs, streams: &StreamArgs) {
    let bus = connect(nats, streams)
        .await
        .unwrap_or_else(|e| panic!("connect with {nats:?}: {e}"));
    assert!(bus.wait_ready(READY).await, "not ready with {nats:?}");
    let subject = bus.subjects().cluster("node-1").unwrap();
    let stored = bus
        .publish(subject, &serde_json::json!({"nodeName": "node-1"}))
        .await
        .unwrap();
    assert!(stored.sequence >= 1);
    bus.drain().await;
}

/// `Bus::connect` fails with `Refused` whose message mentions `expect` and
/// none of `secrets`.
async fn assert_refused(nats: &NatsArgs, streams: &StreamArgs, expect: &str, secrets: &[&str]) {
    let err = connect(nats, streams)
        .await
        .expect_err("connected with wrong settings");
    assert!(matches!(err, BusError::Refused { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(expect), "{msg}");
    for s in secrets {
        assert!(!msg.contains(s), "secret in {msg}");
    }
}

#[tokio::test]
async fn user_and_password() {
    let server = TestNats::start_with_config(
        r#"authorization { users = [ { user: "ingest", password: "right-pass-1" } ] }"#,
    );
    let (mut nats, streams) = args(&server);
    nats.user = Some("ingest".into());
    nats.password = Some("right-pass-1".into());
    assert_works(&nats, &streams).await;

    nats.password = Some("wrong-pass-2".into());
    assert_refused(
        &nats,
        &streams,
        "authorization violation",
        &["wrong-pass-2"],
    )
    .await;
    nats.user = None;
    nats.password = None;
    assert_refused(&nats, &streams, "authorization violation", &[]).await;
}

#[tokio::test]
async fn token() {
    let server = TestNats::start_with_config(r#"authorization { token: "right-token-1" }"#);
    let (mut nats, streams) = args(&server);
    nats.token = Some("right-token-1".into());
    assert_works(&nats, &streams).await;

    nats.token = Some("wrong-token-2".into());
    assert_refused(
        &nats,
        &streams,
        "authorization violation",
        &["wrong-token-2"],
    )
    .await;
}

#[tokio::test]
async fn nkey() {
    let user = nkeys::KeyPair::new_user();
    let server = TestNats::start_with_config(&format!(
        r#"authorization {{ users = [ {{ nkey: "{}" }} ] }}"#,
        user.public_key()
    ));
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    let (mut nats, streams) = args(&server);
    nats.nkey_file = Some(seed_file);
    assert_works(&nats, &streams).await;

    let stranger = nkeys::KeyPair::new_user();
    let stranger_file = dir.path().join("stranger.nk");
    let stranger_seed = stranger.seed().unwrap();
    std::fs::write(&stranger_file, &stranger_seed).unwrap();
    nats.nkey_file = Some(stranger_file);
    assert_refused(
        &nats,
        &streams,
        "authorization violation",
        &[&stranger_seed],
    )
    .await;

    // A file without a seed is a configuration error naming the file.
    let empty = dir.path().join("empty.nk");
    std::fs::write(&empty, "not a seed\n").unwrap();
    nats.nkey_file = Some(empty.clone());
    let err = connect(&nats, &streams).await.unwrap_err();
    assert!(matches!(err, BusError::Config(_)), "{err:?}");
    assert!(
        err.to_string().contains(&empty.display().to_string()),
        "{err}"
    );
}

/// A TLS server whose certificate (for 127.0.0.1) is signed by `ca`;
/// `client_ca` set requires client certificates signed by it.
fn tls_server(ca: &TestCa, client_ca: Option<&TestCa>) -> TestNats {
    let (cert, key) = ca.leaf("127.0.0.1");
    let mut files = vec![("server.pem", cert), ("server.key", key)];
    let mut config = String::from(
        r#"tls { cert_file: "$STORE/server.pem", key_file: "$STORE/server.key", timeout: 5"#,
    );
    if let Some(client_ca) = client_ca {
        files.push(("clients.pem", client_ca.pem()));
        config.push_str(r#", ca_file: "$STORE/clients.pem", verify: true"#);
    }
    config.push_str(" }");
    let files: Vec<(&str, &str)> = files.iter().map(|(n, b)| (*n, b.as_str())).collect();
    TestNats::start_with_files(&config, &files)
}

#[tokio::test]
async fn tls_server_verified_with_the_ca() {
    let ca = TestCa::new("nats CA");
    let server = tls_server(&ca, None);
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, _, _) = ca.write_leaf(dir.path(), "unused", "unused");
    let (mut nats, streams) = args(&server);
    nats.tls_ca = Some(ca_file);
    assert_works(&nats, &streams).await;

    // A CA that did not sign the server's certificate.
    let other = TestCa::new("other CA");
    let (other_ca, _, _) = other.write_leaf(dir.path(), "other", "unused");
    nats.tls_ca = Some(other_ca);
    assert_refused(&nats, &streams, "TLS handshake failed", &[]).await;
    // No CA at all: the server requires TLS, the client cannot verify it.
    nats.tls_ca = None;
    assert_refused(&nats, &streams, "TLS handshake failed", &[]).await;
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_signed_by_the_servers_client_ca() {
    let ca = TestCa::new("nats CA");
    let client_ca = TestCa::new("client CA");
    let server = tls_server(&ca, Some(&client_ca));
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, _, _) = ca.write_leaf(dir.path(), "server", "unused");
    let (_, cert, key) = client_ca.write_leaf(dir.path(), "client", "apollo-ingest");
    let (mut nats, streams) = args(&server);
    nats.tls_ca = Some(ca_file);
    nats.tls_cert = Some(cert);
    nats.tls_key = Some(key);
    assert_works(&nats, &streams).await;

    let stranger = TestCa::new("stranger CA");
    let (_, s_cert, s_key) = stranger.write_leaf(dir.path(), "stranger", "apollo-ingest");
    nats.tls_cert = Some(s_cert);
    nats.tls_key = Some(s_key);
    assert_refused(&nats, &streams, "refused the connection", &[]).await;
    nats.tls_cert = None;
    nats.tls_key = None;
    assert_refused(&nats, &streams, "refused the connection", &[]).await;
}

#[tokio::test]
async fn a_denied_subject_is_a_clear_error_and_counted() {
    // A user allowed the JetStream API and the insight subjects only, as
    // ingest is in deploy/'s production configuration.
    let server = TestNats::start_with_config(
        r#"authorization { users = [ {
            user: "ingest", password: "ingest-pass",
            permissions: {
                publish: { allow: ["$JS.API.>", "denied.insight.>"] },
                subscribe: { allow: ["_INBOX.>"] }
            }
        } ] }"#,
    );
    let (mut nats, streams) = args(&server);
    nats.subject_prefix = "denied".into();
    nats.stream_prefix = "DENIED".into();
    nats.user = Some("ingest".into());
    nats.password = Some("ingest-pass".into());
    // Long enough that a publish waiting for an ack that never comes would
    // end in a timeout (Unavailable), not in PermissionDenied.
    nats.request_timeout = Duration::from_secs(30);
    let bus = connect(&nats, &streams).await.unwrap();
    assert!(bus.wait_ready(READY).await);
    let mut registry = prometheus_client::registry::Registry::default();
    bus.register_metrics(&mut registry);

    let allowed = bus.subjects().cluster("node-1").unwrap();
    bus.publish(allowed, &serde_json::json!({"nodeName": "node-1"}))
        .await
        .expect("allowed subject");

    let forecast = bus.subjects().forecast("node-1").unwrap();
    let err = bus
        .publish(forecast.clone(), &serde_json::json!({"nodeName": "node-1"}))
        .await
        .expect_err("publish on a denied subject");
    match &err {
        BusError::PermissionDenied { operation, subject } => {
            assert_eq!(operation, "publish");
            assert_eq!(subject, &forecast);
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("publish permission"), "{msg}");
    assert!(msg.contains(&forecast), "{msg}");

    // A denied subscription is reported too (core NATS gives no error to
    // the subscriber itself; it would just never receive anything).
    let mut violations = bus.permission_violations();
    let _sub = bus.client().subscribe("denied.policy.>").await.unwrap();
    let v = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let v = violations.recv().await.unwrap();
            if v.operation == "subscribe" {
                return v;
            }
        }
    })
    .await
    .expect("subscription violation reported");
    assert_eq!(
        v,
        PermissionViolation {
            operation: "subscribe".into(),
            subject: "denied.policy.>".into()
        }
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"apollo_nats_permission_denied_total{operation="publish"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"apollo_nats_permission_denied_total{operation="subscribe"} 1"#),
        "{text}"
    );
    bus.drain().await;
}

#[test]
fn permission_violations_parse_from_both_server_generations() {
    assert_eq!(
        PermissionViolation::parse(r#"Permissions Violation for Publish to "apollo.forecast.n1""#),
        Some(PermissionViolation {
            operation: "publish".into(),
            subject: "apollo.forecast.n1".into()
        })
    );
    assert_eq!(
        PermissionViolation::parse(
            r#"'Permissions Violation for Subscription to "apollo.>" using queue "q"'"#
        ),
        Some(PermissionViolation {
            operation: "subscribe".into(),
            subject: "apollo.>".into()
        })
    );
    assert_eq!(
        PermissionViolation::parse("Maximum Payload Violation"),
        None
    );
    assert_eq!(PermissionViolation::parse("permissions"), None);
}

/// Base64url without padding, as JWTs use it.
fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A NATS JWT with `claims` for `subject`, signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = b64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = format!("{header}.{}", b64url(claims.to_string().as_bytes()));
    let signature = issuer.sign(body.as_bytes()).unwrap();
    format!("{body}.{}", b64url(&signature))
}

fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

#[tokio::test]
async fn credentials_file_in_operator_mode() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "apollo-test",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "apollo",
        serde_json::json!({"limits": unlimited, "type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "apollo-ingest",
        serde_json::json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2
        }),
    );
    // JetStream in operator mode needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let server = TestNats::start_with_config(&format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{ {acc}: \"{account_jwt}\", {sys}: \"{system_jwt}\" }}\n",
        acc = account.public_key(),
        sys = system.public_key(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("ingest.creds");
    std::fs::write(&good, creds_file(&user_jwt, &user.seed().unwrap())).unwrap();
    let (mut nats, streams) = args(&server);
    nats.creds_file = Some(good);
    assert_works(&nats, &streams).await;

    // A user issued by an account the server does not know.
    let stranger_account = nkeys::KeyPair::new_account();
    let stranger = nkeys::KeyPair::new_user();
    let stranger_jwt = jwt(
        &stranger_account,
        &stranger.public_key(),
        "intruder",
        serde_json::json!({"pub": {}, "sub": {}, "type": "user", "version": 2}),
    );
    let bad = dir.path().join("intruder.creds");
    let stranger_seed = stranger.seed().unwrap();
    std::fs::write(&bad, creds_file(&stranger_jwt, &stranger_seed)).unwrap();
    nats.creds_file = Some(bad);
    assert_refused(
        &nats,
        &streams,
        "authorization violation",
        &[&stranger_seed],
    )
    .await;
}
