//! Which attempts are still running, as far as per-task model-gateway tokens are concerned: a
//! token (`ftk_…`) is honoured only while the attempt it names runs, so that an agent cannot
//! spend a tenant's money after its attempt ended (succeeded, failed, retried elsewhere, lost its
//! lease, was cancelled), however far away the attempt's deadline is.
//!
//! The store is the truth: attempt `n` of a task runs while the task's row is `running` with
//! `attempt = n`. The row is written before any token of the attempt is issued (a claim, or the
//! insert of a task claimed at submission, commits before its attempt is dispatched), so a token
//! never names an attempt the store does not know yet.
//!
//! Reading the row on every model call would cost a busy agent a store read per call, so:
//!
//! - a positive answer is trusted for [`LIVE_TTL`]; this bounds how long a token outlives its
//!   attempt on a replica that did not see the end (another replica ended it, or a leader
//!   re-queued its lease), once the end is in the store;
//! - an end seen here — the dispatch that ran the attempt returned, the task was cancelled here,
//!   an expired lease was re-queued here, or a read found the attempt over — is remembered (the
//!   last [`MAX_ENDED`]) and refuses the token at once, even before the end is written;
//! - a task another replica reports done (`cluster` notice) drops its positive answer.
//!
//! The methods that depend on time take `now`, so tests move it instead of sleeping.

use flotilla_core::id::{TaskId, TenantId};
use flotilla_core::task::TaskStatus;
use flotilla_store::{Store, StoreError};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long "this attempt runs" is believed without reading the store again.
pub(crate) const LIVE_TTL: Duration = Duration::from_millis(500);
/// Ended attempts remembered; the oldest is forgotten first (its row says it ended by then).
pub(crate) const MAX_ENDED: usize = 65_536;
/// Positive answers held at most (a larger fleet reads the store more often, never errs).
const MAX_LIVE: usize = 65_536;

/// The running attempts this replica knows of, and the ended ones.
#[derive(Default)]
pub(crate) struct LiveAttempts {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Per task: the attempt last found running, and when.
    live: HashMap<TaskId, (i32, Instant)>,
    /// Attempts known to be over.
    ended: HashSet<(TaskId, i32)>,
    /// The same, oldest first, to forget the oldest.
    ended_order: VecDeque<(TaskId, i32)>,
}

impl Inner {
    fn end(&mut self, task: TaskId, attempt: i32) {
        if self.live.get(&task).is_some_and(|(a, _)| *a == attempt) {
            self.live.remove(&task);
        }
        if !self.ended.insert((task, attempt)) {
            return;
        }
        self.ended_order.push_back((task, attempt));
        if self.ended_order.len() > MAX_ENDED
            && let Some(oldest) = self.ended_order.pop_front()
        {
            self.ended.remove(&oldest);
        }
    }
}

impl LiveAttempts {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the maps consistent, so a panicked holder does not matter.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What is known at `now` without the store: `Some(false)` for an ended attempt,
    /// `Some(true)` for one found running less than [`LIVE_TTL`] before, `None` otherwise.
    fn known(&self, task: TaskId, attempt: i32, now: Instant) -> Option<bool> {
        let inner = self.lock();
        if inner.ended.contains(&(task, attempt)) {
            return Some(false);
        }
        match inner.live.get(&task) {
            Some((a, at)) if *a == attempt && fresh(*at, now) => Some(true),
            _ => None,
        }
    }

    /// The attempt ended here (its dispatch returned, its task was cancelled or its lease
    /// re-queued): its token is refused from now on.
    pub(crate) fn ended(&self, task: TaskId, attempt: i32) {
        self.lock().end(task, attempt);
    }

    /// Another control plane reports the task done: whatever attempt was running is over.
    pub(crate) fn task_done(&self, task: TaskId) {
        self.lock().live.remove(&task);
    }

    /// Records what the store said of `attempt` at `now`: `found` is the task's status and
    /// current attempt, `None` when there is no such task. Returns whether the attempt runs.
    fn learned(
        &self,
        task: TaskId,
        attempt: i32,
        found: Option<(TaskStatus, i32)>,
        now: Instant,
    ) -> bool {
        let mut inner = self.lock();
        match found {
            Some((TaskStatus::Running, current)) if current == attempt => {
                // An end seen meanwhile wins over a read that began before it.
                if inner.ended.contains(&(task, attempt)) {
                    return false;
                }
                if inner.live.len() >= MAX_LIVE {
                    inner.live.retain(|_, (_, at)| fresh(*at, now));
                }
                if inner.live.len() < MAX_LIVE {
                    inner.live.insert(task, (attempt, now));
                }
                true
            }
            // A later attempt, or the same one no longer running: over for good.
            Some((_, current)) if current >= attempt => {
                inner.end(task, attempt);
                false
            }
            // No such task (pruned), or an attempt the row does not show yet, which cannot
            // happen since tokens are issued after the claim commits: refused, not remembered.
            _ => false,
        }
    }

