//! wacore's `ProtocolStore` over the device keyspace: sender-key device
//! status, LID↔PN mappings (with the PN→LID reverse index), base keys,
//! device lists, group metadata, tc tokens, sent messages kept for retries
//! and the pending-inbound durability buffer.
//!
//! Which writes flush before returning `Ok` is listed under *Durability* in
//! the parent module.

use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use wacore::store::error::Result as WaResult;
use wacore::store::traits::{
    DeviceListRecord, LidPnMappingEntry, PendingInboundKey, PendingInboundRow, ProtocolStore,
    TcTokenEntry,
};

use super::{
    DeviceBackend, ROW_FORMAT_V1, composite, domain, key, kind, named, part,
    sender_key_device_prefix, split_named,
};
use crate::store::error::StoreError;
use crate::store::ids::BLIND_LEN;
use crate::store::records::abort;

/// `ts (i64 BE) ‖ payload` rows (sent messages, pending inbound).
pub(super) fn timestamped(ts: i64, payload: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(9 + payload.len());
    row.push(ROW_FORMAT_V1);
    row.extend_from_slice(&ts.to_be_bytes());
    row.extend_from_slice(payload);
    row
}

pub(super) fn split_timestamped(row: &[u8]) -> Option<(i64, &[u8])> {
    if *row.first()? != ROW_FORMAT_V1 {
        return None;
    }
    let ts = i64::from_be_bytes(row.get(1..9)?.try_into().ok()?);
    Some((ts, &row[9..]))
}

impl DeviceBackend {
    /// Writes one LID mapping inside a transaction, keeping the pn→lid
    /// reverse index in step: a LID that moves to another phone drops the
    /// old phone's reverse entry if it still points at this LID.
    fn put_lid_mapping_tx(
        &self,
        tx: &TransactionalTree,
        entry: &LidPnMappingEntry,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        let lid_key = self.k(&key(kind::LID_MAPPING, entry.lid.as_bytes()));
        if let Some(sealed) = tx.get(&lid_key)? {
            let old: LidPnMappingEntry = abort(
                self.open(&lid_key, &sealed, "LID mapping")
                    .and_then(|plain| self.decode_json(&plain, "LID mapping")),
            )?;
            if old.phone_number != entry.phone_number {
                let old_pn_key = self.k(&key(kind::PN_TO_LID, old.phone_number.as_bytes()));
                if let Some(sealed) = tx.get(&old_pn_key)? {
                    let lid = abort(self.open(&old_pn_key, &sealed, "PN→LID index"))?;
                    if lid == entry.lid.as_bytes() {
                        tx.remove(old_pn_key)?;
                    }
                }
            }
        }
        let pn_key = self.k(&key(kind::PN_TO_LID, entry.phone_number.as_bytes()));
        tx.insert(
            pn_key.as_slice(),
            abort(self.seal(&pn_key, entry.lid.as_bytes()))?,
        )?;
        let plain = abort(self.encode_json(entry, "LID mapping"))?;
        tx.insert(lid_key.as_slice(), abort(self.seal(&lid_key, &plain))?)?;
        Ok(())
    }

    /// A tc-token row's plaintext: `named(jid, JSON entry)`.
    fn decode_tc_token(&self, plain: &[u8]) -> Result<(String, TcTokenEntry), StoreError> {
        let (jid, json) =
            split_named(plain).ok_or_else(|| self.corrupt("tc token", "bad row layout"))?;
        let jid = String::from_utf8(jid.to_vec()).map_err(|e| self.corrupt("tc token jid", e))?;
        Ok((jid, self.decode_json(json, "tc token")?))
    }

    fn encode_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<Vec<u8>, StoreError> {
        named(jid, &self.encode_json(entry, "tc token")?)
    }

    /// `tc_key` is the stored key.
    fn get_tc_token_tx(
        &self,
        tx: &TransactionalTree,
        tc_key: &[u8],
    ) -> Result<Option<TcTokenEntry>, ConflictableTransactionError<StoreError>> {
        match tx.get(tc_key)? {
            Some(sealed) => Ok(Some(abort(
                self.open(tc_key, &sealed, "tc token")
                    .and_then(|plain| self.decode_tc_token(&plain))
                    .map(|(_, entry)| entry),
            )?)),
            None => Ok(None),
        }
    }

    fn put_tc_token_tx(
        &self,
        tx: &TransactionalTree,
        tc_key: &[u8],
        jid: &str,
        entry: &TcTokenEntry,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        let plain = abort(self.encode_tc_token(jid, entry))?;
        tx.insert(tc_key, abort(self.seal(tc_key, &plain))?)?;
        Ok(())
    }

    fn pending_key(chat: &str, sender: &str, id: &str) -> Result<Vec<u8>, StoreError> {
        composite(kind::PENDING_INBOUND, &[chat, sender], id.as_bytes())
    }
}

