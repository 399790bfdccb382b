//! Threads for stream-following work that must never delay an answer.
//!
//! An engine follows the insight stream (10,000 node insights a second on a
//! large cluster: decode, store, apply to its snapshot) on the same cores that
//! answer the scheduler. Run on the gRPC runtime, or as an ordinary thread
//! beside it, that work takes the core from a decision for a whole time
//! slice. Here it runs on its own OS threads under Linux's `SCHED_IDLE`
//! policy: the kernel gives them a core only while no ordinary thread wants
//! it, and preempts them the moment a call arrives. The cost is that a view
//! kept this way falls behind while the engine is busy answering without
//! pause; its entries carry their age, so staleness stays visible.

use std::future::Future;

use clap::ValueEnum;

/// How the kernel schedules the threads that follow streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum FollowerPriority {
    /// `SCHED_IDLE`: only when the core has nothing else to run.
    #[default]
    Idle,
    /// The ordinary policy, sharing the core equally with the answers.
    Normal,
}

/// Why a thread's scheduling policy was not changed.
#[derive(Debug, thiserror::Error)]
#[error("cannot set the thread's scheduling policy: {0}")]
pub struct PriorityError(String);

/// Applies `priority` to the calling thread. Lowering a thread's own
/// priority needs no privilege on Linux.
pub fn apply_to_current_thread(priority: FollowerPriority) -> Result<(), PriorityError> {
    match priority {
        FollowerPriority::Normal => Ok(()),
        FollowerPriority::Idle => idle_current_thread(),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn idle_current_thread() -> Result<(), PriorityError> {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    )
    .map_err(|e| PriorityError(format!("{e:?}")))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn idle_current_thread() -> Result<(), PriorityError> {
    Err(PriorityError(
        "SCHED_IDLE exists only on Linux; the thread keeps the ordinary policy".into(),
    ))
}

/// Whether the calling thread runs under `SCHED_IDLE`.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn current_thread_is_idle() -> bool {
    use thread_priority::{
        thread_schedule_policy, NormalThreadSchedulePolicy, ThreadSchedulePolicy,
    };
    matches!(
        thread_schedule_policy(),
        Ok(ThreadSchedulePolicy::Normal(
            NormalThreadSchedulePolicy::Idle
        ))
    )
}

/// Whether the calling thread runs under `SCHED_IDLE` (never, here).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn current_thread_is_idle() -> bool {
    false
}

/// A started thread; its result is `None` if its work was lost before it
/// ran (never, unless a start failed half-way).
pub type Thread<T> = std::thread::JoinHandle<Option<T>>;

/// A thread that could not be started, with the work it was given (so the
/// caller can run it elsewhere).
pub struct NotStarted<W> {
    /// Why the thread did not start.
    pub error: std::io::Error,
    /// The work, untouched.
    pub work: W,
}

impl<W> std::fmt::Debug for NotStarted<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotStarted")
            .field("error", &self.error)
            .finish()
    }
}

/// Takes `work` out of a slot shared with a thread that may not have started.
fn take<W>(slot: &std::sync::Mutex<Option<W>>) -> Option<W> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Starts a named OS thread at `priority` and runs `work` there (a failure
/// to lower the priority is logged and the thread keeps the ordinary one).
pub fn spawn_thread<T, F>(
    name: &str,
    priority: FollowerPriority,
    work: F,
) -> Result<Thread<T>, NotStarted<F>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(work)));
    let theirs = std::sync::Arc::clone(&slot);
    let thread_name = name.to_string();
    let started = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if let Err(err) = apply_to_current_thread(priority) {
                tracing::warn!(thread = %thread_name, %err, "follower runs at the ordinary priority");
            }
            take(&theirs).map(|work| work())
        });
    started.map_err(|error| NotStarted {
        error,
        // The closure that held the other handle was dropped unrun.
        work: take(&slot).expect("work of a thread that never started"),
    })
}

/// Runs `future` to completion on its own thread at `priority`, with a
/// single-threaded runtime of its own (timers and I/O enabled), so nothing
/// it does is scheduled on the caller's runtime. `None` when that runtime
/// could not be built (logged).
pub fn spawn_runtime<F>(
    name: &str,
    priority: FollowerPriority,
    future: F,
) -> Result<Thread<Option<F::Output>>, NotStarted<F>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(future)));
    let theirs = std::sync::Arc::clone(&slot);
    let thread_name = name.to_string();
    let started = spawn_thread(name, priority, move || {
        let future = take(&theirs)?;
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => Some(rt.block_on(future)),
            Err(err) => {
                tracing::error!(thread = %thread_name, %err, "cannot start the follower's runtime");
                None
            }
        }
    });
    started.map_err(|NotStarted { error, work }| {
        drop(work);
        NotStarted {
            error,
            work: take(&slot).expect("future of a thread that never started"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_follower_runs_under_sched_idle_and_the_caller_does_not() {
        let on_thread = spawn_runtime("test-idle", FollowerPriority::Idle, async {
            tokio::task::yield_now().await;
            current_thread_is_idle()
        })
        .unwrap()
        .join()
        .unwrap()
        .flatten();
        assert_eq!(
            on_thread,
            Some(cfg!(any(target_os = "linux", target_os = "android")))
        );
        assert!(!current_thread_is_idle(), "the caller's thread was changed");
    }

    #[test]
    fn a_normal_follower_keeps_the_ordinary_policy() {
        let idle = spawn_thread(
            "test-normal",
            FollowerPriority::Normal,
            current_thread_is_idle,
        )
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(idle, Some(false));
    }

    #[tokio::test]
    async fn a_runtime_follower_has_its_own_timers() {
        let slept = spawn_runtime("test-timer", FollowerPriority::Idle, async {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            true
        })
        .unwrap();
        let joined = tokio::task::spawn_blocking(move || slept.join().unwrap())
            .await
            .unwrap();
        assert_eq!(joined, Some(Some(true)));
    }
}
