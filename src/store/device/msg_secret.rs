//! wacore's `MsgSecretStore` over the device keyspace: message secrets
//! (for reactions, poll votes and the like) in fixed-layout rows.
//!
//! Which writes flush before returning `Ok` is listed under *Durability* in
//! the parent module.

use async_trait::async_trait;
use wacore::store::error::Result as WaResult;
use wacore::store::traits::{
    MsgSecretEntry, MsgSecretStore, merge_msg_secret_expiry, merge_msg_secret_message_ts,
};

use super::{DeviceBackend, ROW_FORMAT_V1, composite, kind};
use crate::store::error::StoreError;
use crate::store::records::abort;

pub(super) const MSG_SECRET_LEN: usize = wacore::reporting_token::MESSAGE_SECRET_SIZE;

/// Stored msg-secret row: secret, expires_at, message_ts.
pub(super) struct MsgSecretRow {
    pub(super) secret: [u8; MSG_SECRET_LEN],
    pub(super) expires_at: i64,
    pub(super) message_ts: i64,
}

impl MsgSecretRow {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut row = Vec::with_capacity(1 + MSG_SECRET_LEN + 16);
        row.push(ROW_FORMAT_V1);
        row.extend_from_slice(&self.secret);
        row.extend_from_slice(&self.expires_at.to_be_bytes());
        row.extend_from_slice(&self.message_ts.to_be_bytes());
        row
    }

    pub(super) fn decode(row: &[u8]) -> Option<Self> {
        if row.len() != 1 + MSG_SECRET_LEN + 16 || row[0] != ROW_FORMAT_V1 {
            return None;
        }
        let secret = row[1..1 + MSG_SECRET_LEN].try_into().ok()?;
        let at = 1 + MSG_SECRET_LEN;
        Some(Self {
            secret,
            expires_at: i64::from_be_bytes(row[at..at + 8].try_into().ok()?),
            message_ts: i64::from_be_bytes(row[at + 8..at + 16].try_into().ok()?),
        })
    }
}

fn msg_secret_key(chat: &str, sender: &str, msg_id: &str) -> Result<Vec<u8>, StoreError> {
    composite(kind::MSG_SECRET, &[chat, sender], msg_id.as_bytes())
}

impl DeviceBackend {
    fn get_msg_secret_row(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> Result<Option<MsgSecretRow>, StoreError> {
        match self.get(&msg_secret_key(chat, sender, msg_id)?, "message secret")? {
            Some(plain) => MsgSecretRow::decode(&plain)
                .map(Some)
                .ok_or_else(|| self.corrupt("message secret", "bad row layout")),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl MsgSecretStore for DeviceBackend {
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> WaResult<usize> {
        let stored = entries.len();
        if entries.is_empty() {
            return Ok(0);
        }
        let keys = entries
            .iter()
            .map(|e| msg_secret_key(&e.chat, &e.sender, &e.msg_id).map(|k| self.k(&k)))
            .collect::<Result<Vec<_>, _>>()?;
        // One transaction: the merge reads what earlier rows of the same
        // batch wrote, and concurrent writers cannot interleave.
        let result = self.transact(kind::MSG_SECRET, |tx| {
            for (key, entry) in keys.iter().zip(&entries) {
                let mut row = MsgSecretRow {
                    secret: entry.secret,
                    expires_at: entry.expires_at,
                    message_ts: entry.message_ts,
                };
                if let Some(sealed) = tx.get(key)? {
                    let plain = abort(self.open(key, &sealed, "message secret"))?;
                    let old = abort(
                        MsgSecretRow::decode(&plain)
                            .ok_or_else(|| self.corrupt("message secret", "bad row layout")),
                    )?;
                    row.expires_at = merge_msg_secret_expiry(old.expires_at, entry.expires_at);
                    row.message_ts = merge_msg_secret_message_ts(old.message_ts, entry.message_ts);
                }
                tx.insert(key.as_slice(), abort(self.seal(key, &row.encode()))?)?;
            }
            Ok(stored)
        });
        self.durably(result).await
    }

    async fn get_msg_secret(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> WaResult<Option<Vec<u8>>> {
        Ok(self
            .get_msg_secret_row(chat, sender, msg_id)?
            .map(|row| row.secret.to_vec()))
    }

    async fn get_msg_secret_with_ts(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> WaResult<Option<(Vec<u8>, i64)>> {
        Ok(self
            .get_msg_secret_row(chat, sender, msg_id)?
            .map(|row| (row.secret.to_vec(), row.message_ts)))
    }

    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> WaResult<u32> {
        let result = self.sweep(&[kind::MSG_SECRET], "message secret", |plain| {
            MsgSecretRow::decode(plain)
                .is_some_and(|row| row.expires_at != 0 && row.expires_at <= cutoff_timestamp)
        });
        self.durably(result).await
    }
}
