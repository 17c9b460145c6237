//! The library's task runtime (tokio), with every task it spawns entered
//! into the span that built the client: the session's. Log lines the
//! library writes from its own tasks (handshake, keepalive, logout) then
//! carry the session id like everything else about that session.
//!
//! It also owns those tasks. whatsapp-rust 0.7 detaches some of them — the
//! QR rotation (src/pair.rs, `runtime.spawn(..).detach()` at about line
//! 100) runs until its six codes are spent, ~160 s, and then disconnects
//! "the session" although the client was stopped long before — so every
//! task it spawns runs in a scope of whatsd's cancellation tree
//! ([`crate::task`]), below the session's, and a stopped client's tasks
//! ([`Tasks`]) get a short grace to finish, then are cancelled.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tracing::Instrument;
use whatsapp_rust::wacore::runtime::{AbortHandle, Runtime};

use crate::task::TaskScope;

/// Library tasks alive now, over all sessions (`whatsd_library_tasks`).
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How many tasks whatsapp-rust has running for all sessions together.
pub fn live_library_tasks() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Counts a task from its spawn until its future is dropped (finished or
/// aborted, polled or not).
struct Live;

impl Live {
    fn new() -> Self {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The tasks one client spawned: a scope of their own below the session's.
/// Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    session: TaskScope,
    client: TaskScope,
}

impl Tasks {
    pub fn new(session: &TaskScope) -> Self {
        Tasks {
            session: session.clone(),
            // Ended by the session (after the client's final flush), not
            // by the session's cancellation: see `TaskScope::owned_subsystem`.
            client: session.owned_subsystem(),
        }
    }

    /// Tasks of this client not finished yet.
    pub fn running(&self) -> usize {
        self.client.live_tasks()
    }

    /// Waits, at most `grace`, for the tasks to end by themselves (a final
    /// flush), then cancels what is left, and every task spawned later.
    pub async fn stop(&self, grace: Duration) {
        if !self.client.wait(grace).await {
            tracing::debug!(
                left = self.running(),
                "cancelling the client's remaining tasks"
            );
        }
        self.client.cancel();
    }

    /// [`Tasks::stop`] from a destructor: in a task of the session's scope.
    pub fn stop_later(&self, grace: Duration) {
        let tasks = self.clone();
        self.session.spawn(async move { tasks.stop(grace).await });
    }

    /// Cancels every task of the client at once.
    pub fn abort_all(&self) {
        self.client.cancel();
    }
}

pub struct SessionRuntime {
    span: tracing::Span,
    tasks: Tasks,
}

impl SessionRuntime {
    /// Tasks spawned later run in the span current now and are tracked in
    /// `tasks`.
    pub fn in_current_span(tasks: Tasks) -> Self {
        Self {
            span: tracing::Span::current(),
            tasks,
        }
    }

    fn start(&self, future: Task) -> tokio::task::JoinHandle<Option<()>> {
        let live = Live::new();
        self.tasks.client.spawn_until_cancelled(
            async move {
                let _live = live;
                future.await;
            }
            .instrument(self.span.clone()),
        )
    }
}

type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

impl Runtime for SessionRuntime {
    fn spawn(&self, future: Task) -> AbortHandle {
        let handle = self.start(future);
        AbortHandle::new(move || handle.abort())
    }

    fn spawn_detached(&self, future: Task) {
        self.start(future);
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn spawn_blocking(
        &self,
        f: Box<dyn FnOnce() + Send + 'static>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let span = self.span.clone();
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || span.in_scope(f)).await;
        })
    }

    fn yield_now(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        // Multi-threaded runtime: other tasks run on other threads.
        None
    }
}
