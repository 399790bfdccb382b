//! Faults survived with nothing lost: the services as real processes against
//! a real nats-server on loopback, each fault bounded in count and time.
//! Every test prints its figures as one JSON line on stderr (`"fault": ...`),
//! which is what BENCHMARKS.md records.

mod procs;
mod scenario;

mod cluster;
mod engine_restart;
mod graceful_shutdown;
mod nats_restart;
mod orchestration_restart;
mod outbox_spool;
