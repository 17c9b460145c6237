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
pub mod media;
pub mod media_retry;
pub mod noise;
pub mod peer;
pub mod phone;
pub mod server;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use server::{
    Config, ControlError, Delivery, DeviceInfo, Fault, MediaSend, OutboxEntry, Paired, SentMedia,
    Server,
};
pub use state::{MessageKind, ReceiptStatus};

/// The media CA of every fakewa started in this process, by WebSocket URL,
/// so a test helper that only has the URL can find it.
static MEDIA_CAS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// The media CA certificate (PEM) of the fakewa started in this process whose
/// WebSocket URL is `ws_url` ([`FakeWa::ws_url`]).
pub fn media_ca_pem_for_ws_url(ws_url: &str) -> Option<String> {
    server::lock(&MEDIA_CAS)
        .iter()
        .rev()
        .find(|(url, _)| url == ws_url)
        .map(|(_, pem)| pem.clone())
}

/// A running fake server: the WhatsApp WebSocket listener and the control API.
/// Dropping it stops both.
pub struct FakeWa {
    pub server: Arc<Server>,
    ws_addr: SocketAddr,
    control_addr: SocketAddr,
    media_addr: SocketAddr,
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
        let media_listen = config.media_listen;
        let server = Server::new(config)?;
        let ws = TcpListener::bind(listen).await?;
        let media = TcpListener::bind(media_listen).await?;
        let media_addr = media.local_addr()?;
        server.media.set_addr(media_addr);
        let ctl = TcpListener::bind(control).await?;
        let ws_addr = ws.local_addr()?;
        let control_addr = ctl.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(server.clone().serve(ws, rx.clone()));
        {
            let store = server.media.clone();
            let rx = rx.clone();
            tokio::spawn(async move {
                if let Err(e) = media::serve(store, media, rx).await {
                    tracing::error!("media server failed: {e}");
                }
            });
        }
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
        tracing::info!(%ws_addr, %control_addr, %media_addr, "fakewa listening");
        server::lock(&MEDIA_CAS).push((format!("ws://{ws_addr}/ws/chat"), server.media_ca_pem()));
        Ok(Self {
            server,
            ws_addr,
            control_addr,
            media_addr,
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

    /// The media CDN's address (HTTPS): `127.0.0.1:PORT`.
    pub fn media_addr(&self) -> SocketAddr {
        self.media_addr
    }

    /// The PEM certificate of the CA that signed the media CDN's
    /// certificate: what a client must trust to upload and download media.
    pub fn media_ca_pem(&self) -> String {
        self.server.media.ca_pem().to_owned()
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
