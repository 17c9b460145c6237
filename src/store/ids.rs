//! Keyed hashes ("blinded ids") for sled keys.
//!
//! Values are sealed, but sled keys are stored as they are. Any key that
//! would carry a phone number, JID, LID, session id or tenant id carries
//! instead HMAC-SHA256(index key, domain ‖ 0x00 ‖ id): equal ids still
//! find each other, nothing readable is left on disk. The plain id, where
//! the daemon needs it back, lives in the sealed value.
//!
//! The index key is 32 random bytes made when the store is created and kept
//! in `store_meta/index_key`, sealed with the master key; a key rotation
//! re-seals it and keeps every hashed key valid.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::{META_TREE, Sealer, StoreError, sled_gate};

/// Meta key holding the sealed index key.
pub(crate) const INDEX_KEY: &[u8] = b"index_key";
/// Length of a blinded id.
pub const BLIND_LEN: usize = 32;

/// Computes blinded ids. Cheap to clone.
#[derive(Clone)]
pub struct Blinder {
    key: hmac::Key,
}

impl std::fmt::Debug for Blinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blinder(..)")
    }
}

impl Blinder {
    pub(crate) fn from_bytes(bytes: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// The blinded form of `id` in `domain` (e.g. `b"session"`, `b"phone"`,
    /// `b"tenant"`). Domains keep equal strings of different kinds apart.
    pub fn blind(&self, domain: &[u8], id: &[u8]) -> [u8; BLIND_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(domain);
        ctx.update(&[0]);
        ctx.update(id);
        let tag = ctx.sign();
        let mut out = [0u8; BLIND_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// Loads the index key from `store_meta`, creating it (durably) when the
/// store has none yet.
pub(crate) fn load_or_create(db: &sled::Db, sealer: &Sealer) -> Result<Blinder, StoreError> {
    let meta = db.open_tree(META_TREE)?;
    if let Some(sealed) = meta.get(INDEX_KEY)? {
        let plain = sealer
            .open(META_TREE.as_bytes(), INDEX_KEY, &sealed)
            .map_err(|_| StoreError::Undecryptable {
                session: "<store>".to_string(),
                what: "index key",
            })?;
        return Ok(Blinder::from_bytes(&plain));
    }
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Crypto("the system random generator failed"))?;
    let sealed = sealer.seal(META_TREE.as_bytes(), INDEX_KEY, &bytes)?;
    {
        let _gate = sled_gate();
        meta.insert(INDEX_KEY, sealed)?;
    }
    db.flush()?;
    Ok(Blinder::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_keys_separate_ids() {
        let a = Blinder::from_bytes(&[1; 32]);
        let b = Blinder::from_bytes(&[2; 32]);
        assert_eq!(a.blind(b"session", b"x"), a.blind(b"session", b"x"));
        assert_ne!(a.blind(b"session", b"x"), a.blind(b"tenant", b"x"));
        assert_ne!(a.blind(b"session", b"x"), b.blind(b"session", b"x"));
        assert_ne!(a.blind(b"session", b"ab"), a.blind(b"sessiona", b"b"));
    }
}