#[async_trait]
impl ProtocolStore for DeviceBackend {
    /// Rows are `has_key flag ‖ device JID`.
    async fn get_sender_key_devices(&self, group_jid: &str) -> WaResult<Vec<(String, bool)>> {
        let prefix = sender_key_device_prefix(&self.blinder, group_jid);
        let mut out = Vec::new();
        for (key, sealed) in self.entries_with_prefix(&prefix)? {
            let plain = self.open(&key, &sealed, "sender key device")?;
            let (flag, device) = plain
                .split_first()
                .ok_or_else(|| self.corrupt("sender key device", "empty row"))?;
            let device = String::from_utf8(device.to_vec())
                .map_err(|e| self.corrupt("sender key device", e))?;
            out.push((device, *flag == 1));
        }
        // The order of the natural keys, not of their hashes.
        out.sort();
        Ok(out)
    }

    async fn set_sender_key_status(
        &self,
        group_jid: &str,
        entries: &[(&str, bool)],
    ) -> WaResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let rows = entries
            .iter()
            .map(|(device, has_key)| {
                let key = composite(kind::SENDER_KEY_DEVICE, &[group_jid], device.as_bytes())?;
                let mut row = vec![u8::from(*has_key)];
                row.extend_from_slice(device.as_bytes());
                Ok((key, row))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.durably(self.put_batch(rows.iter().map(|(key, row)| (key.clone(), row.as_slice()))))
            .await
    }

    async fn clear_sender_key_devices(&self, group_jid: &str) -> WaResult<()> {
        let prefix = sender_key_device_prefix(&self.blinder, group_jid);
        let result = self
            .keys_with_prefix(&prefix)
            .and_then(|keys| self.remove_batch(keys.into_iter().map(|k| k.to_vec())));
        self.durably(result).await
    }

    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> WaResult<()> {
        if device_jids.is_empty() {
            return Ok(());
        }
        // Keys only, no decryption: `kind ‖ H(group) ‖ H(device)`.
        let doomed_devices: Vec<[u8; BLIND_LEN]> = device_jids
            .iter()
            .map(|d| {
                self.blinder
                    .blind(&domain(kind::SENDER_KEY_DEVICE, part::DEVICE), d.as_bytes())
            })
            .collect();
        let result = self
            .keys_with_prefix(&[kind::SENDER_KEY_DEVICE])
            .and_then(|keys| {
                let doomed = keys.into_iter().filter(|key| {
                    key.get(1 + BLIND_LEN..)
                        .is_some_and(|device| doomed_devices.iter().any(|d| &d[..] == device))
                });
                self.remove_batch(doomed.map(|k| k.to_vec()))
            });
        self.durably(result).await
    }

    async fn clear_all_sender_key_devices(&self) -> WaResult<()> {
        let result = self
            .keys_with_prefix(&[kind::SENDER_KEY_DEVICE])
            .and_then(|keys| self.remove_batch(keys.into_iter().map(|k| k.to_vec())));
        self.durably(result).await
    }

    async fn get_lid_mapping(&self, lid: &str) -> WaResult<Option<LidPnMappingEntry>> {
        Ok(self.get_json(&key(kind::LID_MAPPING, lid.as_bytes()), "LID mapping")?)
    }

    async fn get_pn_mapping(&self, phone: &str) -> WaResult<Option<LidPnMappingEntry>> {
        let Some(lid) = self.get(&key(kind::PN_TO_LID, phone.as_bytes()), "PN→LID index")? else {
            return Ok(None);
        };
        let lid = String::from_utf8(lid).map_err(|e| self.corrupt("PN→LID index", e))?;
        let entry = self.get_lid_mapping(&lid).await?;
        Ok(entry.filter(|entry| entry.phone_number == phone))
    }

    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> WaResult<()> {
        Ok(self.transact(kind::LID_MAPPING, |tx| self.put_lid_mapping_tx(tx, entry))?)
    }

    async fn put_lid_mappings(&self, entries: &[LidPnMappingEntry]) -> WaResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        Ok(self.transact(kind::LID_MAPPING, |tx| {
            for entry in entries {
                self.put_lid_mapping_tx(tx, entry)?;
            }
            Ok(())
        })?)
    }

    async fn get_all_lid_mappings(&self) -> WaResult<Vec<LidPnMappingEntry>> {
        let mut out = Vec::new();
        for (key, sealed) in self.entries_with_prefix(&[kind::LID_MAPPING])? {
            let plain = self.open(&key, &sealed, "LID mapping")?;
            out.push(self.decode_json(&plain, "LID mapping")?);
        }
        Ok(out)
    }

