//! The bounded queue between a subscriber's JetStream consumer and its gRPC
//! stream.
//!
//! The gRPC side only takes a policy when HTTP/2 flow control lets it send
//! one, so a client that stops reading (its window full) stops taking. The
//! queue holds at most `capacity` policies; when the consumer side gives up
//! on the subscriber it [`close`](MailboxWriter::close)s the queue, which
//! frees what is still queued at once (those policies go back to the
//! consumer and are delivered again on resume) and leaves only the final
//! status, so a stream that is never read again holds no policies.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use apollo_proto::OrchestrationPolicy;
use futures::Stream;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tonic::Status;

struct State {
    queue: VecDeque<OrchestrationPolicy>,
    /// The status the stream ends with, once closed with one.
    end: Option<Status>,
    /// The writer is done (with or without a status).
    closed: bool,
    /// The gRPC side dropped the stream (client gone or server done with it).
    reader_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Something to read (a policy, the end).
    readable: Notify,
    /// Room to write, or the reader is gone.
    writable: Notify,
    capacity: usize,
    /// Policies queued across all subscribers.
    queued: Gauge,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a policy was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The gRPC stream is gone.
    ReaderGone,
    /// No room within the allowed wait.
    Stalled,
}

/// The consumer side.
pub struct MailboxWriter {
    shared: Arc<Shared>,
}

/// The gRPC side; dropping it tells the writer the subscriber is gone and
/// runs `on_drop` (bookkeeping of open streams).
pub struct MailboxReader {
    shared: Arc<Shared>,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

/// A queue of `capacity` policies; `queued` counts what it holds.
pub fn mailbox(
    capacity: usize,
    queued: Gauge,
    on_drop: Box<dyn FnOnce() + Send>,
) -> (MailboxWriter, MailboxReader) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::with_capacity(capacity.min(64)),
            end: None,
            closed: false,
            reader_gone: false,
        }),
        readable: Notify::new(),
        writable: Notify::new(),
        capacity: capacity.max(1),
        queued,
    });
    (
        MailboxWriter {
            shared: shared.clone(),
        },
        MailboxReader {
            shared,
            on_drop: Some(on_drop),
        },
    )
}

impl MailboxWriter {
    /// Capacity in policies.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Policies queued and not yet taken by the gRPC side.
    pub fn queued(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Whether the gRPC side is gone.
    pub fn reader_gone(&self) -> bool {
        self.shared.lock().reader_gone
    }

    /// Resolves once the gRPC side is gone.
    pub async fn reader_gone_wait(&self) {
        loop {
            let notified = self.shared.writable.notified();
            if self.reader_gone() {
                return;
            }
            notified.await;
        }
    }

    /// Queues `policy`, waiting at most `stall` for room.
    pub async fn push(
        &self,
        policy: OrchestrationPolicy,
        stall: std::time::Duration,
    ) -> Result<(), Refused> {
        let wait = async {
            loop {
                let notified = self.shared.writable.notified();
                {
                    let mut s = self.shared.lock();
                    if s.reader_gone {
                        return Err(Refused::ReaderGone);
                    }
                    if s.queue.len() < self.shared.capacity {
                        s.queue.push_back(policy);
                        self.shared.queued.inc();
                        self.shared.readable.notify_one();
                        return Ok(());
                    }
                }
                notified.await;
            }
        };
        tokio::time::timeout(stall, wait)
            .await
            .unwrap_or(Err(Refused::Stalled))
    }

    /// Ends the stream: what is still queued is dropped (and returned as a
    /// count, so the caller hands those policies back), then the stream
    /// yields `end` if given and finishes.
    pub fn close(self, end: Option<Status>) -> usize {
        let dropped = {
            let mut s = self.shared.lock();
            let n = s.queue.len();
            s.queue.clear();
            s.end = end;
            s.closed = true;
            n
        };
        self.shared.queued.dec_by(dropped as i64);
        self.shared.readable.notify_one();
        dropped
    }
}

impl MailboxReader {
    /// The next policy, the final status, or `None` once closed.
    async fn next(&mut self) -> Option<Result<OrchestrationPolicy, Status>> {
        loop {
            let notified = self.shared.readable.notified();
            {
                let mut s = self.shared.lock();
                if let Some(p) = s.queue.pop_front() {
                    self.shared.queued.dec();
                    self.shared.writable.notify_one();
                    return Some(Ok(p));
                }
                if let Some(end) = s.end.take() {
                    return Some(Err(end));
                }
                if s.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The gRPC response stream: policies, then the final status if any.
    pub fn into_stream(
        self,
    ) -> impl Stream<Item = Result<OrchestrationPolicy, Status>> + Send + 'static {
        futures::stream::unfold(Some(self), |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Some(Ok(p)) => Some((Ok(p), Some(reader))),
                Some(Err(s)) => Some((Err(s), None)),
                None => None,
            }
        })
    }
}

impl Drop for MailboxReader {
    fn drop(&mut self) {
        let dropped = {
            let mut s = self.shared.lock();
            s.reader_gone = true;
            let n = s.queue.len();
            s.queue.clear();
            n
        };
        self.shared.queued.dec_by(dropped as i64);
        self.shared.writable.notify_one();
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    fn policy(id: &str) -> OrchestrationPolicy {
        OrchestrationPolicy {
            request_id: id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_full_queue_stalls_and_close_frees_it_leaving_the_status() {
        let gauge = Gauge::default();
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = dropped.clone();
        let (w, r) = mailbox(
            2,
            gauge.clone(),
            Box::new(move || flag.store(true, std::sync::atomic::Ordering::SeqCst)),
        );
        w.push(policy("a"), Duration::from_millis(10))
            .await
            .unwrap();
        w.push(policy("b"), Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(
            w.push(policy("c"), Duration::from_millis(10)).await,
            Err(Refused::Stalled)
        );
        assert_eq!(gauge.get(), 2);
        assert_eq!(w.close(Some(Status::resource_exhausted("slow"))), 2);
        assert_eq!(gauge.get(), 0, "nothing held after the cut-off");
        let got: Vec<_> = r.into_stream().collect().await;
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].as_ref().unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_dropped_reader_releases_the_writer() {
        let gauge = Gauge::default();
        let (w, r) = mailbox(1, gauge.clone(), Box::new(|| {}));
        w.push(policy("a"), Duration::from_millis(10))
            .await
            .unwrap();
        drop(r);
        assert_eq!(gauge.get(), 0);
        assert_eq!(
            w.push(policy("b"), Duration::from_secs(5)).await,
            Err(Refused::ReaderGone)
        );
    }
}
