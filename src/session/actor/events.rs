//! What a session does with its client's events: pairing (QR codes,
//! pairing codes, the phone's link), the link once it stands (connected,
//! disconnected, the phone's identity and push name) and the terminal
//! events, which all end in [`Actor::fail`] or a logout.

use std::time::Duration;

use tokio::time::Instant;

use super::{Actor, lock};
use crate::session::contacts;
use crate::session::event::{EventKind, Identity, PairingQr, Party};
use crate::session::state::{Reason, SessionState};
use crate::session::{Owner, now_ms};
use crate::wa::{BookContact, GroupChange, GroupChangeKind, InboundMessage, Receipt, WaEvent};

impl Actor {
    pub(super) async fn on_wa_event(&mut self, event: WaEvent) {
        match event {
            // Pairing.
            WaEvent::Qr { code, valid_for } => self.on_qr(code, valid_for).await,
            WaEvent::QrExhausted { disconnected } => {
                tracing::info!(session = %self.record.id, disconnected, "QR codes exhausted");
            }
            WaEvent::PairCode { code, valid_for } => self.on_pair_code(code, valid_for).await,
            WaEvent::PairCodeRefresh => {
                self.on_pair_code_lost(
                    "expired".into(),
                    "the pairing code expired; request a new one".into(),
                )
                .await
            }
            WaEvent::PairCodeError { reason, message } => {
                self.on_pair_code_lost(reason, message).await
            }
            WaEvent::PairSuccess {
                identity,
                business_name,
                platform,
            } => self.on_paired(identity, business_name, platform).await,
            WaEvent::PairError { message } => {
                tracing::warn!(session = %self.record.id, "the phone's link attempt failed: {message}");
            }
            // The link.
            WaEvent::Connected => self.on_connected().await,
            WaEvent::Disconnected => self.on_disconnected().await,
            WaEvent::PushName(name) => self.on_push_name(name).await,
            WaEvent::Undecryptable(message) => self.on_undecryptable(*message).await,
            WaEvent::Receipt(receipt) => self.on_receipt(*receipt).await,
            WaEvent::Group(change) => self.on_group_change(*change).await,
            WaEvent::AddressBook(contact) => self.on_address_book(*contact),
            // Terminal.
            WaEvent::LoggedOut { on_connect } => self.on_unlinked(on_connect).await,
            WaEvent::StreamReplaced => {
                // Never restart on our own: two copies would keep kicking each other off.
                self.fail(
                    Reason::StreamReplaced,
                    "another connection took over this device; start it again once the other one is gone".into(),
                )
                .await
            }
            WaEvent::TemporaryBan {
                message,
                expires_in,
            } => {
                let message = format!(
                    "{message}; banned for {} more seconds",
                    expires_in.as_secs()
                );
                self.fail(Reason::TemporaryBan, message).await
            }
            WaEvent::ClientOutdated => {
                self.fail(
                    Reason::ClientOutdated,
                    "WhatsApp refused this client version".into(),
                )
                .await
            }
            WaEvent::ConnectFailure { terminal, message } => {
                if terminal {
                    self.fail(Reason::ConnectFailure, message).await
                }
            }
        }
    }

    /// The one way a session fails: its client (and every task of it)
    /// stops, then `failed(reason)` is persisted and announced.
    pub(super) async fn fail(&mut self, reason: Reason, message: String) {
        self.stop_client().await;
        self.transition(SessionState::Failed, Some(reason), Some(message))
            .await;
    }

    // ---- pairing -------------------------------------------------------

    async fn on_qr(&mut self, code: String, valid_for: Duration) {
        self.qr_index += 1;
        let qr = PairingQr {
            code,
            expires_at_ms: now_ms() + valid_for.as_millis() as i64,
            index: self.qr_index,
        };
        lock(&self.shared.live_qr).insert(self.record.id.clone(), qr.clone());
        if self.state() == SessionState::Starting
            && !self.transition(SessionState::Qr, None, None).await
        {
            return;
        }
        crate::metrics::inc_qr_issued();
        let activation_deadline_ms = self
            .activation_deadline
            .map(|d| now_ms() + d.saturating_duration_since(Instant::now()).as_millis() as i64)
            .unwrap_or(0);
        self.emit(EventKind::Qr {
            qr,
            activation_deadline_ms,
        });
    }

    async fn on_pair_code(&mut self, code: String, valid_for: Duration) {
        if self.state() != SessionState::PairCode
            && !self.transition(SessionState::PairCode, None, None).await
        {
            return;
        }
        self.emit(EventKind::PairCode {
            code,
            expires_at_ms: now_ms() + valid_for.as_millis() as i64,
        });
    }

    /// The pairing code expired or was refused: back to QR codes.
    async fn on_pair_code_lost(&mut self, reason: String, message: String) {
        self.emit(EventKind::PairCodeError { reason, message });
        if self.state() == SessionState::PairCode {
            self.transition(SessionState::Qr, None, None).await;
        }
    }

