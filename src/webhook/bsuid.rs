//! Business-scoped user ids (BSUIDs) for the `cloud_api` format.
//!
//! Meta gives every WhatsApp user one id per business (`user_id` in a
//! webhook's `contacts`, `from_user_id` on its messages, `recipient` when
//! sending), formatted as a two-letter country code, a dot and digits
//! (`US.13491208655302741918`); Cloud API libraries require it (pywa 4
//! builds its `User` from it). whatsd has no Meta to ask, so it makes one
//! per (session incarnation, contact) that:
//!
//! - does not reveal the contact: the contact's canonical id (its phone
//!   number when whatsd knows it, else its LID) is enciphered with a
//!   pseudo-random permutation keyed by the store's index key, the session
//!   id and its incarnation (HMAC-SHA256 under
//!   `blind("bsuid", session NUL incarnation)`, four Feistel rounds over one
//!   128-bit block);
//! - never changes across restarts, backups and key rotations (the index
//!   key does not), and differs between sessions, including a session id
//!   deleted and created again (perhaps by another tenant): the new
//!   session can neither read back nor reproduce the old one's ids;
//! - is read back by whatsd alone, so the Graph send endpoint accepts it
//!   as `recipient`, as Meta does.
//!
//! Written `ZZ.` and 39 digits: `ZZ` is the ISO 3166 code for an unknown
//! region (whatsd does not know the contact's country).
//!
//! A contact whatsd first knows only by LID gets a LID-derived id; once
//! WhatsApp tells whatsd its phone number, the phone-derived id takes over
//! (Meta, too, gives a new BSUID when a user's number changes).

use ring::hmac;

use crate::store::ids::Blinder;

/// The prefix of every id whatsd makes.
pub const COUNTRY: &str = "ZZ";
/// Digits after the prefix: a 128-bit number, zero-padded.
const DIGITS: usize = 39;
const ROUNDS: u8 = 4;

const PHONE: u8 = 1;
const LID: u8 = 2;

/// Who a BSUID stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contact {
    /// A phone number: digits, country code first.
    Phone(String),
    /// The user part of a LID (`<digits>@lid`).
    Lid(String),
}

impl Contact {
    /// The contact a message sender is, from what whatsd knows of it:
    /// the phone when known, else the LID, else the JID's own kind.
    pub fn of_sender(phone: &str, lid: &str, jid: &str) -> Option<Self> {
        if !phone.is_empty() {
            return Some(Self::Phone(phone.to_string()));
        }
        if let Some(user) = lid.strip_suffix("@lid") {
            return Some(Self::Lid(user.to_string()));
        }
        let (user, server) = jid.split_once('@')?;
        let user = user.split(':').next().unwrap_or(user);
        match server {
            "lid" => Some(Self::Lid(user.to_string())),
            "s.whatsapp.net" | "c.us" => Some(Self::Phone(user.to_string())),
            _ => None,
        }
    }

    /// What the session's send path takes as `to`.
    pub fn address(&self) -> String {
        match self {
            Self::Phone(digits) => digits.clone(),
            Self::Lid(user) => format!("{user}@lid"),
        }
    }

    /// The plain block: kind, digit count, the number, six zero bytes.
    fn block(&self) -> Option<[u8; 16]> {
        let (kind, digits) = match self {
            Self::Phone(d) => (PHONE, d),
            Self::Lid(d) => (LID, d),
        };
        if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let value: u64 = digits.parse().ok()?;
        let mut block = [0u8; 16];
        block[0] = kind;
        block[1] = u8::try_from(digits.len()).ok()?;
        block[2..10].copy_from_slice(&value.to_be_bytes());
        Some(block)
    }

    fn from_block(block: &[u8; 16]) -> Option<Self> {
        if block[10..].iter().any(|b| *b != 0) {
            return None;
        }
        let len = usize::from(block[1]);
        if !(1..=19).contains(&len) {
            return None;
        }
        let value = u64::from_be_bytes(block[2..10].try_into().ok()?);
        let digits = format!("{value:0len$}");
        if digits.len() != len {
            return None;
        }
        match block[0] {
            PHONE => Some(Self::Phone(digits)),
            LID => Some(Self::Lid(digits)),
            _ => None,
        }
    }
}

/// Session ids cannot contain NUL, so (session, incarnation) pairs map to
/// distinct inputs.
fn session_key(blinder: &Blinder, session: &str, incarnation: &str) -> hmac::Key {
    let scope = format!("{session}\0{incarnation}");
    hmac::Key::new(
        hmac::HMAC_SHA256,
        &blinder.blind(b"bsuid", scope.as_bytes()),
    )
}

fn round(key: &hmac::Key, i: u8, half: &[u8; 8]) -> [u8; 8] {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(&[i]);
    ctx.update(half);
    let tag = ctx.sign();
    let mut out = [0u8; 8];
    out.copy_from_slice(&tag.as_ref()[..8]);
    out
}

