//! CPU scheduling priority for inference threads: how the fast tier wins the cores.
//!
//! Linux schedules threads, and a new thread inherits its creator's policy and nice value. So
//! lowering the accurate tier's inference thread *before* it creates its ONNX Runtime session
//! lowers ORT's intra-op pool threads too, while the fast tier's threads stay at normal
//! priority. `SCHED_IDLE` threads run only on cycles nobody else wants, and a waking
//! normal-priority thread preempts them at once; nice 19 is the gentler choice.

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Priority {
    /// Unchanged: compete for the CPU on equal terms.
    #[default]
    Normal,
    /// nice 19: a small share of the CPU when it is contended.
    Low,
    /// SCHED_IDLE: only CPU time nothing else wants.
    Idle,
}

/// Applies `priority` to the calling thread (and so to every thread it creates afterwards).
pub fn apply_to_current_thread(priority: Priority) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread (tid 0 / pid 0 = this thread on Linux),
        // with a valid, initialized sched_param.
        let rc = unsafe {
            match priority {
                Priority::Normal => 0,
                Priority::Low => libc::setpriority(libc::PRIO_PROCESS, 0, 19),
                Priority::Idle => {
                    let param = libc::sched_param { sched_priority: 0 };
                    libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
                }
            }
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = priority;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_reports_its_new_policy() {
        let policy = std::thread::spawn(|| {
            apply_to_current_thread(Priority::Idle).expect("lowering needs no privilege");
            // SAFETY: querying the calling thread's policy.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .expect("thread");
        assert_eq!(policy, libc::SCHED_IDLE);
        let nice = std::thread::spawn(|| {
            apply_to_current_thread(Priority::Low).expect("lowering needs no privilege");
            // SAFETY: querying the calling thread's nice value.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
        })
        .join()
        .expect("thread");
        assert_eq!(nice, 19);
    }
}
