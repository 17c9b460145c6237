//! One client connection: WebSocket, framing, Noise, then stanzas.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wacore_binary::builder::NodeBuilder;
use wacore_binary::node::{Node, NodeContent};
use wacore_noise::framing::{FrameDecoder, encode_frame};
use waproto::whatsapp as wa;

use crate::noise::{self, Established, HelloOutcome, TransportCipher};
use crate::peer;
use crate::phone;
use crate::server::{
    self, ControlError, NewMember, OutboxEntry, Paired, Reply, Server, lock, now_ms, now_secs,
};
use crate::state::{DeviceKey, DeviceRecord, Group, MessageKind, QueuedMessage, ReceiptStatus};

/// Commands other tasks send to a connection.
pub(crate) enum ConnCmd {
    /// The phone scanned this client's QR code.
    Pair {
        phone: Option<String>,
        adv_secret: [u8; 32],
        identity_pub: [u8; 32],
        reply: Reply,
    },
    /// The phone's user typed the pairing code.
    EnterPairCode { code: String, reply: Reply },
    /// Deliver the device's queued messages.
    Flush,
    /// Send this stream error, then close.
    StreamError(Node),
    /// Close the TCP connection abruptly.
    Drop,
    /// Stop reading and writing.
    Stall,
    /// Send this stanza (a notification that is not queued).
    Send(Node),
}

#[derive(Clone)]
pub(crate) struct ConnHandle {
    pub id: u64,
    tx: mpsc::UnboundedSender<ConnCmd>,
}

impl ConnHandle {
    pub fn send(&self, cmd: ConnCmd) {
        let _ = self.tx.send(cmd);
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("noise: {0}")]
    Noise(#[from] noise::NoiseError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("closed")]
    Closed,
}

fn protocol(msg: impl Into<String>) -> ConnError {
    ConnError::Protocol(msg.into())
}

pub(crate) async fn serve(
    server: Arc<Server>,
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let ws = match tokio_tungstenite::accept_async(stream).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(%peer, "websocket accept failed: {e}");
            return;
        }
    };
    let (tx, rx) = server::channel();
    let mut conn = Conn {
        server,
        handle: ConnHandle { id, tx },
        rx,
        ws,
        decoder: FrameDecoder::new(),
        role: Role::Handshaking,
        pending: HashMap::new(),
        delivered: HashSet::new(),
        offline_done: false,
        shutdown,
    };
    match conn.run().await {
        Ok(()) | Err(ConnError::Closed) => tracing::debug!(conn = id, "connection closed"),
        Err(e) => tracing::info!(conn = id, "connection ended: {e}"),
    }
    conn.unregister();
}

enum Role {
    Handshaking,
    Registering(Box<Registration>),
    Device(DeviceKey),
}

struct Registration {
    noise_pub: [u8; 32],
    bundle: peer::DeviceBundle,
    push_name: String,
    pair_code: Option<PairCodeRequest>,
}

struct PairCodeRequest {
    phone: String,
    wrapped_companion_ephemeral: Vec<u8>,
    reference: String,
    session: Option<(phone::PairCodeSession, Reply)>,
}

/// What to do when the client answers one of our IQs.
enum Pending {
    PairSuccess {
        record: Box<DeviceRecord>,
        lid: Option<String>,
        reply: Reply,
    },
    Ignore,
}

struct Conn {
    server: Arc<Server>,
    handle: ConnHandle,
    rx: mpsc::UnboundedReceiver<ConnCmd>,
    ws: Ws,
    decoder: FrameDecoder,
    role: Role,
    pending: HashMap<String, Pending>,
    /// Queued message ids already sent on this connection.
    delivered: HashSet<String>,
    /// Whether the offline backlog has been delivered and announced.
    offline_done: bool,
    shutdown: watch::Receiver<bool>,
}

