//! Fake contacts: Signal peers of the linked device, and the message stanzas
//! they send to it.
//!
//! A [`Contact`] is a WhatsApp user on device 0 with in-memory libsignal
//! stores. Its key material is a pure function of its phone number, so a
//! restarted fake server presents the same identity, signed prekey and
//! one-time prekeys. Session state is not persisted: after a restart the
//! client's existing sessions with a contact no longer decrypt.
//!
//! The linked device's own Signal material arrives as a [`DeviceBundle`]: from
//! the registration payload, then from the prekey-upload and `<rotate>` IQs.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use wacore::iq::prekeys::{OneTimePreKeyNode, SignedPreKeyNode};
use wacore::messages::MessageUtils;
use wacore::protocol::ProtocolNode as _;
use wacore_binary::builder::NodeBuilder;
use wacore_binary::{Jid, Node, NodeContent};
use wacore_libsignal::protocol::{
    CiphertextMessage, Direction, GenericSignedPreKey as _, IdentityChange, IdentityKey,
    IdentityKeyPair, IdentityKeyStore, KeyPair, PreKeyBundle, PreKeyId, PreKeyRecord,
    PreKeySignalMessage, PreKeyStore, PrivateKey, ProtocolAddress, SenderKeyDistributionMessage,
    SenderKeyName, SenderKeyRecord, SenderKeyStore, SessionRecord, SessionStore, SignalMessage,
    SignalProtocolError, SignedPreKeyId, SignedPreKeyRecord, SignedPreKeyStore, Timestamp,
    UsePQRatchet, create_sender_key_distribution_message, group_decrypt, group_encrypt,
    message_decrypt, message_encrypt, process_prekey_bundle,
    process_sender_key_distribution_message,
};
use waproto::whatsapp as wa;

use crate::phone::{AccountKey, derive_secret, raw_public};

/// The chat a status post lives in; also the sender-key group id.
pub const STATUS_BROADCAST: &str = "status@broadcast";
const USER_SERVER: &str = "s.whatsapp.net";
/// Signal key type byte for Curve25519 (`<type>` in key bundles).
const KEY_TYPE_DJB: u8 = 5;
/// Prekey ids travel as 3 bytes.
const MAX_PREKEY_ID: u32 = 0x00FF_FFFF;
/// The id of every contact's (never rotated) signed prekey.
const CONTACT_SIGNED_PREKEY_ID: u32 = 1;
/// The padding version the client uses (`<enc v="2">`).
const PADDING_VERSION: u8 = 2;

type SignalResult<T> = Result<T, SignalProtocolError>;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("malformed <{element}>: {detail}")]
    Malformed {
        element: &'static str,
        detail: String,
    },
    #[error("signal protocol: {0}")]
    Signal(#[from] SignalProtocolError),
    #[error("unsupported enc type {0:?} (expected pkmsg or msg)")]
    EncType(String),
    #[error("decrypted plaintext is not a message: {0}")]
    Plaintext(String),
}

fn malformed(element: &'static str, detail: impl Into<String>) -> PeerError {
    PeerError::Malformed {
        element,
        detail: detail.into(),
    }
}

// ---------------------------------------------------------------------------
// The linked device's published key material
// ---------------------------------------------------------------------------

/// A linked device's Signal bundle, as the server has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceBundle {
    pub registration_id: u32,
    pub identity: [u8; 32],
    pub signed_prekey_id: u32,
    pub signed_prekey: [u8; 32],
    /// 64-byte XEdDSA signature by `identity` over the 33-byte serialized prekey.
    pub signed_prekey_signature: Vec<u8>,
    /// One-time prekeys not yet handed out, oldest first.
    pub prekeys: Vec<(u32, [u8; 32])>,
}

/// A signed prekey as carried by `<skey>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPreKey {
    pub id: u32,
    pub public: [u8; 32],
    pub signature: Vec<u8>,
}

/// What an `<iq xmlns="encrypt" type="set">` from the client changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleUpdate {
    /// The prekey upload: registration, identity, signed prekey and a batch
    /// of one-time prekeys.
    Upload(DeviceBundle),
    /// `<rotate>`: a new signed prekey only.
    Rotate(SignedPreKey),
}

impl DeviceBundle {
    /// Hands out the oldest unused one-time prekey; each is handed out once.
    pub fn take_one_time_prekey(&mut self) -> Option<(u32, [u8; 32])> {
        if self.prekeys.is_empty() {
            None
        } else {
            Some(self.prekeys.remove(0))
        }
    }

    /// Folds an upload or rotation into the stored bundle. An upload under a
    /// different identity (the device was re-registered) replaces everything;
    /// otherwise its new one-time prekeys are appended.
    pub fn apply(&mut self, update: BundleUpdate) {
        match update {
            BundleUpdate::Upload(upload) if upload.identity != self.identity => *self = upload,
            BundleUpdate::Upload(upload) => {
                self.registration_id = upload.registration_id;
                self.signed_prekey_id = upload.signed_prekey_id;
                self.signed_prekey = upload.signed_prekey;
                self.signed_prekey_signature = upload.signed_prekey_signature;
                let known: HashSet<u32> = self.prekeys.iter().map(|(id, _)| *id).collect();
                self.prekeys.extend(
                    upload
                        .prekeys
                        .into_iter()
                        .filter(|(id, _)| !known.contains(id)),
                );
            }
            BundleUpdate::Rotate(skey) => {
                self.signed_prekey_id = skey.id;
                self.signed_prekey = skey.public;
                self.signed_prekey_signature = skey.signature;
            }
        }
    }

    /// Whether the signed prekey carries a valid signature by the identity.
    pub fn signed_prekey_verifies(&self) -> bool {
        let (Ok(identity), Ok(prekey)) = (
            wacore_libsignal::protocol::PublicKey::from_djb_public_key_bytes(&self.identity),
            wacore_libsignal::protocol::PublicKey::from_djb_public_key_bytes(&self.signed_prekey),
        ) else {
            return false;
        };
        identity.verify_signature(&prekey.serialize(), &self.signed_prekey_signature)
    }

    fn to_prekey_bundle(
        &self,
        device_id: u32,
        one_time: Option<(u32, [u8; 32])>,
    ) -> SignalResult<PreKeyBundle> {
        let djb = wacore_libsignal::protocol::PublicKey::from_djb_public_key_bytes;
        let one_time = match one_time {
            Some((id, key)) => Some((PreKeyId::from(id), djb(&key)?)),
            None => None,
        };
        PreKeyBundle::new(
            self.registration_id,
            device_id.into(),
            one_time,
            SignedPreKeyId::from(self.signed_prekey_id),
            djb(&self.signed_prekey)?,
            self.signed_prekey_signature.clone(),
            IdentityKey::new(djb(&self.identity)?),
        )
    }
}

/// Parses the client's prekey upload (`<registration><type><identity><list><skey>`,
/// `wacore-0.7.0/src/iq/prekeys.rs:300-323`) or signed-prekey rotation
/// (`<rotate><skey>`, `:500-545`). `node` is the whole `<iq>`.
pub fn bundle_from_upload_iq(node: &Node) -> Result<BundleUpdate, PeerError> {
    if node.tag != "iq" {
        return Err(malformed("iq", format!("got <{}>", node.tag)));
    }
    if let Some(rotate) = node.get_optional_child("rotate") {
        let skey = rotate
            .get_optional_child("skey")
            .ok_or_else(|| malformed("rotate", "no <skey>"))?;
        return Ok(BundleUpdate::Rotate(parse_skey(skey)?));
    }
    let registration_id = u32::from_be_bytes(fixed_child::<4>(node, "registration")?);
    let identity = fixed_child::<32>(node, "identity")?;
    let skey = parse_skey(
        node.get_optional_child("skey")
            .ok_or_else(|| malformed("iq", "no <skey>"))?,
    )?;
    let mut prekeys = Vec::new();
    if let Some(list) = node.get_optional_child("list") {
        for key in list.get_children_by_tag("key") {
            let key = OneTimePreKeyNode::try_from_node(key)
                .map_err(|e| malformed("key", e.to_string()))?;
            prekeys.push((key.id, to_array::<32>("key", &key.public_bytes)?));
        }
    }
    Ok(BundleUpdate::Upload(DeviceBundle {
        registration_id,
        identity,
        signed_prekey_id: skey.id,
        signed_prekey: skey.public,
        signed_prekey_signature: skey.signature,
        prekeys,
    }))
}