    async fn save_base_key(
        &self,
        address: &str,
        message_id: &str,
        base_key: &[u8],
    ) -> WaResult<()> {
        let key = composite(kind::BASE_KEY, &[address], message_id.as_bytes())?;
        Ok(self.put(&key, base_key)?)
    }

    async fn has_same_base_key(
        &self,
        address: &str,
        message_id: &str,
        current_base_key: &[u8],
    ) -> WaResult<bool> {
        let key = composite(kind::BASE_KEY, &[address], message_id.as_bytes())?;
        Ok(self
            .get(&key, "base key")?
            .is_some_and(|stored| stored == current_base_key))
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> WaResult<()> {
        let key = composite(kind::BASE_KEY, &[address], message_id.as_bytes())?;
        let result = self.remove(&key);
        self.durably(result.map(drop)).await
    }

    async fn update_device_list(&self, record: DeviceListRecord) -> WaResult<()> {
        let plain = self.encode_json(&record, "device list")?;
        Ok(self.put(&key(kind::DEVICE_LIST, record.user.as_bytes()), &plain)?)
    }

    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> WaResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let rows = records
            .iter()
            .map(|record| {
                self.encode_json(record, "device list")
                    .map(|plain| (key(kind::DEVICE_LIST, record.user.as_bytes()), plain))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.put_batch(
            rows.iter()
                .map(|(key, plain)| (key.clone(), plain.as_slice())),
        )?)
    }

    async fn get_devices(&self, user: &str) -> WaResult<Option<DeviceListRecord>> {
        Ok(self.get_json(&key(kind::DEVICE_LIST, user.as_bytes()), "device list")?)
    }

    async fn delete_devices(&self, user: &str) -> WaResult<()> {
        let result = self.remove(&key(kind::DEVICE_LIST, user.as_bytes()));
        self.durably(result.map(drop)).await
    }

    async fn get_group_metadata(&self, group_jid: &str) -> WaResult<Option<Vec<u8>>> {
        Ok(self.get(
            &key(kind::GROUP_METADATA, group_jid.as_bytes()),
            "group metadata",
        )?)
    }

    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> WaResult<()> {
        Ok(self.put(&key(kind::GROUP_METADATA, group_jid.as_bytes()), blob)?)
    }

    async fn delete_group_metadata(&self, group_jid: &str) -> WaResult<()> {
        let result = self.remove(&key(kind::GROUP_METADATA, group_jid.as_bytes()));
        self.durably(result.map(drop)).await
    }

    async fn get_tc_token(&self, jid: &str) -> WaResult<Option<TcTokenEntry>> {
        match self.get(&key(kind::TC_TOKEN, jid.as_bytes()), "tc token")? {
            Some(plain) => Ok(Some(self.decode_tc_token(&plain)?.1)),
            None => Ok(None),
        }
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> WaResult<()> {
        let plain = self.encode_tc_token(jid, entry)?;
        Ok(self.put(&key(kind::TC_TOKEN, jid.as_bytes()), &plain)?)
    }

    async fn delete_tc_token(&self, jid: &str) -> WaResult<()> {
        let result = self.remove(&key(kind::TC_TOKEN, jid.as_bytes()));
        self.durably(result.map(drop)).await
    }

    async fn get_all_tc_token_jids(&self) -> WaResult<Vec<String>> {
        self.entries_with_prefix(&[kind::TC_TOKEN])?
            .into_iter()
            .map(|(key, sealed)| {
                let plain = self.open(&key, &sealed, "tc token")?;
                Ok(self.decode_tc_token(&plain)?.0)
            })
            .collect()
    }

    async fn delete_expired_tc_tokens(
        &self,
        token_cutoff: i64,
        sender_cutoff: i64,
    ) -> WaResult<u32> {
        // A row goes only when both windows are stale: the received token
        // (absent or older than token_cutoff) and the sender bucket.
        let result = self.sweep(&[kind::TC_TOKEN], "tc token", |plain| {
            let json = split_named(plain).map_or(&[][..], |(_, json)| json);
            serde_json::from_slice::<TcTokenEntry>(json).is_ok_and(|entry| {
                let token_live = !entry.token.is_empty() && entry.token_timestamp >= token_cutoff;
                let sender_live = entry.sender_timestamp.is_some_and(|ts| ts >= sender_cutoff);
                !token_live && !sender_live
            })
        });
        self.durably(result).await
    }

    async fn touch_tc_token_sender_timestamp(
        &self,
        jid: &str,
        sender_timestamp: i64,
    ) -> WaResult<()> {
        let tc_key = self.k(&key(kind::TC_TOKEN, jid.as_bytes()));
        Ok(self.transact(kind::TC_TOKEN, |tx| {
            let entry = match self.get_tc_token_tx(tx, &tc_key)? {
                Some(existing) => TcTokenEntry {
                    sender_timestamp: Some(
                        existing
                            .sender_timestamp
                            .map_or(sender_timestamp, |ts| ts.max(sender_timestamp)),
                    ),
                    ..existing
                },
                None => TcTokenEntry {
                    token: Vec::new(),
                    token_timestamp: sender_timestamp,
                    sender_timestamp: Some(sender_timestamp),
                },
            };
            self.put_tc_token_tx(tx, &tc_key, jid, &entry)
        })?)
    }

    async fn store_received_tc_token(
        &self,
        jid: &str,
        token: &[u8],
        token_timestamp: i64,
    ) -> WaResult<()> {
        let tc_key = self.k(&key(kind::TC_TOKEN, jid.as_bytes()));
        Ok(self.transact(kind::TC_TOKEN, |tx| {
            let existing = self.get_tc_token_tx(tx, &tc_key)?;
            // Newer wins; a byte-less placeholder never blocks the first real token.
            if let Some(existing) = &existing
                && !existing.token.is_empty()
                && token_timestamp < existing.token_timestamp
            {
                return Ok(());
            }
            let entry = TcTokenEntry {
                token: token.to_vec(),
                token_timestamp,
                sender_timestamp: existing.and_then(|existing| existing.sender_timestamp),
            };
            self.put_tc_token_tx(tx, &tc_key, jid, &entry)
        })?)
    }

    async fn store_sent_message(
        &self,
        chat_jid: &str,
        message_id: &str,
        payload: &[u8],
    ) -> WaResult<()> {
        let key = composite(kind::SENT_MESSAGE, &[chat_jid], message_id.as_bytes())?;
        let row = timestamped(wacore::time::now_secs(), payload);
        Ok(self.put(&key, &row)?)
    }

    async fn take_sent_message(
        &self,
        chat_jid: &str,
        message_id: &str,
    ) -> WaResult<Option<Vec<u8>>> {
        let key = composite(kind::SENT_MESSAGE, &[chat_jid], message_id.as_bytes())?;
        // sled's remove returns the old value: the take is atomic.
        let result = self.remove(&key);
        let taken = self.durably(result).await?;
        match taken {
            Some(sealed) => {
                let row = self.open(&self.k(&key), &sealed, "sent message")?;
                let (_, payload) = split_timestamped(&row)
                    .ok_or_else(|| self.corrupt("sent message", "bad row header"))?;
                Ok(Some(payload.to_vec()))
            }
            None => Ok(None),
        }
    }

    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> WaResult<u32> {
        let result = self.sweep(&[kind::SENT_MESSAGE], "sent message", |row| {
            split_timestamped(row).is_some_and(|(ts, _)| ts < cutoff_timestamp)
        });
        self.durably(result).await
    }

    async fn store_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
        message: &[u8],
    ) -> WaResult<()> {
        let key = Self::pending_key(chat, sender, id)?;
        let row = timestamped(wacore::time::now_secs(), message);
        self.durably(self.put(&key, &row)).await
    }

    async fn get_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
    ) -> WaResult<Option<Vec<u8>>> {
        let key = Self::pending_key(chat, sender, id)?;
        match self.get(&key, "pending inbound message")? {
            Some(row) => {
                let (_, message) = split_timestamped(&row)
                    .ok_or_else(|| self.corrupt("pending inbound message", "bad row header"))?;
                Ok(Some(message.to_vec()))
            }
            None => Ok(None),
        }
    }

