//! The library's task runtime (tokio), with every task it spawns entered
//! into the span that built the client: the session's. Log lines the
//! library writes from its own tasks (handshake, keepalive, logout) then
//! carry the session id like everything else about that session.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tracing::Instrument;
use whatsapp_rust::wacore::runtime::{AbortHandle, Runtime};

pub struct SessionRuntime {
    span: tracing::Span,
}

impl SessionRuntime {
    /// Tasks spawned later run in the span current now.
    pub fn in_current_span() -> Self {
        Self {
            span: tracing::Span::current(),
        }
    }
}

type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

impl Runtime for SessionRuntime {
    fn spawn(&self, future: Task) -> AbortHandle {
        let handle = tokio::spawn(future.instrument(self.span.clone()));
        AbortHandle::new(move || handle.abort())
    }

    fn spawn_detached(&self, future: Task) {
        tokio::spawn(future.instrument(self.span.clone()));
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
