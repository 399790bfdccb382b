//! Per-call cost of `GrpcTelemetryLayer`, printed as JSON.
//!
//! Two gRPC servers in this process on 127.0.0.1 serve the same
//! `grpc.health.v1.Health/Check`, one plain and one behind the layer; one
//! client calls them in alternating rounds of unary calls (one call in
//! flight), so both see the same machine load. Telemetry is installed as a
//! service installs it (text logs at `info` to a sink); with `--otel` spans
//! are also exported through the batch processor to an exporter that drops
//! them, as with an OTLP endpoint set.
//!
//! `cargo run --release -p apollo-common --bin grpc-telemetry-bench -- --calls 2000 --rounds 9`

use std::{net::SocketAddr, time::Instant};

use apollo_common::{config::ObservabilityArgs, grpc_telemetry::GrpcTelemetryLayer};
use clap::Parser;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Compares health checks with and without the telemetry layer.
#[derive(Debug, Parser)]
#[command(name = "grpc-telemetry-bench")]
struct Args {
    /// Calls per round and server.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Rounds per server (alternating).
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Export spans (to a discarding exporter) as with an OTLP endpoint.
    #[arg(long)]
    otel: bool,
}

/// Drops every span: measures the SDK's cost, not a collector's.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

async fn serve(layered: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let incoming = apollo_common::grpc::incoming(listener);
    tokio::spawn(async move {
        // The reporter must outlive the server.
        let _reporter = reporter;
        let result = if layered {
            tonic::transport::Server::builder()
                .layer(GrpcTelemetryLayer)
                .add_service(health)
                .serve_with_incoming(incoming)
                .await
        } else {
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await
        };
        if let Err(err) = result {
            eprintln!("server failed: {err}");
        }
    });
    addr
}

/// Per-call latencies of one round, in microseconds, sorted.
async fn round(client: &mut HealthClient<tonic::transport::Channel>, calls: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        client
            .check(HealthCheckRequest::default())
            .await
            .expect("health check answers");
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
    out.sort_by(f64::total_cmp);
    out
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let provider = args.otel.then(|| {
        SdkTracerProvider::builder()
            .with_batch_exporter(Discard)
            .build()
    });
    let telemetry = ObservabilityArgs {
        log_filter: "info".into(),
        ..ObservabilityArgs::default()
    };
    let _guard = apollo_common::telemetry::init_with(
        "grpc-telemetry-bench",
        &telemetry,
        provider,
        std::io::sink,
    )?;

    let plain = serve(false).await;
    let layered = serve(true).await;
    let connect = |addr: SocketAddr| async move {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .map(HealthClient::new)
    };
    let mut plain_client = connect(plain).await?;
    let mut layered_client = connect(layered).await?;
    // Warm both connections up.
    round(&mut plain_client, 200).await;
    round(&mut layered_client, 200).await;

    let mut rows = Vec::new();
    let (mut plain_p50, mut layered_p50, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..args.rounds {
        // Alternate which server goes first, so drift hits both alike.
        let (p, l) = if r % 2 == 0 {
            let p = round(&mut plain_client, args.calls).await;
            (p, round(&mut layered_client, args.calls).await)
        } else {
            let l = round(&mut layered_client, args.calls).await;
            (round(&mut plain_client, args.calls).await, l)
        };
        let (p50, l50) = (quantile(&p, 0.5), quantile(&l, 0.5));
        rows.push(serde_json::json!({
            "round": r,
            "plain_us": {"p50": p50, "p99": quantile(&p, 0.99)},
            "layered_us": {"p50": l50, "p99": quantile(&l, 0.99)},
            "ratio_p50": l50 / p50,
        }));
        plain_p50.push(p50);
        layered_p50.push(l50);
        ratios.push(l50 / p50);
    }
    let (min_ratio, max_ratio) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let summary = serde_json::json!({
        "bench": "grpc-telemetry-layer",
        "otel_export": args.otel,
        "calls_per_round": args.calls,
        "rounds": args.rounds,
        "median_of_round_p50_us": {
            "plain": median(plain_p50.clone()),
            "layered": median(layered_p50.clone()),
        },
        "median_added_us": median(
            layered_p50.iter().zip(&plain_p50).map(|(l, p)| l - p).collect()
        ),
        "ratio_p50": {"median": median(ratios.clone()), "min": min_ratio, "max": max_ratio},
        "per_round": rows,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
