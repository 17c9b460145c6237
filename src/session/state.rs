//! Session states and failure reasons: stable lowercase names that the API,
//! webhooks and records share. Renaming one is a breaking change.

use serde::{Deserialize, Serialize};

/// Where a session is in its life. See the diagram in the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Exists, never started (or reset and not yet restarted).
    Created,
    /// A client is being built and is connecting.
    Starting,
    /// Unpaired; showing QR codes.
    Qr,
    /// Unpaired; a pairing code was issued and awaits entry on the phone.
    PairCode,
    /// The phone accepted the link; the client is logging in for the first time.
    Paired,
    /// Paired; connecting or logging in.
    Connecting,
    /// Logged in and synced: messages flow.
    Connected,
    /// Connection lost; the library is reconnecting.
    Disconnected,
    /// Unlinked (from the phone or by `logout`); keys wiped.
    LoggedOut,
    /// Stopped by an error; see the reason.
    Failed,
    /// Stopped on purpose (or because nobody watches a pairing after a restart).
    Stopped,
}

impl SessionState {
    pub const ALL: [SessionState; 11] = [
        Self::Created,
        Self::Starting,
        Self::Qr,
        Self::PairCode,
        Self::Paired,
        Self::Connecting,
        Self::Connected,
        Self::Disconnected,
        Self::LoggedOut,
        Self::Failed,
        Self::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Starting => "starting",
            Self::Qr => "qr",
            Self::PairCode => "pair_code",
            Self::Paired => "paired",
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::LoggedOut => "logged_out",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// States in which pairing is under way (the activation timeout runs).
    pub fn is_pairing(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Qr | Self::PairCode | Self::Paired
        )
    }

    /// States with a client running.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            Self::Starting
                | Self::Qr
                | Self::PairCode
                | Self::Paired
                | Self::Connecting
                | Self::Connected
                | Self::Disconnected
        )
    }

    /// States a session passes through on its way somewhere else; the health
    /// sweep restarts sessions stuck in one.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Paired | Self::Connecting | Self::Disconnected
        )
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a session is `failed` (or why a transition happened).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Pairing did not reach `connected` within the activation timeout.
    ActivationTimeout,
    /// Another connection took over this device (same keys running twice).
    StreamReplaced,
    /// WhatsApp banned the account temporarily.
    TemporaryBan,
    /// WhatsApp refused this client version.
    ClientOutdated,
    /// The session's stored keys are missing, corrupt or undecryptable.
    StoreError,
    /// Unreachable for longer than the expiry (WhatsApp drops such devices).
    Expired,
    /// A bug or a panic in the session's task.
    Internal,
    /// WhatsApp refused the connection for another reason.
    ConnectFailure,
    /// Unlinked from the phone.
    UnlinkedFromPhone,
    /// Logged out through whatsd.
    LoggedOut,
    /// Stopped by an operator.
    Requested,
    /// A pairing was under way when the daemon stopped; nobody watches it now.
    PairingInterrupted,
    /// Reset by an operator.
    Reset,
    /// The phone number could not be learned within its polling budget.
    PhoneUnknown,
    /// The daemon is shutting down.
    Shutdown,
    /// The library lost the connection and is reconnecting.
    ConnectionLost,
    /// The health sweep restarted a stuck or silent session.
    HealthCheck,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ActivationTimeout => "activation_timeout",
            Self::StreamReplaced => "stream_replaced",
            Self::TemporaryBan => "temporary_ban",
            Self::ClientOutdated => "client_outdated",
            Self::StoreError => "store_error",
            Self::Expired => "expired",
            Self::Internal => "internal",
            Self::ConnectFailure => "connect_failure",
            Self::UnlinkedFromPhone => "unlinked_from_phone",
            Self::LoggedOut => "logged_out",
            Self::Requested => "requested",
            Self::PairingInterrupted => "pairing_interrupted",
            Self::Reset => "reset",
            Self::PhoneUnknown => "phone_unknown",
            Self::Shutdown => "shutdown",
            Self::ConnectionLost => "connection_lost",
            Self::HealthCheck => "health_check",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip_and_match_serde() {
        for state in SessionState::ALL {
            assert_eq!(SessionState::parse(state.as_str()), Some(state));
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert_eq!(SessionState::parse("authenticating"), None);
    }

    #[test]
    fn reason_names_match_serde() {
        for reason in [
            Reason::ActivationTimeout,
            Reason::StoreError,
            Reason::PhoneUnknown,
            Reason::StreamReplaced,
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }
}
