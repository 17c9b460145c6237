//! Library events → [`WaEvent`]. Everything not listed is of no interest to
//! a session's state.

use std::time::Duration;

use whatsapp_rust::types::events::Event;

use whatsapp_rust::types::presence::ReceiptType;

use whatsapp_rust::wacore::stanza::groups::{GroupNotificationAction, GroupParticipantInfo};

use super::{BookContact, GroupChange, GroupChangeKind, Receipt, WaEvent};
use crate::session::{AckStatus, Identity, Party};

pub(super) fn map(event: &Event) -> Option<WaEvent> {
    Some(match event {
        Event::PairingQrCode(q) => WaEvent::Qr {
            code: q.code.clone(),
            valid_for: q.timeout,
        },
        Event::PairingQrCodesExhausted(e) => WaEvent::QrExhausted {
            disconnected: e.disconnected,
        },
        Event::PairingCode(c) => WaEvent::PairCode {
            code: c.code.clone(),
            valid_for: c.timeout,
        },
        Event::PairingCodeRefresh(_) => WaEvent::PairCodeRefresh,
        Event::PairingCodeError(e) => WaEvent::PairCodeError {
            reason: e
                .rejection
                .as_ref()
                .and_then(|r| serde_json::to_value(r).ok())
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "request_failed".into()),
            message: e.error.clone(),
        },
        Event::PairSuccess(p) => WaEvent::PairSuccess {
            identity: Identity {
                phone: p.id.user.to_string(),
                jid: p.id.to_string(),
                lid: if p.lid.user.is_empty() {
                    String::new()
                } else {
                    p.lid.to_string()
                },
            },
            business_name: p.business_name.clone(),
            platform: p.platform.clone(),
        },
        Event::PairError(e) => WaEvent::PairError {
            message: e.error.clone(),
        },
        Event::Connected(_) => WaEvent::Connected,
        Event::Disconnected(_) => WaEvent::Disconnected,
        Event::LoggedOut(l) => WaEvent::LoggedOut {
            on_connect: l.on_connect,
        },
        Event::StreamReplaced(_) => WaEvent::StreamReplaced,
        Event::TemporaryBan(b) => WaEvent::TemporaryBan {
            message: b.message.clone().unwrap_or_else(|| format!("{:?}", b.code)),
            expires_in: b.expire.to_std().unwrap_or(Duration::ZERO),
        },
        Event::ClientOutdated(_) => WaEvent::ClientOutdated,
        Event::ConnectFailure(f) => WaEvent::ConnectFailure {
            terminal: !f.reason.should_reconnect(),
            message: f
                .message
                .clone()
                .unwrap_or_else(|| format!("{:?}", f.reason)),
        },
        Event::SelfPushNameUpdated(p) => WaEvent::PushName(p.new_name.clone()),
        Event::UndecryptableMessage(u) => {
            let mut message = super::inbound::from_info(&u.info);
            message.undecryptable = true;
            WaEvent::Undecryptable(Box::new(message))
        }
        Event::Receipt(r) => {
            let status = match r.r#type {
                ReceiptType::Delivered => AckStatus::Delivered,
                ReceiptType::Read => AckStatus::Read,
                ReceiptType::Played => AckStatus::Played,
                // Retries, the account's own devices (`sender`, `read-self`,
                // …), server errors: not a recipient's word on a message.
                _ => return None,
            };
            let source = &r.source;
            let (lid, phone) = super::inbound::lid_and_phone(
                std::iter::once(&source.sender).chain(source.sender_alt.iter()),
            );
            let recipient = Party {
                jid: source.sender.to_non_ad_string(),
                phone,
                lid,
            };
            WaEvent::Receipt(Box::new(Receipt {
                message_ids: r.message_ids.iter().map(|id| id.to_string()).collect(),
                status,
                chat: source.chat.to_non_ad_string(),
                recipient,
                timestamp: r.timestamp.timestamp(),
            }))
        }
        Event::GroupUpdate(u) => {
            let what = match &u.action {
                GroupNotificationAction::Add { participants, .. } => {
                    participants_change("add", participants)
                }
                GroupNotificationAction::Remove { participants, .. } => {
                    participants_change("remove", participants)
                }
                GroupNotificationAction::Promote { participants } => {
                    participants_change("promote", participants)
                }
                GroupNotificationAction::Demote { participants } => {
                    participants_change("demote", participants)
                }
                GroupNotificationAction::Subject { subject, .. } => {
                    GroupChangeKind::Subject(subject.clone())
                }
                GroupNotificationAction::Description { description, .. } => {
                    GroupChangeKind::Description(description.clone())
                }
                // Settings, invites, communities: not reported (yet).
                _ => return None,
            };
            WaEvent::Group(Box::new(GroupChange {
                group: u.group_jid.to_non_ad_string(),
                by: u
                    .participant
                    .as_ref()
                    .map(|by| party(by, u.participant_pn.iter())),
                timestamp: u.timestamp.timestamp(),
                what,
            }))
        }
        Event::ContactUpdate(c) => {
            let action = &c.action;
            let named: Vec<whatsapp_rust::Jid> =
                [action.pn_jid.as_deref(), action.lid_jid.as_deref()]
                    .into_iter()
                    .flatten()
                    .filter_map(|j| j.parse().ok())
                    .collect();
            let (lid, phone) =
                super::inbound::lid_and_phone(std::iter::once(&c.jid).chain(named.iter()));
            let name = [action.full_name.as_deref(), action.first_name.as_deref()]
                .into_iter()
                .flatten()
                .map(str::trim)
                .find(|n| !n.is_empty())
                .map(str::to_owned);
            WaEvent::AddressBook(Box::new(BookContact {
                phone,
                lid,
                name,
                at_ms: c.timestamp.timestamp_millis(),
            }))
        }
        _ => return None,
    })
}

fn participants_change(action: &'static str, list: &[GroupParticipantInfo]) -> GroupChangeKind {
    GroupChangeKind::Participants {
        action,
        participants: list
            .iter()
            .map(|p| party(&p.jid, p.phone_number.iter().chain(p.lid.iter())))
            .collect(),
    }
}

/// `jid` with the phone and LID among it and `alt`.
fn party<'a>(
    jid: &'a whatsapp_rust::Jid,
    alt: impl Iterator<Item = &'a whatsapp_rust::Jid>,
) -> Party {
    let (lid, phone) = super::inbound::lid_and_phone(std::iter::once(jid).chain(alt));
    Party {
        jid: jid.to_non_ad_string(),
        phone,
        lid,
    }
}
