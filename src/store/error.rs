//! Errors of whatsd's storage layer.

use std::path::PathBuf;

/// Everything that can go wrong in `store`. Errors about one session's data
/// name that session and never affect another session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot open the store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },

    #[error(
        "the master key does not open the store at {path}: wrong key file or credential? \
         (nothing was changed)"
    )]
    WrongMasterKey { path: PathBuf },

    #[error(
        "a key rotation of the store at {path} was interrupted; run `whatsd store rekey` again \
         with the old master key configured and the same --new-key-file (nothing was changed)"
    )]
    RekeyInterrupted { path: PathBuf },

    #[error(
        "the store at {path} is already sealed with the new key; install the new key file \
         as the master key"
    )]
    AlreadyRekeyed { path: PathBuf },

    #[error(
        "no master key found for the existing store in {data_dir}: configure a key file, \
         provide the systemd credential `master-key`, or restore {data_dir}/master.key \
         (refusing to generate a new key that could never open the store)"
    )]
    MissingMasterKey { data_dir: PathBuf },

    #[error("cannot use master key file {path}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("master key file {path} must hold exactly 32 raw bytes or 64 hex digits")]
    KeyFormat { path: PathBuf },

    #[error("cannot prepare data dir {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cryptography failure: {0}")]
    Crypto(&'static str),

    #[error("database error")]
    Db(#[from] sled::Error),

    #[error("invalid session id {0:?}: 1-128 bytes, no '/' and no NUL")]
    InvalidSessionId(String),

    #[error(
        "session {session}: a stored {what} does not decrypt (tampered, corrupt, or sealed \
         with another key)"
    )]
    Undecryptable { session: String, what: &'static str },

    #[error("session {session}: a stored {what} is corrupt: {reason}")]
    Corrupt {
        session: String,
        what: &'static str,
        reason: String,
    },

    #[error(
        "session record {session} has layout version {found}; this build reads up to {supported}"
    )]
    UnsupportedRecordVersion {
        session: String,
        found: u32,
        supported: u32,
    },

    #[error(
        "session {session}: a stored {what} has value version {found}; this build reads up to {supported} (written by a newer whatsd?)"
    )]
    UnsupportedValueVersion {
        session: String,
        what: &'static str,
        found: u8,
        supported: u8,
    },

    #[error(
        "the store at {path} is in format {found}; this build reads formats 1 to 3 (written by a newer whatsd?)"
    )]
    NewerFormat { path: PathBuf, found: String },

    #[error("session {0}: its device keyspace was wiped; open a new backend")]
    Wiped(String),

    #[error("invalid argument: {0}")]
    Invalid(String),

    #[error("internal task failed: {0}")]
    Task(&'static str),

    #[error("internal lock poisoned")]
    Poisoned,
}

impl From<StoreError> for wacore::store::error::StoreError {
    fn from(err: StoreError) -> Self {
        use wacore::store::error::StoreError as Wa;
        match err {
            StoreError::Undecryptable { .. }
            | StoreError::Corrupt { .. }
            | StoreError::UnsupportedRecordVersion { .. }
            | StoreError::UnsupportedValueVersion { .. } => Wa::Serialization(Box::new(err)),
            StoreError::Invalid(msg) => Wa::Validation(msg),
            other => Wa::Database(Box::new(other)),
        }
    }
}
