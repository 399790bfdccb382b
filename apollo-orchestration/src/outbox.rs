//! Policies and execution results waiting for NATS.
//!
//! A policy the engine issued must reach the policy stream, or no
//! subscriber ever sees it. When a publish fails (NATS down, no ack), the
//! message waits here, in order, and a background task publishes it once
//! the bus is ready again. New messages queue behind waiting ones, so the
//! stream keeps the order they were issued in. The outbox holds at most
//! `--policy-outbox` messages; past that the oldest is dropped and counted
//! (`apollo_orchestration_outbox_dropped_total`). Only failures a retry can
//! cure wait (NATS unavailable, no ack); one that cannot (the service's NATS
//! user lacks the permission) is logged and dropped, also counted, rather
//! than hold back everything behind it.
//!
//! A retried publish carries the same `Nats-Msg-Id` (derived from subject
//! and content), so one whose first attempt was stored but not acknowledged
//! is not stored twice (within the stream's duplicate window).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use apollo_common::shutdown::CancellationToken;
use apollo_common::{Bus, BusError};
use apollo_proto::{ExecutionResult, OrchestrationPolicy};
use tokio::sync::Notify;

use crate::metrics::Metrics;

/// A message for the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// An issued policy, for the policy stream.
    Policy(OrchestrationPolicy),
    /// An execution result, for the feedback stream.
    Result(ExecutionResult),
}

impl Outgoing {
    fn request_id(&self) -> &str {
        match self {
            Self::Policy(p) => &p.request_id,
            Self::Result(r) => &r.request_id,
        }
    }

    /// Publishes; `Err(true)` when a retry may succeed.
    async fn publish(&self, bus: &Bus, subject: String) -> Result<(), (BusError, bool)> {
        let outcome = match self {
            Self::Policy(p) => bus.publish(subject, p).await.map(drop),
            Self::Result(r) => bus.publish(subject, r).await.map(drop),
        };
        outcome.map_err(|e| {
            let retry = e.grpc_code() == tonic::Code::Unavailable;
            (e, retry)
        })
    }
}

struct Entry {
    seq: u64,
    subject: String,
    message: Outgoing,
}

struct Inner {
    bus: Bus,
    capacity: usize,
    queue: Mutex<(u64, VecDeque<Entry>)>,
    wake: Notify,
    metrics: Metrics,
}

/// The outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("capacity", &self.inner.capacity)
            .field("depth", &self.depth())
            .finish()
    }
}

impl Outbox {
    /// An outbox of `capacity` messages in front of `bus`.
    pub fn new(bus: Bus, capacity: usize, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                bus,
                capacity: capacity.max(1),
                queue: Mutex::new((0, VecDeque::new())),
                wake: Notify::new(),
                metrics,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (u64, VecDeque<Entry>)> {
        self.inner.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages waiting.
    pub fn depth(&self) -> usize {
        self.lock().1.len()
    }

    /// Publishes `message` now if nothing is waiting and NATS takes it, else
    /// queues it for the background task.
    pub async fn send(&self, subject: String, message: Outgoing) {
        if self.depth() == 0 && self.inner.bus.is_ready() {
            match message.publish(&self.inner.bus, subject.clone()).await {
                Ok(()) => return,
                Err((err, false)) => {
                    self.refused(&message, &err);
                    return;
                }
                Err((err, true)) => {
                    self.inner.metrics.publish_failures.inc();
                    tracing::warn!(%err, request_id = %message.request_id(), "not stored, kept in the outbox");
                }
            }
        }
        self.push(subject, message);
    }

    /// A message NATS refuses for good: dropped, counted, logged.
    fn refused(&self, message: &Outgoing, err: &BusError) {
        self.inner.metrics.publish_failures.inc();
        self.inner.metrics.outbox_dropped.inc();
        tracing::error!(%err, request_id = %message.request_id(), "refused by NATS, dropped");
    }

    fn pop_if_front(&self, seq: u64) {
        let mut q = self.lock();
        // Dropped meanwhile if the outbox overflowed.
        if q.1.front().is_some_and(|e| e.seq == seq) {
            q.1.pop_front();
        }
        self.inner.metrics.outbox_depth.set(q.1.len() as i64);
    }

    fn push(&self, subject: String, message: Outgoing) {
        let m = &self.inner.metrics;
        {
            let mut q = self.lock();
            q.0 += 1;
            let seq = q.0;
            if q.1.len() >= self.inner.capacity {
                if let Some(old) = q.1.pop_front() {
                    m.outbox_dropped.inc();
                    tracing::error!(
                        request_id = %old.message.request_id(),
                        capacity = self.inner.capacity,
                        "outbox full, oldest message dropped"
                    );
                }
            }
            q.1.push_back(Entry {
                seq,
                subject,
                message,
            });
            m.outbox_depth.set(q.1.len() as i64);
        }
        self.inner.wake.notify_one();
    }

    /// Queues messages left from an earlier run (the spool), in order,
    /// ahead of anything sent later. Returns the sequence number of the
    /// last one (see [`Outbox::sent_past`]).
    pub fn restore(&self, messages: Vec<(String, Outgoing)>) -> u64 {
        for (subject, message) in messages {
            self.push(subject, message);
        }
        self.lock().0
    }

    /// Resolves once every message up to sequence `seq` has left the
    /// outbox (stored, refused or dropped).
    pub async fn sent_past(&self, seq: u64) {
        loop {
            let done = self.lock().1.front().is_none_or(|e| e.seq > seq);
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until nothing waits or `deadline`, NATS up or not (the
    /// [`run`](Outbox::run) task keeps trying meanwhile). True when empty.
    pub async fn drained_by(&self, deadline: tokio::time::Instant) -> bool {
        while self.depth() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Takes everything still waiting, in order (at shutdown, once the
    /// [`run`](Outbox::run) task has stopped).
    pub fn take_all(&self) -> Vec<(String, Outgoing)> {
        let mut q = self.lock();
        let taken = std::mem::take(&mut q.1);
        self.inner.metrics.outbox_depth.set(0);
        taken.into_iter().map(|e| (e.subject, e.message)).collect()
    }

    /// Resolves once nothing waits (or at once while NATS is unavailable:
    /// nothing would be flushed).
    pub async fn flushed(&self) {
        while self.depth() > 0 && self.inner.bus.is_ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Publishes what waits, in order, whenever the bus is ready, until
    /// `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ready = self.inner.bus.readiness();
        let mut backoff = Duration::from_millis(100);
        loop {
            let front = {
                let q = self.lock();
                q.1.front()
                    .map(|e| (e.seq, e.subject.clone(), e.message.clone()))
            };
            let Some((seq, subject, message)) = front else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.inner.wake.notified() => {}
                }
                continue;
            };
            if !self.inner.bus.is_ready() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = ready.wait_for(|r| *r) => if r.is_err() { return },
                }
                continue;
            }
            match message.publish(&self.inner.bus, subject).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    self.pop_if_front(seq);
                    if self.depth() == 0 {
                        tracing::info!("outbox flushed");
                    }
                }
                Err((err, false)) => {
                    self.refused(&message, &err);
                    self.pop_if_front(seq);
                }
                Err((err, true)) => {
                    self.inner.metrics.publish_failures.inc();
                    tracing::warn!(%err, retry_in = ?backoff, "outbox publish failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
