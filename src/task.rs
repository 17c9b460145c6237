//! Task lifetimes: one cancellation model for the whole daemon.
//!
//! Every long-lived task belongs to a [`TaskScope`]: a node of one
//! cancellation tree (tokio-util's `CancellationToken`) that runs from the
//! daemon down to each session and each webhook worker, plus the one
//! `TaskTracker` the daemon's shutdown waits on. Cancelling a scope cancels
//! every scope below it; a task spawned through a scope is tracked, so
//! nothing outlives the daemon unnoticed. Non-test code does not call
//! `tokio::spawn` directly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// A node of the cancellation tree, with the trackers above it (the
/// daemon's first, this scope's own last). Cheap to clone; clones are the
/// same node.
#[derive(Clone, Debug)]
pub struct TaskScope {
    token: CancellationToken,
    trackers: Arc<[TaskTracker]>,
}

impl TaskScope {
    /// The top of a tree: the daemon's, or a test's.
    pub fn root() -> Self {
        TaskScope {
            token: CancellationToken::new(),
            trackers: Arc::from(vec![TaskTracker::new()]),
        }
    }

    /// A scope below this one: cancelled with it (or on its own), its tasks
    /// counted by the same trackers.
    pub fn child(&self) -> Self {
        TaskScope {
            token: self.token.child_token(),
            trackers: Arc::clone(&self.trackers),
        }
    }

    /// A child scope with a tracker of its own, so its owner can
    /// [`wait`](TaskScope::wait) for just its tasks (and theirs below).
    pub fn subsystem(&self) -> Self {
        let mut trackers = self.trackers.to_vec();
        trackers.push(TaskTracker::new());
        TaskScope {
            token: self.token.child_token(),
            trackers: Arc::from(trackers),
        }
    }

    /// A subsystem its owner ends, in order: not cancelled from above
    /// (a client's library tasks must outlive the session's cancellation
    /// until the session has stopped the client and flushed), but counted
    /// by every tracker above, so a shutdown still waits for its tasks.
    pub fn owned_subsystem(&self) -> Self {
        let mut trackers = self.trackers.to_vec();
        trackers.push(TaskTracker::new());
        TaskScope {
            token: CancellationToken::new(),
            trackers: Arc::from(trackers),
        }
    }

    fn own(&self) -> &TaskTracker {
        self.trackers.last().expect("a scope has a tracker")
    }

    /// Spawns a tracked task that ends on its own terms (it watches
    /// [`TaskScope::cancelled`] itself when it has cleanup to do).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // Every tracker counts the task until its future is dropped
        // (finished, or aborted).
        let held = self.hold();
        tokio::spawn(async move {
            let _held = held;
            task.await
        })
    }

    /// Counts a task someone else spawned (axum runs each WebSocket in a
    /// task of its own) as this scope's until the returned guard drops.
    pub fn hold(&self) -> Held {
        Held(self.trackers.iter().map(TaskTracker::token).collect())
    }

    /// Spawns a tracked task that is dropped at its next await once this
    /// scope is cancelled; `None` then.
    pub fn spawn_until_cancelled<F>(&self, task: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let token = self.token.clone();
        self.spawn(async move { token.run_until_cancelled_owned(task).await })
    }

    /// Cancels this scope and every scope below it.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once this scope (or one above it) is cancelled.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// The token, for code that wants to own a wait on it.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Tasks still running that this scope's own tracker counts (the
    /// whole tree's, for the root).
    pub fn live_tasks(&self) -> usize {
        self.own().len()
    }

    /// Closes this scope's own tracker and waits, without a bound, for its
    /// tasks to end.
    pub async fn ended(&self) {
        let own = self.own();
        own.close();
        own.wait().await;
    }

    /// Closes this scope's own tracker (later spawns are still counted) and
    /// waits for its tasks to end, for at most `within`. Returns whether
    /// they all did.
    pub async fn wait(&self, within: Duration) -> bool {
        let own = self.own();
        own.close();
        tokio::time::timeout(within, own.wait()).await.is_ok()
    }
}

/// A task counted by a scope's trackers; see [`TaskScope::hold`].
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] Vec<TaskTrackerToken>);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancelling_a_scope_ends_its_children_and_not_its_parent() {
        let root = TaskScope::root();
        let session = root.child();
        let worker = session.child();
        let sibling = root.child();
        let task = worker.spawn_until_cancelled(std::future::pending::<()>());
        assert_eq!(root.live_tasks(), 1);
        session.cancel();
        assert!(worker.is_cancelled());
        assert!(!root.is_cancelled() && !sibling.is_cancelled());
        assert_eq!(task.await.unwrap(), None);
        assert!(root.wait(Duration::from_secs(1)).await);
        assert_eq!(root.live_tasks(), 0);
    }

    #[tokio::test]
    async fn a_subsystem_waits_for_its_own_tasks_and_the_root_for_all() {
        let root = TaskScope::root();
        let webhooks = root.subsystem();
        let sessions = root.subsystem();
        let worker = webhooks
            .child()
            .spawn_until_cancelled(std::future::pending::<()>());
        let _actor = sessions.spawn_until_cancelled(std::future::pending::<()>());
        assert_eq!((root.live_tasks(), webhooks.live_tasks()), (2, 1));
        webhooks.cancel();
        assert!(webhooks.wait(Duration::from_secs(1)).await);
        assert_eq!(worker.await.unwrap(), None);
        assert_eq!((root.live_tasks(), sessions.live_tasks()), (1, 1));
        root.cancel();
        assert!(root.wait(Duration::from_secs(1)).await);
        assert_eq!(sessions.live_tasks(), 0);
    }

    #[tokio::test]
    async fn an_owned_subsystem_is_ended_by_its_owner_and_still_waited_for() {
        let root = TaskScope::root();
        let session = root.child();
        let client = session.owned_subsystem();
        let task = client.spawn_until_cancelled(std::future::pending::<()>());
        root.cancel();
        assert!(session.is_cancelled() && !client.is_cancelled());
        assert!(
            !root.wait(Duration::from_millis(20)).await,
            "the root waits for it"
        );
        client.cancel();
        assert_eq!(task.await.unwrap(), None);
        assert!(root.wait(Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn wait_reports_a_task_that_does_not_end() {
        let root = TaskScope::root();
        let stubborn = root.spawn(std::future::pending::<()>());
        assert!(!root.wait(Duration::from_millis(20)).await);
        assert_eq!(root.live_tasks(), 1);
        stubborn.abort();
        assert!(root.wait(Duration::from_secs(1)).await);
    }
}