fn xor(a: &[u8; 8], b: &[u8; 8]) -> [u8; 8] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn split(block: &[u8; 16]) -> ([u8; 8], [u8; 8]) {
    let mut l = [0u8; 8];
    let mut r = [0u8; 8];
    l.copy_from_slice(&block[..8]);
    r.copy_from_slice(&block[8..]);
    (l, r)
}

fn join(l: &[u8; 8], r: &[u8; 8]) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..8].copy_from_slice(l);
    block[8..].copy_from_slice(r);
    block
}

/// The BSUID of `contact` in this incarnation of `session`; `None` when its
/// id is not a number (never for phone numbers and LIDs).
pub fn user_id(
    blinder: &Blinder,
    session: &str,
    incarnation: &str,
    contact: &Contact,
) -> Option<String> {
    let key = session_key(blinder, session, incarnation);
    let (mut l, mut r) = split(&contact.block()?);
    for i in 0..ROUNDS {
        (l, r) = (r, xor(&l, &round(&key, i, &r)));
    }
    let n = u128::from_be_bytes(join(&l, &r));
    Some(format!("{COUNTRY}.{n:0DIGITS$}"))
}

/// The contact behind a BSUID this incarnation of `session` gave out;
/// `None` for anything else (another session's, an earlier incarnation's,
/// Meta's, malformed).
pub fn contact(
    blinder: &Blinder,
    session: &str,
    incarnation: &str,
    user_id: &str,
) -> Option<Contact> {
    let digits = user_id.strip_prefix(COUNTRY)?.strip_prefix('.')?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u128 = digits.parse().ok()?;
    let key = session_key(blinder, session, incarnation);
    let (mut l, mut r) = split(&n.to_be_bytes());
    for i in (0..ROUNDS).rev() {
        (l, r) = (xor(&r, &round(&key, i, &l)), l);
    }
    Contact::from_block(&join(&l, &r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blinder() -> Blinder {
        Blinder::from_bytes(&[9; 32])
    }

    #[test]
    fn ids_are_stable_per_session_and_read_back() {
        let b = blinder();
        let ada = Contact::Phone("15550001111".into());
        let id = user_id(&b, "s1", "i1", &ada).unwrap();
        assert_eq!(id.len(), 3 + DIGITS);
        assert!(id.starts_with("ZZ."), "{id}");
        assert!(!id.contains("15550001111"));
        assert_eq!(user_id(&b, "s1", "i1", &ada).unwrap(), id, "stable");
        assert_eq!(
            user_id(&Blinder::from_bytes(&[9; 32]), "s1", "i1", &ada).unwrap(),
            id,
            "the same index key (a restart) gives the same id"
        );
        assert_ne!(user_id(&b, "s2", "i1", &ada).unwrap(), id, "per session");
        assert_ne!(
            user_id(&Blinder::from_bytes(&[8; 32]), "s1", "i1", &ada).unwrap(),
            id,
            "per store"
        );
        assert_eq!(contact(&b, "s1", "i1", &id), Some(ada.clone()));
        assert_eq!(contact(&b, "s2", "i1", &id), None, "not another session's");
        let again = user_id(&b, "s1", "i2", &ada).unwrap();
        assert_ne!(again, id, "the id deleted and created again");
        assert_eq!(
            contact(&b, "s1", "i2", &id),
            None,
            "not an earlier incarnation's"
        );
        assert_eq!(contact(&b, "s1", "i2", &again), Some(ada.clone()));
        let lid = Contact::Lid("100000011111".into());
        let lid_id = user_id(&b, "s1", "i1", &lid).unwrap();
        assert_ne!(lid_id, id);
        assert_eq!(contact(&b, "s1", "i1", &lid_id), Some(lid));
        assert_eq!(contact(&b, "s1", "i1", "US.13491208655302741918"), None);
        assert_eq!(contact(&b, "s1", "i1", "ZZ.123"), None);
        assert_eq!(
            contact(&b, "s1", "i1", &format!("ZZ.{}", "9".repeat(39))),
            None
        );
    }

    #[test]
    fn leading_zeros_survive() {
        let b = blinder();
        let c = Contact::Lid("0012345".into());
        assert_eq!(
            contact(&b, "s", "i1", &user_id(&b, "s", "i1", &c).unwrap()),
            Some(c)
        );
    }

    #[test]
    fn senders_map_to_their_canonical_id() {
        let phone = Contact::of_sender("15550001111", "1000@lid", "1000@lid");
        assert_eq!(phone, Some(Contact::Phone("15550001111".into())));
        let lid = Contact::of_sender("", "1000@lid", "1000@lid");
        assert_eq!(lid, Some(Contact::Lid("1000".into())));
        let pn = Contact::of_sender("", "", "15550001111:3@s.whatsapp.net");
        assert_eq!(pn, Some(Contact::Phone("15550001111".into())));
        assert_eq!(Contact::of_sender("", "", "x@g.us"), None);
        assert_eq!(Contact::Lid("1000".into()).address(), "1000@lid");
        assert_eq!(Contact::Phone("1555".into()).address(), "1555");
    }
}
