//! whatsd's own session records and the phone → session index.
//!
//! A record and its phone-index entry always change in one sled transaction,
//! so the index never points at a record with another phone and never misses
//! one. Record writes are flushed before returning: they are rare, and the
//! daemon persists state before it announces it.

use prost::Message;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{Store, StoreError, validate_session_id};
use crate::proto::v1::SessionRecord;

/// Layout version written into every record.
pub const RECORD_VERSION: u32 = 1;

/// One entry of [`Store::list_records`]: the session id and its record, or
/// the error that keeps that one record from being read.
pub type RecordEntry = (String, Result<SessionRecord, StoreError>);

impl Store {
    /// Inserts or replaces a record (keyed by `record.id`) and moves its
    /// phone-index entry along, atomically and durably.
    pub async fn put_record(&self, record: &SessionRecord) -> Result<(), StoreError> {
        validate_session_id(&record.id)?;
        validate_phone(&record.phone)?;
        let id = record.id.as_str();
        let mut record = record.clone();
        record.version = RECORD_VERSION;
        let sealed = self.sealer().seal(
            super::RECORDS_TREE.as_bytes(),
            id.as_bytes(),
            &record.encode_to_vec(),
        )?;
        let new_entry = (!record.phone.is_empty()).then(|| index_key(&record.phone, id));
        let stale = self.stale_index_entries(id)?;

        let inner = &self.inner;
        let gate = super::sled_gate();
        (&inner.records, &inner.phone_index)
            .transaction(|(records, index)| {
                for key in &stale {
                    if Some(key) != new_entry.as_ref() {
                        index.remove(key.as_slice())?;
                    }
                }
                if let Some(key) = &new_entry {
                    index.insert(key.as_slice(), &[][..])?;
                }
                records.insert(id.as_bytes(), sealed.as_slice())?;
                Ok(())
            })
            .map_err(tx_error)?;
        drop(gate);
        self.flush().await
    }

    /// The record of one session; a record that does not decrypt or decode
    /// is an error for that session only.
    pub fn get_record(&self, session_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        validate_session_id(session_id)?;
        match self.inner.records.get(session_id.as_bytes())? {
            Some(sealed) => self.decode_record(session_id, &sealed).map(Some),
            None => Ok(None),
        }
    }

    /// Every record. One unreadable record yields an error entry for that
    /// session and does not hide the others.
    pub fn list_records(&self) -> Result<Vec<RecordEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.records.iter() {
            let (key, sealed) = item?;
            let id = String::from_utf8_lossy(&key).into_owned();
            let record = self.decode_record(&id, &sealed);
            out.push((id, record));
        }
        Ok(out)
    }

    /// Deletes a record and its phone-index entry atomically and durably.
    /// Returns whether a record existed. Does not touch the device keyspace
    /// (see [`Store::remove_session`]).
    pub async fn delete_record(&self, session_id: &str) -> Result<bool, StoreError> {
        validate_session_id(session_id)?;
        let stale = self.stale_index_entries(session_id)?;
        let inner = &self.inner;
        let gate = super::sled_gate();
        let existed = (&inner.records, &inner.phone_index)
            .transaction(|(records, index)| {
                for key in &stale {
                    index.remove(key.as_slice())?;
                }
                Ok(records.remove(session_id.as_bytes())?.is_some())
            })
            .map_err(tx_error)?;
        drop(gate);
        self.flush().await?;
        Ok(existed)
    }

    /// Ids of the sessions paired with `phone` (digits, as stored in records).
    pub fn sessions_for_phone(&self, phone: &str) -> Result<Vec<String>, StoreError> {
        validate_phone(phone)?;
        if phone.is_empty() {
            return Ok(Vec::new());
        }
        let prefix = index_key(phone, "");
        let mut ids = Vec::new();
        for key in self.inner.phone_index.scan_prefix(&prefix).keys() {
            let key = key?;
            ids.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        Ok(ids)
    }

    fn decode_record(&self, session_id: &str, sealed: &[u8]) -> Result<SessionRecord, StoreError> {
        let plain = self
            .sealer()
            .open(
                super::RECORDS_TREE.as_bytes(),
                session_id.as_bytes(),
                sealed,
            )
            .map_err(|_| StoreError::Undecryptable {
                session: session_id.to_string(),
                what: "session record",
            })?;
        let record = SessionRecord::decode(plain.as_slice()).map_err(|e| StoreError::Corrupt {
            session: session_id.to_string(),
            what: "session record",
            reason: e.to_string(),
        })?;
        if record.version > RECORD_VERSION {
            return Err(StoreError::UnsupportedRecordVersion {
                session: session_id.to_string(),
                found: record.version,
                supported: RECORD_VERSION,
            });
        }
        Ok(record)
    }

    /// Every phone-index entry pointing at `session_id`. Found by scanning
    /// the index rather than trusting the stored record's phone, so an
    /// unreadable record cannot leave a dangling entry behind. The index
    /// holds one short key per session, so the scan stays cheap.
    fn stale_index_entries(&self, session_id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut stale = Vec::new();
        for key in self.inner.phone_index.iter().keys() {
            let key = key?;
            let points_here = key
                .iter()
                .position(|&b| b == 0)
                .is_some_and(|sep| &key[sep + 1..] == session_id.as_bytes());
            if points_here {
                stale.push(key.to_vec());
            }
        }
        Ok(stale)
    }
}

fn index_key(phone: &str, session_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(phone.len() + 1 + session_id.len());
    key.extend_from_slice(phone.as_bytes());
    key.push(0);
    key.extend_from_slice(session_id.as_bytes());
    key
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