    async fn on_paired(&mut self, identity: Identity, business_name: String, platform: String) {
        self.record.phone = identity.phone.clone();
        self.record.jid = identity.jid.clone();
        self.record.lid = identity.lid.clone();
        self.record.business_name = business_name.clone();
        self.record.platform = platform.clone();
        self.record.paired_at_ms = now_ms();
        crate::metrics::inc_pairing_success();
        if !business_name.is_empty() {
            self.record.push_name = business_name.clone();
        }
        // Close the library's write-behind window: a crash now must not
        // lose the fact that this device is linked.
        if let Some(conn) = &self.conn {
            conn.flush_device().await;
        }
        if !self.transition(SessionState::Paired, None, None).await {
            return;
        }
        self.emit(EventKind::Paired {
            identity: identity.clone(),
            business_name,
            platform,
        });
        if !identity.phone.is_empty() {
            self.emit(EventKind::Phone { identity });
        }
    }

    /// Pairing did not reach `connected` in time: give up, forget the keys.
    pub(super) async fn on_activation_timeout(&mut self) {
        let secs = self.config().activation_timeout.as_secs();
        tracing::warn!(session = %self.record.id, "not connected {secs} s after pairing began; giving up");
        crate::metrics::inc_pairing_timeout();
        self.stop_client().await;
        if let Err(e) = self.wipe().await {
            tracing::error!(session = %self.record.id, "wiping after the activation timeout: {e}");
        }
        self.transition(
            SessionState::Failed,
            Some(Reason::ActivationTimeout),
            Some(format!(
                "not connected within {secs} s of pairing; reset to try again"
            )),
        )
        .await;
    }

    // ---- the link ------------------------------------------------------

    pub(super) async fn on_connected(&mut self) {
        self.activation_deadline = None;
        let (live, push_name) = match &self.conn {
            Some(conn) => (conn.identity(), conn.push_name()),
            None => (Identity::default(), String::new()),
        };
        if !live.phone.is_empty() {
            self.record.phone = live.phone;
            self.record.jid = live.jid;
        }
        if !live.lid.is_empty() {
            self.record.lid = live.lid;
        }
        if !push_name.is_empty() {
            self.record.push_name = push_name;
        }
        self.record.last_connected_at_ms = now_ms();
        self.record.last_seen_at_ms = now_ms();
        if !self.transition(SessionState::Connected, None, None).await {
            return;
        }
        self.drain_at = Some(Instant::now());
        self.emit(EventKind::Connected {
            identity: self.identity(),
            push_name: self.record.push_name.clone(),
        });
        if self.record.phone.is_empty()
            && self.phone_poll.is_none()
            && let Some(conn) = &self.conn
        {
            let probe = conn.identity_probe();
            let budget = self.config().phone_poll_budget;
            self.phone_poll = Some(self.scope.spawn(crate::session::phone::poll_identity(
                budget,
                move || {
                    let identity = probe.identity();
                    async move { Some(identity) }
                },
            )));
        }
    }

    async fn on_disconnected(&mut self) {
        if self.state() == SessionState::Connected {
            self.transition(
                SessionState::Disconnected,
                Some(Reason::ConnectionLost),
                None,
            )
            .await;
        }
    }

    async fn on_push_name(&mut self, name: String) {
        if name != self.record.push_name {
            self.record.push_name = name.clone();
            if self.persist().await {
                self.emit(EventKind::PushName { push_name: name });
            }
        }
    }

    async fn on_undecryptable(&mut self, message: InboundMessage) {
        if let Some(sink) = &self.shared.sink {
            let me = self.identity();
            let owner = Owner::of(&self.record);
            if let Err(e) = sink.messages(&owner, me, vec![message]).await {
                tracing::error!(session = %owner.session, "recording an undecryptable message: {e:#}");
            }
        }
    }

    /// `message.ack`, one per message id, with the recipient's phone
    /// resolved from their LID where the client knows it.
    /// Fills in the phone behind a LID-only party when the client knows it.
    async fn resolve_phone(&self, party: &mut Party) {
        if party.phone.is_empty()
            && !party.lid.is_empty()
            && let Some(conn) = &self.conn
            && let Some(phone) = conn.phone_of_lid(&party.lid).await
        {
            party.phone = phone;
        }
    }

    /// A person in the phone's address book joins (or renames) their
    /// directory entry; someone only in the book gets one too: the
    /// directory is everyone the session knows of.
    fn on_address_book(&mut self, contact: BookContact) {
        let seen = contacts::Seen::address_book(
            &contact.phone,
            &contact.lid,
            contact.name.as_deref(),
            contact.at_ms,
        );
        let prefix = self.outbound_prefix();
        if let Err(e) = contacts::note(&self.shared.store, &prefix, &[seen]) {
            tracing::warn!(session = %self.record.id, "contacts directory: {e}");
        }
    }