/// The half of the bundle a registering client sends in its ClientPayload
/// (`wacore-0.7.0/src/store/device.rs:552-560`); it has no one-time prekeys.
pub fn bundle_from_registration(
    data: &wa::client_payload::DevicePairingRegistrationData,
) -> Result<DeviceBundle, PeerError> {
    const ELEMENT: &str = "device_pairing_data";
    let field = |name: &'static str, value: &Option<Vec<u8>>| -> Result<Vec<u8>, PeerError> {
        value
            .clone()
            .ok_or_else(|| malformed(ELEMENT, format!("missing {name}")))
    };
    if let Some(key_type) = &data.e_keytype
        && key_type.as_slice() != [KEY_TYPE_DJB]
    {
        return Err(malformed(ELEMENT, format!("key type {key_type:?}")));
    }
    let registration_id =
        u32::from_be_bytes(to_array::<4>(ELEMENT, &field("e_regid", &data.e_regid)?)?);
    let skey_id = field("e_skey_id", &data.e_skey_id)?;
    let signature = field("e_skey_sig", &data.e_skey_sig)?;
    if signature.len() != 64 {
        return Err(malformed(
            ELEMENT,
            "signed prekey signature is not 64 bytes",
        ));
    }
    Ok(DeviceBundle {
        registration_id,
        identity: to_array::<32>(ELEMENT, &field("e_ident", &data.e_ident)?)?,
        signed_prekey_id: three_byte_id(ELEMENT, &skey_id)?,
        signed_prekey: to_array::<32>(ELEMENT, &field("e_skey_val", &data.e_skey_val)?)?,
        signed_prekey_signature: signature,
        prekeys: Vec::new(),
    })
}

fn parse_skey(node: &Node) -> Result<SignedPreKey, PeerError> {
    let skey =
        SignedPreKeyNode::try_from_node(node).map_err(|e| malformed("skey", e.to_string()))?;
    Ok(SignedPreKey {
        id: skey.id,
        public: to_array::<32>("skey", &skey.public_bytes)?,
        signature: skey.signature,
    })
}

fn content_bytes(node: &Node) -> Option<&[u8]> {
    match &node.content {
        Some(NodeContent::Bytes(bytes)) => Some(bytes),
        Some(NodeContent::String(text)) => Some(text.as_bytes()),
        _ => None,
    }
}

fn fixed_child<const N: usize>(node: &Node, tag: &'static str) -> Result<[u8; N], PeerError> {
    let child = node
        .get_optional_child(tag)
        .ok_or_else(|| malformed(tag, "missing"))?;
    to_array::<N>(
        tag,
        content_bytes(child).ok_or_else(|| malformed(tag, "no byte content"))?,
    )
}

fn to_array<const N: usize>(element: &'static str, bytes: &[u8]) -> Result<[u8; N], PeerError> {
    bytes
        .try_into()
        .map_err(|_| malformed(element, format!("{} bytes, expected {N}", bytes.len())))
}

fn three_byte_id(element: &'static str, bytes: &[u8]) -> Result<u32, PeerError> {
    let [a, b, c] = to_array::<3>(element, bytes)?;
    Ok(u32::from_be_bytes([0, a, b, c]))
}

// ---------------------------------------------------------------------------
// In-memory libsignal stores
// ---------------------------------------------------------------------------

struct IdentityStore {
    pair: IdentityKeyPair,
    registration_id: u32,
    known: HashMap<ProtocolAddress, IdentityKey>,
}

#[async_trait]
impl IdentityKeyStore for IdentityStore {
    async fn get_identity_key_pair(&self) -> SignalResult<IdentityKeyPair> {
        Ok(self.pair.clone())
    }

    async fn get_local_registration_id(&self) -> SignalResult<u32> {
        Ok(self.registration_id)
    }

    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> SignalResult<IdentityChange> {
        let previous = self.known.insert(address.clone(), *identity);
        Ok(IdentityChange::from_changed(
            previous.is_some_and(|p| p != *identity),
        ))
    }

    /// A fake peer trusts whatever the device presents; the tests are about
    /// the client, not about the fake's trust decisions.
    async fn is_trusted_identity(
        &self,
        _address: &ProtocolAddress,
        _identity: &IdentityKey,
        _direction: Direction,
    ) -> SignalResult<bool> {
        Ok(true)
    }

    async fn get_identity(&self, address: &ProtocolAddress) -> SignalResult<Option<IdentityKey>> {
        Ok(self.known.get(address).copied())
    }
}

/// One-time prekeys derived from the phone number on demand, so a prekey
/// handed out before a restart still opens the pkmsg that uses it.
struct DerivedPreKeyStore {
    phone: String,
    used: HashSet<u32>,
}

#[async_trait]
impl PreKeyStore for DerivedPreKeyStore {
    async fn get_pre_key(&self, prekey_id: PreKeyId) -> SignalResult<PreKeyRecord> {
        let id = u32::from(prekey_id);
        if id == 0 || id > MAX_PREKEY_ID || self.used.contains(&id) {
            return Err(SignalProtocolError::InvalidPreKeyId);
        }
        Ok(PreKeyRecord::new(
            prekey_id,
            &derived_key_pair("one-time-prekey", &self.phone, id),
        ))
    }

    async fn save_pre_key(&mut self, _id: PreKeyId, _record: &PreKeyRecord) -> SignalResult<()> {
        Ok(())
    }

    async fn remove_pre_key(&mut self, prekey_id: PreKeyId) -> SignalResult<()> {
        self.used.insert(prekey_id.into());
        Ok(())
    }
}

struct SignedStore(HashMap<u32, SignedPreKeyRecord>);

#[async_trait]
impl SignedPreKeyStore for SignedStore {
    async fn get_signed_pre_key(&self, id: SignedPreKeyId) -> SignalResult<SignedPreKeyRecord> {
        self.0
            .get(&u32::from(id))
            .cloned()
            .ok_or(SignalProtocolError::InvalidSignedPreKeyId)
    }

    async fn save_signed_pre_key(
        &mut self,
        id: SignedPreKeyId,
        record: &SignedPreKeyRecord,
    ) -> SignalResult<()> {
        self.0.insert(id.into(), record.clone());
        Ok(())
    }
}

#[derive(Default)]
struct SessionMap(HashMap<ProtocolAddress, SessionRecord>);

#[async_trait]
impl SessionStore for SessionMap {
    async fn load_session(&self, address: &ProtocolAddress) -> SignalResult<Option<SessionRecord>> {
        Ok(self.0.get(address).cloned())
    }

    async fn has_session(&self, address: &ProtocolAddress) -> SignalResult<bool> {
        Ok(self.0.contains_key(address))
    }

    async fn store_session(
        &mut self,
        address: &ProtocolAddress,
        record: SessionRecord,
    ) -> SignalResult<()> {
        self.0.insert(address.clone(), record);
        Ok(())
    }
}

