//! whatsd's own session records and the phone → session index.
//!
//! A record is stored under the keyed hash of its session id (see
//! [`super::ids`]); the sealed record carries the id itself. The phone index
//! is not on disk at all: it is rebuilt from the records at open and
//! changed in step with every record write, under the same lock
//! (`sled_gate`), so it never points at a record with another phone and
//! never misses a readable one. The daemon reads every record at start
//! anyway, and a lookup by phone is rare (pairing), so a map in memory
//! costs nothing that a hashed on-disk index would save, and there is no
//! second structure to keep consistent across crashes. Record writes are
//! flushed before returning: they are rare, and the daemon persists state
//! before it announces it.

use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{SESSION_DOMAIN, Store, StoreError, ids, validate_session_id};
use crate::proto::v1::SessionRecord;

/// Layout version written into every record.
pub const RECORD_VERSION: u32 = 1;

/// One entry of [`Store::list_records`]: the session id and its record, or
/// the error that keeps that one record from being read (the id is then
/// `?` and the start of its keyed hash: an unreadable record cannot say
/// whose it is).
pub type RecordEntry = (String, Result<SessionRecord, StoreError>);

impl Store {
    pub(super) fn record_key(&self, session_id: &str) -> [u8; ids::BLIND_LEN] {
        self.blinder().blind(SESSION_DOMAIN, session_id.as_bytes())
    }

    /// Inserts or replaces a record (keyed by `record.id`) and moves its
    /// phone-index entry along, durably.
    pub async fn put_record(&self, record: &SessionRecord) -> Result<(), StoreError> {
        validate_session_id(&record.id)?;
        validate_phone(&record.phone)?;
        if crate::fault::fails(
            "store.put_record",
            format_args!("{}:{}", record.id, record.state),
        ) {
            return Err(StoreError::Invalid("injected write failure".into()));
        }
        let mut record = record.clone();
        record.version = RECORD_VERSION;
        let key = self.record_key(&record.id);
        let sealed = self.sealer().seal(
            super::RECORDS_TREE.as_bytes(),
            &key,
            &record.encode_to_vec(),
        )?;
        {
            let _gate = super::sled_gate();
            self.inner.records.insert(key, sealed)?;
            let mut phones = self.phones()?;
            if record.phone.is_empty() {
                phones.remove(&record.id);
            } else {
                phones.insert(record.id.clone(), record.phone.clone());
            }
        }
        self.flush().await
    }

    /// The record of one session; a record that does not decrypt or decode
    /// is an error for that session only.
    pub fn get_record(&self, session_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        validate_session_id(session_id)?;
        let key = self.record_key(session_id);
        match self.inner.records.get(key)? {
            Some(sealed) => self.decode_record(session_id, &key, &sealed).map(Some),
            None => Ok(None),
        }
    }

    /// Every record. One unreadable record yields an error entry for that
    /// session and does not hide the others.
    pub fn list_records(&self) -> Result<Vec<RecordEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.records.iter() {
            let (key, sealed) = item?;
            let label = format!("?{}", crate::hex::hex(&key[..key.len().min(6)]));
            match self.decode_record(&label, &key, &sealed) {
                Ok(record) => out.push((record.id.clone(), Ok(record))),
                Err(e) => out.push((label, Err(e))),
            }
        }
        // Stored in hash order; listed in id order.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Deletes a record and its phone-index entry, durably. Returns whether
    /// a record existed. Does not touch the device keyspace (see
    /// [`Store::remove_session`]).
    pub async fn delete_record(&self, session_id: &str) -> Result<bool, StoreError> {
        validate_session_id(session_id)?;
        let key = self.record_key(session_id);
        let existed = {
            let _gate = super::sled_gate();
            let existed = self.inner.records.remove(key)?.is_some();
            self.phones()?.remove(session_id);
            existed
        };
        self.flush().await?;
        Ok(existed)
    }

    /// Ids of the sessions paired with `phone` (digits, as stored in
    /// records), sorted.
    pub fn sessions_for_phone(&self, phone: &str) -> Result<Vec<String>, StoreError> {
        validate_phone(phone)?;
        if phone.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<String> = self
            .phones()?
            .iter()
            .filter(|(_, p)| p.as_str() == phone)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Fills the phone index from the records (at open).
    pub(super) fn load_phone_index(&self) -> Result<(), StoreError> {
        let mut loaded = std::collections::HashMap::new();
        for (_, record) in self.list_records()? {
            if let Ok(record) = record
                && !record.phone.is_empty()
            {
                loaded.insert(record.id, record.phone);
            }
        }
        *self.phones()? = loaded;
        Ok(())
    }

    fn phones(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, String>>, StoreError>
    {
        self.inner.phones.lock().map_err(|_| StoreError::Poisoned)
    }

    /// `label` names the session in errors.
    pub(super) fn decode_record(
        &self,
        label: &str,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<SessionRecord, StoreError> {
        let plain = self
            .sealer()
            .open(super::RECORDS_TREE.as_bytes(), key, sealed)
            .map_err(|_| StoreError::Undecryptable {
                session: label.to_string(),
                what: "session record",
            })?;
        let record = SessionRecord::decode(plain.as_slice()).map_err(|e| StoreError::Corrupt {
            session: label.to_string(),
            what: "session record",
            reason: e.to_string(),
        })?;
        if record.version > RECORD_VERSION {
            return Err(StoreError::UnsupportedRecordVersion {
                session: label.to_string(),
                found: record.version,
                supported: RECORD_VERSION,
            });
        }
        // The AAD binds the value to its key; this binds the key to the id
        // inside.
        if self.record_key(&record.id)[..] != *key {
            return Err(StoreError::Corrupt {
                session: label.to_string(),
                what: "session record",
                reason: "stored under another session's key".to_string(),
            });
        }
        Ok(record)
    }
}

fn validate_phone(phone: &str) -> Result<(), StoreError> {
    if phone.contains('\0') {
        return Err(StoreError::Invalid("phone contains NUL".to_string()));
    }
    Ok(())
}

/// Unwraps a sled transaction error into the store's error.
pub(crate) fn tx_error(err: TransactionError<StoreError>) -> StoreError {
    match err {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Db(e),
    }
}

/// Turns a whatsd error into a transaction abort.
pub(crate) fn abort<T>(
    r: Result<T, StoreError>,
) -> Result<T, ConflictableTransactionError<StoreError>> {
    r.map_err(ConflictableTransactionError::Abort)
}