impl Conn {
    async fn run(&mut self) -> Result<(), ConnError> {
        let Established {
            pattern,
            client_static,
            payload,
            mut cipher,
            server_hello,
        } = self.handshake().await?;
        if let Some(hello) = &server_hello {
            self.write_raw(hello).await?;
        }
        self.start(&mut cipher, pattern, client_static, payload)
            .await?;
        let mut stalled = false;
        loop {
            tokio::select! {
                msg = self.ws.next(), if !stalled => {
                    let data = match msg {
                        Some(Ok(WsMessage::Binary(data))) => data,
                        Some(Ok(WsMessage::Close(_))) | None => return Err(ConnError::Closed),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(e.into()),
                    };
                    self.decoder.feed(&data);
                    while let Some(frame) = self.decoder.decode_frame() {
                        let plain = cipher.decrypt(frame.to_vec())?;
                        let node = decode_node(&plain)?;
                        self.on_node(&mut cipher, node).await?;
                    }
                }
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else { return Err(ConnError::Closed) };
                    match cmd {
                        ConnCmd::Drop => return Err(ConnError::Closed),
                        _ if stalled => {}
                        ConnCmd::Stall => {
                            tracing::info!(conn = self.handle.id, "stalling connection (fault injected)");
                            stalled = true;
                        }
                        ConnCmd::StreamError(node) => {
                            self.send(&mut cipher, &node).await?;
                            self.linger().await;
                            return Ok(());
                        }
                        cmd => self.on_command(&mut cipher, cmd).await?,
                    }
                }
                _ = self.shutdown.changed() => return Ok(()),
            }
        }
    }

    /// After a terminal stream error: let the client read it and hang up
    /// first (at most 5 s), as WhatsApp does. Closing at once races the
    /// error against the close on the client's side, and a client that sees
    /// the close first just reconnects.
    async fn linger(&mut self) {
        let drained = async {
            while let Some(Ok(msg)) = self.ws.next().await {
                if matches!(msg, WsMessage::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drained).await;
        let _ = self.ws.close(None).await;
    }

    /// Reads the WA header and the handshake messages.
    async fn handshake(&mut self) -> Result<Established, ConnError> {
        let mut intro = self.next_binary().await?;
        loop {
            match strip_header(&intro) {
                Header::Complete(rest) => {
                    if intro.starts_with(EDGE_ROUTING_MAGIC) {
                        self.server.record_edge_routed();
                    }
                    self.decoder.feed(rest);
                    break;
                }
                Header::Incomplete if intro.len() <= MAX_INTRO => {
                    let more = self.next_binary().await?;
                    intro.extend_from_slice(&more);
                }
                Header::Incomplete | Header::Invalid => {
                    return Err(protocol("missing WA connection header"));
                }
                Header::UnsupportedDictionary(version) => {
                    return Err(protocol(format!(
                        "WA header for binary dictionary v{version}; fakewa speaks only v3"
                    )));
                }
            }
        }
        let hello = self.next_frame().await?;
        let pending = match noise::read_client_hello(&self.server.identity, &hello)? {
            HelloOutcome::Done(est) => return Ok(*est),
            HelloOutcome::AwaitFinish(pending) => *pending,
        };
        self.write_raw(&pending.server_hello.clone()).await?;
        let finish = self.next_frame().await?;
        Ok(noise::read_client_finish(pending, &finish)?)
    }

    async fn next_binary(&mut self) -> Result<Vec<u8>, ConnError> {
        loop {
            match self.ws.next().await {
                Some(Ok(WsMessage::Binary(data))) => return Ok(data.to_vec()),
                Some(Ok(WsMessage::Close(_))) | None => return Err(ConnError::Closed),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    async fn next_frame(&mut self) -> Result<Vec<u8>, ConnError> {
        loop {
            if let Some(frame) = self.decoder.decode_frame() {
                return Ok(frame.to_vec());
            }
            let data = self.next_binary().await?;
            self.decoder.feed(&data);
        }
    }

    async fn write_raw(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        let framed = encode_frame(payload, None).map_err(|e| protocol(e.to_string()))?;
        self.ws.send(WsMessage::Binary(framed.into())).await?;
        Ok(())
    }

    async fn send(&mut self, cipher: &mut TransportCipher, node: &Node) -> Result<(), ConnError> {
        let plain = wacore_binary::marshal::marshal(node).map_err(|e| protocol(e.to_string()))?;
        let sealed = cipher.encrypt(&plain)?;
        self.write_raw(&sealed).await
    }

    /// Decides what the connection is, from the ClientPayload.
    async fn start(
        &mut self,
        cipher: &mut TransportCipher,
        pattern: noise::Pattern,
        client_static: [u8; 32],
        payload: wa::ClientPayload,
    ) -> Result<(), ConnError> {
        if let Some(reg) = payload.device_pairing_data.as_option() {
            let bundle = peer::bundle_from_registration(reg)
                .map_err(|e| protocol(format!("registration data: {e}")))?;
            tracing::info!(conn = self.handle.id, ?pattern, "registration connection");
            self.role = Role::Registering(Box::new(Registration {
                noise_pub: client_static,
                bundle,
                push_name: payload.push_name.clone().unwrap_or_default(),
                pair_code: None,
            }));
            lock(&self.server.conns)
                .registering
                .insert(client_static, self.handle.clone());
            let refs = (0..self.server.config.qr_refs).map(|i| {
                NodeBuilder::new("ref")
                    .bytes(format!("2@fakewa{}{:04}{}", self.handle.id, i, now_ms()).into_bytes())
                    .build()
            });
            let iq = NodeBuilder::new("iq")
                .attr("from", "s.whatsapp.net")
                .attr("type", "set")
                .attr("id", format!("pd{}", self.handle.id))
                .attr("xmlns", "md")
                .children([NodeBuilder::new("pair-device").children(refs).build()])
                .build();
            self.pending
                .insert(format!("pd{}", self.handle.id), Pending::Ignore);
            return self.send(cipher, &iq).await;
        }
        let (Some(username), Some(device)) = (payload.username, payload.device) else {
            return Err(protocol("client payload is neither registration nor login"));
        };
        let key = DeviceKey {
            phone: username.to_string(),
            device: device as u16,
        };
        let accepted = {
            let state = lock(&self.server.state);
            match state.devices.get(&key) {
                Some(record) if !record.removed && record.noise_pub == client_static => {
                    Ok(state.lid_of(&key.phone))
                }
                Some(record) if record.removed => Err("device was unlinked"),
                Some(_) => Err("noise key does not match the paired device"),
                None => Err("unknown device"),
            }
        };
        let lid = match accepted {
            Ok(lid) => lid,
            Err(why) => {
                tracing::info!(conn = self.handle.id, device = %key, "login refused: {why}");
                let failure = NodeBuilder::new("failure").attr("reason", "401").build();
                self.send(cipher, &failure).await?;
                let _ = self.ws.close(None).await;
                return Err(ConnError::Closed);
            }
        };
        tracing::info!(conn = self.handle.id, device = %key, ?pattern, "login");
        let previous = lock(&self.server.conns)
            .live
            .insert(key.clone(), self.handle.clone());
        if let Some(previous) = previous {
            previous.send(ConnCmd::StreamError(
                NodeBuilder::new("stream:error")
                    .children([NodeBuilder::new("conflict")
                        .attr("type", "replaced")
                        .build()])
                    .build(),
            ));
        }
        let mut success = NodeBuilder::new("success").attr("t", now_secs().to_string());
        if let Some(lid) = lid.filter(|_| self.server.config.assign_lid) {
            success = success.attr("lid", format!("{lid}:{}@lid", key.device));
        }
        self.role = Role::Device(key);
        self.send(cipher, &success.build()).await?;
        // As WhatsApp does after login: routing info the client sends back
        // in an `ED` pre-intro on its next connections.
        let edge_routing = NodeBuilder::new("ib")
            .attr("from", "s.whatsapp.net")
            .children([NodeBuilder::new("edge_routing")
                .children([NodeBuilder::new("routing_info")
                    .bytes(EDGE_ROUTING_INFO.to_vec())
                    .build()])
                .build()])
            .build();
        self.send(cipher, &edge_routing).await
    }

    fn unregister(&self) {
        let mut conns = lock(&self.server.conns);
        let id = self.handle.id;
        match &self.role {
            Role::Registering(reg) => {
                if conns
                    .registering
                    .get(&reg.noise_pub)
                    .is_some_and(|h| h.id == id)
                {
                    conns.registering.remove(&reg.noise_pub);
                }
                if let Some(pc) = &reg.pair_code
                    && conns.pair_code.get(&pc.phone).is_some_and(|h| h.id == id)
                {
                    conns.pair_code.remove(&pc.phone);
                }
            }
            Role::Device(key) => {
                if conns.live.get(key).is_some_and(|h| h.id == id) {
                    conns.live.remove(key);
                }
            }
            Role::Handshaking => {}
        }
    }

    async fn on_command(
        &mut self,
        cipher: &mut TransportCipher,
        cmd: ConnCmd,
    ) -> Result<(), ConnError> {
        match cmd {
            ConnCmd::Pair {
                phone,
                adv_secret,
                identity_pub,
                reply,
            } => {
                self.pair(cipher, phone, adv_secret, identity_pub, reply)
                    .await
            }
            ConnCmd::EnterPairCode { code, reply } => {
                self.enter_pair_code(cipher, code, reply).await
            }
            ConnCmd::Flush => self.flush_queue(cipher).await,
            ConnCmd::Send(node) => self.send(cipher, &node).await,
            ConnCmd::StreamError(_) | ConnCmd::Drop | ConnCmd::Stall => Ok(()),
        }
    }

    /// Sends `pair-success`; the outcome is settled when the client answers.
    async fn pair(
        &mut self,
        cipher: &mut TransportCipher,
        phone: Option<String>,
        adv_secret: [u8; 32],
        identity_pub: [u8; 32],
        reply: Reply,
    ) -> Result<(), ConnError> {
        let Role::Registering(reg) = &self.role else {
            let _ = reply.send(Err(ControlError::Conflict("client is not pairing".into())));
            return Ok(());
        };
        if identity_pub != reg.bundle.identity {
            let _ = reply.send(Err(ControlError::BadRequest(
                "QR identity key does not match the client".into(),
            )));
            return Ok(());
        }
        let prepared = {
            let mut state = lock(&self.server.state);
            state
                .account(phone.as_deref(), Server::new_account_key)
                .and_then(|account| Ok((state.allocate_device_id(&account.phone)?, account)))
        };
        let (device_id, account) = match prepared {
            Ok(v) => v,
            Err(e) => {
                let _ = reply.send(Err(ControlError::Failed(e.to_string())));
                return Ok(());
            }
        };
        let account_key = account.account_key.clone();
        let container = match phone::device_identity_container(
            &account_key,
            &identity_pub,
            &adv_secret,
            1,
            device_id as u32,
        ) {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(ControlError::Failed(format!(
                    "signing the device identity: {e}"
                ))));
                return Ok(());
            }
        };
        let jid = format!("{}:{}@s.whatsapp.net", account.phone, device_id);
        let lid = self
            .server
            .config
            .assign_lid
            .then(|| format!("{}:{}@lid", account.lid, device_id));
        let mut device = NodeBuilder::new("device").attr("jid", jid.clone());
        if let Some(lid) = &lid {
            device = device.attr("lid", lid.clone());
        }
        let mut children = vec![
            NodeBuilder::new("device-identity").bytes(container).build(),
            device.build(),
        ];
        if self.server.config.push_name_in_pair_success {
            children.push(
                NodeBuilder::new("biz")
                    .attr("name", format!("Fake {}", account.phone))
                    .build(),
            );
        }
        children.push(NodeBuilder::new("platform").attr("name", "android").build());
        let iq_id = format!("ps{}-{}", self.handle.id, now_ms());
        let iq = NodeBuilder::new("iq")
            .attr("from", "s.whatsapp.net")
            .attr("type", "set")
            .attr("id", iq_id.clone())
            .attr("xmlns", "md")
            .attr("t", now_secs().to_string())
            .children([NodeBuilder::new("pair-success").children(children).build()])
            .build();
        let record = DeviceRecord {
            phone: account.phone.clone(),
            device_id,
            noise_pub: reg.noise_pub,
            bundle: reg.bundle.clone(),
            removed: false,
            push_name: reg.push_name.clone(),
            paired_at: now_secs(),
            // Right after pairing the phone shares an app-state key with the
            // new device, as a real phone does. WhatsApp holds that share like
            // any message until the device acknowledges it, so it goes through
            // the same queue: a login that drops before the receipt gets it again.
            queue: VecDeque::from([QueuedMessage::app_state_key_share(
                self.server.new_message_id(),
                &account.phone,
                self.server.app_state_key(&account.phone),
                now_secs(),
            )]),
        };
        self.pending.insert(
            iq_id,
            Pending::PairSuccess {
                record: Box::new(record),
                lid,
                reply,
            },
        );
        self.send(cipher, &iq).await
    }

    async fn enter_pair_code(
        &mut self,
        cipher: &mut TransportCipher,
        code: String,
        reply: Reply,
    ) -> Result<(), ConnError> {
        let Role::Registering(reg) = &mut self.role else {
            let _ = reply.send(Err(ControlError::Conflict("client is not pairing".into())));
            return Ok(());
        };
        let Some(request) = reg.pair_code.as_mut() else {
            let _ = reply.send(Err(ControlError::Conflict(
                "client did not request a pairing code".into(),
            )));
            return Ok(());
        };
        let wrapped = request.wrapped_companion_ephemeral.clone();
        // PBKDF2 with 2^17 rounds, twice: keep it off the async workers.
        let hello =
            tokio::task::spawn_blocking(move || phone::primary_hello(&code, &wrapped)).await;
        let Role::Registering(reg) = &mut self.role else {
            return Ok(());
        };
        let Some(request) = reg.pair_code.as_mut() else {
            return Ok(());
        };
        let (session, wrapped_primary) = match hello
            .map_err(|e| phone::PhoneError::PairCode(e.to_string()))
            .and_then(|r| r)
        {
            Ok(v) => v,
            Err(e) => {
                let _ = reply.send(Err(ControlError::BadRequest(format!(
                    "pairing code rejected: {e}"
                ))));
                return Ok(());
            }
        };
        let phone_number = request.phone.clone();
        let reference = request.reference.clone();
        request.session = Some((session, reply));
        let account = {
            let mut state = lock(&self.server.state);
            state.account(Some(&phone_number), Server::new_account_key)
        };
        let account = account.map_err(|e| protocol(e.to_string()))?;
        let account_key = account.account_key;
        let notification = NodeBuilder::new("notification")
            .attr("from", "s.whatsapp.net")
            .attr("type", "link_code_companion_reg")
            .attr("id", format!("lc{}-{}", self.handle.id, now_ms()))
            .attr("t", now_secs().to_string())
            .children([NodeBuilder::new("link_code_companion_reg")
                .attr("stage", "primary_hello")
                .children([
                    NodeBuilder::new("link_code_pairing_wrapped_primary_ephemeral_pub")
                        .bytes(wrapped_primary)
                        .build(),
                    NodeBuilder::new("primary_identity_pub")
                        .bytes(account_key.public_bytes().to_vec())
                        .build(),
                    NodeBuilder::new("link_code_pairing_ref")
                        .bytes(reference.into_bytes())
                        .build(),
                ])
                .build()])
            .build();
        self.send(cipher, &notification).await
    }

    async fn on_node(&mut self, cipher: &mut TransportCipher, node: Node) -> Result<(), ConnError> {
        match node.tag.as_ref() {
            "iq" => self.on_iq(cipher, node).await,
            "message" => self.on_message(cipher, node).await,
            "receipt" => self.on_receipt(cipher, &node).await,
            "ack" => {
                self.on_ack(&node);
                Ok(())
            }
            "chatstate" => {
                self.on_chatstate(&node);
                Ok(())
            }
            "ib" | "presence" => Ok(()),
            other => {
                tracing::debug!(conn = self.handle.id, tag = other, "ignoring stanza");
                Ok(())
            }
        }
    }

    async fn on_iq(&mut self, cipher: &mut TransportCipher, node: Node) -> Result<(), ConnError> {
        let id = attr(&node, "id").unwrap_or_default();
        let kind = attr(&node, "type").unwrap_or_default();
        if kind == "result" || kind == "error" {
            return self.on_iq_reply(cipher, &id, node).await;
        }
        let xmlns = attr(&node, "xmlns").unwrap_or_default();
        let first = node
            .children()
            .and_then(|c| c.first())
            .map(|c| c.tag.to_string())
            .unwrap_or_default();
        let reply = match (xmlns.as_str(), kind.as_str(), first.as_str()) {
            ("encrypt", "set", "rotate") => {
                self.update_bundle(&node);
                Some(result(&id, vec![]))
            }
            ("encrypt", "set", _) => {
                self.update_bundle(&node);
                Some(result(&id, vec![]))
            }
            ("encrypt", "get", "count") => {
                let count = self.device_bundle().map(|b| b.prekeys.len()).unwrap_or(0);
                Some(result(
                    &id,
                    vec![
                        NodeBuilder::new("count")
                            .attr("value", count.to_string())
                            .build(),
                    ],
                ))
            }
            ("encrypt", "get", "digest") => Some(result(&id, vec![])),
            ("encrypt", "get", "key") => Some(self.prekey_fetch(&id, &node).await),
            ("passive", "set", _) => {
                self.send(cipher, &result(&id, vec![])).await?;
                return self.finish_offline(cipher).await;
            }
            ("w:sync:app:state", "set", _) => Some(crate::appstate::sync_reply(
                &self.server,
                self.device_key(),
                &id,
                &node,
            )),
            ("usync", "get", _) => Some(self.usync_reply(&id, &node)),
            ("w:g2", "get", "participating") => Some(self.participating_reply(&id)),
            ("w:g2", "get", "query") => Some(self.group_reply(&id, &node)),
            ("w:g2", "set", "create") => Some(self.group_create(&id, &node)),
            ("w:g2", "set", "add" | "remove" | "promote" | "demote") => {
                Some(self.group_members(&id, &node, &first))
            }
            ("w:g2", "set", "leave") => Some(self.group_leave(&id, &node)),
            ("w:p", "get", _) => Some(result(&id, vec![])),
            ("w:m", "set", "media_conn") => Some(self.media_conn_reply(&id)),
            ("abt", "get", _) => Some(result(
                &id,
                vec![NodeBuilder::new("props").attr("protocol", "1").build()],
            )),
            ("w", "get", "props") => Some(result(&id, vec![NodeBuilder::new("props").build()])),
            ("blocklist", "get", _) => Some(result(&id, vec![NodeBuilder::new("list").build()])),
            ("privacy", "get", _) => Some(result(&id, vec![NodeBuilder::new("privacy").build()])),
            ("privacy", "set", _) => Some(result(&id, vec![])),
            ("md", "set", "remove-companion-device") => {
                self.remove_self();
                Some(result(&id, vec![]))
            }
            ("md", "set", "link_code_companion_reg") => Some(self.link_code_iq(&id, &node)),
            _ => None,
        };
        let reply = reply.unwrap_or_else(|| {
            tracing::warn!(
                conn = self.handle.id,
                xmlns,
                kind,
                child = first,
                "unknown IQ; answering 501"
            );
            NodeBuilder::new("iq")
                .attr("from", "s.whatsapp.net")
                .attr("type", "error")
                .attr("id", id.clone())
                .children([NodeBuilder::new("error")
                    .attr("code", "501")
                    .attr("text", "not-implemented")
                    .build()])
                .build()
        });
        self.send(cipher, &reply).await
    }

    async fn on_iq_reply(
        &mut self,
        cipher: &mut TransportCipher,
        id: &str,
        node: Node,
    ) -> Result<(), ConnError> {
        match self.pending.remove(id) {
            Some(Pending::PairSuccess { record, lid, reply }) => {
                if attr(&node, "type").as_deref() != Some("result") {
                    let why = node
                        .get_optional_child("error")
                        .and_then(|e| attr(e, "text"))
                        .unwrap_or_else(|| "error".into());
                    tracing::info!(conn = self.handle.id, "client rejected pair-success: {why}");
                    let _ = reply.send(Err(ControlError::Failed(format!(
                        "client rejected pair-success: {why}"
                    ))));
                    return Ok(());
                }
                if node.get_optional_child("pair-device-sign").is_none() {
                    let _ = reply.send(Err(ControlError::Failed(
                        "pair-success answer lacks pair-device-sign".into(),
                    )));
                    return Ok(());
                }
                let key = record.key();
                let paired = Paired {
                    phone: record.phone.clone(),
                    jid: record.jid(),
                    lid,
                };
                {
                    let mut state = lock(&self.server.state);
                    state.devices.insert(key.clone(), *record);
                    if let Err(e) = state.save_device(&key) {
                        tracing::error!("saving device {key}: {e}");
                    }
                }
                tracing::info!(conn = self.handle.id, device = %key, "paired");
                let _ = reply.send(Ok(paired));
                let restart = NodeBuilder::new("stream:error").attr("code", "515").build();
                self.send(cipher, &restart).await?;
                let _ = self.ws.close(None).await;
                Err(ConnError::Closed)
            }
            Some(Pending::Ignore) | None => Ok(()),
        }
    }

    /// Stage 1 of pairing by code (`companion_hello`) and stage 3 (`companion_finish`).
    /// The media CDN's host (`127.0.0.1:PORT`), auth token and TTLs
    /// (wacore-0.7.0/src/iq/mediaconn.rs).
    fn media_conn_reply(&self, id: &str) -> Node {
        let media = &self.server.media;
        let Some(host) = media.host() else {
            return iq_error(id, "503", "service-unavailable");
        };
        result(
            id,
            vec![
                NodeBuilder::new("media_conn")
                    .attr("auth", media.auth().to_owned())
                    .attr("ttl", "3600")
                    .attr("auth_ttl", "21600")
                    .attr("max_buckets", "12")
                    .children([NodeBuilder::new("host")
                        .attr("hostname", host)
                        .attr("type", "primary")
                        .build()])
                    .build(),
            ],
        )
    }

    fn link_code_iq(&mut self, id: &str, node: &Node) -> Node {
        let Some(reg_node) = node.get_optional_child("link_code_companion_reg") else {
            return iq_error(id, "400", "bad-request");
        };
        let stage = attr(reg_node, "stage").unwrap_or_default();
        let Role::Registering(reg) = &mut self.role else {
            return iq_error(id, "400", "bad-request");
        };
        match stage.as_str() {
            "companion_hello" => {
                let phone = attr(reg_node, "jid")
                    .and_then(|j| j.split('@').next().map(str::to_owned))
                    .unwrap_or_default();
                let Some(wrapped) = child_bytes(
                    reg_node,
                    "link_code_pairing_wrapped_companion_ephemeral_pub",
                ) else {
                    return iq_error(id, "400", "bad-request");
                };
                let reference = format!("fakewa-ref-{}-{}", self.handle.id, now_ms());
                reg.pair_code = Some(PairCodeRequest {
                    phone: phone.clone(),
                    wrapped_companion_ephemeral: wrapped,
                    reference: reference.clone(),
                    session: None,
                });
                lock(&self.server.conns)
                    .pair_code
                    .insert(phone, self.handle.clone());
                result(
                    id,
                    vec![
                        NodeBuilder::new("link_code_companion_reg")
                            .children([NodeBuilder::new("link_code_pairing_ref")
                                .bytes(reference.into_bytes())
                                .build()])
                            .build(),
                    ],
                )
            }
            "companion_finish" => {
                let Some(request) = reg.pair_code.as_mut() else {
                    return iq_error(id, "400", "bad-request");
                };
                let Some((session, reply)) = request.session.take() else {
                    return iq_error(id, "400", "bad-request");
                };
                let phone = request.phone.clone();
                let Some(bundle) = child_bytes(reg_node, "link_code_pairing_wrapped_key_bundle")
                else {
                    let _ = reply.send(Err(ControlError::Failed(
                        "companion_finish without key bundle".into(),
                    )));
                    return iq_error(id, "400", "bad-request");
                };
                let account = {
                    let mut state = lock(&self.server.state);
                    state.account(Some(&phone), Server::new_account_key)
                };
                let derived = account.map_err(|e| e.to_string()).and_then(|a| {
                    phone::finish(&session, &a.account_key, &reg.bundle.identity, &bundle)
                        .map_err(|e| e.to_string())
                });
                match derived {
                    Ok(adv_secret) => {
                        // Continue exactly as after a QR scan, once this IQ is answered.
                        let identity = reg.bundle.identity;
                        self.handle.send(ConnCmd::Pair {
                            phone: Some(phone),
                            adv_secret,
                            identity_pub: identity,
                            reply,
                        });
                        result(id, vec![])
                    }
                    Err(e) => {
                        let _ =
                            reply.send(Err(ControlError::Failed(format!("companion_finish: {e}"))));
                        iq_error(id, "400", "bad-request")
                    }
                }
            }
            _ => iq_error(id, "400", "bad-request"),
        }
    }

    fn device_key(&self) -> Option<&DeviceKey> {
        match &self.role {
            Role::Device(key) => Some(key),
            _ => None,
        }
    }

    fn device_bundle(&self) -> Option<peer::DeviceBundle> {
        let key = self.device_key()?;
        lock(&self.server.state)
            .devices
            .get(key)
            .map(|d| d.bundle.clone())
    }

    /// Stores the prekeys a device uploaded (or its rotated signed prekey).
    fn update_bundle(&self, node: &Node) {
        let Some(key) = self.device_key() else { return };
        let mut state = lock(&self.server.state);
        let Some(record) = state.devices.get_mut(key) else {
            return;
        };
        match peer::bundle_from_upload_iq(node) {
            Ok(update) => record.bundle.apply(update),
            Err(e) => {
                tracing::warn!(device = %key, "bad prekey upload: {e}");
                return;
            }
        }
        if let Err(e) = state.save_device(key) {
            tracing::error!(device = %key, "saving device: {e}");
        }
    }

    fn remove_self(&self) {
        let Some(key) = self.device_key() else { return };
        let mut state = lock(&self.server.state);
        if let Some(record) = state.devices.get_mut(key) {
            record.removed = true;
            record.queue.clear();
        }
        if let Err(e) = state.save_device(key) {
            tracing::error!(device = %key, "saving device: {e}");
        }
        tracing::info!(device = %key, "device logged out");
    }

    /// Answers a prekey fetch for contacts (each a deterministic fake user).
    async fn prekey_fetch(&self, id: &str, node: &Node) -> Node {
        let jids: Vec<String> = node
            .get_optional_child("key")
            .map(|k| {
                k.get_children_by_tag("user")
                    .filter_map(|u| attr(u, "jid"))
                    .collect()
            })
            .unwrap_or_default();
        let mut users = Vec::new();
        for jid in jids {
            let phone = jid.split(['@', ':']).next().unwrap_or_default().to_owned();
            let contact = self.server.contact(&phone);
            let mut contact = contact.lock().await;
            users.push(contact.prekey_bundle_user_node(&jid));
        }
        result(id, vec![NodeBuilder::new("list").children(users).build()])
    }

    /// Answers usync queries: every user has exactly one device (0, the phone).
    /// `<groups>` with every group the account is a member of.
    fn participating_reply(&self, id: &str) -> Node {
        let Some(key) = self.device_key() else {
            return iq_error(id, "401", "not-authorized");
        };
        let groups = self.server.groups_of(&key.phone);
        let groups = NodeBuilder::new("groups")
            .children(groups.iter().map(group_node))
            .build();
        result(id, vec![groups])
    }

    /// One group's `<group>`, for a member only (403 otherwise, 404 when
    /// there is no such group), as WhatsApp answers.
    fn group_reply(&self, id: &str, node: &Node) -> Node {
        let Some(key) = self.device_key() else {
            return iq_error(id, "401", "not-authorized");
        };
        let to = attr(node, "to").unwrap_or_default();
        let Some(group) = to
            .strip_suffix("@g.us")
            .and_then(|group| self.server.group(group))
        else {
            return iq_error(id, "404", "item-not-found");
        };
        if group.member(&key.phone).is_none() {
            return iq_error(id, "403", "forbidden");
        }
        result(id, vec![group_node(&group)])
    }

    /// `<create subject><participant jid/>…</create>`: a new group with the
    /// account as creator; answered with the group.
    fn group_create(&self, id: &str, node: &Node) -> Node {
        let Some(key) = self.device_key() else {
            return iq_error(id, "401", "not-authorized");
        };
        let Some(create) = node.get_optional_child("create") else {
            return iq_error(id, "400", "bad-request");
        };
        let subject = attr(create, "subject").unwrap_or_default();
        let mut members = vec![NewMember {
            phone: key.phone.clone(),
            admin: true,
            lid_only: false,
        }];
        for p in create.get_children_by_tag("participant") {
            let phone = attr(p, "phone_number")
                .or_else(|| attr(p, "jid"))
                .unwrap_or_default();
            let phone = phone
                .split(['@', ':'])
                .next()
                .unwrap_or_default()
                .to_owned();
            if phone != key.phone && !members.iter().any(|m| m.phone == phone) {
                members.push(NewMember {
                    phone,
                    admin: false,
                    lid_only: false,
                });
            }
        }
        match self.server.create_group(&subject, None, members) {
            Ok(group) => result(id, vec![group_node(&group)]),
            Err(_) => iq_error(id, "400", "bad-request"),
        }
    }

    /// `<add|remove|promote|demote><participant jid/>…</…>` to a group:
    /// answered per participant (`error` when refused).
    fn group_members(&self, id: &str, node: &Node, action: &str) -> Node {
        let Some(key) = self.device_key() else {
            return iq_error(id, "401", "not-authorized");
        };
        let to = attr(node, "to").unwrap_or_default();
        let Some(list) = node.get_optional_child(action) else {
            return iq_error(id, "400", "bad-request");
        };
        let jids: Vec<String> = list
            .get_children_by_tag("participant")
            .filter_map(|p| attr(p, "jid"))
            .collect();
        let phones: Vec<String> = jids
            .iter()
            .map(|j| j.split(['@', ':']).next().unwrap_or_default().to_owned())
            .collect();
        match self
            .server
            .change_group_from_device(&to, &key.phone, action, &phones)
        {
            Ok(outcomes) => {
                let answer = NodeBuilder::new(match action {
                    "add" => "add",
                    "remove" => "remove",
                    "promote" => "promote",
                    _ => "demote",
                })
                .children(outcomes.iter().zip(&jids).map(|((_, error), jid)| {
                    let p = NodeBuilder::new("participant").attr("jid", jid.clone());
                    match error {
                        Some(code) => p.attr("error", *code).build(),
                        None => p.build(),
                    }
                }))
                .build();
                result(id, vec![answer])
            }
            Err(ControlError::NotFound(_)) => iq_error(id, "404", "item-not-found"),
            Err(ControlError::Conflict(_)) => iq_error(id, "403", "forbidden"),
            Err(_) => iq_error(id, "400", "bad-request"),
        }
    }

    /// `<leave><group id/></leave>`: the account leaves the group.
    fn group_leave(&self, id: &str, node: &Node) -> Node {
        let Some(key) = self.device_key() else {
            return iq_error(id, "401", "not-authorized");
        };
        let Some(group) = node
            .get_optional_child("leave")
            .and_then(|l| l.get_optional_child("group"))
            .and_then(|g| attr(g, "id"))
        else {
            return iq_error(id, "400", "bad-request");
        };
        let edit = server::GroupEdit::Participants {
            action: "remove".into(),
            phones: vec![key.phone.clone()],
        };
        match self.server.change_group(&group, &key.phone, edit) {
            Ok(_) => result(id, vec![]),
            Err(ControlError::NotFound(_)) => iq_error(id, "404", "item-not-found"),
            Err(_) => iq_error(id, "403", "forbidden"),
        }
    }

    fn usync_reply(&self, id: &str, node: &Node) -> Node {
        let Some(usync) = node.get_optional_child("usync") else {
            return iq_error(id, "400", "bad-request");
        };
        let queries: Vec<String> = usync
            .get_optional_child("query")
            .and_then(|q| q.children())
            .map(|c| c.iter().map(|n| n.tag.to_string()).collect())
            .unwrap_or_default();
        let users: Vec<Node> = usync
            .get_optional_child("list")
            .map(|l| l.get_children_by_tag("user").collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|u| {
                // By JID, or (an is-on-WhatsApp query) by `<contact>+digits</contact>`.
                attr(u, "jid").or_else(|| {
                    let number = child_bytes(u, "contact")?;
                    let number = String::from_utf8(number).ok()?;
                    Some(format!("{}@s.whatsapp.net", number.trim_start_matches('+')))
                })
            })
            .map(|jid| {
                let phone = jid.split(['@', ':']).next().unwrap_or_default().to_owned();
                let is_pn = jid.ends_with("@s.whatsapp.net");
                let registered = !is_pn || self.server.is_registered(&phone);
                let children = queries.iter().filter_map(|q| match q.as_str() {
                    "devices" => Some(
                        NodeBuilder::new("devices")
                            .children([NodeBuilder::new("device-list")
                                .children([NodeBuilder::new("device").attr("id", "0").build()])
                                .build()])
                            .build(),
                    ),
                    "contact" => Some(
                        NodeBuilder::new("contact")
                            .attr("type", if registered { "in" } else { "out" })
                            .build(),
                    ),
                    "lid" if registered && is_pn => self.server.known_lid(&phone).map(|lid| {
                        NodeBuilder::new("lid")
                            .attr("val", format!("{lid}@lid"))
                            .build()
                    }),
                    _ => None,
                });
                NodeBuilder::new("user")
                    .attr("jid", jid)
                    .children(children.collect::<Vec<_>>())
                    .build()
            })
            .collect();
        result(
            id,
            vec![
                NodeBuilder::new("usync")
                    .children([NodeBuilder::new("list").children(users).build()])
                    .build(),
            ],
        )
    }

    /// After `passive`: the offline backlog, then `<ib><offline count>`.
    async fn finish_offline(&mut self, cipher: &mut TransportCipher) -> Result<(), ConnError> {
        if self.offline_done {
            return Ok(());
        }
        let sent = self.deliver_queue(cipher, true).await?;
        self.offline_done = true;
        let ib = NodeBuilder::new("ib")
            .attr("from", "s.whatsapp.net")
            .children([NodeBuilder::new("offline")
                .attr("count", sent.to_string())
                .build()])
            .build();
        self.send(cipher, &ib).await?;
        match self
            .device_key()
            .and_then(|k| crate::appstate::login_notice(&self.server, k))
        {
            Some(notice) => self.send(cipher, &notice).await,
            None => Ok(()),
        }
    }

    async fn flush_queue(&mut self, cipher: &mut TransportCipher) -> Result<(), ConnError> {
        if self.offline_done {
            self.deliver_queue(cipher, false).await?;
        }
        Ok(())
    }

    /// Encrypts and sends the queued messages not yet sent on this connection.
    async fn deliver_queue(
        &mut self,
        cipher: &mut TransportCipher,
        offline: bool,
    ) -> Result<usize, ConnError> {
        let Some(key) = self.device_key().cloned() else {
            return Ok(0);
        };
        let queued: Vec<_> = {
            let state = lock(&self.server.state);
            state
                .devices
                .get(&key)
                .map(|d| {
                    d.queue
                        .iter()
                        .filter(|m| !self.delivered.contains(&m.id))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut sent = 0;
        for message in queued {
            match self.build_inbound(&key, &message, offline).await {
                Ok(stanza) => {
                    self.send(cipher, &stanza).await?;
                    sent += 1;
                }
                Err(e) => {
                    tracing::error!(device = %key, id = %message.id, "cannot build message: {e}")
                }
            }
            self.delivered.insert(message.id.clone());
        }
        if sent > 0 && self.server.take_drop_after_delivery(&key.phone) {
            tracing::info!(conn = self.handle.id, device = %key, "dropping connection after delivery (fault injected)");
            return Err(ConnError::Closed);
        }
        Ok(sent)
    }

    async fn build_inbound(
        &self,
        key: &DeviceKey,
        message: &crate::state::QueuedMessage,
        offline: bool,
    ) -> anyhow::Result<Node> {
        if let Some(notice) = &message.notice {
            // Notifications are not encrypted.
            let mut stanza = notice_node(notice, &message.id, message.timestamp);
            if offline {
                stanza.attrs.insert("offline", "1");
            }
            return Ok(stanza);
        }
        if let Some(receipt) = &message.receipt {
            // Receipts are not encrypted.
            let mut stanza = NodeBuilder::new("receipt")
                .attr("from", format!("{}@s.whatsapp.net", message.contact))
                .attr("id", receipt.message_id.clone())
                .attr("t", message.timestamp.to_string());
            if let Some(kind) = receipt.status.wire_type() {
                stanza = stanza.attr("type", kind);
            }
            let mut stanza = stanza.build();
            if offline {
                stanza.attrs.insert("offline", "1");
            }
            return Ok(stanza);
        }
        let mut bundle = lock(&self.server.state)
            .devices
            .get(key)
            .map(|d| d.bundle.clone())
            .ok_or_else(|| anyhow::anyhow!("device gone"))?;
        let before = bundle.prekeys.len();
        let device = (key.phone.as_str(), key.device as u32);
        let mut stanza = match (&message.app_state_key, message.kind) {
            (Some(shared), _) => {
                let own_phone = self.server.contact(&key.phone);
                let mut own_phone = own_phone.lock().await;
                peer::app_state_key_share_stanza(
                    &mut own_phone,
                    device,
                    &mut bundle,
                    &message.id,
                    &shared.key_id,
                    &shared.key_data,
                    message.timestamp,
                )
                .await?
            }
            (None, MessageKind::Dm) => {
                let contact = self.server.contact(&message.contact);
                let mut contact = contact.lock().await;
                let push_name = format!("Contact {}", message.contact);
                let mut stanza = match &message.proto {
                    Some(proto) => {
                        let msg = <wa::Message as buffa::Message>::decode_from_slice(proto)
                            .map_err(|e| anyhow::anyhow!("queued message: {e}"))?;
                        peer::dm_message_stanza(
                            &mut contact,
                            device,
                            &mut bundle,
                            &message.id,
                            &msg,
                            message.timestamp,
                            &push_name,
                        )
                        .await?
                    }
                    None => {
                        peer::dm_stanza(
                            &mut contact,
                            device,
                            &mut bundle,
                            &message.id,
                            &message.text,
                            message.timestamp,
                            &push_name,
                        )
                        .await?
                    }
                };
                // A contact with a LID (every group member has one) names
                // it, as WhatsApp does: that is how a device learns which
                // phone a LID-only group member has.
                if let Some(lid) = self.server.known_lid(&message.contact) {
                    stanza.attrs.insert("sender_lid", format!("{lid}@lid"));
                }
                stanza
            }
            (None, MessageKind::FromMe) => {
                let own_phone = self.server.contact(&key.phone);
                let mut own_phone = own_phone.lock().await;
                peer::from_me_stanza(
                    &mut own_phone,
                    device,
                    &mut bundle,
                    &message.contact,
                    &message.id,
                    &message.text,
                    message.timestamp,
                    "",
                )
                .await?
            }
            (None, MessageKind::Group) => {
                let group = message
                    .group
                    .as_deref()
                    .ok_or_else(|| anyhow::anyhow!("group message without a group"))?;
                let contact = self.server.contact(&message.contact);
                let mut contact = contact.lock().await;
                peer::group_stanza(
                    &mut contact,
                    device,
                    &mut bundle,
                    &format!("{group}@g.us"),
                    &message.id,
                    &message.text,
                    message.timestamp,
                    &format!("Contact {}", message.contact),
                )
                .await?
            }
            (None, MessageKind::Status) => {
                let contact = self.server.contact(&message.contact);
                let mut contact = contact.lock().await;
                peer::status_stanza(
                    &mut contact,
                    device,
                    &mut bundle,
                    &message.id,
                    &message.text,
                    message.timestamp,
                    &format!("Contact {}", message.contact),
                )
                .await?
            }
        };
        if bundle.prekeys.len() != before {
            let mut state = lock(&self.server.state);
            if let Some(record) = state.devices.get_mut(key) {
                record.bundle.prekeys = bundle.prekeys;
            }
            let _ = state.save_device(key);
        }
        if offline {
            stanza.attrs.insert("offline", "1");
        }
        self.server.record_delivery(server::Delivery {
            id: message.id.clone(),
            phone: key.phone.clone(),
            device: key.device,
            enc_types: stanza
                .get_children_by_tag("enc")
                .filter_map(|e| attr(e, "type"))
                .collect(),
            offline,
            app_state_key_share: message.app_state_key.is_some(),
        });
        Ok(stanza)
    }

    async fn on_receipt(
        &mut self,
        cipher: &mut TransportCipher,
        node: &Node,
    ) -> Result<(), ConnError> {
        let Some(key) = self.device_key().cloned() else {
            return Ok(());
        };
        let mut ids: Vec<String> = attr(node, "id").into_iter().collect();
        if let Some(list) = node.get_optional_child("list") {
            ids.extend(
                list.get_children_by_tag("item")
                    .filter_map(|i| attr(i, "id")),
            );
        }
        self.server.record_receipt(server::DeviceReceipt {
            from_device_jid: format!("{}:{}@s.whatsapp.net", key.phone, key.device),
            chat: attr(node, "to").unwrap_or_default(),
            participant: attr(node, "participant"),
            ids: ids.clone(),
            kind: attr(node, "type").unwrap_or_else(|| "delivery".into()),
            received_at_ms: now_ms(),
        });
        if attr(node, "type").as_deref() == Some("server-error") {
            return self.on_server_error_receipt(cipher, &key, node).await;
        }
        if attr(node, "type").as_deref() == Some("retry") {
            tracing::warn!(device = %key, ?ids, "client could not decrypt a message (retry receipt)");
        }
        let mut state = lock(&self.server.state);
        if let Some(record) = state.devices.get_mut(&key) {
            let before = record.queue.len();
            record.queue.retain(|m| !ids.contains(&m.id));
            if record.queue.len() != before {
                let _ = state.save_device(&key);
            }
        }
        Ok(())
    }

    /// A media re-upload request (`<receipt type="server-error"><rmr/>`,
    /// recorded with the receipts by the caller): acked, and answered at
    /// once by the sender's phone (`crate::media_retry`). It confirms no
    /// delivery: the queue is left alone.
    async fn on_server_error_receipt(
        &mut self,
        cipher: &mut TransportCipher,
        key: &DeviceKey,
        node: &Node,
    ) -> Result<(), ConnError> {
        let id = attr(node, "id").unwrap_or_default();
        let mut ack = NodeBuilder::new("ack")
            .attr("class", "receipt")
            .attr("id", id.clone())
            .attr("type", "server-error");
        if let Some(to) = attr(node, "to") {
            ack = ack.attr("from", to);
        }
        self.send(cipher, &ack.build()).await?;
        let server = self.server.clone();
        let answer = server
            .reuploads
            .answer(&server.media, &key.phone, node, |phone| {
                server.known_lid(phone)
            });
        match answer {
            Some(notification) => {
                tracing::info!(device = %key, %id, "media re-upload request answered");
                self.send(cipher, &notification).await
            }
            None => {
                tracing::debug!(device = %key, %id, "server-error receipt without <rmr> ignored");
                Ok(())
            }
        }
    }

    /// A typing indicator the device sent: `<chatstate to><composing/>`
    /// (`media="audio"`: recording) or `<paused/>`.
    fn on_chatstate(&self, node: &Node) {
        let Some(key) = self.device_key().cloned() else {
            return;
        };
        let Some(child) = node.children().and_then(|c| c.first()) else {
            return;
        };
        let state = match (child.tag.as_ref(), attr(child, "media").as_deref()) {
            ("composing", Some("audio")) => "recording",
            ("composing", _) => "composing",
            ("paused", _) => "paused",
            (other, _) => other,
        };
        self.server.record_chatstate(server::DeviceChatstate {
            from_device_jid: format!("{}:{}@s.whatsapp.net", key.phone, key.device),
            chat: attr(node, "to").unwrap_or_default(),
            state: state.to_owned(),
            received_at_ms: now_ms(),
        });
    }

    /// A message the device sent: decrypt the copies addressed to fake users.
    async fn on_message(
        &mut self,
        cipher: &mut TransportCipher,
        node: Node,
    ) -> Result<(), ConnError> {
        let Some(key) = self.device_key().cloned() else {
            return Ok(());
        };
        let id = attr(&node, "id").unwrap_or_default();
        let to = attr(&node, "to").unwrap_or_default();
        let mut text = None;
        let sender = (key.phone.as_str(), key.device as u32);
        // A group send: each member's copy carries the sender key, the
        // text goes once as `skmsg`; the first member that took the key reads it.
        let mut group_reader: Option<String> = None;
        let mut decrypted: Vec<wa::Message> = Vec::new();
        let mut parts = peer::parse_outbound(&node);
        parts.sort_by_key(|part| part.enc_type == "skmsg");
        for part in parts {
            if part.enc_type == "skmsg" {
                let Some(reader) = &group_reader else {
                    tracing::warn!(device = %key, %to, "skmsg without a sender key");
                    continue;
                };
                let contact = self.server.contact(reader);
                let mut contact = contact.lock().await;
                match contact.decrypt_group(&to, sender, &part.ciphertext).await {
                    Ok(msg) => {
                        text = text.or_else(|| message_text(&msg));
                        decrypted.push(msg);
                    }
                    Err(e) => tracing::warn!(device = %key, %to, "cannot decrypt skmsg: {e}"),
                }
                continue;
            }
            let phone = part
                .recipient
                .split(['@', ':'])
                .next()
                .unwrap_or_default()
                .to_owned();
            let contact = self.server.contact(&phone);
            let mut contact = contact.lock().await;
            match contact
                .decrypt_from(
                    (key.phone.as_str(), key.device as u32),
                    &part.enc_type,
                    &part.ciphertext,
                )
                .await
            {
                Ok(msg) => {
                    if to.ends_with("@g.us") {
                        match contact.accept_sender_key(&to, sender, &msg).await {
                            Ok(true) if phone != key.phone && group_reader.is_none() => {
                                group_reader = Some(phone.clone());
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(device = %key, %to, "bad sender key: {e}"),
                        }
                    }
                    if phone != key.phone || text.is_none() {
                        text = text.or_else(|| message_text(&msg));
                    }
                    decrypted.push(msg);
                }
                Err(e) => {
                    tracing::warn!(device = %key, recipient = %part.recipient, "cannot decrypt outbound copy: {e}")
                }
            }
        }
        let media = decrypted.iter().find_map(|m| self.server.media.describe(m));
        let (media, media_ref) = match media {
            Some((media, media_ref)) => (Some(media), media_ref),
            None => (None, None),
        };
        self.server.record_outbound(OutboxEntry {
            id: id.clone(),
            from_phone: key.phone.clone(),
            from_device: key.device,
            to: to.clone(),
            text,
            received_at_ms: now_ms(),
            media,
            reply_to: decrypted.iter().find_map(crate::media::reply_to),
            reaction: decrypted.iter().find_map(crate::media::reaction),
            media_ref,
        });
        let ack = NodeBuilder::new("ack")
            .attr("class", "message")
            .attr("id", id.clone())
            .attr("from", to.clone())
            .attr("t", now_secs().to_string())
            .build();
        self.send(cipher, &ack).await?;
        // The contact's phone is online: it confirms delivery right away.
        let contact = to.split(['@', ':']).next().unwrap_or_default();
        if self.server.config.delivery_receipts
            && to.ends_with("@s.whatsapp.net")
            && contact != key.phone
            && let Err(e) =
                self.server
                    .queue_receipt(&key.phone, contact, &id, ReceiptStatus::Delivered)
        {
            tracing::warn!(device = %key, %id, "cannot queue the delivery receipt: {e}");
        }
        Ok(())
    }

    /// The device acknowledged a receipt: it is no longer queued.
    fn on_ack(&mut self, node: &Node) {
        let class = attr(node, "class");
        if !matches!(class.as_deref(), Some("receipt" | "notification")) {
            return;
        }
        let Some(key) = self.device_key().cloned() else {
            return;
        };
        let id = attr(node, "id").unwrap_or_default();
        let kind = attr(node, "type");
        let mut state = lock(&self.server.state);
        if let Some(record) = state.devices.get_mut(&key) {
            let before = record.queue.len();
            record.queue.retain(|m| {
                let acked_receipt = m
                    .receipt
                    .as_ref()
                    .is_some_and(|r| r.message_id == id && r.status.wire_type() == kind.as_deref());
                let acked_notice = m.notice.is_some() && m.id == id;
                !(acked_receipt || acked_notice)
            });
            if record.queue.len() != before {
                let _ = state.save_device(&key);
            }
        }
    }
}

fn message_text(msg: &wa::Message) -> Option<String> {
    if let Some(text) = &msg.conversation {
        return Some(text.clone());
    }
    if let Some(ext) = msg.extended_text_message.as_option() {
        return ext.text.clone();
    }
    if let Some(dsm) = msg.device_sent_message.as_option()
        && let Some(inner) = dsm.message.as_option()
    {
        return message_text(inner);
    }
    None
}

/// The edge-routing pre-intro's magic: `ED`, then version bytes 0 and 1.
const EDGE_ROUTING_MAGIC: &[u8] = b"ED\x00\x01";
/// The routing info fakewa hands out (real ones are a few opaque bytes too).
const EDGE_ROUTING_INFO: &[u8] = b"\x08\x02\x08\x05fakewa-edge";
/// How many header bytes a connection may send before the Noise hello.
const MAX_INTRO: usize = 64 * 1024;

/// What a connection's first bytes hold before the Noise hello.
#[derive(Debug, PartialEq, Eq)]
enum Header<'a> {
    /// The header is complete; the rest follows it.
    Complete(&'a [u8]),
    /// Too few bytes yet to tell.
    Incomplete,
    /// Not a WhatsApp connection header.
    Invalid,
    /// A WhatsApp header for another binary dictionary version.
    UnsupportedDictionary(u8),
}

/// Parses the optional edge-routing pre-intro (`ED 00 01`, a 3-byte
/// big-endian length at bytes 4–6, that many bytes of routing data;
/// `wacore-noise-0.7.0/src/edge_routing.rs`) and the `WA 06 03` header.
fn strip_header(buf: &[u8]) -> Header<'_> {
    let mut rest = buf;
    if rest.first() == Some(&b'E') {
        let magic = &EDGE_ROUTING_MAGIC[..rest.len().min(EDGE_ROUTING_MAGIC.len())];
        if !rest.starts_with(magic) {
            return Header::Invalid;
        }
        let Some(len) = rest.get(4..7) else {
            return Header::Incomplete;
        };
        let len = (usize::from(len[0]) << 16) | (usize::from(len[1]) << 8) | usize::from(len[2]);
        let Some(after) = rest.get(7 + len..) else {
            return Header::Incomplete;
        };
        rest = after;
    }
    let header = &wacore_binary::consts::WA_CONN_HEADER[..];
    match rest.strip_prefix(header) {
        Some(after) => Header::Complete(after),
        None if header.starts_with(rest) => Header::Incomplete,
        None => match rest {
            [b'W', b'A', magic, version, ..] if *magic == header[2] => {
                Header::UnsupportedDictionary(*version)
            }
            _ => Header::Invalid,
        },
    }
}

fn decode_node(plain: &[u8]) -> Result<Node, ConnError> {
    let data = wacore_binary::util::unpack(plain).map_err(|e| protocol(format!("unpack: {e}")))?;
    let node = wacore_binary::marshal::unmarshal_ref(&data)
        .map_err(|e| protocol(format!("unmarshal: {e}")))?;
    Ok(node.to_owned())
}

pub(crate) fn attr(node: &Node, key: &str) -> Option<String> {
    node.attrs.get(key).map(|v| v.as_str().into_owned())
}

pub(crate) fn child_bytes(node: &Node, tag: &str) -> Option<Vec<u8>> {
    match &node.get_optional_child(tag)?.content {
        Some(NodeContent::Bytes(b)) => Some(b.clone()),
        Some(NodeContent::String(s)) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

fn result(id: &str, children: Vec<Node>) -> Node {
    let b = NodeBuilder::new("iq")
        .attr("from", "s.whatsapp.net")
        .attr("type", "result")
        .attr("id", id.to_owned());
    if children.is_empty() {
        b.build()
    } else {
        b.children(children).build()
    }
}

/// How a group names a member: by LID in a LID-addressed group (with
/// `phone_number` unless hidden), else by phone (with `lid`).
fn member_attrs(lid_mode: bool, m: &crate::state::Member) -> Vec<(&'static str, String)> {
    if lid_mode {
        let mut attrs = vec![("jid", format!("{}@lid", m.lid))];
        if !m.lid_only {
            attrs.push(("phone_number", format!("{}@s.whatsapp.net", m.phone)));
        }
        attrs
    } else {
        vec![
            ("jid", format!("{}@s.whatsapp.net", m.phone)),
            ("lid", format!("{}@lid", m.lid)),
        ]
    }
}

/// `<notification type="w:gp2" from="<group>@g.us" participant="<by>" id t>`
/// with one action child, as WhatsApp tells members of a change.
fn notice_node(notice: &crate::state::GroupNotice, id: &str, ts: u64) -> Node {
    use crate::state::GroupChange;
    let lid_mode = notice.group.lid_addressed();
    let by = member_attrs(lid_mode, &notice.by);
    let action = match &notice.change {
        GroupChange::Participants { action, members } => NodeBuilder::new(match action.as_str() {
            "add" => "add",
            "remove" => "remove",
            "promote" => "promote",
            _ => "demote",
        })
        .children(members.iter().map(|m| {
            NodeBuilder::new("participant")
                .attrs(member_attrs(lid_mode, m))
                .build()
        }))
        .build(),
        GroupChange::Subject(subject) => NodeBuilder::new("subject")
            .attr("subject", subject.clone())
            .attr("s_o", by[0].1.clone())
            .attr("s_t", ts)
            .build(),
        GroupChange::Description(description) => {
            let body = match description {
                Some(text) => NodeBuilder::new("body")
                    .string_content(text.as_str())
                    .build(),
                None => NodeBuilder::new("delete").build(),
            };
            NodeBuilder::new("description")
                .attr("id", id.to_owned())
                .children([body])
                .build()
        }
    };
    let mut node = NodeBuilder::new("notification")
        .attr("type", "w:gp2")
        .attr("from", notice.group.jid())
        .attr("id", id.to_owned())
        .attr("t", ts)
        .attr("participant", by[0].1.clone());
    if lid_mode && !notice.by.lid_only {
        node = node.attr(
            "participant_pn",
            format!("{}@s.whatsapp.net", notice.by.phone),
        );
    }
    node.children([action]).build()
}

/// A group as `w:g2` answers it. A LID-addressed group names members by
/// LID, with `phone_number` unless the member hides it; a phone-addressed
/// group names them by phone, with their `lid`.
fn group_node(group: &Group) -> Node {
    let lid_mode = group.lid_addressed();
    let pn = |phone: &str| format!("{phone}@s.whatsapp.net");
    let lid = |lid: &str| format!("{lid}@lid");
    let mut children: Vec<Node> = group
        .members
        .iter()
        .map(|m| {
            let mut p = NodeBuilder::new("participant").attrs(member_attrs(lid_mode, m));
            if let Some(kind) = m.role.wire_type() {
                p = p.attr("type", kind);
            }
            p.build()
        })
        .collect();
    if let Some(description) = &group.description {
        children.push(
            NodeBuilder::new("description")
                .attr("id", format!("{}{}", group.id, group.created))
                .attr("t", group.created)
                .children([NodeBuilder::new("body")
                    .string_content(description.as_str())
                    .build()])
                .build(),
        );
    }
    let creator = group.member(&group.creator);
    let mut node = NodeBuilder::new("group")
        .attr("id", group.id.clone())
        .attr("subject", group.subject.clone())
        .attr("s_t", group.created)
        .attr("creation", group.created)
        .attr("size", group.members.len() as u64)
        .attr("addressing_mode", if lid_mode { "lid" } else { "pn" });
    node = match creator {
        Some(c) if lid_mode => {
            let node = node.attr("creator", lid(&c.lid));
            if c.lid_only {
                node
            } else {
                node.attr("creator_pn", pn(&c.phone))
            }
        }
        _ => node.attr("creator", pn(&group.creator)),
    };
    node.children(children).build()
}

fn iq_error(id: &str, code: &str, text: &str) -> Node {
    NodeBuilder::new("iq")
        .attr("from", "s.whatsapp.net")
        .attr("type", "error")
        .attr("id", id.to_owned())
        .children([NodeBuilder::new("error")
            .attr("code", code.to_owned())
            .attr("text", text.to_owned())
            .build()])
        .build()
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_without_edge_routing() {
        assert_eq!(strip_header(b"WA\x06\x03hello"), Header::Complete(b"hello"));
        assert_eq!(strip_header(b"WA\x06"), Header::Incomplete);
        assert_eq!(
            strip_header(b"WA\x06\x02hello"),
            Header::UnsupportedDictionary(2)
        );
        assert_eq!(strip_header(b"GET /"), Header::Invalid);
    }

    #[test]
    fn edge_routing_pre_intro_is_skipped_by_its_length() {
        // Exactly what whatsapp-rust sends when it holds routing info.
        let routing = vec![0xAB; 300];
        let (mut sent, used) = wacore_noise::build_handshake_header(Some(&routing));
        assert!(used);
        sent.extend_from_slice(b"hello");
        assert_eq!(strip_header(&sent), Header::Complete(b"hello"));
        // Split anywhere before the hello, the header is incomplete, never invalid.
        for cut in 0..sent.len() - 5 {
            assert_eq!(
                strip_header(&sent[..cut]),
                Header::Incomplete,
                "cut at {cut}"
            );
        }
        let mut empty = b"ED\x00\x01\x00\x00\x00".to_vec();
        empty.extend_from_slice(b"WA\x06\x03x");
        assert_eq!(strip_header(&empty), Header::Complete(b"x"));
        assert_eq!(
            strip_header(b"ED\x00\x02\x00\x00\x00WA\x06\x03"),
            Header::Invalid
        );
    }
}
