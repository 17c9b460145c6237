//! wacore's `AppSyncStore` over the device keyspace: app-state sync keys,
//! per-collection versions (`HashState`) and mutation MACs.
//!
//! Which writes flush before returning `Ok` is listed under *Durability* in
//! the parent module.

use std::collections::HashMap;

use async_trait::async_trait;
use wacore::appstate::hash::HashState;
use wacore::appstate::processor::AppStateMutationMAC;
use wacore::store::error::Result as WaResult;
use wacore::store::traits::{AppStateSyncKey, AppSyncStore};

use super::{DeviceBackend, composite, key, kind};
use crate::store::error::StoreError;

fn mutation_mac_key(name: &str, index_mac: &[u8]) -> Result<Vec<u8>, StoreError> {
    composite(kind::MUTATION_MAC, &[name], index_mac)
}

#[async_trait]
impl AppSyncStore for DeviceBackend {
    async fn get_sync_key(&self, key_id: &[u8]) -> WaResult<Option<AppStateSyncKey>> {
        Ok(self.get_json(&key(kind::SYNC_KEY, key_id), "app state sync key")?)
    }

    async fn set_sync_key(&self, key_id: &[u8], sync_key: AppStateSyncKey) -> WaResult<()> {
        let result = self
            .encode_json(&sync_key, "app state sync key")
            .and_then(|plain| self.put(&key(kind::SYNC_KEY, key_id), &plain));
        self.durably(result).await
    }

    async fn get_version(&self, name: &str) -> WaResult<HashState> {
        Ok(self
            .get_json(
                &key(kind::APP_STATE_VERSION, name.as_bytes()),
                "app state version",
            )?
            .unwrap_or_default())
    }

    async fn set_version(&self, name: &str, state: HashState) -> WaResult<()> {
        let result = self
            .encode_json(&state, "app state version")
            .and_then(|plain| self.put(&key(kind::APP_STATE_VERSION, name.as_bytes()), &plain));
        self.durably(result).await
    }

    async fn put_mutation_macs(
        &self,
        name: &str,
        _version: u64,
        mutations: &[AppStateMutationMAC],
    ) -> WaResult<()> {
        if mutations.is_empty() {
            return Ok(());
        }
        let keys = mutations
            .iter()
            .map(|m| mutation_mac_key(name, &m.index_mac))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = keys
            .into_iter()
            .zip(mutations)
            .map(|(key, m)| (key, m.value_mac.as_slice()));
        self.durably(self.put_batch(rows)).await
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> WaResult<Option<Vec<u8>>> {
        Ok(self.get(&mutation_mac_key(name, index_mac)?, "mutation MAC")?)
    }

    async fn get_mutation_macs(
        &self,
        name: &str,
        index_macs: &[[u8; 32]],
    ) -> WaResult<HashMap<[u8; 32], Vec<u8>>> {
        let mut out = HashMap::with_capacity(index_macs.len());
        for index_mac in index_macs {
            if let Some(value) = self.get(&mutation_mac_key(name, index_mac)?, "mutation MAC")? {
                out.insert(*index_mac, value);
            }
        }
        Ok(out)
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> WaResult<()> {
        if index_macs.is_empty() {
            return Ok(());
        }
        let keys = index_macs
            .iter()
            .map(|index_mac| mutation_mac_key(name, index_mac).map(|k| self.k(&k)))
            .collect::<Result<Vec<_>, _>>()?;
        self.durably(self.remove_batch(keys)).await
    }

    async fn clear_mutation_macs(&self, name: &str) -> WaResult<()> {
        let prefix = mutation_mac_key(name, &[])?;
        let result = self
            .keys_with_prefix(&prefix)
            .and_then(|keys| self.remove_batch(keys.into_iter().map(|k| k.to_vec())));
        self.durably(result).await
    }

    /// The highest key id whose row opens and decodes (as SqliteStore does):
    /// a corrupt row never becomes the key outbound patches are built with.
    async fn get_latest_sync_key_id(&self) -> WaResult<Option<Vec<u8>>> {
        let entries = self.entries_with_prefix(&[kind::SYNC_KEY])?;
        for (key, sealed) in entries.into_iter().rev() {
            let usable = self
                .open(&key, &sealed, "app state sync key")
                .and_then(|plain| self.decode_json::<AppStateSyncKey>(&plain, "app state sync key"))
                .is_ok();
            if usable {
                return Ok(Some(key[1..].to_vec()));
            }
        }
        Ok(None)
    }
}
