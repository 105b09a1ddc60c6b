//! The embedded queue's shared runs (see "Cache and shared runs" in the module above): which
//! job each image's bytes are being run for, and the jobs that follow it.

use std::time::Duration;

use super::State;
use crate::fingerprint::ContentHash;
use crate::jobs::{JobId, JobRecord, JobStatus};

impl State {
    /// The unfinished job these bytes are being run for, if any.
    pub(super) fn unfinished_run_for(&self, content: &ContentHash) -> Option<JobId> {
        let leader = *self.running_for.get(content)?;
        let entry = self.records.get(&leader)?;
        (!entry.record.status.is_final()).then_some(leader)
    }

    /// Sets the followers of `leader` that are still unfinished to `status`, as it now is.
    pub(super) fn mirror(&mut self, leader: JobId, status: JobStatus, started_at_ms: Option<u64>, attempts: u32) {
        let Some(followers) = self.followers.get(&leader) else { return };
        for follower in followers {
            if let Some(entry) = self.records.get_mut(follower).filter(|e| !e.record.status.is_final()) {
                entry.record.status = status;
                entry.record.attempts = attempts;
                if started_at_ms.is_some() {
                    entry.record.started_at_ms = started_at_ms;
                }
            }
        }
    }

    /// Ends a run: its job and its unfinished followers (`update` is told which one is the
    /// leader). Returns every job that ended.
    pub(super) fn finish_run(
        &mut self,
        leader: JobId,
        ttl: Duration,
        update: impl Fn(&mut JobRecord, bool),
    ) -> Vec<JobId> {
        let mut ended = vec![leader];
        self.finish(leader, ttl, |record| update(record, true));
        for follower in self.followers.remove(&leader).unwrap_or_default() {
            if self.records.get(&follower).is_some_and(|e| !e.record.status.is_final()) {
                self.finish(follower, ttl, |record| update(record, false));
                ended.push(follower);
            }
        }
        self.forget_run(leader);
        ended
    }

    /// `leader` is no longer being run for its bytes.
    pub(super) fn forget_run(&mut self, leader: JobId) {
        let content = self.records.get(&leader).and_then(|entry| entry.content);
        if let Some(content) = content
            && self.running_for.get(&content) == Some(&leader)
        {
            self.running_for.remove(&content);
        }
    }

    /// A canceled leader's run goes to its first follower still waiting, which takes over its
    /// other followers and its place as the run for its bytes. Returns that follower.
    pub(super) fn hand_over(&mut self, leader: JobId) -> Option<JobId> {
        let mut followers = self.followers.remove(&leader)?;
        followers.retain(|f| self.records.get(f).is_some_and(|e| !e.record.status.is_final()));
        if followers.is_empty() {
            return None;
        }
        let heir = followers.remove(0);
        let content = self.records.get(&leader).and_then(|entry| entry.content);
        if let Some(entry) = self.records.get_mut(&heir) {
            entry.content = content;
        }
        if let Some(content) = content {
            self.running_for.insert(content, heir);
        }
        if !followers.is_empty() {
            self.followers.insert(heir, followers);
        }
        Some(heir)
    }
}
