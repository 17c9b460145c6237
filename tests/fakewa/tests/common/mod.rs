//! Test harness: an unmodified whatsapp-rust client (InMemoryBackend)
//! against an in-process fakewa, plus a tiny JSON-over-HTTP client for the
//! control API.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use whatsapp_rust::Client;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::store::traits::Backend;
use whatsapp_rust::transport::TokioWebSocketTransportFactory;
use whatsapp_rust::types::events::Event;

pub use wacore::store::in_memory::InMemoryBackend;

/// Pinned so the client never fetches `sw.js` (no internet here).
pub const VERSION: (u32, u32, u32) = (2, 3000, 1_023_456_789);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub struct TestClient {
    pub client: Arc<Client>,
    pub handle: Option<BotHandle>,
    pub events: mpsc::UnboundedReceiver<Arc<Event>>,
}

pub async fn start_client(ws_url: &str, backend: Arc<dyn Backend>) -> TestClient {
    let (tx, events) = mpsc::unbounded_channel();
    let bot = Bot::builder()
        .with_backend_arc(backend)
        .with_transport_factory(TokioWebSocketTransportFactory::new().with_url(ws_url))
        .with_version(VERSION)
        .skip_history_sync()
        .on_event(move |event, _client| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event);
            }
        })
        .build()
        .await
        .expect("bot builds");
    let client = bot.client();
    let handle = bot.spawn();
    TestClient {
        client,
        handle: Some(handle),
        events,
    }
}

impl TestClient {
    /// Waits for the first event `pick` maps to `Some`, failing after `secs`.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        secs: u64,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => panic!("event stream ended while waiting for {what}"),
                Err(_) => panic!("timed out after {secs} s waiting for {what}"),
            };
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    }

    pub async fn next_qr(&mut self) -> String {
        self.wait_for("a QR code", 15, |e| match e {
            Event::PairingQrCode(q) => Some(q.code.clone()),
            _ => None,
        })
        .await
    }

    pub async fn connected(&mut self, secs: u64) {
        self.wait_for("Connected", secs, |e| {
            matches!(e, Event::Connected(_)).then_some(())
        })
        .await
    }

    /// Waits for a text message and returns (text, sender user, is_from_me, chat).
    pub async fn next_text(&mut self, secs: u64) -> (String, String, bool, String) {
        self.wait_for("a text message", secs, |e| match e {
            Event::Messages(batch) => batch.messages.first().map(|m| {
                use wacore::proto_helpers::MessageExt;
                (
                    m.message.text_content().unwrap_or_default().to_owned(),
                    m.info.source.sender.user.to_string(),
                    m.info.source.is_from_me,
                    m.info.source.chat.to_string(),
                )
            }),
            _ => None,
        })
        .await
    }

    pub async fn shutdown(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await;
        }
    }
}

/// One control API request (see `fakewa::control_client`).
pub async fn http(
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    fakewa::control_client::request(method, addr, path, body)
        .await
        .expect("control API answers")
}

pub async fn post(
    addr: SocketAddr,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    http("POST", addr, path, Some(&body.to_string())).await
}
