//! fakewa: a protocol-level fake WhatsApp server for end-to-end tests.
//!
//! It speaks the real wire protocol (WebSocket, framing, Noise XX/IK/XXfallback,
//! binary stanzas, Signal) so an unmodified whatsapp-rust client can pair, log
//! in, and exchange messages with it. A control API plays the phone and its
//! contacts. Clients must be built with `danger-skip-cert-chain-verify`: the
//! fake's certificate chain cannot carry WhatsApp's signatures.

pub mod appstate;
mod conn;
pub mod control;
pub mod control_client;
pub mod noise;
pub mod peer;
pub mod phone;
pub mod server;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use server::{Config, ControlError, Delivery, DeviceInfo, Fault, OutboxEntry, Paired, Server};
pub use state::{MessageKind, ReceiptStatus};

/// A running fake server: the WhatsApp WebSocket listener and the control API.
/// Dropping it stops both.
pub struct FakeWa {
    pub server: Arc<Server>,
    ws_addr: SocketAddr,
    control_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl FakeWa {
    /// Starts on `127.0.0.1:0` (both listeners), in memory.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(
            Config::default(),
            ([127, 0, 0, 1], 0).into(),
            ([127, 0, 0, 1], 0).into(),
        )
        .await
    }

    pub async fn start_with(
        config: Config,
        listen: SocketAddr,
        control: SocketAddr,
    ) -> std::io::Result<Self> {
        let server = Server::new(config)?;
        let ws = TcpListener::bind(listen).await?;
        let ctl = TcpListener::bind(control).await?;
        let ws_addr = ws.local_addr()?;
        let control_addr = ctl.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(server.clone().serve(ws, rx.clone()));
        let router = control::router(server.clone());
        let mut ctl_rx = rx;
        tokio::spawn(async move {
            let stop = async move {
                let _ = ctl_rx.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(ctl, router).with_graceful_shutdown(stop).await {
                tracing::error!("control API failed: {e}");
            }
        });
        tracing::info!(%ws_addr, %control_addr, "fakewa listening");
        Ok(Self {
            server,
            ws_addr,
            control_addr,
            shutdown,
        })
    }

    /// The URL to give a client: `ws://127.0.0.1:PORT/ws/chat`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws/chat", self.ws_addr)
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// Base URL of the control API: `http://127.0.0.1:PORT`.
    pub fn control_url(&self) -> String {
        format!("http://{}", self.control_addr)
    }

    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for FakeWa {
    fn drop(&mut self) {
        self.stop();
    }
}
