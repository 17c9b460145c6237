//! wacore's `SignalStore` over the device keyspace: identity keys, Signal
//! sessions, prekeys (compact, 64 to a row: see `prekeys`), signed prekeys
//! and sender keys.
//!
//! Which writes flush before returning `Ok` is listed under *Durability* in
//! the parent module.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use wacore::store::error::Result as WaResult;
use wacore::store::traits::SignalStore;

use super::{DeviceBackend, domain, id_key, key, kind, part};

#[async_trait]
impl SignalStore for DeviceBackend {
    async fn put_identity(&self, address: &str, identity: [u8; 32]) -> WaResult<()> {
        self.durably(self.put(&key(kind::IDENTITY, address.as_bytes()), &identity))
            .await
    }

    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> WaResult<()> {
        if identities.is_empty() {
            return Ok(());
        }
        let rows = identities
            .iter()
            .map(|(address, identity)| (key(kind::IDENTITY, address.as_bytes()), &identity[..]));
        self.durably(self.put_batch(rows)).await
    }

    async fn load_identity(&self, address: &str) -> WaResult<Option<[u8; 32]>> {
        match self.get(&key(kind::IDENTITY, address.as_bytes()), "identity key")? {
            Some(plain) => Ok(Some(plain.as_slice().try_into().map_err(|_| {
                self.corrupt("identity key", format!("{} bytes, want 32", plain.len()))
            })?)),
            None => Ok(None),
        }
    }

    async fn delete_identity(&self, address: &str) -> WaResult<()> {
        let result = self.remove(&key(kind::IDENTITY, address.as_bytes()));
        self.durably(result.map(drop)).await
    }

    async fn get_session(&self, address: &str) -> WaResult<Option<Bytes>> {
        Ok(self
            .get(&key(kind::SESSION, address.as_bytes()), "signal session")?
            .map(Bytes::from))
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> WaResult<()> {
        self.durably(self.put(&key(kind::SESSION, address.as_bytes()), session))
            .await
    }

    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> WaResult<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        let rows = sessions
            .iter()
            .map(|(address, record)| (key(kind::SESSION, address.as_bytes()), record.as_ref()));
        self.durably(self.put_batch(rows)).await
    }

    async fn delete_session(&self, address: &str) -> WaResult<()> {
        let result = self.remove(&key(kind::SESSION, address.as_bytes()));
        self.durably(result.map(drop)).await
    }

    async fn has_session(&self, address: &str) -> WaResult<bool> {
        let key = self.k(&key(kind::SESSION, address.as_bytes()));
        Ok(self.with_tree(|tree| Ok(tree.contains_key(&key)?))?)
    }

    async fn has_signal_state_for_user(&self, user: &str) -> WaResult<bool> {
        // Rows are bucketed by the user part before the first '@' or ':'. A
        // "user" holding one of those is not a JID user; the trait allows the
        // conservative answer.
        if user.contains(['@', ':']) {
            return Ok(true);
        }
        for kind in [kind::SESSION, kind::IDENTITY] {
            let mut prefix = vec![kind];
            prefix.extend_from_slice(
                &self
                    .blinder
                    .blind(&domain(kind, part::USER), user.as_bytes()),
            );
            let found = self.with_tree(|tree| {
                Ok(tree
                    .scan_prefix(&prefix)
                    .keys()
                    .next()
                    .transpose()?
                    .is_some())
            })?;
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> WaResult<()> {
        self.durably(self.store_prekeys(&[(id, record)], uploaded))
            .await
    }

    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> WaResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<(u32, &[u8])> = keys.iter().map(|(id, r)| (*id, r.as_ref())).collect();
        self.durably(self.store_prekeys(&keys, uploaded)).await
    }

    async fn load_prekey(&self, id: u32) -> WaResult<Option<Bytes>> {
        Ok(self.load_prekey_record(id)?.map(Bytes::from))
    }

    async fn load_prekeys_batch(&self, ids: &[u32]) -> WaResult<Vec<(u32, Bytes)>> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(record) = self.load_prekey(id).await? {
                out.push((id, record));
            }
        }
        Ok(out)
    }

    /// UPDATE-only inside one transaction: a key consumed (removed) before
    /// or during this call is never written back.
    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> WaResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.durably(self.mark_uploaded(ids)).await
    }

    async fn remove_prekey(&self, id: u32) -> WaResult<()> {
        self.durably(self.remove_prekey_row(id)).await
    }

    async fn get_max_prekey_id(&self) -> WaResult<u32> {
        Ok(self.max_prekey_id()?)
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> WaResult<()> {
        self.durably(self.put(&id_key(kind::SIGNED_PREKEY, id), record))
            .await
    }

    async fn load_signed_prekey(&self, id: u32) -> WaResult<Option<Vec<u8>>> {
        Ok(self.get(&id_key(kind::SIGNED_PREKEY, id), "signed prekey")?)
    }

    async fn load_all_signed_prekeys(&self) -> WaResult<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::new();
        for (key, sealed) in self.entries_with_prefix(&[kind::SIGNED_PREKEY])? {
            let id: [u8; 4] = key[1..]
                .try_into()
                .map_err(|_| self.corrupt("signed prekey id", format!("{}-byte key", key.len())))?;
            out.push((
                u32::from_be_bytes(id),
                self.open(&key, &sealed, "signed prekey")?,
            ));
        }
        Ok(out)
    }

    async fn remove_signed_prekey(&self, id: u32) -> WaResult<()> {
        let result = self.remove(&id_key(kind::SIGNED_PREKEY, id));
        self.durably(result.map(drop)).await
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> WaResult<()> {
        self.durably(self.put(&key(kind::SENDER_KEY, address.as_bytes()), record))
            .await
    }

    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> WaResult<()> {
        if sender_keys.is_empty() {
            return Ok(());
        }
        let rows = sender_keys
            .iter()
            .map(|(address, record)| (key(kind::SENDER_KEY, address.as_bytes()), record.as_ref()));
        self.durably(self.put_batch(rows)).await
    }

    async fn get_sender_key(&self, address: &str) -> WaResult<Option<Vec<u8>>> {
        Ok(self.get(&key(kind::SENDER_KEY, address.as_bytes()), "sender key")?)
    }

    async fn delete_sender_key(&self, address: &str) -> WaResult<()> {
        let result = self.remove(&key(kind::SENDER_KEY, address.as_bytes()));
        self.durably(result.map(drop)).await
    }
}
