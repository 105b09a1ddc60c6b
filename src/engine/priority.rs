//! CPU scheduling priority for inference threads: how request handling and the fast tier win
//! the cores.
//!
//! Linux schedules threads, and a new thread inherits its creator's policy and nice value. So
//! setting an inference thread's priority *before* it creates its ONNX Runtime session sets
//! ORT's intra-op pool threads too. Three levels: the async runtime (HTTP, `/health`) at the
//! process's own priority; the fast tier a few nice levels lower (`--fast-nice`, default 5), so
//! the sub-millisecond work of accepting and parsing a request preempts a running model instead
//! of queueing behind it; the accurate tier at `SCHED_IDLE`, which runs only on cycles nobody
//! else wants and is preempted at once by any waking normal thread (or nice 19, the gentler
//! choice).

/// The accurate tier's priority, as the command line names it (`cli::values`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Unchanged: compete for the CPU on equal terms.
    #[default]
    Normal,
    /// nice 19: a small share of the CPU when it is contended.
    Low,
    /// SCHED_IDLE: only CPU time nothing else wants.
    Idle,
}

/// What an inference thread is set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadPriority {
    /// At least this nice value (0 to 19); a thread already nicer is left as it is.
    Nice(i32),
    /// `SCHED_IDLE`.
    Idle,
}

impl From<Priority> for ThreadPriority {
    fn from(priority: Priority) -> Self {
        match priority {
            Priority::Normal => ThreadPriority::Nice(0),
            Priority::Low => ThreadPriority::Nice(19),
            Priority::Idle => ThreadPriority::Idle,
        }
    }
}

/// Applies `priority` to the calling thread (and so to every thread it creates afterwards).
/// Only ever lowers: raising priority needs privileges, and a process started under `nice`
/// stays as nice as its operator made it.
pub fn apply_to_current_thread(priority: impl Into<ThreadPriority>) -> std::io::Result<()> {
    let priority = priority.into();
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread (tid 0 / pid 0 = this thread on Linux),
        // with a valid, initialized sched_param. getpriority can return -1 legitimately, so
        // errno is cleared first and checked after.
        let rc = unsafe {
            match priority {
                ThreadPriority::Nice(nice) => {
                    *libc::__errno_location() = 0;
                    let current = libc::getpriority(libc::PRIO_PROCESS, 0);
                    if current == -1 && *libc::__errno_location() != 0 {
                        -1
                    } else if nice.clamp(0, 19) > current {
                        libc::setpriority(libc::PRIO_PROCESS, 0, nice.clamp(0, 19))
                    } else {
                        0
                    }
                }
                ThreadPriority::Idle => {
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
        let nice = std::thread::spawn(|| {
            apply_to_current_thread(ThreadPriority::Nice(5)).expect("lowering needs no privilege");
            apply_to_current_thread(ThreadPriority::Nice(2)).expect("never raises, so never fails");
            // SAFETY: querying the calling thread's nice value.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
        })
        .join()
        .expect("thread");
        assert_eq!(nice, 5, "a thread is only ever lowered");
    }
}