#[derive(Default)]
struct SenderKeyMap(HashMap<String, SenderKeyRecord>);

#[async_trait]
impl SenderKeyStore for SenderKeyMap {
    async fn store_sender_key(
        &mut self,
        name: &SenderKeyName,
        record: SenderKeyRecord,
    ) -> SignalResult<()> {
        self.0.insert(name.cache_key().to_owned(), record);
        Ok(())
    }

    async fn load_sender_key(&self, name: &SenderKeyName) -> SignalResult<Option<SenderKeyRecord>> {
        Ok(self.0.get(name.cache_key()).cloned())
    }
}

fn derived_key_pair(label: &str, phone: &str, index: u32) -> KeyPair {
    let secret = derive_secret(label, phone, index);
    let private = PrivateKey::deserialize(&secret).expect("32 bytes are a valid X25519 key");
    KeyPair::try_from(private).expect("an X25519 private key has a public key")
}

fn rng() -> StdRng {
    rand::make_rng::<StdRng>()
}

/// `("15551234567", 7)` (or `("15551234567@s.whatsapp.net", 7)`) → Signal address.
fn address((phone, device): (&str, u32)) -> ProtocolAddress {
    let user = phone.split(['@', ':']).next().unwrap_or(phone);
    ProtocolAddress::new(user, device.into())
}

// ---------------------------------------------------------------------------
// Contact
// ---------------------------------------------------------------------------

/// A fake WhatsApp user (device 0) that the linked device talks Signal with.
pub struct Contact {
    phone: String,
    registration_id: u32,
    signed_prekey: SignedPreKey,
    next_prekey_id: u32,
    identities: IdentityStore,
    prekeys: DerivedPreKeyStore,
    signed_prekeys: SignedStore,
    sessions: SessionMap,
    sender_keys: SenderKeyMap,
}

impl Contact {
    /// A contact whose whole key material is derived from `phone` (digits,
    /// no `+`, e.g. `"15550001111"`).
    pub fn new(phone: &str) -> Self {
        let identity = derived_key_pair("contact-identity", phone, 0);
        Self::with_identity(phone, identity)
    }

    /// The account's own primary phone (device 0) as a Signal peer: its
    /// identity is the account key that signed the device in pair-success.
    pub fn own_phone(phone: &str, account: &AccountKey) -> Self {
        Self::with_identity(phone, account.key_pair().clone())
    }

    fn with_identity(phone: &str, identity: KeyPair) -> Self {
        let identity =
            IdentityKeyPair::new(IdentityKey::new(identity.public_key), identity.private_key);
        let seed = derive_secret("registration-id", phone, 0);
        // Signal registration ids are 14-bit and non-zero.
        let registration_id = u32::from_be_bytes([0, 0, seed[0], seed[1]]) % 0x3FFE + 1;

        let spk = derived_key_pair("signed-prekey", phone, CONTACT_SIGNED_PREKEY_ID);
        // A seeded nonce keeps the signature, too, identical across restarts.
        let mut nonce_rng = StdRng::from_seed(derive_secret("spk-signature", phone, 0));
        let signature = identity
            .private_key()
            .calculate_signature(&spk.public_key.serialize(), &mut nonce_rng)
            .expect("XEdDSA signing with an X25519 key cannot fail");
        let record = SignedPreKeyRecord::new(
            CONTACT_SIGNED_PREKEY_ID.into(),
            Timestamp::from_epoch_millis(0),
            &spk,
            &signature,
        );

        Self {
            phone: phone.to_owned(),
            registration_id,
            signed_prekey: SignedPreKey {
                id: CONTACT_SIGNED_PREKEY_ID,
                public: raw_public(&spk.public_key),
                signature: signature.to_vec(),
            },
            next_prekey_id: 1,
            identities: IdentityStore {
                pair: identity,
                registration_id,
                known: HashMap::new(),
            },
            prekeys: DerivedPreKeyStore {
                phone: phone.to_owned(),
                used: HashSet::new(),
            },
            signed_prekeys: SignedStore(HashMap::from([(CONTACT_SIGNED_PREKEY_ID, record)])),
            sessions: SessionMap::default(),
            sender_keys: SenderKeyMap::default(),
        }
    }

    pub fn phone(&self) -> &str {
        &self.phone
    }

    /// `<phone>@s.whatsapp.net`
    pub fn jid(&self) -> String {
        format!("{}@{USER_SERVER}", self.phone)
    }

    pub fn identity_pub(&self) -> [u8; 32] {
        raw_public(self.identities.pair.public_key())
    }

    pub fn registration_id(&self) -> u32 {
        self.registration_id
    }

    /// Drops the session and remembered identity for one device, e.g. after
    /// it was unlinked. [`Contact::encrypt_for`] does this by itself when a
    /// bundle shows up under a new identity.
    pub fn forget_device(&mut self, device: (&str, u32)) {
        let address = address(device);
        self.sessions.0.remove(&address);
        self.identities.known.remove(&address);
    }

    /// Whether this contact already holds a session with the device.
    pub fn has_session(&self, device: (&str, u32)) -> bool {
        self.sessions.0.contains_key(&address(device))
    }

    /// Encrypts `message` for one device of the linked account. Without a
    /// session, builds one from `bundle` (consuming one of its one-time
    /// prekeys). Returns the `<enc type>` and the ciphertext.
    ///
    /// `bundle` must be that device's current bundle: when its identity
    /// differs from the one this contact last saw at that address, the device
    /// is taken as re-registered and the old session is dropped.
    ///
    /// Signal keeps sending `pkmsg` until the device has answered once:
    /// only after [`Contact::decrypt_from`] has opened a message *from* the
    /// device do later messages become `msg`.
    pub async fn encrypt_for(
        &mut self,
        device: (&str, u32),
        bundle: &mut DeviceBundle,
        message: &wa::Message,
    ) -> Result<(&'static str, Vec<u8>), PeerError> {
        let padded = MessageUtils::encode_and_pad(message);
        self.encrypt_padded(device, bundle, &padded).await
    }

    async fn encrypt_padded(
        &mut self,
        device: (&str, u32),
        bundle: &mut DeviceBundle,
        padded: &[u8],
    ) -> Result<(&'static str, Vec<u8>), PeerError> {
        let address = address(device);
        let known = self
            .identities
            .known
            .get(&address)
            .map(|k| raw_public(k.public_key()));
        if known.is_some_and(|identity| identity != bundle.identity) {
            // Re-registered under the same device id: the old session is dead.
            self.forget_device(device);
        }
        if !self.sessions.0.contains_key(&address) {
            let one_time = bundle.take_one_time_prekey();
            let prekey_bundle = bundle.to_prekey_bundle(device.1, one_time)?;
            process_prekey_bundle(
                &address,
                &mut self.sessions,
                &mut self.identities,
                &prekey_bundle,
                &mut rng(),
                UsePQRatchet::No,
            )
            .await?;
        }
        let ciphertext =
            message_encrypt(padded, &address, &mut self.sessions, &mut self.identities).await?;
        Ok(match ciphertext {
            CiphertextMessage::PreKeySignalMessage(m) => ("pkmsg", m.serialized().to_vec()),
            CiphertextMessage::SignalMessage(m) => ("msg", m.serialized().to_vec()),
            other => {
                return Err(PeerError::EncType(format!("{:?}", other.message_type())));
            }
        })
    }

    /// Opens what a device of the linked account sent this contact
    /// (`<enc type="pkmsg|msg" v="2">`). For the own phone the result is
    /// usually a `device_sent_message` wrapper
    /// (see `wacore::messages::unwrap_device_sent`).
    pub async fn decrypt_from(
        &mut self,
        device: (&str, u32),
        enc_type: &str,
        ciphertext: &[u8],
    ) -> Result<wa::Message, PeerError> {
        let padded = self.decrypt_padded(device, enc_type, ciphertext).await?;
        wacore::messages::decode_plaintext(&padded, PADDING_VERSION)
            .map_err(|e| PeerError::Plaintext(e.to_string()))
    }

