//! The phone's address book, synced to its linked devices as app state.
//!
//! WhatsApp keeps `contact` actions in the `critical_unblock_low` collection
//! (`wacore-appstate`'s `schemas.rs`). fakewa plays the phone that writes
//! them: every change of a phone's book is one patch, encrypted and MAC'd
//! with the app-state key the phone shares with each of its devices, so the
//! client verifies it exactly as it verifies WhatsApp's (index MAC, value
//! MAC, the LTHash snapshot MAC and the patch MAC). Patches, not snapshots:
//! a snapshot travels as an external blob, i.e. a media download.
//!
//! Patches are rebuilt from the book's history on every sync, so they must be
//! the same bytes every time: the key is derived from the server's private
//! key and the phone number, and each record's IV from the version and the
//! index.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use wacore::appstate::hash::{HashState, generate_patch_mac};
use wacore::appstate::{encode_record, expand_app_state_keys};
use wacore_binary::builder::NodeBuilder;
use wacore_binary::node::Node;
use wacore_libsignal::crypto::CryptographicMac;
use waproto::whatsapp as wa;

use crate::conn::{ConnCmd, attr};
use crate::server::{ControlError, Server, lock, now_secs};
use crate::state::{AppStateKey, DeviceKey};

/// The collection WhatsApp keeps `contact` actions in.
pub const CONTACTS_COLLECTION: &str = "critical_unblock_low";
/// The `contact` action's schema version (`schemas.rs`, `CONTACT`).
const CONTACT_ACTION_VERSION: i32 = 2;

/// One person in a phone's address book (control API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookEntry {
    pub phone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// The person's LID (`digits` or `digits@lid`), when the phone knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lid: Option<String>,
}

/// Every version of a phone's address book: `versions[i]` is the book at
/// collection version `i + 1` (version 0 is the empty book).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AddressBook {
    pub versions: Vec<Vec<BookEntry>>,
}

impl AddressBook {
    pub fn version(&self) -> u64 {
        self.versions.len() as u64
    }
}

/// The app-state key `phone` shares with its devices: one per account, the
/// same for every device, stable across fakewa restarts with a state dir.
pub fn account_key(server_private: &[u8; 32], phone: &str) -> AppStateKey {
    let derive = |label: &str| {
        let mut mac = CryptographicMac::new("HmacSha256", server_private)
            .expect("HmacSha256 is a valid algorithm");
        mac.update(label.as_bytes());
        mac.update(phone.as_bytes());
        mac.finalize()
    };
    let mut key_id = [0u8; 6];
    key_id.copy_from_slice(&derive("fakewa app-state key id")[..6]);
    let mut key_data = [0u8; 32];
    key_data.copy_from_slice(&derive("fakewa app-state key")[..32]);
    AppStateKey { key_id, key_data }
}

/// The patches that take the collection from version 0 to the book's latest.
pub fn patches(key: &AppStateKey, book: &AddressBook, timestamp: u64) -> Vec<wa::SyncdPatch> {
    let keys = expand_app_state_keys(&key.key_data);
    let mut hash = HashState::default();
    // Index MAC -> value MAC of what the collection holds, as the client keeps it.
    let mut held: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut before: BTreeMap<&str, &BookEntry> = BTreeMap::new();
    let mut out = Vec::with_capacity(book.versions.len());
    for (i, entries) in book.versions.iter().enumerate() {
        let version = i as u64 + 1;
        let after: BTreeMap<&str, &BookEntry> =
            entries.iter().map(|e| (e.phone.as_str(), e)).collect();
        let mut mutations = Vec::new();
        for (phone, entry) in &after {
            if before.get(phone) != Some(entry) {
                mutations.push(record(
                    wa::syncd_mutation::SyncdOperation::SET,
                    entry,
                    &keys,
                    key,
                    version,
                    timestamp,
                ));
            }
        }
        for (phone, entry) in &before {
            if !after.contains_key(phone) {
                mutations.push(record(
                    wa::syncd_mutation::SyncdOperation::REMOVE,
                    entry,
                    &keys,
                    key,
                    version,
                    timestamp,
                ));
            }
        }
        hash.version = version;
        let (_, applied) =
            hash.update_hash(&mutations, |index_mac, _| Ok(held.get(index_mac).cloned()));
        applied.expect("known operations only");
        for m in &mutations {
            let (Some(index), Some(value)) = (&m.record.index.blob, &m.record.value.blob) else {
                continue;
            };
            if m.operation == Some(wa::syncd_mutation::SyncdOperation::SET.into()) {
                held.insert(index.clone(), value[value.len() - 32..].to_vec());
            } else {
                held.remove(index);
            }
        }
        let mut patch = wa::SyncdPatch {
            version: buffa::MessageField::some(wa::SyncdVersion {
                version: Some(version),
            }),
            mutations,
            snapshot_mac: Some(hash.generate_snapshot_mac(CONTACTS_COLLECTION, &keys.snapshot_mac)),
            key_id: buffa::MessageField::some(wa::KeyId {
                id: Some(key.key_id.to_vec()),
            }),
            ..Default::default()
        };
        patch.patch_mac = Some(generate_patch_mac(
            &patch,
            CONTACTS_COLLECTION,
            &keys.patch_mac,
            version,
        ));
        out.push(patch);
        before = after;
    }
    out
}

