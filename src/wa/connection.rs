//! One session's whatsapp-rust client: build it on the session's sled
//! backend, run it, and translate the library's events into [`WaEvent`]s.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::pair_code::PairCodeOptions;
use whatsapp_rust::store::traits::Backend;
use whatsapp_rust::types::events::{Event, EventHandler, EventInterest};
use whatsapp_rust::{Client, Jid};

use super::{InboundSink, WaConfig, WaError, WaEvent};
use crate::task::TaskScope;

/// A running client. Dropping it aborts the client without a flush; call
/// [`Connection::shutdown`] to stop it properly.
pub struct Connection {
    handle: BotHandle,
    client: Arc<Client>,
    tasks: TaskGuard,
}

/// How long a stopped client's own tasks may take to finish (a final flush)
/// before they are aborted.
pub const TASK_GRACE: Duration = Duration::from_millis(500);

/// Ends a client's tasks when its [`Connection`] goes, however it goes (a
/// client whose run loop exited by itself is just dropped).
struct TaskGuard(super::runtime::Tasks);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.0.stop_later(TASK_GRACE);
        } else {
            self.0.abort_all();
        }
    }
}

/// Forwards every library event, in dispatch order, into a channel.
///
/// Runs inline on the library's dispatch path, so it only does a
/// non-blocking send. The default concurrent delivery would spawn a task per
/// event and lose their order (`Connected` could overtake `PairSuccess`).
/// Events go boxed: a channel keeps its messages in blocks of 32 slots, so
/// each session holds 32 pointers idle rather than 32 events (~4 KiB).
struct Forward(mpsc::UnboundedSender<Box<WaEvent>>);

impl EventHandler for Forward {
    fn handle_event(&self, event: Arc<Event>) {
        if let Some(mapped) = super::events::map(&event) {
            let _ = self.0.send(Box::new(mapped));
        }
    }

    fn interest(&self) -> EventInterest {
        EventInterest::ALL
    }
}

impl Connection {
    /// Builds a client on `backend` and starts it. Events arrive on `events`.
    ///
    /// With an `inbound` sink, every decrypted message is committed to it
    /// before WhatsApp is acknowledged (at-least-once); without one the
    /// library acknowledges right after decryption (at-most-once).
    /// The client's tasks run in a scope below `session`'s: cancelling the
    /// session ends them.
    pub async fn start(
        session: &TaskScope,
        config: &WaConfig,
        backend: Arc<dyn Backend>,
        events: mpsc::UnboundedSender<Box<WaEvent>>,
        inbound: Option<Arc<dyn InboundSink>>,
    ) -> Result<Self, WaError> {
        let tasks = super::runtime::Tasks::new(session);
        let transport = super::transport::NoDelayTransportFactory::new(config.ws_url.as_deref());
        let http = super::http::client(config.media_ca_file.as_deref()).map_err(WaError::Build)?;
        let mut builder = Bot::builder()
            .with_backend_arc(backend)
            .with_transport_factory(transport)
            .with_http_client(http)
            .with_device_props(
                whatsapp_rust::wacore::store::device::DevicePropsOverride::new()
                    .with_os(config.device_os.clone()),
            )
            .skip_history_sync()
            .with_runtime(super::runtime::SessionRuntime::in_current_span(
                tasks.clone(),
            ))
            .with_event_handler(Forward(events));
        if let Some(version) = config.version {
            builder = builder.with_version(version);
        }
        if let Some(sink) = inbound {
            builder = builder.with_inbound_durability_hook(super::inbound::Hook(sink));
        }
        let bot = builder
            .build()
            .await
            .map_err(|e| WaError::Build(e.to_string()))?;
        let client = bot.client();
        let handle = bot.spawn();
        Ok(Self {
            handle,
            client,
            tasks: TaskGuard(tasks),
        })
    }

    /// Resolves when the client's run loop has exited (logout, terminal
    /// stream error, QR codes exhausted, or shutdown).
    pub fn finished(&mut self) -> &mut BotHandle {
        &mut self.handle
    }

    /// Disconnects (flushing device state, receipts and the Signal cache) and
    /// waits for the run loop to exit, at most `timeout`; aborts after that.
    /// Returns when every task of the client has ended (their grace:
    /// [`TASK_GRACE`]).
    pub async fn shutdown(self, timeout: Duration) {
        let tasks = self.tasks.0.clone();
        let handle = self.handle;
        let abort = {
            let client = self.client.clone();
            move || client.signal_shutdown_sync()
        };
        if tokio::time::timeout(timeout, handle.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("client did not stop within {timeout:?}; aborting it");
            abort();
        }
        tasks.stop(TASK_GRACE).await;
    }

    /// Unlinks this device at WhatsApp (best effort, needs a connection),
    /// then stops the client. The keys are the caller's to wipe.
    pub async fn logout(self, timeout: Duration) {
        if tokio::time::timeout(timeout, self.client.logout())
            .await
            .is_err()
        {
            tracing::warn!("logout did not finish within {timeout:?}");
        }
        self.shutdown(timeout).await;
    }

    /// Writes the device state (phone, keys, LID) to the store now instead
    /// of within the library's 30 s write-behind window.
    pub async fn flush_device(&self) {
        if let Err(e) = self.client.persistence_manager().flush().await {
            tracing::warn!("flushing device state: {e:?}");
        }
    }

