//! The contacts directory of a session: every person it has seen (senders
//! of direct and group messages, group members it was told about, people in
//! the phone's address book when the phone syncs it) as ONE
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
    /// Their name in the phone's address book (full name, else first
    /// name), once the phone syncs it.
    #[serde(default)]
    pub name: Option<String>,
    /// Groups (JIDs) they were seen in.
    pub groups: Vec<String>,
    /// Milliseconds since the Unix epoch.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The operator's own id for this person (set by import).
    #[serde(default)]
    pub external_id: Option<String>,
    /// The operator's labels (set by import).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// A stored row: a person, or where a phone number's person moved to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// From the phone's address book: not a sighting of the person, so it
    /// moves neither first nor last seen of someone already seen.
    pub name: Option<String>,
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
            name: None,
        }
    }

    /// From the phone's address book: `name` for the person with `phone`
    /// digits and/or `lid` JID (empty when unknown), synced at `at_ms`.
    pub fn address_book(phone: &str, lid: &str, name: Option<&str>, at_ms: i64) -> Self {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Self {
            phone: some(phone),
            lid: some(lid),
            name: name.and_then(some),
            at_ms,
            ..Self::default()
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
    // The address book's word is its latest: a sighting carries a name only
    // when it comes from the book.
    if from.name.is_some() {
        into.name.clone_from(&from.name);
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
    if into.external_id.is_none() {
        into.external_id.clone_from(&from.external_id);
    }
    for label in &from.labels {
        if !into.labels.contains(label) {
            into.labels.push(label.clone());
        }
    }
}

/// How far a person's `last_seen_ms` may lag: a sighting that changes
/// nothing else writes nothing within this (a chatty contact costs the
/// store no write per message).
pub const LAST_SEEN_GRANULARITY_MS: i64 = 60_000;

/// What a sighting writes: the person at `home`, and at the phone's key a
/// pointer to `home` when that is elsewhere.
struct Plan {
    home: Vec<u8>,
    before: Option<Row>,
    person: Contact,
    pointer: Option<Vec<u8>>,
    /// The phone's row already points at `home`.
    pointer_in_place: bool,
}

impl Plan {
    /// Writing it would change nothing a reader sees but a last seen time
    /// within [`LAST_SEEN_GRANULARITY_MS`].
    fn changes_little(&self) -> bool {
        let Some(Row::Person(before)) = &self.before else {
            return false;
        };
        let mut after = self.person.clone();
        let lag = after.last_seen_ms - before.last_seen_ms;
        if (0..LAST_SEEN_GRANULARITY_MS).contains(&lag) {
            after.last_seen_ms = before.last_seen_ms;
        }
        after == *before && (self.pointer.is_none() || self.pointer_in_place)
    }
}

/// Plans sighting `seen` over the rows `read` gives.
fn plan<E>(
    prefix: &[u8],
    blinder: &Blinder,
    seen: &Seen,
    read: impl Fn(&[u8]) -> Result<Option<Row>, E>,
) -> Result<Plan, E> {
    let by_lid = seen.lid.as_deref().map(|l| key(prefix, blinder, "lid", l));
    let by_phone = seen
        .phone
        .as_deref()
        .map(|p| key(prefix, blinder, "phone", p));
    let from_book = seen.name.is_some();
    let sighting = Contact {
        phone: seen.phone.clone(),
        lid: seen.lid.clone(),
        push_name: seen.push_name.clone(),
        name: seen.name.clone(),
        groups: seen.group.iter().cloned().collect(),
        first_seen_ms: if from_book { 0 } else { seen.at_ms },
        last_seen_ms: if from_book { 0 } else { seen.at_ms },
        ..Contact::default()
    };
    let phone_row = match &by_phone {
        Some(k) => read(k)?,
        None => None,
    };
    // Where the person lives: the LID's entry when the LID is known; else
    // wherever the phone's row says.
    let home = match (&by_lid, &phone_row) {
        (Some(k), _) => k.clone(),
        (None, Some(Row::MergedInto { key })) => match crate::hex::unhex(key) {
            Some(k) => k,
            None => by_phone.clone().unwrap_or_default(),
        },
        (None, _) => by_phone.clone().unwrap_or_default(),
    };
    let before = read(&home)?;
    let mut person = match &before {
        Some(Row::Person(p)) => p.clone(),
        _ => Contact::default(),
    };
    // A phone-only entry met its LID: it merges into the LID's.
    if let (Some(_), Some(Row::Person(alone))) = (&by_lid, &phone_row) {
        merge(&mut person, alone);
    }
    merge(&mut person, &sighting);
    // Someone known only from the address book was "seen" when the phone
    // synced them.
    if person.first_seen_ms == 0 {
        person.first_seen_ms = seen.at_ms;
    }
    if person.last_seen_ms == 0 {
        person.last_seen_ms = seen.at_ms;
    }
    let pointer = by_phone.filter(|k| *k != home);
    let pointer_in_place = matches!(
        &phone_row,
        Some(Row::MergedInto { key }) if crate::hex::unhex(key).as_deref() == Some(home.as_slice())
    );
    Ok(Plan {
        home,
        before,
        person,
        pointer,
        pointer_in_place,
    })
}

/// Notes sightings in the directory under `prefix`, each in one
/// transaction (not flushed: the next group commit writes it). A sighting
/// that would change nothing but a last seen time within
/// [`LAST_SEEN_GRANULARITY_MS`] is not written.
pub fn note(store: &Store, prefix: &[u8], seen: &[Seen]) -> Result<(), StoreError> {
    let blinder = store.blinder();
    for seen in seen {
        if seen.phone.is_none() && seen.lid.is_none() {
            continue;
        }
        // A plain read first: most sightings are of someone known.
        let known = plan(prefix, blinder, seen, |k| {
            Ok::<_, StoreError>(
                store
                    .contacts_get(k)?
                    .and_then(|bytes| serde_json::from_slice::<Row>(&bytes).ok()),
            )
        })?;
        if known.changes_little() {
            continue;
        }
        store.contacts_update(|tx| {
            let plan = plan(prefix, blinder, seen, |k| read(tx, k))?;
            write(tx, &plan.home, &Row::Person(plan.person))?;
            if let Some(k) = &plan.pointer {
                let pointer = Row::MergedInto {
                    key: crate::hex::hex(&plan.home),
                };
                write(tx, k, &pointer)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// What an import sets on one person, found by phone or LID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotation {
    pub phone: Option<String>,
    pub lid: Option<String>,
    pub external_id: Option<String>,
    pub labels: Vec<String>,
}

/// Sets `external_id` and `labels` (replacing what was there: importing
/// the same rows twice changes nothing more) on the person `row` names;
/// false when the directory has no such person (nothing is created).
pub fn annotate(store: &Store, prefix: &[u8], row: &Annotation) -> Result<bool, StoreError> {
    let blinder = store.blinder();
    let by_lid = row.lid.as_deref().map(|l| key(prefix, blinder, "lid", l));
    let by_phone = row
        .phone
        .as_deref()
        .map(|p| key(prefix, blinder, "phone", p));
    let found = std::cell::Cell::new(false);
    store.contacts_update(|tx| {
        found.set(false);
        let mut home = None;
        for k in by_lid.iter().chain(by_phone.iter()) {
            match read(tx, k)? {
                Some(Row::Person(_)) => home = Some(k.clone()),
                Some(Row::MergedInto { key }) => home = crate::hex::unhex(&key),
                None => continue,
            }
            break;
        }
        let Some(home) = home else {
            return Ok(());
        };
        let Some(Row::Person(mut person)) = read(tx, &home)? else {
            return Ok(());
        };
        person.external_id.clone_from(&row.external_id);
        person.labels.clone_from(&row.labels);
        write(tx, &home, &Row::Person(person))?;
        found.set(true);
        Ok(())
    })?;
    Ok(found.get())
}

/// One page of the directory: up to `limit` people after the opaque
/// cursor `after`, those matching `query` (a substring of the phone, LID,
/// push name or address-book name, any case); answers them and the next
/// cursor.
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
        let rows = store.contacts_page(prefix, cursor.as_deref(), CHUNK)?;
        let Some((last, _)) = rows.last() else {
            return Ok((without_merged(found), None));
        };
        let last = last.clone();
        let end = rows.len() < CHUNK;
        for (k, bytes) in rows {
            let Ok(Row::Person(person)) = serde_json::from_slice::<Row>(&bytes) else {
                continue;
            };
            let matches = query.as_deref().is_none_or(|q| {
                [&person.phone, &person.lid, &person.push_name, &person.name]
                    .iter()
                    .any(|f| f.as_deref().is_some_and(|v| v.to_lowercase().contains(q)))
            });
            if matches {
                found.push(person);
                if found.len() == limit {
                    return Ok((without_merged(found), Some(k)));
                }
            }
        }
        if end {
            return Ok((without_merged(found), None));
        }
        cursor = Some(last);
    }
}

/// Rows read per store call. Each call is consistent in itself; between
/// two, a merge can move someone to a key the next call reads.
const CHUNK: usize = 256;

/// Drops a phone-only entry read before it merged into the LID entry also
/// read (two reads of a page straddled the merge): one person, one entry.
fn without_merged(mut found: Vec<Contact>) -> Vec<Contact> {
    let merged: std::collections::HashSet<String> = found
        .iter()
        .filter(|p| p.lid.is_some())
        .filter_map(|p| p.phone.clone())
        .collect();
    found.retain(|p| p.lid.is_some() || p.phone.as_ref().is_none_or(|ph| !merged.contains(ph)));
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MasterKey;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &MasterKey::from_bytes([7; 32])).unwrap();
        (dir, store)
    }

    fn all(store: &Store, prefix: &[u8]) -> Vec<Contact> {
        page(store, prefix, None, None, 100_000).unwrap().0
    }

    #[test]
    fn a_phone_and_a_lid_merge_once_named_together_and_never_split() {
        let (_dir, store) = store();
        let prefix = [1u8; 32];
        let phone = |p: &str, at| Seen::sender(p, "", "Ada", None, at);
        note(&store, &prefix, &[phone("15550001", 10)]).unwrap();
        note(
            &store,
            &prefix,
            &[Seen::sender("", "77@lid", "", Some("g@g.us"), 20)],
        )
        .unwrap();
        assert_eq!(all(&store, &prefix).len(), 2, "apart: two entries");
        note(
            &store,
            &prefix,
            &[Seen::sender("15550001", "77@lid", "Ada L", None, 30)],
        )
        .unwrap();
        let merged = all(&store, &prefix);
        assert_eq!(merged.len(), 1, "{merged:#?}");
        let ada = &merged[0];
        assert_eq!(ada.phone.as_deref(), Some("15550001"));
        assert_eq!(ada.lid.as_deref(), Some("77@lid"));
        assert_eq!(ada.push_name.as_deref(), Some("Ada L"));
        assert_eq!(ada.groups, vec!["g@g.us".to_string()]);
        assert_eq!((ada.first_seen_ms, ada.last_seen_ms), (10, 30));
        // Seen by phone alone later: the same entry, not a new one.
        let later = 30 + LAST_SEEN_GRANULARITY_MS;
        note(&store, &prefix, &[phone("15550001", later)]).unwrap();
        let again = all(&store, &prefix);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].last_seen_ms, later);
        // Seen again within the granularity: nothing is written, unless
        // something else changed (here the push name).
        note(&store, &prefix, &[phone("15550001", later + 1_000)]).unwrap();
        assert_eq!(all(&store, &prefix)[0].last_seen_ms, later);
        note(
            &store,
            &prefix,
            &[Seen::sender("15550001", "", "Ada B", None, later + 2_000)],
        )
        .unwrap();
        let renamed = all(&store, &prefix);
        assert_eq!(renamed[0].push_name.as_deref(), Some("Ada B"));
        assert_eq!(renamed[0].last_seen_ms, later + 2_000);
        // Another session's directory is apart.
        assert!(all(&store, &[2u8; 32]).is_empty());
    }

    #[test]
    fn a_page_read_across_a_merge_shows_the_person_once() {
        let person = |phone: Option<&str>, lid: Option<&str>| Contact {
            phone: phone.map(str::to_owned),
            lid: lid.map(str::to_owned),
            ..Contact::default()
        };
        // Read before the merge (phone only), then after it (the LID's
        // entry, which now has the phone too).
        let page = without_merged(vec![
            person(Some("15550001"), None),
            person(Some("15550002"), None),
            person(None, Some("78@lid")),
            person(Some("15550001"), Some("77@lid")),
        ]);
        assert_eq!(
            page,
            vec![
                person(Some("15550002"), None),
                person(None, Some("78@lid")),
                person(Some("15550001"), Some("77@lid")),
            ]
        );
    }

    #[test]
    fn address_book_names_merge_by_phone_or_lid_and_the_latest_wins() {
        let (_dir, store) = store();
        let prefix = [4u8; 32];
        note(
            &store,
            &prefix,
            &[Seen::sender("15550001", "", "Ada", None, 10)],
        )
        .unwrap();
        let book = |phone, lid, name, at| Seen::address_book(phone, lid, Some(name), at);
        note(
            &store,
            &prefix,
            &[
                book("15550001", "", "Ada Lovelace", 20),
                book("15550002", "88@lid", "Alan Turing", 20),
            ],
        )
        .unwrap();
        let people = all(&store, &prefix);
        assert_eq!(people.len(), 2, "{people:#?}");
        let ada = people
            .iter()
            .find(|p| p.phone.as_deref() == Some("15550001"))
            .unwrap();
        assert_eq!(ada.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(ada.push_name.as_deref(), Some("Ada"));
        // The book is not a sighting: Ada's times stay those of her message.
        assert_eq!((ada.first_seen_ms, ada.last_seen_ms), (10, 10));
        let alan = people
            .iter()
            .find(|p| p.lid.as_deref() == Some("88@lid"))
            .unwrap();
        assert_eq!(alan.phone.as_deref(), Some("15550002"));
        assert_eq!((alan.first_seen_ms, alan.last_seen_ms), (20, 20));
        // A message from Alan's LID alone, then a new name: one entry.
        note(
            &store,
            &prefix,
            &[Seen::sender("", "88@lid", "al", None, 30)],
        )
        .unwrap();
        note(
            &store,
            &prefix,
            &[book("15550002", "", "Alan M. Turing", 40)],
        )
        .unwrap();
        let people = all(&store, &prefix);
        assert_eq!(people.len(), 2, "{people:#?}");
        let alan = people
            .iter()
            .find(|p| p.lid.as_deref() == Some("88@lid"))
            .unwrap();
        assert_eq!(alan.name.as_deref(), Some("Alan M. Turing"));
        assert_eq!(alan.push_name.as_deref(), Some("al"));
        let found = page(&store, &prefix, Some("lovelace"), None, 10).unwrap().0;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].phone.as_deref(), Some("15550001"));
    }

    #[test]
    fn an_import_of_1000_rows_with_3_unknown_updates_997_and_is_idempotent() {
        let (_dir, store) = store();
        let prefix = [3u8; 32];
        let seen: Vec<Seen> = (0..997)
            .map(|i| {
                let lid = if i % 2 == 0 {
                    format!("{i}@lid")
                } else {
                    String::new()
                };
                Seen::sender(&format!("1555{i:07}"), &lid, "", None, 1)
            })
            .collect();
        note(&store, &prefix, &seen).unwrap();
        let rows: Vec<Annotation> = (0..1000)
            .map(|i| Annotation {
                // Even ones by LID, odd ones by phone; 997..1000 unknown.
                phone: (i % 2 == 1).then(|| format!("1555{i:07}")),
                lid: (i % 2 == 0).then(|| format!("{i}@lid")),
                external_id: Some(format!("crm-{i}")),
                labels: vec!["vip".into()],
            })
            .collect();
        for _ in 0..2 {
            let matched: Vec<bool> = rows
                .iter()
                .map(|r| annotate(&store, &prefix, r).unwrap())
                .collect();
            assert_eq!(matched.iter().filter(|m| **m).count(), 997);
            let missing: Vec<usize> = (0..1000).filter(|i| !matched[*i]).collect();
            assert_eq!(missing, vec![997, 998, 999]);
        }
        let people = all(&store, &prefix);
        assert_eq!(people.len(), 997, "an import creates nobody");
        assert!(people.iter().all(|p| p.labels == ["vip"]));
        let p5 = people
            .iter()
            .find(|p| p.phone.as_deref() == Some("15550000005"))
            .unwrap();
        assert_eq!(p5.external_id.as_deref(), Some("crm-5"));
    }
}