    /// Takes the sender key a linked device distributed for `group` in
    /// `message` (the payload of its `pkmsg|msg` to this contact); false
    /// when the message carries none.
    pub async fn accept_sender_key(
        &mut self,
        group: &str,
        device: (&str, u32),
        message: &wa::Message,
    ) -> Result<bool, PeerError> {
        let Some(bytes) = message
            .sender_key_distribution_message
            .as_option()
            .and_then(|d| d.axolotl_sender_key_distribution_message.as_deref())
        else {
            return Ok(false);
        };
        let distribution = SenderKeyDistributionMessage::try_from(bytes)?;
        let name = SenderKeyName::from_parts(group, &address(device).to_string());
        process_sender_key_distribution_message(&name, &distribution, &mut self.sender_keys)
            .await?;
        Ok(true)
    }

    /// Decrypts a linked device's `skmsg` to `group` with the sender key
    /// it distributed earlier ([`Contact::accept_sender_key`]).
    pub async fn decrypt_group(
        &mut self,
        group: &str,
        device: (&str, u32),
        ciphertext: &[u8],
    ) -> Result<wa::Message, PeerError> {
        let name = SenderKeyName::from_parts(group, &address(device).to_string());
        let padded = group_decrypt(ciphertext, &mut self.sender_keys, &name).await?;
        wacore::messages::decode_plaintext(&padded, PADDING_VERSION)
            .map_err(|e| PeerError::Plaintext(e.to_string()))
    }

