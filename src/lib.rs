//! whatsd: a self-hosted WhatsApp multi-device session daemon.
//!
//! Layout: `wa` is the only code that touches whatsapp-rust; `session` runs
//! the sessions (state machine, one task each, supervisor); `store` keeps
//! records and device keys in sled, sealed at rest; `proto` holds the
//! generated record types.

#![forbid(unsafe_code)]

pub mod proto;
pub mod session;
pub mod store;
pub mod wa;
