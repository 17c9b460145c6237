//! The contacts directory of a session: every person it has seen (senders
//! of direct and group messages, group members it was told about) as ONE
//! entry per person. A phone number and a LID seen apart are two entries
//! until a message or notification names both; then they merge into the
//! LID's entry, and the phone's key points there for good (entries merge,
//! never split). Rows live under the session's prefix in the store, sealed,
//! with blinded keys (src/store/contacts.rs), and go with the session.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::store::contacts::{ContactTx, TxError};
use crate::store::ids::Blinder;
use crate::store::{Store, StoreError};

/// One person.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Contact {
    /// Digits with country code, once known.
    pub phone: Option<String>,
    /// `<digits>@lid`, once known.
    pub lid: Option<String>,
    /// The name they gave WhatsApp, as last seen.
    pub push_name: Option<String>,
    /// Groups (JIDs) they were seen in.
    pub groups: Vec<String>,
    /// Milliseconds since the Unix epoch.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// A stored row: a person, or where a phone number's person moved to.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "row", rename_all = "snake_case")]
enum Row {
    Person(Contact),
    /// The key (hex) of the LID entry this phone merged into.
    MergedInto {
        key: String,
    },
}

/// A sighting of someone.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub phone: Option<String>,
    pub lid: Option<String>,
    pub push_name: Option<String>,
    pub group: Option<String>,
    pub at_ms: i64,
}

impl Seen {
    /// From a message's sender (`phone` digits and `lid` JID; empty when
    /// unknown).
    pub fn sender(
        phone: &str,
        lid: &str,
        push_name: &str,
        group: Option<&str>,
        at_ms: i64,
    ) -> Self {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Self {
            phone: some(phone),
            lid: some(lid),
            push_name: some(push_name),
            group: group.map(str::to_owned),
            at_ms,
        }
    }
}

fn key(prefix: &[u8], blinder: &Blinder, kind: &str, id: &str) -> Vec<u8> {
    let blinded = blinder.blind(b"contact", format!("{kind}:{id}").as_bytes());
    [prefix, blinded.as_slice()].concat()
}

fn read(tx: &ContactTx<'_>, key: &[u8]) -> Result<Option<Row>, TxError> {
    Ok(tx
        .get(key)?
        .and_then(|bytes| serde_json::from_slice::<Row>(&bytes).ok()))
}

fn write(tx: &ContactTx<'_>, key: &[u8], row: &Row) -> Result<(), TxError> {
    let bytes = serde_json::to_vec(row).unwrap_or_default();
    tx.put(key, &bytes)
}

fn merge(into: &mut Contact, from: &Contact) {
    if into.phone.is_none() {
        into.phone.clone_from(&from.phone);
    }
    if into.lid.is_none() {
        into.lid.clone_from(&from.lid);
    }
    if from.last_seen_ms >= into.last_seen_ms && from.push_name.is_some() {
        into.push_name.clone_from(&from.push_name);
    }
    for group in &from.groups {
        if !into.groups.contains(group) {
            into.groups.push(group.clone());
        }
    }
    into.first_seen_ms = match (into.first_seen_ms, from.first_seen_ms) {
        (0, b) => b,
        (a, 0) => a,
        (a, b) => a.min(b),
    };
    into.last_seen_ms = into.last_seen_ms.max(from.last_seen_ms);
}

/// Notes sightings in the directory under `prefix`, each in one
/// transaction (not flushed: the next group commit writes it).
pub fn note(store: &Store, prefix: &[u8], seen: &[Seen]) -> Result<(), StoreError> {
    let blinder = store.blinder();
    for seen in seen {
        if seen.phone.is_none() && seen.lid.is_none() {
            continue;
        }
        let by_lid = seen.lid.as_deref().map(|l| key(prefix, blinder, "lid", l));
        let by_phone = seen
            .phone
            .as_deref()
            .map(|p| key(prefix, blinder, "phone", p));
        let sighting = Contact {
            phone: seen.phone.clone(),
            lid: seen.lid.clone(),
            push_name: seen.push_name.clone(),
            groups: seen.group.iter().cloned().collect(),
            first_seen_ms: seen.at_ms,
            last_seen_ms: seen.at_ms,
        };
        store.contacts_update(|tx| {
            let phone_row = match &by_phone {
                Some(k) => read(tx, k)?,
                None => None,
            };
            // Where the person lives: the LID's entry when the LID is
            // known; else wherever the phone's row says.
            let home = match (&by_lid, &phone_row) {
                (Some(k), _) => k.clone(),
                (None, Some(Row::MergedInto { key })) => match crate::store::ids::unhex(key) {
                    Some(k) => k,
                    None => by_phone.clone().unwrap_or_default(),
                },
                (None, _) => by_phone.clone().unwrap_or_default(),
            };
            let mut person = match read(tx, &home)? {
                Some(Row::Person(p)) => p,
                _ => Contact::default(),
            };
            // A phone-only entry met its LID: it merges into the LID's.
            if let (Some(_), Some(Row::Person(alone))) = (&by_lid, &phone_row) {
                merge(&mut person, alone);
            }
            merge(&mut person, &sighting);
            write(tx, &home, &Row::Person(person))?;
            if let Some(k) = &by_phone
                && *k != home
            {
                let pointer = Row::MergedInto {
                    key: crate::store::ids::hex(&home),
                };
                write(tx, k, &pointer)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// One page of the directory: up to `limit` people after the opaque
/// cursor `after`, those matching `query` (a substring of the phone, LID
/// or push name, any case); answers them and the next cursor.
pub fn page(
    store: &Store,
    prefix: &[u8],
    query: Option<&str>,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<(Vec<Contact>, Option<Vec<u8>>), StoreError> {
    let query = query.map(str::to_lowercase);
    let mut found = Vec::new();
    let mut cursor = after.map(<[u8]>::to_vec);
    loop {
        let rows = store.contacts_page(prefix, cursor.as_deref(), 256)?;
        let Some((last, _)) = rows.last() else {
            return Ok((found, None));
        };
        let last = last.clone();
        for (k, bytes) in rows {
            let Ok(Row::Person(person)) = serde_json::from_slice::<Row>(&bytes) else {
                continue;
            };
            let matches = query.as_deref().is_none_or(|q| {
                [&person.phone, &person.lid, &person.push_name]
                    .iter()
                    .any(|f| f.as_deref().is_some_and(|v| v.to_lowercase().contains(q)))
            });
            if matches {
                found.push(person);
                if found.len() == limit {
                    return Ok((found, Some(k)));
                }
            }
        }
        cursor = Some(last);
    }
}
