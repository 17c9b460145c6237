//! The only place that touches whatsapp-rust: build a client for a session,
//! and translate the library's events into whatsd's own [`WaEvent`]s.
//! Nothing here knows HTTP, webhooks or session policy.

pub mod build_info;
mod connection;
pub mod contacts;
mod events;
pub mod groups;
pub mod http;
pub mod inbound;
pub mod media;
pub mod media_out;
mod runtime;
mod transport;

use std::time::Duration;

pub use connection::{Connection, IdentityProbe, parse_recipient};
pub use inbound::{InboundMessage, InboundSink};
pub use runtime::live_library_tasks;

use crate::session::Identity;

/// Runs queries to WhatsApp for one client from any task (groups in
/// [`groups`], numbers in [`contacts`], media in [`media`], queued sends
/// in [`media_out`]): a query must not hold up the session's own loop.
pub struct Queries(std::sync::Arc<whatsapp_rust::Client>);

/// How clients reach WhatsApp.
#[derive(Clone, Debug)]
pub struct WaConfig {
    /// WebSocket URL; `None` is WhatsApp's own (`wss://web.whatsapp.com/ws/chat`).
    pub ws_url: Option<String>,
    /// WhatsApp Web version to announce; `None` fetches the current one from
    /// web.whatsapp.com (and refreshes it daily).
    pub version: Option<(u32, u32, u32)>,
    /// Shown on the phone under "Linked devices".
    pub device_os: String,
    /// A PEM CA the library's HTTP client (media) trusts: fakewa's media
    /// server in tests (see [`http`]).
    pub media_ca_file: Option<std::path::PathBuf>,
}

impl Default for WaConfig {
    fn default() -> Self {
        Self {
            ws_url: None,
            version: None,
            device_os: "whatsd".into(),
            media_ca_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WaError {
    #[error("cannot build the WhatsApp client: {0}")]
    Build(String),
    #[error("pairing code refused ({reason}): {message}")]
    PairCode { reason: String, message: String },
    #[error("invalid recipient {0:?}: a phone number with country code or a JID")]
    BadRecipient(String),
    #[error("send failed: {0}")]
    Send(String),
    #[error("invalid group {0:?}: a group JID is <digits>@g.us")]
    BadGroup(String),
    #[error("no group {0} that this account is in")]
    GroupNotFound(String),
    #[error("WhatsApp did not answer as expected: {0}")]
    Query(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("media: {0}")]
    Media(String),
}

/// What a session needs to know from its client, in the order it happened.
#[derive(Clone, Debug)]
pub enum WaEvent {
    /// A QR code to show, valid for `valid_for`. The code is a credential.
    Qr {
        code: String,
        valid_for: Duration,
    },
    /// No QR refs left; `disconnected` means the client stopped itself.
    QrExhausted {
        disconnected: bool,
    },
    PairCode {
        code: String,
        valid_for: Duration,
    },
    /// The outstanding pairing code is dead (expired or replaced by the server).
    PairCodeRefresh,
    PairCodeError {
        reason: String,
        message: String,
    },
    /// The phone linked this device. A reconnect, then `Connected`, follows.
    PairSuccess {
        identity: Identity,
        business_name: String,
        platform: String,
    },
    /// The phone's link attempt failed verification.
    PairError {
        message: String,
    },
    /// Logged in and synced.
    Connected,
    /// Unexpected connection loss; the library reconnects by itself.
    Disconnected,
    /// Unlinked: from the phone, at login (`on_connect`), or by our logout.
    LoggedOut {
        on_connect: bool,
    },
    /// Another connection took over this device. Terminal.
    StreamReplaced,
    TemporaryBan {
        message: String,
        expires_in: Duration,
    },
    ClientOutdated,
    /// WhatsApp refused the connection; `terminal` when the library gives up.
    ConnectFailure {
        terminal: bool,
        message: String,
    },
    PushName(String),
    /// A message arrived that could not be decrypted (the library has
    /// already asked the sender to retry; a later copy may decrypt).
    Undecryptable(Box<InboundMessage>),
    /// A recipient's delivery, read or played receipt for messages this
    /// account sent (receipts of the account's own devices are left out).
    Receipt(Box<Receipt>),
    /// Someone changed a group the account is in.
    Group(Box<GroupChange>),
    /// A person in the phone's address book, as app-state sync tells it.
    AddressBook(Box<BookContact>),
}

/// A person in the phone's address book (an app-state `contact` action).
/// The library reports additions and changes only, never removals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookContact {
    /// Digits, when known.
    pub phone: String,
    /// `<digits>@lid`, when known.
    pub lid: String,
    /// The full name, else the first name.
    pub name: Option<String>,
    /// Unix milliseconds of the action.
    pub at_ms: i64,
}

/// A change to a group, as a `w:gp2` notification tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupChange {
    /// `<digits>@g.us`.
    pub group: String,
    /// Who made the change, when WhatsApp says.
    pub by: Option<crate::session::Party>,
    /// Unix seconds.
    pub timestamp: i64,
    pub what: GroupChangeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupChangeKind {
    /// `add`, `remove`, `promote` or `demote`, with whom.
    Participants {
        action: &'static str,
        participants: Vec<crate::session::Party>,
    },
    /// A new subject.
    Subject(String),
    /// A new description; `None`: deleted.
    Description(Option<String>),
}

/// A receipt, reduced to what `message.ack` carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub message_ids: Vec<String>,
    pub status: crate::session::AckStatus,
    /// The chat: the recipient's JID or a group's.
    pub chat: String,
    /// The device's user that sent the receipt (phone filled in from the
    /// receipt itself; [`Connection::phone_of_lid`] can resolve a LID).
    pub recipient: crate::session::Party,
    /// Unix seconds.
    pub timestamp: i64,
}
