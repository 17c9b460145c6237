//! whatsd: a self-hosted WhatsApp multi-device session daemon.
//!
//! Layout: `wa` is the only code that touches whatsapp-rust; `store` keeps
//! records and device keys in sled, sealed at rest; `proto` holds the
//! generated record types; `session` runs the sessions; `webhook` forwards
//! their messages and events to tenants from a durable outbox; `api` serves
//! them over HTTP and WebSocket; `config` reads the configuration; `cli` is the
//! command-line client of the API.

#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
#[doc(hidden)]
pub mod fault;
pub mod hex;
pub mod metrics;
pub mod notify;
pub mod proto;
pub mod session;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod wa;
pub mod webhook;

pub use daemon::{ConfigWatch, Options, RunError, run, run_with};

/// Locks `m`, taking a lock poisoned by a panic elsewhere as it is (a
/// panicking task must not take every later caller down with it).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
