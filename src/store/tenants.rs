//! Tenants and the hashes of their API tokens, plus the hash of a generated
//! admin token.
//!
//! | tree          | key                 | value                                  |
//! |---------------|---------------------|----------------------------------------|
//! | `tenants`     | H(tenant id)        | sealed JSON [`TenantRecord`]            |
//! | `auth_meta`   | `admin_token_hash`  | sealed SHA-256 of the admin token       |
//!
//! Tokens themselves are never stored: a token is 32 random bytes shown once;
//! the store keeps its SHA-256, which is enough to recognise it and useless
//! for reconstructing it. H is the keyed hash of [`super::ids`]: the tenant
//! id is readable only inside the sealed record.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, TENANT_DOMAIN, ids};

pub(super) const TENANTS_TREE: &str = "tenants";
const AUTH_META_TREE: &str = "auth_meta";
const ADMIN_TOKEN_HASH: &[u8] = b"admin_token_hash";
/// Layout version written into every tenant record.
pub const TENANT_RECORD_VERSION: u32 = 1;

/// One tenant: an id and the hash of its current token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub version: u32,
    pub id: String,
    /// SHA-256 of the current token.
    pub token_hash: [u8; 32],
    pub created_at_ms: i64,
    pub token_issued_at_ms: i64,
}

impl std::fmt::Debug for TenantRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRecord")
            .field("id", &self.id)
            .field("created_at_ms", &self.created_at_ms)
            .field("token_issued_at_ms", &self.token_issued_at_ms)
            .finish_non_exhaustive()
    }
}