    /// Requests a pairing code for `phone` (digits with country code).
    pub async fn pair_code(&self, phone: &str) -> Result<String, WaError> {
        let options = PairCodeOptions {
            phone_number: phone.to_owned(),
            ..Default::default()
        };
        match self.client.pair_with_code(options).await {
            Ok(code) => Ok(code),
            Err(e) => Err(WaError::PairCode {
                // An earlier code is still valid (or a newer request took
                // over): a conflict with the session's state, not a refusal.
                reason: if e.lost_the_flow_to_another_request() {
                    "code_outstanding".into()
                } else {
                    e.rejection()
                        .map(|r| rejection_name(&r))
                        .unwrap_or_else(|| "request_failed".into())
                },
                message: e.to_string(),
            }),
        }
    }

    /// Sends a text; returns the message id once it is on the wire.
    /// Sends `text` to `to` as message `id` (reused on a retry, so the
    /// recipient sees one message).
    pub async fn send_text(&self, to: &str, text: &str, id: &str) -> Result<String, WaError> {
        use whatsapp_rust::wacore::proto_helpers::MessageBuilderExt;
        let jid = parse_recipient(to)?;
        let message = whatsapp_rust::waproto::whatsapp::Message::text(text);
        let options = whatsapp_rust::SendOptions::default().with_message_id(id);
        let sent = self
            .client
            .send_message_with_options(jid, message, options)
            .await
            .map_err(|e| WaError::Send(e.to_string()))?;
        Ok(sent.message_id)
    }

    /// Shows "typing…" to `to` (`false`: stops it). Best effort: the
    /// message that follows does not depend on it.
    pub async fn send_typing(&self, to: &str, typing: bool) -> Result<(), WaError> {
        let jid = parse_recipient(to)?;
        let chatstate = self.client.chatstate();
        let sent = if typing {
            chatstate.send_composing(&jid).await
        } else {
            chatstate.send_paused(&jid).await
        };
        sent.map_err(|e| WaError::Send(e.to_string()))
    }

    /// The phone number (digits) behind `lid` (`digits@lid`), when the
    /// client has learned the mapping.
    pub async fn phone_of_lid(&self, lid: &str) -> Option<String> {
        let jid = lid.parse::<Jid>().ok().filter(Jid::is_lid)?;
        super::inbound::phone_of_lid(&self.client, &jid).await
    }

    /// The library's client, for the other parts of `wa` (media).
    pub(super) fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// Phone, device JID and LID as the library knows them now.
    pub fn identity(&self) -> crate::session::Identity {
        self.identity_probe().identity()
    }

    /// A handle that queries WhatsApp (groups, numbers) from another task.
    pub fn queries(&self) -> super::Queries {
        super::Queries(self.client.clone())
    }

    /// A handle that reads the identity later, from another task.
    pub fn identity_probe(&self) -> IdentityProbe {
        IdentityProbe(self.client.clone())
    }

    pub fn push_name(&self) -> String {
        self.client.push_name()
    }

    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// When the last bytes arrived from WhatsApp (ms since epoch; 0 if never).
    pub fn last_data_received_ms(&self) -> u64 {
        self.client.stats().last_data_received_ms
    }

    /// Drops the socket and reconnects (for a connection that went silent).
    pub async fn reconnect(&self) {
        self.client.reconnect_immediately().await;
    }
}

/// Reads a client's identity (phone, device JID, LID) on demand.
pub struct IdentityProbe(Arc<Client>);

impl IdentityProbe {
    pub(super) fn new(client: Arc<Client>) -> Self {
        Self(client)
    }

    pub fn identity(&self) -> crate::session::Identity {
        let pn = self.0.pn();
        crate::session::Identity {
            phone: pn.as_ref().map(|j| j.user.to_string()).unwrap_or_default(),
            jid: pn.map(|j| j.to_string()).unwrap_or_default(),
            lid: self.0.lid().map(|j| j.to_string()).unwrap_or_default(),
        }
    }
}

/// `15551234567`, `+1 555 123 4567` or a full JID.
pub fn parse_recipient(to: &str) -> Result<Jid, WaError> {
    let to = to.trim();
    if to.contains('@') {
        return to
            .parse::<Jid>()
            .map_err(|_| WaError::BadRecipient(to.to_owned()));
    }
    let digits: String = to
        .chars()
        .filter(|c| !matches!(c, '+' | ' ' | '-' | '(' | ')'))
        .collect();
    if (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
    {
        Ok(Jid::pn(digits))
    } else {
        Err(WaError::BadRecipient(to.to_owned()))
    }
}

fn rejection_name(r: &whatsapp_rust::wacore::pair_code::PairCodeRejection) -> String {
    use whatsapp_rust::wacore::pair_code::PairCodeRejection as R;
    match r {
        R::BadRequest => "bad_request",
        R::Forbidden => "forbidden",
        R::RateOverlimit => "rate_overlimit",
        R::FeatureNotAvailable => "feature_not_available",
        R::InternalServerError => "internal_server_error",
        _ => "unknown",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::parse_recipient;

    #[test]
    fn recipients_parse_from_numbers_and_jids() {
        assert_eq!(
            parse_recipient("+1 555 123 4567").unwrap().to_string(),
            "15551234567@s.whatsapp.net"
        );
        assert_eq!(
            parse_recipient("15551234567@s.whatsapp.net").unwrap().user,
            "15551234567"
        );
        for bad in ["", "123", "0155512345", "abc", "1555123456789012"] {
            assert!(parse_recipient(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