    async fn on_group_change(&mut self, change: GroupChange) {
        let mut by = change.by;
        if let Some(by) = &mut by {
            self.resolve_phone(by).await;
        }
        let (group, timestamp) = (change.group, change.timestamp);
        let kind = match change.what {
            GroupChangeKind::Participants {
                action,
                mut participants,
            } => {
                for party in &mut participants {
                    self.resolve_phone(party).await;
                }
                if action != "remove" {
                    let seen: Vec<contacts::Seen> = participants
                        .iter()
                        .map(|p| {
                            contacts::Seen::sender(
                                &p.phone,
                                &p.lid,
                                "",
                                Some(&group),
                                timestamp * 1000,
                            )
                        })
                        .collect();
                    let prefix = self.outbound_prefix();
                    if let Err(e) = contacts::note(&self.shared.store, &prefix, &seen) {
                        tracing::warn!(session = %self.record.id, "contacts directory: {e}");
                    }
                }
                EventKind::GroupParticipants {
                    group,
                    action: action.to_owned(),
                    participants,
                    by,
                    timestamp,
                }
            }
            GroupChangeKind::Subject(subject) => EventKind::GroupUpdated {
                group,
                subject: Some(subject),
                description: None,
                by,
                timestamp,
            },
            GroupChangeKind::Description(description) => EventKind::GroupUpdated {
                group,
                subject: None,
                description: Some(description.unwrap_or_default()),
                by,
                timestamp,
            },
        };
        self.emit(kind);
    }

    async fn on_receipt(&mut self, mut receipt: Receipt) {
        self.resolve_phone(&mut receipt.recipient).await;
        for id in receipt.message_ids {
            let ack = EventKind::MessageAck {
                id: id.clone(),
                status: receipt.status,
                chat: receipt.chat.clone(),
                recipient: receipt.recipient.clone(),
                timestamp: receipt.timestamp,
            };
            // A receipt can overtake the result of its own send: it waits
            // for it, so `message.sent` comes first.
            if let Some(flight) = self.in_flight.as_mut()
                && flight.id() == id
            {
                flight.early_acks.push(ack);
                continue;
            }
            self.note_receipt(&id, receipt.status);
            self.emit(ack);
        }
    }

    pub(super) async fn on_phone_poll(&mut self, found: Option<Identity>) {
        self.phone_poll = None;
        match found {
            Some(identity) => {
                self.record.phone = identity.phone.clone();
                self.record.jid = identity.jid.clone();
                if !identity.lid.is_empty() {
                    self.record.lid = identity.lid.clone();
                }
                if self.persist().await {
                    self.emit(EventKind::Phone { identity });
                }
            }
            None => {
                tracing::warn!(session = %self.record.id, "phone number still unknown after polling");
                self.record.reason = Reason::PhoneUnknown.as_str().to_owned();
                self.record.reason_message =
                    "the phone number could not be learned from WhatsApp".into();
                if self.persist().await {
                    self.emit(EventKind::PhoneUnknown);
                }
            }
        }
    }

    // ---- the end -------------------------------------------------------

    /// The phone unlinked this device (or WhatsApp refused its login).
    async fn on_unlinked(&mut self, on_connect: bool) {
        let phone = self.record.phone.clone();
        self.stop_client().await;
        if let Err(e) = self.wipe().await {
            tracing::error!(session = %self.record.id, "wiping after unlink: {e}");
        }
        let message = format!(
            "{} {}",
            if on_connect {
                "WhatsApp refused the login: the device was unlinked"
            } else {
                "unlinked from the phone"
            },
            if phone.is_empty() {
                String::new()
            } else {
                format!("(was {phone})")
            }
        );
        if self
            .transition(
                SessionState::LoggedOut,
                Some(Reason::UnlinkedFromPhone),
                Some(message.trim().to_owned()),
            )
            .await
        {
            self.emit(EventKind::LoggedOut {
                reason: Reason::UnlinkedFromPhone,
            });
        }
    }

    /// The client's run loop ended by itself.
    pub(super) async fn on_client_exit(&mut self) {
        // Terminal events may still be queued behind the exit: apply them first.
        while let Some(event) = self.wa_events.as_mut().and_then(|rx| rx.try_recv().ok()) {
            Box::pin(self.on_wa_event(*event)).await;
        }
        let Some(conn) = self.conn.take() else { return };
        drop(conn);
        self.wa_events = None;
        self.shared.store.close_device(&self.record.id);
        let state = self.state();
        match state {
            SessionState::Starting | SessionState::Qr | SessionState::PairCode
                if !self.is_paired() =>
            {
                let time_left = self.activation_deadline.is_some_and(|d| d > Instant::now());
                if time_left {
                    // QR refs ran out: a fresh client on the same keys shows new codes.
                    tracing::info!(session = %self.record.id, "QR codes ran out; starting a fresh client for new ones");
                    if let Err(e) = self.launch_client().await {
                        tracing::warn!(session = %self.record.id, "restarting pairing: {e}");
                    }
                } else {
                    self.on_activation_timeout().await;
                }
            }
            SessionState::Failed
            | SessionState::LoggedOut
            | SessionState::Stopped
            | SessionState::Created => {}
            _ => {
                self.fail(
                    Reason::Internal,
                    format!("the client stopped unexpectedly while {state}"),
                )
                .await;
            }
        }
    }
}
