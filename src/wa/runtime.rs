//! The library's task runtime (tokio), with every task it spawns entered
//! into the span that built the client: the session's. Log lines the
//! library writes from its own tasks (handshake, keepalive, logout) then
//! carry the session id like everything else about that session.
//!
//! It also owns those tasks. whatsapp-rust 0.7 detaches some of them — the
//! QR rotation (src/pair.rs, `runtime.spawn(..).detach()` at about line
//! 100) runs until its six codes are spent, ~160 s, and then disconnects
//! "the session" although the client was stopped long before — so whatsd
//! keeps an abort handle for every task it spawns, and a stopped client's
//! tasks ([`Tasks`]) get a short grace to finish, then are aborted.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::Instrument;
use whatsapp_rust::wacore::runtime::{AbortHandle, Runtime};

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

/// The tasks one client spawned. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tasks {
    inner: Arc<Mutex<TaskList>>,
}

#[derive(Default)]
struct TaskList {
    handles: Vec<tokio::task::AbortHandle>,
    /// Aborted: a task spawned from now on is aborted at once.
    closed: bool,
}

impl Tasks {
    fn track(&self, handle: tokio::task::AbortHandle) {
        let mut list = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if list.closed {
            handle.abort();
            return;
        }
        if list.handles.len() >= 64 {
            list.handles.retain(|h| !h.is_finished());
        }
        list.handles.push(handle);
    }

    /// Tasks of this client not finished yet.
    pub fn running(&self) -> usize {
        let list = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        list.handles.iter().filter(|h| !h.is_finished()).count()
    }

    /// Waits, at most `grace`, for the tasks to end by themselves (a final
    /// flush), then aborts what is left, and every task spawned later.
    pub async fn stop(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while self.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.abort_all();
    }

    pub fn abort_all(&self) {
        let mut list = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        list.closed = true;
        for handle in list.handles.drain(..) {
            handle.abort();
        }
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

    fn start(&self, future: Task) -> tokio::task::JoinHandle<()> {
        let live = Live::new();
        let handle = tokio::spawn(
            async move {
                let _live = live;
                future.await;
            }
            .instrument(self.span.clone()),
        );
        self.tasks.track(handle.abort_handle());
        handle
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