    /// Whether attempt `attempt` of `task` still runs: from memory when it can, else from the
    /// store.
    pub(crate) async fn is_live(
        &self,
        store: &dyn Store,
        tenant: TenantId,
        task: TaskId,
        attempt: i32,
    ) -> Result<bool, StoreError> {
        if let Some(known) = self.known(task, attempt, Instant::now()) {
            return Ok(known);
        }
        // The time of the read is taken before it, so the answer is never trusted longer.
        let read_at = Instant::now();
        let found = store
            .get_task(Some(tenant), task)
            .await?
            .map(|t| (t.status, t.attempt));
        Ok(self.learned(task, attempt, found, read_at))
    }
}

/// Whether a positive answer taken `at` is still trusted `now`.
fn fresh(at: Instant, now: Instant) -> bool {
    now.saturating_duration_since(at) < LIVE_TTL
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskId {
        TaskId(uuid::Uuid::now_v7())
    }

    const RUNNING_1: Option<(TaskStatus, i32)> = Some((TaskStatus::Running, 1));

    #[test]
    fn a_running_attempt_is_believed_for_the_ttl_then_read_again() {
        let attempts = LiveAttempts::default();
        let (t, now) = (task(), Instant::now());
        assert_eq!(attempts.known(t, 1, now), None);
        assert!(attempts.learned(t, 1, RUNNING_1, now));
        assert_eq!(attempts.known(t, 1, now), Some(true));
        let almost = now + LIVE_TTL - Duration::from_millis(1);
        assert_eq!(attempts.known(t, 1, almost), Some(true));
        assert_eq!(
            attempts.known(t, 1, now + LIVE_TTL),
            None,
            "stale: read again"
        );
        // Another attempt of the same task is not vouched for by the first.
        assert_eq!(attempts.known(t, 2, now), None);
    }

    #[test]
    fn an_end_seen_here_refuses_at_once_and_wins_over_an_older_read() {
        let attempts = LiveAttempts::default();
        let (t, now) = (task(), Instant::now());
        assert!(attempts.learned(t, 1, RUNNING_1, now));
        attempts.ended(t, 1);
        assert_eq!(attempts.known(t, 1, now), Some(false));
        // A read that began before the end (the row still says running) changes nothing.
        assert!(!attempts.learned(t, 1, RUNNING_1, now));
        let later = now + Duration::from_secs(3600);
        assert_eq!(attempts.known(t, 1, later), Some(false));
        // The retry's attempt is another one.
        assert!(attempts.learned(t, 2, Some((TaskStatus::Running, 2)), later));
        assert_eq!(attempts.known(t, 2, later), Some(true));
    }

    #[test]
    fn what_the_store_says_decides_and_ends_are_remembered() {
        let attempts = LiveAttempts::default();
        let (t, now) = (task(), Instant::now());
        // Retried: the row shows a later attempt.
        assert!(!attempts.learned(t, 1, Some((TaskStatus::Running, 2)), now));
        assert_eq!(attempts.known(t, 1, now), Some(false));
        // Finished, cancelled, or queued for a retry.
        for status in [
            TaskStatus::Succeeded,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
            TaskStatus::Queued,
        ] {
            let t = task();
            assert!(
                !attempts.learned(t, 3, Some((status, 3)), now),
                "{status:?}"
            );
            assert_eq!(attempts.known(t, 3, now), Some(false), "{status:?}");
        }
        // No such task: refused, and asked again next time.
        let gone = task();
        assert!(!attempts.learned(gone, 1, None, now));
        assert_eq!(attempts.known(gone, 1, now), None);
    }

    #[test]
    fn a_task_done_elsewhere_is_read_again() {
        let attempts = LiveAttempts::default();
        let (t, now) = (task(), Instant::now());
        assert!(attempts.learned(t, 1, RUNNING_1, now));
        attempts.task_done(t);
        assert_eq!(attempts.known(t, 1, now), None);
    }

    #[test]
    fn ended_attempts_are_bounded_oldest_forgotten_first() {
        let attempts = LiveAttempts::default();
        let first = task();
        attempts.ended(first, 1);
        attempts.ended(first, 1);
        for _ in 0..MAX_ENDED {
            attempts.ended(task(), 1);
        }
        let inner = attempts.lock();
        assert_eq!(inner.ended.len(), MAX_ENDED);
        assert_eq!(inner.ended_order.len(), MAX_ENDED);
        assert!(!inner.ended.contains(&(first, 1)));
    }
}