/// One `contact` mutation: index `["contact", "<phone>@s.whatsapp.net"]`.
fn record(
    operation: wa::syncd_mutation::SyncdOperation,
    entry: &BookEntry,
    keys: &wacore::appstate::ExpandedAppStateKeys,
    key: &AppStateKey,
    version: u64,
    timestamp: u64,
) -> wa::SyncdMutation {
    let pn_jid = format!("{}@s.whatsapp.net", entry.phone);
    let index = serde_json::to_vec(&["contact", pn_jid.as_str()]).expect("strings serialize");
    let value = wa::SyncActionValue {
        timestamp: Some(timestamp as i64 * 1000),
        contact_action: buffa::MessageField::some(wa::sync_action_value::ContactAction {
            full_name: entry.full_name.clone(),
            first_name: entry.first_name.clone(),
            lid_jid: entry.lid.as_ref().map(|lid| format!("{lid}@lid")),
            save_on_primary_addressbook: Some(true),
            pn_jid: Some(pn_jid.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Same bytes on every rebuild: the IV depends only on what it encrypts.
    let mut mac = CryptographicMac::new("HmacSha256", &keys.value_encryption)
        .expect("HmacSha256 is a valid algorithm");
    mac.update(&version.to_be_bytes());
    mac.update(&index);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&mac.finalize()[..16]);
    encode_record(
        operation,
        &index,
        &value,
        keys,
        &key.key_id,
        &iv,
        CONTACT_ACTION_VERSION,
    )
    .0
}

/// The `<collection>` answer for `name` to a device of `phone` that holds
/// version `have`: the contacts collection gets the patches it lacks, every
/// other collection stays empty.
pub fn collection_reply(server: &Server, phone: &str, name: &str, have: u64) -> Node {
    let empty = NodeBuilder::new("collection")
        .attr("name", name.to_owned())
        .build();
    if name != CONTACTS_COLLECTION {
        return empty;
    }
    let (key, book, timestamp) = {
        let state = lock(&server.state);
        let Some(book) = state.server.address_books.get(phone) else {
            return empty;
        };
        (
            account_key(&state.server.server_private, phone),
            book.clone(),
            book.updated_at,
        )
    };
    let patches: Vec<Node> = patches(&key, &book.book, timestamp)
        .into_iter()
        .filter(|p| p.version.version.unwrap_or(0) > have)
        .map(|p| {
            NodeBuilder::new("patch")
                .bytes(waproto::codec::syncd_patch_to_vec(&p))
                .build()
        })
        .collect();
    if patches.is_empty() {
        return empty;
    }
    NodeBuilder::new("collection")
        .attr("name", name.to_owned())
        .children([NodeBuilder::new("patches").children(patches).build()])
        .build()
}

/// The answer to a device's `w:sync:app:state` IQ: each requested
/// collection, the contacts one with the patches past the version the device
/// names (`return_snapshot` requests name none: version 0).
pub fn sync_reply(server: &Server, device: Option<&DeviceKey>, id: &str, node: &Node) -> Node {
    let collections: Vec<Node> = node
        .get_optional_child("sync")
        .map(|s| {
            s.get_children_by_tag("collection")
                .filter_map(|c| {
                    let name = attr(c, "name")?;
                    let have = attr(c, "version").and_then(|v| v.parse().ok()).unwrap_or(0);
                    Some((name, have))
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .map(|(name, have)| match device {
            Some(device) => collection_reply(server, &device.phone, &name, have),
            None => NodeBuilder::new("collection").attr("name", name).build(),
        })
        .collect();
    NodeBuilder::new("iq")
        .attr("from", "s.whatsapp.net")
        .attr("type", "result")
        .attr("id", id.to_owned())
        .children([NodeBuilder::new("sync").children(collections).build()])
        .build()
}

/// At login, a device that already holds the phone's key hears of the
/// book's version (a reconnecting client does not sync app state by itself;
/// WhatsApp tells it with `server_sync`). A device still waiting for its key
/// share is in its first sync, which fetches the book anyway.
pub fn login_notice(server: &Server, device: &DeviceKey) -> Option<Node> {
    let state = lock(&server.state);
    let version = state
        .server
        .address_books
        .get(&device.phone)
        .map_or(0, |b| b.book.version());
    let awaiting_key = state
        .devices
        .get(device)
        .is_none_or(|d| d.queue.iter().any(|m| m.app_state_key.is_some()));
    (version > 0 && !awaiting_key).then(|| server_sync_notice(version))
}

/// A phone's book as fakewa keeps it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StoredBook {
    pub book: AddressBook,
    /// When the book last changed (seconds): the actions' timestamp.
    pub updated_at: u64,
}

/// `<notification type="server_sync">`: the collection has a new version.
pub fn server_sync_notice(version: u64) -> Node {
    NodeBuilder::new("notification")
        .attr("from", "s.whatsapp.net")
        .attr("type", "server_sync")
        .attr("id", format!("ss-{}-{version}", now_secs()))
        .attr("t", now_secs().to_string())
        .children([NodeBuilder::new("collection")
            .attr("name", CONTACTS_COLLECTION)
            .attr("version", version.to_string())
            .build()])
        .build()
}

impl Server {
    /// The app-state key `phone` shares with its devices.
    pub fn app_state_key(&self, phone: &str) -> AppStateKey {
        account_key(&lock(&self.state).server.server_private, phone)
    }

    /// `phone`'s address book is now `entries`. A change is a new collection
    /// version, announced to the phone's connected devices at once (devices
    /// that are offline hear of it when they log in); an unchanged book keeps
    /// its version. Returns the version.
    pub fn set_address_book(
        &self,
        phone: &str,
        entries: Vec<BookEntry>,
    ) -> Result<u64, ControlError> {
        crate::server::validate_phone(phone)?;
        let mut seen = std::collections::HashSet::new();
        for entry in &entries {
            crate::server::validate_phone(&entry.phone)?;
            if !seen.insert(entry.phone.as_str()) {
                return Err(ControlError::BadRequest(format!(
                    "{} is in the book twice",
                    entry.phone
                )));
            }
            let named = |n: &Option<String>| n.as_deref().is_some_and(|n| !n.trim().is_empty());
            if !named(&entry.full_name) && !named(&entry.first_name) {
                return Err(ControlError::BadRequest(format!(
                    "{} needs a full_name or a first_name",
                    entry.phone
                )));
            }
            if let Some(lid) = &entry.lid {
                let digits = lid.trim_end_matches("@lid");
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ControlError::BadRequest(format!(
                        "invalid lid {lid:?}: digits, or digits@lid"
                    )));
                }
            }
        }
        let mut sorted: Vec<BookEntry> = entries
            .into_iter()
            .map(|mut e| {
                e.lid = e.lid.map(|l| l.trim_end_matches("@lid").to_owned());
                e
            })
            .collect();
        sorted.sort_by(|a, b| a.phone.cmp(&b.phone));
        let (version, devices) = {
            let mut state = lock(&self.state);
            let stored = state
                .server
                .address_books
                .entry(phone.to_owned())
                .or_default();
            if stored.book.versions.last() == Some(&sorted)
                || (stored.book.versions.is_empty() && sorted.is_empty())
            {
                return Ok(stored.book.version());
            }
            stored.book.versions.push(sorted);
            stored.updated_at = now_secs();
            let version = stored.book.version();
            state
                .save_server()
                .map_err(|e| ControlError::Failed(e.to_string()))?;
            (version, state.devices_of(phone))
        };
        let conns = lock(&self.conns);
        for key in devices {
            if let Some(handle) = conns.live.get(&key) {
                handle.send(ConnCmd::Send(server_sync_notice(version)));
            }
        }
        Ok(version)
    }

    /// The contacts collection's version for `phone` (0: no book).
    pub fn address_book_version(&self, phone: &str) -> u64 {
        lock(&self.state)
            .server
            .address_books
            .get(phone)
            .map_or(0, |b| b.book.version())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use wacore::appstate::ExpandedAppStateKeys;
    use wacore::appstate::processor::{AppStateMutationMAC, process_patch};

    fn entry(phone: &str, name: &str, lid: Option<&str>) -> BookEntry {
        BookEntry {
            phone: phone.into(),
            full_name: Some(name.into()),
            first_name: None,
            lid: lid.map(Into::into),
        }
    }

    /// The client's side: `wacore`'s own patch processing, MACs validated.
    struct Client {
        state: HashState,
        macs: HashMap<Vec<u8>, Vec<u8>>,
        keys: Arc<ExpandedAppStateKeys>,
    }

    impl Client {
        fn apply(&mut self, patch: &wa::SyncdPatch) -> Vec<(String, Option<String>, String)> {
            let macs = self.macs.clone();
            let keys = self.keys.clone();
            let result = process_patch(
                patch,
                &mut self.state,
                |_| Ok(keys.clone()),
                |index_mac| Ok(macs.get(index_mac).cloned()),
                true,
                CONTACTS_COLLECTION,
            )
            .expect("the client accepts the patch");
            assert!(!self.state.mac_mismatch_fatal, "snapshot MAC diverged");
            for removed in &result.removed_index_macs {
                self.macs.remove(removed);
            }
            for AppStateMutationMAC {
                index_mac,
                value_mac,
            } in result.added_macs
            {
                self.macs.insert(index_mac, value_mac);
            }
            result
                .mutations
                .into_iter()
                .map(|m| {
                    let action = m
                        .action_value
                        .and_then(|v| v.contact_action.into_option())
                        .unwrap_or_default();
                    let op = if m.operation == wa::syncd_mutation::SyncdOperation::SET {
                        "Set"
                    } else {
                        "Remove"
                    };
                    (
                        format!("{op}:{}", m.index.join("|")),
                        action.lid_jid,
                        action.full_name.unwrap_or_default(),
                    )
                })
                .collect()
        }
    }

    #[test]
    fn the_library_accepts_every_version_of_a_book() {
        let key = account_key(&[9; 32], "15551230000");
        let mut book = AddressBook::default();
        book.versions.push(vec![
            entry("15551230001", "Ada Lovelace", None),
            entry("15551230002", "Alan Turing", Some("100000000000777")),
            entry("15551230003", "Grace Hopper", None),
        ]);
        book.versions.push(vec![
            entry("15551230001", "Ada King", None),
            entry("15551230002", "Alan Turing", Some("100000000000777")),
        ]);
        let patches = patches(&key, &book, 1_700_000_000);
        assert_eq!(patches.len(), 2);
        // Rebuilt patches are the same bytes (every device, every sync).
        assert_eq!(
            waproto::codec::syncd_patch_to_vec(&patches[1]),
            waproto::codec::syncd_patch_to_vec(&super::patches(&key, &book, 1_700_000_000)[1])
        );
        let mut client = Client {
            state: HashState::default(),
            macs: HashMap::new(),
            keys: Arc::new(expand_app_state_keys(&key.key_data)),
        };
        let first = client.apply(&patches[0]);
        assert_eq!(client.state.version, 1);
        assert_eq!(first.len(), 3);
        assert!(first.contains(&(
            "Set:contact|15551230002@s.whatsapp.net".into(),
            Some("100000000000777@lid".into()),
            "Alan Turing".into()
        )));
        let second = client.apply(&patches[1]);
        assert_eq!(client.state.version, 2);
        assert_eq!(
            second,
            vec![
                (
                    "Set:contact|15551230001@s.whatsapp.net".into(),
                    None,
                    "Ada King".into()
                ),
                (
                    "Remove:contact|15551230003@s.whatsapp.net".into(),
                    None,
                    "Grace Hopper".into()
                ),
            ]
        );
        assert_eq!(client.macs.len(), 2);
    }

    #[test]
    fn a_tampered_patch_is_refused() {
        let key = account_key(&[9; 32], "15551230000");
        let book = AddressBook {
            versions: vec![vec![entry("15551230001", "Ada", None)]],
        };
        let mut patch = patches(&key, &book, 1).remove(0);
        // A patch MAC'd with another phone's key is not this phone's.
        let other = account_key(&[9; 32], "15551239999");
        let keys = expand_app_state_keys(&other.key_data);
        let result = process_patch(
            &patch,
            &mut HashState::default(),
            |_| Ok(Arc::new(keys.clone())),
            |_| Ok(None),
            true,
            CONTACTS_COLLECTION,
        );
        assert!(result.is_err());
        patch.patch_mac = Some(vec![0; 32]);
        let keys = expand_app_state_keys(&key.key_data);
        assert!(
            process_patch(
                &patch,
                &mut HashState::default(),
                |_| Ok(Arc::new(keys.clone())),
                |_| Ok(None),
                true,
                CONTACTS_COLLECTION,
            )
            .is_err()
        );
    }
}
