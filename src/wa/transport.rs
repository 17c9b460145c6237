//! How a client reaches WhatsApp: the library's WebSocket transport, dialled
//! by whatsd so the TCP socket has `TCP_NODELAY`. The library's own factory
//! (`TokioWebSocketTransportFactory`) leaves Nagle's algorithm on, and a
//! stanza written in pieces then waits for the peer's delayed ACK (~40 ms a
//! send; BENCHMARKS.md, "Outbound queue"). TLS, the upgrade request and the
//! `Origin` header are the library's: the same connector and the same
//! header, only the socket is ours.

use std::sync::Arc;

use whatsapp_rust::transport::{
    Connector, Transport, TransportEvent, TransportFactory, default_tls_connector, from_websocket,
};

/// WhatsApp Web's chat socket.
const DEFAULT_URL: &str = "wss://web.whatsapp.com/ws/chat";
/// The origin the upgrade names (the endpoint's, as the library sends it).
const ORIGIN: &str = "https://web.whatsapp.com";

pub(super) struct NoDelayTransportFactory {
    url: String,
}

impl NoDelayTransportFactory {
    pub(super) fn new(url: Option<&str>) -> Self {
        Self {
            url: url.unwrap_or(DEFAULT_URL).to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl TransportFactory for NoDelayTransportFactory {
    async fn create_transport(
        &self,
    ) -> Result<(Arc<dyn Transport>, async_channel::Receiver<TransportEvent>), anyhow::Error> {
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|e| anyhow::anyhow!("bad WebSocket URL {:?}: {e}", self.url))?;
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            other => anyhow::bail!("WebSocket URL scheme {other:?}: ws or wss"),
        };
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("WebSocket URL {:?} has no host", self.url))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let connector = if tls {
            default_tls_connector()
        } else {
            Connector::Plain
        };
        let stream = connector
            .wrap(&host, tcp)
            .await
            .map_err(|e| anyhow::anyhow!("TLS with {host}: {e}"))?;
        let (ws, _) = tokio_websockets::ClientBuilder::from_uri(uri)
            .add_header(http::header::ORIGIN, http::HeaderValue::from_static(ORIGIN))
            .map_err(|e| anyhow::anyhow!("Origin header: {e}"))?
            .connect_on(stream)
            .await
            .map_err(|e| anyhow::anyhow!("WebSocket upgrade failed: {e}"))?;
        Ok(from_websocket(ws))
    }
}