    /// Not flushed (see *Durability* in the parent module): a row that a
    /// crash brings back is replayed to the idempotent hook at worst.
    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> WaResult<()> {
        let key = Self::pending_key(chat, sender, id)?;
        self.remove(&key)?;
        Ok(())
    }

    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> WaResult<u32> {
        let result = self.sweep(&[kind::PENDING_INBOUND], "pending inbound message", |row| {
            split_timestamped(row).is_some_and(|(ts, _)| ts < cutoff_timestamp)
        });
        self.durably(result).await
    }

    async fn store_pending_inbound_batch(&self, rows: &[PendingInboundRow<'_>]) -> WaResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let now = wacore::time::now_secs();
        let rows = rows
            .iter()
            .map(|row| {
                Self::pending_key(row.chat, row.sender, row.id)
                    .map(|key| (key, timestamped(now, row.message)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.durably(self.put_batch(rows.iter().map(|(key, row)| (key.clone(), row.as_slice()))))
            .await
    }

    async fn delete_pending_inbound_batch(&self, keys: &[PendingInboundKey<'_>]) -> WaResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys = keys
            .iter()
            .map(|key| Self::pending_key(key.chat, key.sender, key.id).map(|k| self.k(&k)))
            .collect::<Result<Vec<_>, _>>()?;
        // Not flushed, like `delete_pending_inbound`: the next group commit
        // (the next message's, at the latest) covers it.
        Ok(self.remove_batch(keys)?)
    }
}
