//! Pins processes to CPU sets, for load runs that give the scheduling
//! engine cores of its own.
//!
//! A Guaranteed pod with an integer CPU request gets exclusive cores under
//! the kubelet's static CPU manager; on a single test machine the same
//! isolation is had by pinning the engine to some CPUs and every other
//! process of the run to the rest. Every thread of a process is pinned
//! (`/proc/<pid>/task`); threads started later inherit their creator's set.

use anyhow::{bail, Context};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use serde::Serialize;

/// Which CPUs the engine and everything else ran on.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct CpuSplit {
    /// CPUs of the scheduling engine alone.
    pub(crate) engine: Vec<usize>,
    /// CPUs of every other process of the run.
    pub(crate) others: Vec<usize>,
}

impl CpuSplit {
    /// Splits the `online` CPUs into `engine` and the rest; fails naming the
    /// CPU that is not online, or when nothing would be left for the rest.
    pub(crate) fn new(engine: &[usize], online: &[usize]) -> anyhow::Result<Self> {
        if let Some(c) = engine.iter().find(|c| !online.contains(c)) {
            bail!("--engine-cpus: CPU {c} is not online (online: {online:?})");
        }
        let mut engine: Vec<usize> = engine.to_vec();
        engine.sort_unstable();
        engine.dedup();
        let others: Vec<usize> = online
            .iter()
            .copied()
            .filter(|c| !engine.contains(c))
            .collect();
        if engine.is_empty() || others.is_empty() {
            bail!(
                "--engine-cpus {engine:?} leaves no CPU for the other processes (online: {online:?})"
            );
        }
        Ok(Self { engine, others })
    }
}

/// The CPUs this process may run on (the machine's online CPUs unless the
/// process is already confined).
pub(crate) fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// Pins every thread of process `pid` (0: this process) to `cpus`.
pub(crate) fn pin_process(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).with_context(|| format!("CPU {c}"))?;
    }
    let dir = if pid == 0 {
        "/proc/self/task".to_string()
    } else {
        format!("/proc/{pid}/task")
    };
    let tasks = std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))?;
    let mut pinned = 0;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        match sched_setaffinity(Pid::from_raw(tid), &set) {
            Ok(()) => pinned += 1,
            // A thread that ended since the listing.
            Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => bail!("cannot pin thread {tid} of process {pid} to CPUs {cpus:?}: {e}"),
        }
    }
    if pinned == 0 {
        bail!("process {pid} has no thread left to pin");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_takes_the_engine_cpus_out_of_the_online_ones() {
        let s = CpuSplit::new(&[1, 1], &[0, 1, 2, 3]).unwrap();
        assert_eq!(s.engine, vec![1]);
        assert_eq!(s.others, vec![0, 2, 3]);
    }

    #[test]
    fn split_refuses_offline_cpus_and_leaving_nothing() {
        let e = CpuSplit::new(&[5], &[0, 1]).unwrap_err().to_string();
        assert!(e.contains("CPU 5 is not online"), "{e}");
        let e = CpuSplit::new(&[0, 1], &[0, 1]).unwrap_err().to_string();
        assert!(e.contains("leaves no CPU"), "{e}");
    }

    #[test]
    fn a_child_process_is_pinned_with_all_its_threads() {
        let online = allowed_cpus().unwrap();
        let cpu = *online.last().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let res = pin_process(child.id(), &[cpu]);
        let set = nix::sched::sched_getaffinity(Pid::from_raw(child.id() as i32));
        let _ = child.kill();
        let _ = child.wait();
        res.unwrap();
        let set = set.unwrap();
        let pinned: Vec<usize> = (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect();
        assert_eq!(pinned, vec![cpu]);
    }
}