impl Store {
    fn tenants_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.inner.dbs.state.open_tree(TENANTS_TREE)?)
    }

    pub(super) fn tenant_key(&self, id: &str) -> [u8; ids::BLIND_LEN] {
        self.blinder().blind(TENANT_DOMAIN, id.as_bytes())
    }

    /// Checks the id, stamps the layout version and seals the record under
    /// its stored key.
    pub(super) fn seal_tenant(&self, record: &TenantRecord) -> Result<Vec<u8>, StoreError> {
        if record.id.is_empty() || record.id.len() > 128 {
            return Err(StoreError::Invalid(format!("tenant id {:?}", record.id)));
        }
        let mut record = record.clone();
        record.version = TENANT_RECORD_VERSION;
        let plain = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Invalid(format!("tenant record: {e}")))?;
        self.sealer().seal(
            TENANTS_TREE.as_bytes(),
            &self.tenant_key(&record.id),
            &plain,
        )
    }

    /// Inserts or replaces a tenant, durably.
    pub async fn put_tenant(&self, record: &TenantRecord) -> Result<(), StoreError> {
        let sealed = self.seal_tenant(record)?;
        let tree = self.tenants_tree()?;
        {
            let _gate = super::sled_gate();
            tree.insert(self.tenant_key(&record.id), sealed)?;
        }
        self.flush().await
    }

    /// Inserts a tenant only if none with that id exists. Returns whether it
    /// was inserted.
    pub async fn create_tenant(&self, record: &TenantRecord) -> Result<bool, StoreError> {
        let sealed = self.seal_tenant(record)?;
        let tree = self.tenants_tree()?;
        let gate = super::sled_gate();
        let swapped =
            tree.compare_and_swap(self.tenant_key(&record.id), None::<&[u8]>, Some(sealed))?;
        drop(gate);
        self.flush().await?;
        Ok(swapped.is_ok())
    }

    pub fn get_tenant(&self, id: &str) -> Result<Option<TenantRecord>, StoreError> {
        let key = self.tenant_key(id);
        match self.tenants_tree()?.get(key)? {
            Some(sealed) => self.decode_tenant(id, &key, &sealed).map(Some),
            None => Ok(None),
        }
    }

    /// Every tenant, by id; an unreadable record is an error.
    pub fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.tenants_tree()?.iter() {
            let (key, sealed) = item?;
            let label = format!("?{}", crate::hex::hex(&key[..key.len().min(6)]));
            out.push(self.decode_tenant(&label, &key, &sealed)?);
        }
        // Stored in hash order; listed in id order.
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Returns whether a tenant existed.
    pub async fn delete_tenant(&self, id: &str) -> Result<bool, StoreError> {
        let tree = self.tenants_tree()?;
        // Its rate limits first: a tenant created again with the id starts
        // with the configured ones.
        self.send_limits_put(&self.tenant_limits_key(id), None, false)
            .await?;
        let existed = {
            let _gate = super::sled_gate();
            tree.remove(self.tenant_key(id))?.is_some()
        };
        self.flush().await?;
        Ok(existed)
    }

    /// The stored hash of a generated admin token, if one was generated.
    pub fn admin_token_hash(&self) -> Result<Option<[u8; 32]>, StoreError> {
        let tree = self.inner.dbs.state.open_tree(AUTH_META_TREE)?;
        let Some(sealed) = tree.get(ADMIN_TOKEN_HASH)? else {
            return Ok(None);
        };
        let plain = self
            .sealer()
            .open(AUTH_META_TREE.as_bytes(), ADMIN_TOKEN_HASH, &sealed)
            .map_err(|_| StoreError::Undecryptable {
                session: "<auth>".to_string(),
                what: "admin token hash",
            })?;
        let hash = <[u8; 32]>::try_from(plain.as_slice()).map_err(|_| StoreError::Corrupt {
            session: "<auth>".to_string(),
            what: "admin token hash",
            reason: format!("{} bytes, expected 32", plain.len()),
        })?;
        Ok(Some(hash))
    }

    pub async fn set_admin_token_hash(&self, hash: &[u8; 32]) -> Result<(), StoreError> {
        let tree = self.inner.dbs.state.open_tree(AUTH_META_TREE)?;
        let sealed = self
            .sealer()
            .seal(AUTH_META_TREE.as_bytes(), ADMIN_TOKEN_HASH, hash)?;
        {
            let _gate = super::sled_gate();
            tree.insert(ADMIN_TOKEN_HASH, sealed)?;
        }
        self.flush().await
    }

    /// `id` names the tenant in errors; `key` is the stored key.
    pub(super) fn decode_tenant(
        &self,
        id: &str,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<TenantRecord, StoreError> {
        let plain = self
            .sealer()
            .open(TENANTS_TREE.as_bytes(), key, sealed)
            .map_err(|_| StoreError::Undecryptable {
                session: format!("<tenant {id}>"),
                what: "tenant record",
            })?;
        let record: TenantRecord =
            serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt {
                session: format!("<tenant {id}>"),
                what: "tenant record",
                reason: e.to_string(),
            })?;
        if record.version > TENANT_RECORD_VERSION {
            return Err(StoreError::UnsupportedRecordVersion {
                session: format!("<tenant {id}>"),
                found: record.version,
                supported: TENANT_RECORD_VERSION,
            });
        }
        if self.tenant_key(&record.id)[..] != *key {
            return Err(StoreError::Corrupt {
                session: format!("<tenant {id}>"),
                what: "tenant record",
                reason: "stored under another tenant's key".to_string(),
            });
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MasterKey;

    fn record(id: &str, byte: u8) -> TenantRecord {
        TenantRecord {
            version: 0,
            id: id.to_string(),
            token_hash: [byte; 32],
            created_at_ms: 1,
            token_issued_at_ms: 2,
        }
    }

    #[tokio::test]
    async fn tenants_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::from_bytes([3; 32]);
        {
            let store = Store::open(dir.path(), &key).unwrap();
            assert!(store.create_tenant(&record("a", 1)).await.unwrap());
            assert!(!store.create_tenant(&record("a", 2)).await.unwrap());
            store.put_tenant(&record("b", 3)).await.unwrap();
            store.set_admin_token_hash(&[9; 32]).await.unwrap();
        }
        let store = Store::open(dir.path(), &key).unwrap();
        assert_eq!(store.get_tenant("a").unwrap().unwrap().token_hash, [1; 32]);
        let ids: Vec<_> = store
            .list_tenants()
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(store.admin_token_hash().unwrap(), Some([9; 32]));
        assert!(store.delete_tenant("a").await.unwrap());
        assert!(!store.delete_tenant("a").await.unwrap());
        assert!(store.get_tenant("a").unwrap().is_none());
        assert!(!format!("{:?}", record("x", 7)).contains("7, 7"));
    }
}