    async fn decrypt_padded(
        &mut self,
        device: (&str, u32),
        enc_type: &str,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, PeerError> {
        let address = address(device);
        let message = match enc_type {
            "pkmsg" => {
                CiphertextMessage::PreKeySignalMessage(PreKeySignalMessage::try_from(ciphertext)?)
            }
            "msg" => CiphertextMessage::SignalMessage(SignalMessage::try_from(ciphertext)?),
            other => return Err(PeerError::EncType(other.to_owned())),
        };
        let decrypted = message_decrypt(
            &message,
            &address,
            &mut self.sessions,
            &mut self.identities,
            &mut self.prekeys,
            &self.signed_prekeys,
            &mut rng(),
            UsePQRatchet::No,
        )
        .await?;
        if let Some(used) = decrypted.consumed_prekey_id {
            self.prekeys.remove_pre_key(used).await?;
        }
        Ok(decrypted.plaintext)
    }

    /// The `<user jid=..>` entry of a prekey-fetch reply
    /// (`<iq type="result"><list>…</list></iq>`), echoing `jid` exactly:
    /// `<registration>` 4 B, `<type>` 05, `<identity>` 32 B,
    /// `<skey><id/><value/><signature/></skey>`, `<key><id/><value/></key>`.
    /// Each call hands out a fresh one-time prekey.
    pub fn prekey_bundle_user_node(&mut self, jid: &str) -> Node {
        let prekey_id = self.next_prekey_id;
        self.next_prekey_id = if prekey_id >= MAX_PREKEY_ID {
            1
        } else {
            prekey_id + 1
        };
        let prekey = derived_key_pair("one-time-prekey", &self.phone, prekey_id);
        NodeBuilder::new("user")
            .attr("jid", jid)
            .children([
                NodeBuilder::new("registration")
                    .bytes(self.registration_id.to_be_bytes().to_vec())
                    .build(),
                NodeBuilder::new("type").bytes(vec![KEY_TYPE_DJB]).build(),
                NodeBuilder::new("identity")
                    .bytes(self.identity_pub().to_vec())
                    .build(),
                SignedPreKeyNode::new(
                    self.signed_prekey.id,
                    self.signed_prekey.public.to_vec(),
                    self.signed_prekey.signature.clone(),
                )
                .into_node(),
                OneTimePreKeyNode::new(prekey_id, prekey.public_key.public_key_bytes().to_vec())
                    .into_node(),
            ])
            .build()
    }

    /// The two `<enc>` children of a post to group `group` (a group JID or
    /// `status@broadcast`) for one device: a `pkmsg|msg` carrying the
    /// SenderKeyDistributionMessage for the group, then the `skmsg` with
    /// `message`.
    ///
    /// The distribution message is sent with every post; the client keeps the
    /// existing chain when it sees the same one again.
    pub async fn group_enc_nodes(
        &mut self,
        group: &str,
        device: (&str, u32),
        bundle: &mut DeviceBundle,
        message: &wa::Message,
    ) -> Result<[Node; 2], PeerError> {
        let name = SenderKeyName::from_parts(group, &self.phone);
        let distribution =
            create_sender_key_distribution_message(&name, &mut self.sender_keys, &mut rng())
                .await?;
        let carrier = wa::Message {
            sender_key_distribution_message: wa::message::SenderKeyDistributionMessage {
                group_id: Some(group.to_owned()),
                axolotl_sender_key_distribution_message: Some(distribution.serialized().to_vec()),
            }
            .into(),
            ..Default::default()
        };
        let (carrier_type, carrier_bytes) = self.encrypt_for(device, bundle, &carrier).await?;

        let padded = MessageUtils::encode_and_pad(message);
        let content = group_encrypt(&mut self.sender_keys, &name, &padded, &mut rng()).await?;
        Ok([
            enc_node(carrier_type, carrier_bytes),
            enc_node("skmsg", content.serialized().to_vec()),
        ])
    }
}

// ---------------------------------------------------------------------------
// Stanzas
// ---------------------------------------------------------------------------

fn enc_node(enc_type: &'static str, ciphertext: Vec<u8>) -> Node {
    NodeBuilder::new("enc")
        .attr("v", "2")
        .attr("type", enc_type)
        .bytes(ciphertext)
        .build()
}

fn text_message(text: &str) -> wa::Message {
    wa::Message {
        conversation: Some(text.to_owned()),
        ..Default::default()
    }
}

fn message_node(
    attrs: Vec<(&'static str, String)>,
    id: &str,
    ts: u64,
    push_name: &str,
    encs: impl IntoIterator<Item = Node>,
) -> Node {
    let mut builder = NodeBuilder::new("message").attrs(attrs);
    builder = builder.attr("id", id).attr("t", ts).attr("type", "text");
    if !push_name.is_empty() {
        builder = builder.attr("notify", push_name);
    }
    builder.children(encs).build()
}

/// A text DM from `contact` to one device of the linked account:
/// `<message from="<contact>@s.whatsapp.net" id t type="text" notify>
///  <enc v="2" type="pkmsg|msg"/></message>` (`notify` omitted when empty).
pub async fn dm_stanza(
    contact: &mut Contact,
    to_device: (&str, u32),
    bundle: &mut DeviceBundle,
    msg_id: &str,
    text: &str,
    ts: u64,
    push_name: &str,
) -> Result<Node, PeerError> {
    let (enc_type, ciphertext) = contact
        .encrypt_for(to_device, bundle, &text_message(text))
        .await?;
    Ok(message_node(
        vec![("from", contact.jid())],
        msg_id,
        ts,
        push_name,
        [enc_node(enc_type, ciphertext)],
    ))
}

/// A DM from `contact` carrying any message (media: `type="media"`).
pub async fn dm_message_stanza(
    contact: &mut Contact,
    to_device: (&str, u32),
    bundle: &mut DeviceBundle,
    msg_id: &str,
    message: &wa::Message,
    ts: u64,
    push_name: &str,
) -> Result<Node, PeerError> {
    let (enc_type, ciphertext) = contact.encrypt_for(to_device, bundle, message).await?;
    let mut node = message_node(
        vec![("from", contact.jid())],
        msg_id,
        ts,
        push_name,
        [enc_node(enc_type, ciphertext)],
    );
    if message.conversation.is_none() {
        node.attrs.insert("type", "media");
    }
    Ok(node)
}

/// A text the primary phone itself sent to `recipient_phone`, as it reaches a
/// linked device: from the own account's device 0, with the chat in
/// `recipient`, the text wrapped in `device_sent_message`:
/// `<message from="<own>@s.whatsapp.net" recipient="<recipient>@s.whatsapp.net"
///  id t type="text" notify><enc v="2" type="pkmsg|msg"/></message>`.
/// The client reports it with `is_from_me == true` and chat = recipient.
#[allow(clippy::too_many_arguments)]
pub async fn from_me_stanza(
    own_phone: &mut Contact,
    to_device: (&str, u32),
    bundle: &mut DeviceBundle,
    recipient_phone: &str,
    msg_id: &str,
    text: &str,
    ts: u64,
    push_name: &str,
) -> Result<Node, PeerError> {
    let recipient = format!("{recipient_phone}@{USER_SERVER}");
    let wrapped = wacore::messages::wrap_device_sent(text_message(text), recipient.clone());
    let (enc_type, ciphertext) = own_phone.encrypt_for(to_device, bundle, &wrapped).await?;
    Ok(message_node(
        vec![("from", own_phone.jid()), ("recipient", recipient)],
        msg_id,
        ts,
        push_name,
        [enc_node(enc_type, ciphertext)],
    ))
}

/// A text status post by `contact`:
/// `<message from="status@broadcast" participant="<contact>@s.whatsapp.net"
///  id t type="text" notify><enc v="2" type="pkmsg|msg"/><enc v="2" type="skmsg"/></message>`.
/// The text travels as `extended_text_message`, like real text statuses.
pub async fn status_stanza(
    contact: &mut Contact,
    to_device: (&str, u32),
    bundle: &mut DeviceBundle,
    msg_id: &str,
    text: &str,
    ts: u64,
    push_name: &str,
) -> Result<Node, PeerError> {
    let message = wa::Message {
        extended_text_message: wa::message::ExtendedTextMessage {
            text: Some(text.to_owned()),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    let encs = contact
        .group_enc_nodes(STATUS_BROADCAST, to_device, bundle, &message)
        .await?;
    Ok(message_node(
        vec![
            ("from", STATUS_BROADCAST.to_owned()),
            ("participant", contact.jid()),
        ],
        msg_id,
        ts,
        push_name,
        encs,
    ))
}

/// A text `contact` posted in group `group_jid`:
/// `<message from="<group>@g.us" participant="<contact>@s.whatsapp.net"
///  id t type="text" notify><enc v="2" type="pkmsg|msg"/><enc v="2" type="skmsg"/></message>`.
#[allow(clippy::too_many_arguments)]
pub async fn group_stanza(
    contact: &mut Contact,
    to_device: (&str, u32),
    bundle: &mut DeviceBundle,
    group_jid: &str,
    msg_id: &str,
    text: &str,
    ts: u64,
    push_name: &str,
) -> Result<Node, PeerError> {
    let encs = contact
        .group_enc_nodes(group_jid, to_device, bundle, &text_message(text))
        .await?;
    Ok(message_node(
        vec![
            ("from", group_jid.to_owned()),
            ("participant", contact.jid()),
        ],
        msg_id,
        ts,
        push_name,
        encs,
    ))
}

/// One encrypted payload of a client `<message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundPart {
    /// The `<to jid>` it is addressed to, or the message's `to` for an
    /// `<enc>` directly under `<message>` (e.g. the `skmsg` of a group send).
    pub recipient: String,
    /// `recipient`'s user part, e.g. `15550001111`.
    pub recipient_user: String,
    /// `recipient`'s device id (0 for a bare jid).
    pub recipient_device: u32,
    /// `pkmsg`, `msg` or `skmsg`.
    pub enc_type: String,
    pub padding_version: u8,
    pub ciphertext: Vec<u8>,
}

/// Lists the encrypted parts of a client `<message to=..>`: every
/// `<participants><to jid><enc/></to></participants>` entry, plus any `<enc>`
/// directly under `<message>`. Parts without bytes or a type are skipped.
pub fn parse_outbound(node: &Node) -> Vec<OutboundPart> {
    let message_to = node.attrs.get("to").map(|v| v.as_str().into_owned());
    let mut parts = Vec::new();
    if let Some(to) = &message_to {
        for enc in node.get_children_by_tag("enc") {
            parts.extend(outbound_part(to, enc));
        }
    }
    if let Some(participants) = node.get_optional_child("participants") {
        for to in participants.get_children_by_tag("to") {
            let Some(jid) = to.attrs.get("jid").map(|v| v.as_str().into_owned()) else {
                continue;
            };
            for enc in to.get_children_by_tag("enc") {
                parts.extend(outbound_part(&jid, enc));
            }
        }
    }
    parts
}

fn outbound_part(recipient: &str, enc: &Node) -> Option<OutboundPart> {
    let enc_type = enc.attrs.get("type")?.as_str().into_owned();
    let padding_version = enc
        .attrs
        .get("v")
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(PADDING_VERSION);
    let ciphertext = content_bytes(enc)?.to_vec();
    let (recipient_user, recipient_device) = match recipient.parse::<Jid>() {
        Ok(jid) => (jid.user.to_string(), u32::from(jid.device)),
        Err(_) => (recipient.to_owned(), 0),
    };
    Some(OutboundPart {
        recipient: recipient.to_owned(),
        recipient_user,
        recipient_device,
        enc_type,
        padding_version,
        ciphertext,
    })
}

/// The account's own phone shares an app-state sync key with a freshly
/// linked device, as real phones do right after pairing. Without it the
/// client waits a 10 s grace period before its first `Connected`.
pub async fn app_state_key_share_stanza(
    own_phone: &mut Contact,
    to_device: (&str, u32),
    bundle: &mut DeviceBundle,
    msg_id: &str,
    key_id: &[u8],
    key_data: &[u8; 32],
    ts: u64,
) -> Result<Node, PeerError> {
    let key = wa::message::AppStateSyncKey {
        key_id: buffa::MessageField::some(wa::message::AppStateSyncKeyId {
            key_id: Some(key_id.to_vec()),
        }),
        key_data: buffa::MessageField::some(wa::message::AppStateSyncKeyData {
            key_data: Some(key_data.to_vec()),
            fingerprint: buffa::MessageField::some(wa::message::AppStateSyncKeyFingerprint {
                raw_id: Some(1),
                current_index: Some(0),
                device_indexes: vec![0],
            }),
            timestamp: Some(ts as i64 * 1000),
        }),
    };
    let message = wa::Message {
        protocol_message: buffa::MessageField::some(wa::message::ProtocolMessage {
            r#type: Some(wa::message::protocol_message::Type::AppStateSyncKeyShare),
            app_state_sync_key_share: buffa::MessageField::some(
                wa::message::AppStateSyncKeyShare { keys: vec![key] },
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (enc_type, ciphertext) = own_phone.encrypt_for(to_device, bundle, &message).await?;
    let mut node = message_node(
        vec![("from", own_phone.jid())],
        msg_id,
        ts,
        "",
        [enc_node(enc_type, ciphertext)],
    );
    node.attrs.insert("type", "protocol");
    node.attrs.insert("category", "peer");
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wacore::iq::prekeys::PreKeyUploadSpec;
    use wacore::iq::spec::IqSpec as _;
    use wacore::types::jid::{JidExt as _, make_sender_key_name};
    use wacore::types::message::MessageInfo;
    use wacore_libsignal::protocol::{
        PublicKey, SenderKeyDistributionMessage, group_decrypt,
        process_sender_key_distribution_message,
    };

    const OWN: &str = "15551234567";
    const DEVICE: u32 = 7;
    const ALICE: &str = "15550001111";
    const CAROL: &str = "15550002222";
    const TS: u64 = 1_763_000_000;

    /// The linked device: an independent Signal peer (keys seeded from a name
    /// no contact uses) whose bundle reaches us through the client's own
    /// prekey-upload encoder.
    fn linked_device(seed: &str, prekeys: u32) -> (Contact, DeviceBundle) {
        let device = Contact::new(seed);
        let upload = PreKeyUploadSpec::new(
            device.registration_id(),
            *device.identities.pair.public_key(),
            device.signed_prekey.id,
            PublicKey::from_djb_public_key_bytes(&device.signed_prekey.public).unwrap(),
            device.signed_prekey.signature.clone(),
            (1..=prekeys)
                .map(|id| (id, derived_key_pair("one-time-prekey", seed, id).public_key))
                .collect(),
        );
        let mut wire = Vec::new();
        assert!(upload.encode_iq_direct("upload-1", &mut wire).unwrap());
        let BundleUpdate::Upload(bundle) =
            bundle_from_upload_iq(&over_the_wire_bytes(&wire)).expect("client upload parses")
        else {
            panic!("an upload is not a rotation");
        };
        (device, bundle)
    }

    fn over_the_wire_bytes(marshalled: &[u8]) -> Node {
        let unpacked = wacore_binary::util::unpack(marshalled).unwrap();
        wacore_binary::marshal::unmarshal_ref(&unpacked)
            .unwrap()
            .to_owned()
    }

    /// Encodes and decodes a stanza as the transport would.
    fn over_the_wire(node: &Node) -> Node {
        over_the_wire_bytes(&wacore_binary::marshal(node).unwrap())
    }

    /// The client's own stanza parser, with us as device 7 of OWN.
    fn client_view(node: &Node) -> MessageInfo {
        let own: Jid = format!("{OWN}:{DEVICE}@{USER_SERVER}").parse().unwrap();
        wacore::messages::parse_message_info(&node.as_node_ref(), &own, None).unwrap()
    }

    fn encs(node: &Node) -> Vec<(String, Vec<u8>)> {
        node.get_children_by_tag("enc")
            .map(|enc| {
                assert_eq!(enc.attrs.get("v").unwrap().as_str(), "2");
                (
                    enc.attrs.get("type").unwrap().as_str().into_owned(),
                    content_bytes(enc).unwrap().to_vec(),
                )
            })
            .collect()
    }

    fn user(phone: &str) -> Jid {
        format!("{phone}@{USER_SERVER}").parse().unwrap()
    }

    #[tokio::test]
    async fn inbound_dm_decrypts_on_the_device_and_turns_into_msg_after_a_reply() {
        let (mut device, mut bundle) = linked_device("device-a", 3);
        let mut alice = Contact::new(ALICE);

        let stanza = dm_stanza(
            &mut alice,
            (OWN, DEVICE),
            &mut bundle,
            "M1",
            "hello",
            TS,
            "Alice",
        )
        .await
        .unwrap();
        assert_eq!(bundle.prekeys.len(), 2, "one one-time prekey consumed");
        let stanza = over_the_wire(&stanza);
        let info = client_view(&stanza);
        assert!(!info.source.is_from_me);
        assert_eq!(info.source.chat, user(ALICE));
        assert_eq!(info.source.sender, user(ALICE));
        assert_eq!(info.push_name, "Alice");
        assert_eq!(info.id, "M1");
        let [(enc_type, ciphertext)] = &encs(&stanza)[..] else {
            panic!("one enc");
        };
        assert_eq!(enc_type, "pkmsg");
        let text = device
            .decrypt_from((ALICE, 0), enc_type, ciphertext)
            .await
            .unwrap();
        assert_eq!(text.conversation.as_deref(), Some("hello"));

        // Until the device answers, Signal keeps the prekey header on.
        let second = dm_stanza(
            &mut alice,
            (OWN, DEVICE),
            &mut bundle,
            "M2",
            "again",
            TS,
            "",
        )
        .await
        .unwrap();
        assert!(second.attrs.get("notify").is_none());
        let [(enc_type, ciphertext)] = &encs(&second)[..] else {
            panic!("one enc");
        };
        assert_eq!(enc_type, "pkmsg");
        assert_eq!(
            bundle.prekeys.len(),
            2,
            "an existing session needs no prekey"
        );
        let text = device
            .decrypt_from((ALICE, 0), enc_type, ciphertext)
            .await
            .unwrap();
        assert_eq!(text.conversation.as_deref(), Some("again"));

        // The device replies over the session the pkmsg created; Alice reads it ...
        let reply = message_encrypt(
            &MessageUtils::encode_and_pad(&text_message("hi alice")),
            &address((ALICE, 0)),
            &mut device.sessions,
            &mut device.identities,
        )
        .await
        .unwrap();
        let (reply_type, reply) = match reply {
            CiphertextMessage::SignalMessage(m) => ("msg", m.serialized().to_vec()),
            other => panic!("expected a msg, got {:?}", other.message_type()),
        };
        let read = alice
            .decrypt_from((OWN, DEVICE), reply_type, &reply)
            .await
            .unwrap();
        assert_eq!(read.conversation.as_deref(), Some("hi alice"));

        // ... and from then on Alice sends plain `msg`.
        let third = dm_stanza(
            &mut alice,
            (OWN, DEVICE),
            &mut bundle,
            "M3",
            "third",
            TS,
            "Alice",
        )
        .await
        .unwrap();
        let [(enc_type, ciphertext)] = &encs(&third)[..] else {
            panic!("one enc");
        };
        assert_eq!(enc_type, "msg");
        let text = device
            .decrypt_from((ALICE, 0), enc_type, ciphertext)
            .await
            .unwrap();
        assert_eq!(text.conversation.as_deref(), Some("third"));
    }

    /// The device fetches Carol's bundle (parsed by the client's own parser),
    /// sends her a pkmsg inside a client-shaped `<message>`, and Carol reads it.
    #[tokio::test]
    async fn outbound_dm_from_the_device_decrypts_at_the_contact() {
        let (mut device, _) = linked_device("device-b", 0);
        let mut carol = Contact::new(CAROL);
        let carol_jid = carol.jid();

        let reply = NodeBuilder::new("iq")
            .attr("type", "result")
            .attr("from", "s.whatsapp.net")
            .children([NodeBuilder::new("list")
                .children([
                    carol.prekey_bundle_user_node(&carol_jid),
                    carol.prekey_bundle_user_node("15550003333@s.whatsapp.net"),
                ])
                .build()])
            .build();
        let reply = over_the_wire(&reply);
        let fetched = wacore::prekeys::PreKeyUtils::parse_prekeys_response(
            &reply.as_node_ref(),
            &HashMap::new(),
        )
        .unwrap();
        assert!(fetched.rejected.is_empty());
        let carol_bundle = &fetched.bundles[&user(CAROL)];
        assert_eq!(
            carol_bundle.registration_id().unwrap(),
            carol.registration_id()
        );
        assert_eq!(
            raw_public(carol_bundle.identity_key().unwrap().public_key()),
            carol.identity_pub()
        );
        let first_prekey = carol_bundle.pre_key_id().unwrap().map(u32::from);
        let second_prekey = fetched.bundles[&user("15550003333")]
            .pre_key_id()
            .unwrap()
            .map(u32::from);
        assert_eq!((first_prekey, second_prekey), (Some(1), Some(2)));

        // The device side of ensure_e2e_sessions + message_encrypt.
        let carol_address = address((CAROL, 0));
        process_prekey_bundle(
            &carol_address,
            &mut device.sessions,
            &mut device.identities,
            carol_bundle,
            &mut rng(),
            UsePQRatchet::No,
        )
        .await
        .expect("the client accepts the bundle signature");
        let mut texts = Vec::new();
        for text in ["first", "second"] {
            let ciphertext = message_encrypt(
                &MessageUtils::encode_and_pad(&text_message(text)),
                &carol_address,
                &mut device.sessions,
                &mut device.identities,
            )
            .await
            .unwrap();
            assert!(matches!(
                ciphertext,
                CiphertextMessage::PreKeySignalMessage(_)
            ));
            let stanza = NodeBuilder::new("message")
                .attr("to", carol_jid.as_str())
                .attr("id", "OUT1")
                .attr("type", "text")
                .children([
                    NodeBuilder::new("participants")
                        .children([NodeBuilder::new("to")
                            .attr("jid", carol_jid.as_str())
                            .children([enc_node("pkmsg", ciphertext.serialize().to_vec())])
                            .build()])
                        .build(),
                    NodeBuilder::new("device-identity")
                        .bytes(vec![1, 2, 3])
                        .build(),
                ])
                .build();
            let [part] = &parse_outbound(&over_the_wire(&stanza))[..] else {
                panic!("one part");
            };
            assert_eq!(part.recipient, carol_jid);
            assert_eq!(
                (part.recipient_user.as_str(), part.recipient_device),
                (CAROL, 0)
            );
            assert_eq!((part.enc_type.as_str(), part.padding_version), ("pkmsg", 2));
            let read = carol
                .decrypt_from((OWN, DEVICE), &part.enc_type, &part.ciphertext)
                .await
                .unwrap();
            texts.push(read.conversation.unwrap());
        }
        assert_eq!(texts, ["first", "second"]);
        assert!(
            carol.prekeys.used.contains(&1),
            "the used prekey is retired"
        );

        // A contact rebuilt after a restart still opens a pkmsg that used a
        // prekey handed out before it.
        let mut restarted = Contact::new(CAROL);
        let ciphertext = message_encrypt(
            &MessageUtils::encode_and_pad(&text_message("after restart")),
            &carol_address,
            &mut device.sessions,
            &mut device.identities,
        )
        .await
        .unwrap();
        let read = restarted
            .decrypt_from((OWN, DEVICE), "pkmsg", ciphertext.serialize())
            .await
            .unwrap();
        assert_eq!(read.conversation.as_deref(), Some("after restart"));
    }

    #[tokio::test]
    async fn from_me_stanza_is_from_me_in_the_recipients_chat() {
        let (mut device, mut bundle) = linked_device("device-c", 2);
        let account = AccountKey::for_phone(OWN);
        let mut phone = Contact::own_phone(OWN, &account);
        assert_eq!(phone.identity_pub(), account.public_bytes());

        let stanza = from_me_stanza(
            &mut phone,
            (OWN, DEVICE),
            &mut bundle,
            ALICE,
            "ME1",
            "sent from the phone",
            TS,
            "Me",
        )
        .await
        .unwrap();
        let stanza = over_the_wire(&stanza);
        let info = client_view(&stanza);
        assert!(info.source.is_from_me);
        assert_eq!(info.source.chat, user(ALICE));
        assert_eq!(info.source.sender, user(OWN));
        assert_eq!(info.source.recipient, Some(user(ALICE)));

        let [(enc_type, ciphertext)] = &encs(&stanza)[..] else {
            panic!("one enc");
        };
        let wrapped = device
            .decrypt_from((OWN, 0), enc_type, ciphertext)
            .await
            .unwrap();
        let destination = wrapped
            .device_sent_message
            .as_option()
            .and_then(|dsm| dsm.destination_jid.clone());
        assert_eq!(destination.as_deref(), Some("15550001111@s.whatsapp.net"));
        let inner = wacore::messages::unwrap_device_sent(wrapped);
        assert_eq!(inner.conversation.as_deref(), Some("sent from the phone"));
    }

    /// Decrypts a status stanza the way the client does
    /// (`whatsapp-rust-0.7.0/src/message/receive.rs:1222-1300,1490-1500`).
    async fn read_status(device: &mut Contact, stanza: &Node) -> (String, wa::Message) {
        let info = client_view(stanza);
        let parts = encs(stanza);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].0, "skmsg", "the skmsg comes after the carrier");
        let carrier = device
            .decrypt_from((ALICE, 0), &parts[0].0, &parts[0].1)
            .await
            .unwrap();
        let mut check = carrier.clone();
        assert!(wacore::messages::is_sender_key_distribution_only(
            &mut check
        ));
        let skdm = carrier
            .sender_key_distribution_message
            .as_option()
            .and_then(|m| m.axolotl_sender_key_distribution_message.clone())
            .unwrap();
        let name = make_sender_key_name(
            &info.source.chat,
            &info.source.sender.to_non_ad().to_protocol_address(),
        );
        process_sender_key_distribution_message(
            &name,
            &SenderKeyDistributionMessage::try_from(skdm.as_slice()).unwrap(),
            &mut device.sender_keys,
        )
        .await
        .unwrap();
        let padded = group_decrypt(&parts[1].1, &mut device.sender_keys, &name)
            .await
            .unwrap();
        (
            parts[0].0.clone(),
            wacore::messages::decode_plaintext(&padded, 2).unwrap(),
        )
    }

    #[tokio::test]
    async fn status_post_reaches_the_device_through_sender_keys() {
        let (mut device, mut bundle) = linked_device("device-d", 2);
        let mut alice = Contact::new(ALICE);

        let stanza = status_stanza(
            &mut alice,
            (OWN, DEVICE),
            &mut bundle,
            "S1",
            "my day",
            TS,
            "Alice",
        )
        .await
        .unwrap();
        let stanza = over_the_wire(&stanza);
        let info = client_view(&stanza);
        assert_eq!(info.source.chat.to_string(), STATUS_BROADCAST);
        assert_eq!(info.source.sender, user(ALICE));
        assert!(!info.source.is_from_me);
        assert!(info.source.is_group);

        let (carrier_type, message) = read_status(&mut device, &stanza).await;
        assert_eq!(carrier_type, "pkmsg");
        let text = message
            .extended_text_message
            .as_option()
            .and_then(|m| m.text.clone());
        assert_eq!(text.as_deref(), Some("my day"));

        // A second post advances the same chain; the repeated distribution
        // message does not reset the device's state.
        let stanza = status_stanza(
            &mut alice,
            (OWN, DEVICE),
            &mut bundle,
            "S2",
            "later",
            TS,
            "",
        )
        .await
        .unwrap();
        let (_, message) = read_status(&mut device, &over_the_wire(&stanza)).await;
        let text = message
            .extended_text_message
            .as_option()
            .and_then(|m| m.text.clone());
        assert_eq!(text.as_deref(), Some("later"));
    }

    #[tokio::test]
    async fn a_re_registered_device_gets_a_fresh_session() {
        let (_, mut old_bundle) = linked_device("device-e-old", 1);
        let (mut new_device, mut new_bundle) = linked_device("device-e-new", 1);
        let mut alice = Contact::new(ALICE);
        alice
            .encrypt_for(
                (OWN, DEVICE),
                &mut old_bundle,
                &text_message("to the old one"),
            )
            .await
            .unwrap();
        assert!(alice.has_session((OWN, DEVICE)));

        let (enc_type, ciphertext) = alice
            .encrypt_for(
                (OWN, DEVICE),
                &mut new_bundle,
                &text_message("to the new one"),
            )
            .await
            .unwrap();
        assert_eq!(enc_type, "pkmsg");
        assert!(new_bundle.prekeys.is_empty());
        let read = new_device
            .decrypt_from((ALICE, 0), enc_type, &ciphertext)
            .await
            .unwrap();
        assert_eq!(read.conversation.as_deref(), Some("to the new one"));
    }

    #[test]
    fn contacts_are_deterministic_per_phone_number() {
        let mut a = Contact::new(ALICE);
        let mut b = Contact::new(ALICE);
        let c = Contact::new(CAROL);
        assert_eq!(a.identity_pub(), b.identity_pub());
        assert_eq!(a.registration_id(), b.registration_id());
        assert!((1..=0x3FFE).contains(&a.registration_id()));
        assert_ne!(a.identity_pub(), c.identity_pub());
        let jid = a.jid();
        assert_eq!(
            a.prekey_bundle_user_node(&jid),
            b.prekey_bundle_user_node(&jid)
        );
        assert_ne!(
            a.prekey_bundle_user_node(&jid),
            b.prekey_bundle_user_node("other@s.whatsapp.net"),
            "each call hands out the next prekey"
        );
    }

    #[test]
    fn registration_payload_and_prekey_iqs_build_one_bundle() {
        let (device, uploaded) = linked_device("device-f", 4);
        assert!(uploaded.signed_prekey_verifies());
        assert_eq!(
            uploaded
                .prekeys
                .iter()
                .map(|(id, _)| *id)
                .collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );

        // The registration payload carries the same identity and signed prekey.
        let registration = wa::client_payload::DevicePairingRegistrationData {
            e_regid: Some(device.registration_id().to_be_bytes().to_vec()),
            e_keytype: Some(vec![5]),
            e_ident: Some(device.identity_pub().to_vec()),
            e_skey_id: Some(device.signed_prekey.id.to_be_bytes()[1..].to_vec()),
            e_skey_val: Some(device.signed_prekey.public.to_vec()),
            e_skey_sig: Some(device.signed_prekey.signature.clone()),
            build_hash: Some(vec![0; 16]),
            device_props: Some(Vec::new()),
        };
        let mut bundle = bundle_from_registration(&registration).unwrap();
        assert!(bundle.prekeys.is_empty());
        assert!(bundle.signed_prekey_verifies());
        bundle.apply(BundleUpdate::Upload(uploaded.clone()));
        assert_eq!(bundle, uploaded);

        // A later top-up adds only new ids.
        let mut top_up = uploaded.clone();
        top_up.prekeys = vec![(4, [4; 32]), (5, [5; 32])];
        bundle.apply(BundleUpdate::Upload(top_up));
        assert_eq!(bundle.prekeys.len(), 5);
        assert_eq!(bundle.take_one_time_prekey().map(|(id, _)| id), Some(1));
        assert_eq!(bundle.prekeys.len(), 4);

        // <rotate> replaces only the signed prekey.
        let rotate = NodeBuilder::new("iq")
            .attr("xmlns", "encrypt")
            .attr("type", "set")
            .children([NodeBuilder::new("rotate")
                .children([SignedPreKeyNode::new(2, vec![9; 32], vec![8; 64]).into_node()])
                .build()])
            .build();
        let update = bundle_from_upload_iq(&over_the_wire(&rotate)).unwrap();
        assert_eq!(
            update,
            BundleUpdate::Rotate(SignedPreKey {
                id: 2,
                public: [9; 32],
                signature: vec![8; 64]
            })
        );
        bundle.apply(update);
        assert_eq!(
            (bundle.signed_prekey_id, bundle.signed_prekey),
            (2, [9; 32])
        );
        assert_eq!(bundle.prekeys.len(), 4);

        // A new identity means a new device: the bundle is replaced.
        let (_, other) = linked_device("device-f-again", 1);
        bundle.apply(BundleUpdate::Upload(other.clone()));
        assert_eq!(bundle, other);

        let json = serde_json::to_string(&bundle).unwrap();
        assert_eq!(serde_json::from_str::<DeviceBundle>(&json).unwrap(), bundle);
    }

    #[test]
    fn malformed_bundle_sources_are_typed_errors() {
        let iq = |children: Vec<Node>| NodeBuilder::new("iq").children(children).build();
        assert!(matches!(
            bundle_from_upload_iq(&NodeBuilder::new("message").build()),
            Err(PeerError::Malformed { element: "iq", .. })
        ));
        assert!(matches!(
            bundle_from_upload_iq(&iq(vec![])),
            Err(PeerError::Malformed {
                element: "registration",
                ..
            })
        ));
        let short_identity = iq(vec![
            NodeBuilder::new("registration")
                .bytes(vec![0, 0, 0, 1])
                .build(),
            NodeBuilder::new("identity").bytes(vec![1; 31]).build(),
        ]);
        assert!(matches!(
            bundle_from_upload_iq(&short_identity),
            Err(PeerError::Malformed {
                element: "identity",
                ..
            })
        ));
        let no_skey_in_rotate = iq(vec![NodeBuilder::new("rotate").build()]);
        assert!(bundle_from_upload_iq(&no_skey_in_rotate).is_err());
        let registration = wa::client_payload::DevicePairingRegistrationData::default();
        assert!(bundle_from_registration(&registration).is_err());
    }

    #[test]
    fn parse_outbound_lists_direct_and_per_device_parts() {
        let stanza = NodeBuilder::new("message")
            .attr("to", STATUS_BROADCAST)
            .attr("id", "G1")
            .attr("type", "text")
            .children([
                NodeBuilder::new("participants")
                    .children([
                        NodeBuilder::new("to")
                            .attr("jid", "15550001111@s.whatsapp.net")
                            .children([enc_node("pkmsg", vec![1])])
                            .build(),
                        NodeBuilder::new("to")
                            .attr("jid", "15551234567:3@s.whatsapp.net")
                            .children([enc_node("msg", vec![2])])
                            .build(),
                        NodeBuilder::new("to")
                            .attr("jid", "nobody@s.whatsapp.net")
                            .build(),
                    ])
                    .build(),
                enc_node("skmsg", vec![3]),
                NodeBuilder::new("enc").attr("type", "skmsg").build(),
            ])
            .build();
        let parts = parse_outbound(&over_the_wire(&stanza));
        let summary: Vec<_> = parts
            .iter()
            .map(|p| {
                (
                    p.recipient_user.as_str(),
                    p.recipient_device,
                    p.enc_type.as_str(),
                    p.ciphertext.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("status", 0, "skmsg", vec![3]),
                ("15550001111", 0, "pkmsg", vec![1]),
                ("15551234567", 3, "msg", vec![2]),
            ]
        );
        assert_eq!(parts[0].recipient, STATUS_BROADCAST);
    }

    #[test]
    fn contact_futures_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let mut alice = Contact::new(ALICE);
        let mut bundle = linked_device("device-g", 1).1;
        let message = text_message("x");
        assert_send(&alice);
        assert_send(&alice.encrypt_for((OWN, DEVICE), &mut bundle, &message));
        let mut alice2 = Contact::new(ALICE);
        assert_send(&alice2.decrypt_from((OWN, DEVICE), "msg", &[]));
        let mut alice3 = Contact::new(ALICE);
        let mut bundle3 = bundle.clone();
        assert_send(&status_stanza(
            &mut alice3,
            (OWN, DEVICE),
            &mut bundle3,
            "i",
            "t",
            0,
            "",
        ));
    }
}
