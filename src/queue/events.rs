//! Who in this process waits for which job: the fan-out behind long-poll and SSE.
//!
//! A backend calls [`JobEvents::changed`] after each state change of a job it learns of: the
//! embedded queue where it makes the change, the Redis queue when its one subscription per
//! process hears a worker's (`redis/events.rs`). A waiter holds a [`JobWatch`]: it subscribes
//! *before* reading the job, so a change between its read and its wait still wakes it, and it
//! reads the job again when woken (the event says only "look again", never the state, so a
//! missed or doubled event cannot make a client see a wrong state). A job nobody watches costs
//! nothing: its channel exists only while someone holds a watch on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use crate::jobs::JobId;

#[derive(Clone, Default)]
pub struct JobEvents {
    watched: Arc<Mutex<HashMap<JobId, watch::Sender<u64>>>>,
}

impl JobEvents {
    fn watched(&self) -> MutexGuard<'_, HashMap<JobId, watch::Sender<u64>>> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts watching `id`: changes from now on wake [`JobWatch::changed`].
    pub fn watch(&self, id: JobId) -> JobWatch {
        let receiver = self.watched().entry(id).or_insert_with(|| watch::channel(0).0).subscribe();
        JobWatch { id, receiver: Some(receiver), events: self.clone() }
    }

    /// `id` may have changed: its watchers look again.
    pub fn changed(&self, id: JobId) {
        if let Some(sender) = self.watched().get(&id) {
            sender.send_modify(|version| *version += 1);
        }
    }

    /// Anything may have changed (events may have been missed, e.g. while the subscription to
    /// Redis was down): every watcher looks again.
    pub fn changed_all(&self) {
        for sender in self.watched().values() {
            sender.send_modify(|version| *version += 1);
        }
    }

    /// Jobs watched now.
    pub fn watched_jobs(&self) -> usize {
        self.watched().len()
    }
}

/// One waiter on one job; dropping it stops the watch.
pub struct JobWatch {
    id: JobId,
    /// Always `Some` until dropped: taken out under the map's lock in `drop`.
    receiver: Option<watch::Receiver<u64>>,
    events: JobEvents,
}

impl JobWatch {
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Resolves once the job may have changed since the last call (or since the watch began).
    pub async fn changed(&mut self) {
        let Some(receiver) = self.receiver.as_mut() else { return std::future::pending().await };
        if receiver.changed().await.is_err() {
            // The sender is only removed with its last watcher, which is this one: cannot end.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        let mut watched = self.events.watched();
        // This receiver goes under the lock, so two watchers of one job leaving at once cannot
        // both count the other and leave the channel behind; nor can a new one subscribe.
        drop(self.receiver.take());
        if watched.get(&self.id).is_some_and(|sender| sender.receiver_count() == 0) {
            watched.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_change_wakes_its_watchers_only_and_the_last_watcher_frees_the_channel() {
        let events = JobEvents::default();
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let mut first = events.watch(a);
        let mut second = events.watch(a);
        let mut other = events.watch(b);
        events.changed(a);
        tokio::time::timeout(Duration::from_secs(1), first.changed()).await.expect("first woken");
        tokio::time::timeout(Duration::from_secs(1), second.changed()).await.expect("second woken");
        assert!(tokio::time::timeout(Duration::from_millis(50), other.changed()).await.is_err(), "b unchanged");
        // A change before the wait is not lost.
        events.changed(b);
        tokio::time::timeout(Duration::from_secs(1), other.changed()).await.expect("b woken");
        assert_eq!(events.watched_jobs(), 2);
        drop(first);
        assert_eq!(events.watched_jobs(), 2, "a still has a watcher");
        drop(second);
        drop(other);
        assert_eq!(events.watched_jobs(), 0);
        events.changed(a);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_leaving_together_free_the_channel() {
        let events = JobEvents::default();
        for _ in 0..200 {
            let id = uuid::Uuid::new_v4();
            let watches: Vec<JobWatch> = (0..4).map(|_| events.watch(id)).collect();
            let tasks: Vec<_> = watches.into_iter().map(|w| tokio::spawn(async move { drop(w) })).collect();
            for task in tasks {
                task.await.expect("drop task");
            }
        }
        assert_eq!(events.watched_jobs(), 0);
    }

    #[tokio::test]
    async fn changed_all_wakes_everyone() {
        let events = JobEvents::default();
        let mut watches: Vec<JobWatch> = (0..3).map(|_| events.watch(uuid::Uuid::new_v4())).collect();
        events.changed_all();
        for watch in &mut watches {
            tokio::time::timeout(Duration::from_secs(1), watch.changed()).await.expect("woken");
        }
    }
}
