//! The fake primary phone: the account side of linking a companion.
//!
//! A real phone scans the companion's QR code (or types its pairing code),
//! signs the companion's identity with the account key and proves knowledge of
//! the shared "ADV secret" with an HMAC. This module produces exactly the bytes
//! whatsapp-rust 0.7 verifies in `PairUtils::do_pair_crypto`
//! (`wacore-0.7.0/src/pair.rs:165-311`), and mirrors the companion's pair-code
//! key schedule (`wacore-0.7.0/src/pair_code.rs:549-620`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use buffa::Message as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use wacore::pair_code::PairCodeUtils;
use wacore_libsignal::crypto::{aes_256_gcm_decrypt, hmac_sha256};
use wacore_libsignal::protocol::{KeyPair, PrivateKey, PublicKey};
use waproto::whatsapp as wa;

/// `[6, 0]`: prefix of the message the account key signs (E2EE accounts).
const ADV_PREFIX_ACCOUNT_SIGNATURE: [u8; 2] = [6, 0];
/// `[6, 1]`: prefix of the message the companion's identity key signs back.
const ADV_PREFIX_DEVICE_SIGNATURE: [u8; 2] = [6, 1];

const KEY_BUNDLE_INFO: &[u8] = b"link_code_pairing_key_bundle_encryption_key";
const ADV_SECRET_INFO: &[u8] = b"adv_secret";
/// salt (32) ‖ iv (12) ‖ AES-GCM(96-byte bundle) with its 16-byte tag.
const WRAPPED_KEY_BUNDLE_LEN: usize = 32 + 12 + 96 + 16;

#[derive(Debug, thiserror::Error)]
pub enum PhoneError {
    #[error("QR code has {0} comma-separated fields, expected 4 or 5")]
    QrFieldCount(usize),
    #[error("QR code field `{0}` is empty")]
    QrEmptyField(&'static str),
    #[error("QR code field `{0}` is not standard base64")]
    QrBase64(&'static str),
    #[error("QR code field `{field}` decodes to {len} bytes, expected 32")]
    QrKeyLength { field: &'static str, len: usize },
    #[error("invalid curve key: {0}")]
    InvalidKey(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("pair code: {0}")]
    PairCode(String),
    #[error("wrapped key bundle is {0} bytes, expected {WRAPPED_KEY_BUNDLE_LEN}")]
    KeyBundleLength(usize),
    #[error("key bundle does not decrypt (wrong pair code or tampered bundle)")]
    KeyBundleDecrypt,
    #[error("key bundle names a different {0} identity than expected")]
    KeyBundleIdentity(&'static str),
    #[error("key derivation failed")]
    KeyDerivation,
    #[error("device identity does not decode: {0}")]
    DeviceIdentityDecode(String),
    #[error("device identity field `{0}` is missing")]
    DeviceIdentityMissing(&'static str),
    #[error("device identity was signed for another account key")]
    DeviceIdentityAccount,
    #[error("device signature does not verify with the companion identity key")]
    DeviceSignature,
}

/// The fields of a companion's pairing QR code
/// (`ref,noise_pub,identity_pub,adv_secret[,client_type]`; whatsapp-rust
/// writes all five, `wacore-0.7.0/src/pair.rs:54-69`, other clients such as
/// Baileys only the first four, and phones scan both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrPayload {
    pub reference: String,
    /// The companion's Noise static key, as seen in its ClientFinish.
    pub noise_pub: [u8; 32],
    /// The companion's Signal identity key (`e_ident` of its registration).
    pub identity_pub: [u8; 32],
    /// Keys the HMAC of the `<device-identity>` container.
    pub adv_secret: [u8; 32],
    /// One character such as `9` (other web client) or `1` (Chrome), when
    /// the code carries the optional fifth field.
    pub client_type: Option<String>,
}

/// Parses a QR string as clients produce it: four or five fields, the three
/// keys in standard (padded) base64.
pub fn parse_qr(code: &str) -> Result<QrPayload, PhoneError> {
    let fields: Vec<&str> = code.trim().split(',').collect();
    let (reference, noise, identity, adv, client_type) = match fields[..] {
        [reference, noise, identity, adv] => (reference, noise, identity, adv, None),
        [reference, noise, identity, adv, client_type] => {
            (reference, noise, identity, adv, Some(client_type))
        }
        _ => return Err(PhoneError::QrFieldCount(fields.len())),
    };
    for (name, value) in [
        ("ref", Some(reference)),
        ("noise_pub", Some(noise)),
        ("identity_pub", Some(identity)),
        ("adv_secret", Some(adv)),
        ("client_type", client_type),
    ] {
        if value.is_some_and(str::is_empty) {
            return Err(PhoneError::QrEmptyField(name));
        }
    }
    Ok(QrPayload {
        reference: reference.to_owned(),
        noise_pub: decode_key("noise_pub", noise)?,
        identity_pub: decode_key("identity_pub", identity)?,
        adv_secret: decode_key("adv_secret", adv)?,
        client_type: client_type.map(str::to_owned),
    })
}

fn decode_key(field: &'static str, value: &str) -> Result<[u8; 32], PhoneError> {
    let bytes = BASE64
        .decode(value)
        .map_err(|_| PhoneError::QrBase64(field))?;
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| PhoneError::QrKeyLength { field, len })
}

/// The phone account's identity key pair. It signs linked devices (ADV) and
/// is also the primary phone's (device 0) Signal identity key.
///
/// Serializes as the base64 of the 32-byte private key.
#[derive(Clone)]
pub struct AccountKey {
    pair: KeyPair,
}

impl AccountKey {
    pub fn generate() -> Self {
        Self {
            pair: KeyPair::generate(&mut rand::make_rng::<rand::rngs::StdRng>()),
        }
    }

    /// A key that is a pure function of the phone number, so a restarted
    /// fake server presents the same account without persisting anything.
    pub fn for_phone(phone: &str) -> Self {
        let private = derive_secret("account-identity", phone, 0);
        Self::from_bytes(&private).expect("any 32 bytes are a valid X25519 private key")
    }

    pub fn from_bytes(private: &[u8; 32]) -> Result<Self, PhoneError> {
        let private_key =
            PrivateKey::deserialize(private).map_err(|e| PhoneError::InvalidKey(e.to_string()))?;
        let pair =
            KeyPair::try_from(private_key).map_err(|e| PhoneError::InvalidKey(e.to_string()))?;
        Ok(Self { pair })
    }

    /// The (clamped) private key; `from_bytes(&k.to_bytes())` is the same key.
    pub fn to_bytes(&self) -> [u8; 32] {
        *self.pair.private_key.serialize()
    }

    /// The raw 32-byte public key (`account_signature_key`, `primary_identity_pub`).
    pub fn public_bytes(&self) -> [u8; 32] {
        raw_public(&self.pair.public_key)
    }

    pub fn key_pair(&self) -> &KeyPair {
        &self.pair
    }
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKey")
            .field("public", &BASE64.encode(self.public_bytes()))
            .finish_non_exhaustive()
    }
}

impl Serialize for AccountKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(self.to_bytes()))
    }
}

impl<'de> Deserialize<'de> for AccountKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let text = String::deserialize(deserializer)?;
        let bytes: [u8; 32] = BASE64
            .decode(text.as_bytes())
            .map_err(D::Error::custom)?
            .try_into()
            .map_err(|_| D::Error::custom("account key must be 32 bytes"))?;
        Self::from_bytes(&bytes).map_err(D::Error::custom)
    }
}

/// HMAC-SHA256 based derivation of deterministic key material.
/// Any 32 bytes are a valid X25519 private key (they are clamped on use).
pub(crate) fn derive_secret(label: &str, phone: &str, index: u32) -> [u8; 32] {
    let key = format!("fakewa/v1/{label}");
    let mut input = Vec::with_capacity(phone.len() + 5);
    input.extend_from_slice(phone.as_bytes());
    input.push(0);
    input.extend_from_slice(&index.to_be_bytes());
    hmac_sha256(key.as_bytes(), &input)
}

pub(crate) fn raw_public(key: &PublicKey) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(key.public_key_bytes());
    out
}

/// The `ADVSignedDeviceIdentityHMAC` bytes for `<pair-success><device-identity>`
/// (E2EE account, not hosted).
///
/// * `companion_identity_pub`: QR field 3 / `e_ident` of the registration.
/// * `adv_secret`: QR field 4, or the secret [`finish`] derived for a pair code.
/// * `key_index`: the index the companion echoes in `<device-identity key-index>`;
///   the client requires it to be present.
/// * `raw_id`: opaque to the client.
pub fn device_identity_container(
    account: &AccountKey,
    companion_identity_pub: &[u8; 32],
    adv_secret: &[u8; 32],
    key_index: u32,
    raw_id: u32,
) -> Result<Vec<u8>, PhoneError> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let details = wa::ADVDeviceIdentity {
        raw_id: Some(raw_id),
        timestamp: Some(timestamp),
        key_index: Some(key_index),
        account_type: Some(wa::ADVEncryptionType::E2EE),
        device_type: Some(wa::ADVEncryptionType::E2EE),
    }
    .encode_to_vec();

    let account_signature = account
        .pair
        .private_key
        .calculate_signature_for_multipart_message(
            &[
                &ADV_PREFIX_ACCOUNT_SIGNATURE,
                &details,
                companion_identity_pub,
            ],
            &mut rand::make_rng::<rand::rngs::StdRng>(),
        )
        .map_err(|e| PhoneError::Signing(e.to_string()))?;

    let signed = wa::ADVSignedDeviceIdentity {
        details: Some(details),
        account_signature_key: Some(account.public_bytes().to_vec()),
        account_signature: Some(account_signature.to_vec()),
        device_signature: None,
    }
    .encode_to_vec();

    let hmac = hmac_sha256(adv_secret, &signed);
    Ok(wa::ADVSignedDeviceIdentityHMAC {
        details: Some(signed),
        hmac: Some(hmac.to_vec()),
        account_type: Some(wa::ADVEncryptionType::E2EE),
    }
    .encode_to_vec())
}

/// Checks the `ADVSignedDeviceIdentity` a companion returns in
/// `<pair-device-sign><device-identity key-index=..>`: it must carry our account
/// key and a device signature by the companion identity over
/// `[6,1] ‖ details ‖ companion_identity_pub ‖ account_signature_key`.
/// Returns the `key_index` from the signed details.
pub fn verify_pair_device_sign(
    account: &AccountKey,
    companion_identity_pub: &[u8; 32],
    device_identity: &[u8],
) -> Result<u32, PhoneError> {
    let signed = waproto::codec::adv_signed_device_identity_decode(device_identity)
        .map_err(|e| PhoneError::DeviceIdentityDecode(e.to_string()))?;
    let details = signed
        .details
        .as_deref()
        .ok_or(PhoneError::DeviceIdentityMissing("details"))?;
    let account_key = signed
        .account_signature_key
        .as_deref()
        .ok_or(PhoneError::DeviceIdentityMissing("account_signature_key"))?;
    if account_key != account.public_bytes() {
        return Err(PhoneError::DeviceIdentityAccount);
    }
    let device_signature = signed
        .device_signature
        .as_deref()
        .ok_or(PhoneError::DeviceIdentityMissing("device_signature"))?;
    let companion = PublicKey::from_djb_public_key_bytes(companion_identity_pub)
        .map_err(|e| PhoneError::InvalidKey(e.to_string()))?;
    let verified = companion.verify_signature_for_multipart_message(
        &[
            &ADV_PREFIX_DEVICE_SIGNATURE,
            details,
            companion_identity_pub,
            account_key,
        ],
        device_signature,
    );
    if !verified {
        return Err(PhoneError::DeviceSignature);
    }
    let identity = waproto::codec::adv_device_identity_decode(details)
        .map_err(|e| PhoneError::DeviceIdentityDecode(e.to_string()))?;
    identity
        .key_index
        .ok_or(PhoneError::DeviceIdentityMissing("key_index"))
}

/// The phone's half of a pair-code link, between `primary_hello` and
/// `companion_finish`.
pub struct PairCodeSession {
    ephemeral: KeyPair,
    /// What the phone unwrapped with the code it was given. A wrong code
    /// yields unrelated bytes here (AES-CTR does not authenticate), which is
    /// detected only when [`finish`] cannot open the key bundle.
    companion_ephemeral_pub: [u8; 32],
}

impl PairCodeSession {
    /// The raw public ephemeral key (unwrapped form of the 80 bytes sent).
    pub fn ephemeral_pub(&self) -> [u8; 32] {
        raw_public(&self.ephemeral.public_key)
    }
}

/// Stage 2 on the phone: unwrap the companion's ephemeral key with the code
/// the user "typed", and wrap a fresh phone ephemeral for
/// `<link_code_pairing_wrapped_primary_ephemeral_pub>` (80 bytes).
///
/// A wrong code is **not** detected here; [`finish`] then fails with
/// [`PhoneError::KeyBundleDecrypt`]. Runs PBKDF2 twice (131 072 rounds each):
/// call it from `spawn_blocking`.
pub fn primary_hello(
    code: &str,
    wrapped_companion_ephemeral: &[u8],
) -> Result<(PairCodeSession, Vec<u8>), PhoneError> {
    let companion_ephemeral_pub =
        PairCodeUtils::decrypt_primary_ephemeral_pub(wrapped_companion_ephemeral, code)
            .map_err(|e| PhoneError::PairCode(e.to_string()))?;
    let ephemeral = KeyPair::generate(&mut rand::make_rng::<rand::rngs::StdRng>());
    let wrapped = PairCodeUtils::encrypt_ephemeral_pub(&raw_public(&ephemeral.public_key), code);
    Ok((
        PairCodeSession {
            ephemeral,
            companion_ephemeral_pub,
        },
        wrapped.to_vec(),
    ))
}

/// Stage 3 on the phone: open the companion's
/// `<link_code_pairing_wrapped_key_bundle>`, check it names the companion
/// (`companion_identity_pub`, from `<companion_identity_public>`) and this
/// account, and derive the ADV secret the companion switched to. Use the
/// result as `adv_secret` in [`device_identity_container`].
pub fn finish(
    session: &PairCodeSession,
    account: &AccountKey,
    companion_identity_pub: &[u8; 32],
    wrapped_key_bundle: &[u8],
) -> Result<[u8; 32], PhoneError> {
    if wrapped_key_bundle.len() != WRAPPED_KEY_BUNDLE_LEN {
        return Err(PhoneError::KeyBundleLength(wrapped_key_bundle.len()));
    }
    let (salt, rest) = wrapped_key_bundle.split_at(32);
    let (iv, sealed) = rest.split_at(12);
    let iv: [u8; 12] = iv.try_into().map_err(|_| PhoneError::KeyBundleDecrypt)?;

    let companion_ephemeral =
        PublicKey::from_djb_public_key_bytes(&session.companion_ephemeral_pub)
            .map_err(|e| PhoneError::InvalidKey(e.to_string()))?;
    let ephemeral_shared = session
        .ephemeral
        .private_key
        .calculate_agreement(&companion_ephemeral)
        .map_err(|e| PhoneError::InvalidKey(e.to_string()))?;

    let mut bundle_key = [0u8; 32];
    wacore::crypto::hkdf_sha256_into(
        &ephemeral_shared,
        Some(salt),
        KEY_BUNDLE_INFO,
        &mut bundle_key,
    )
    .map_err(|_| PhoneError::KeyDerivation)?;
    let mut bundle = Vec::with_capacity(96);
    aes_256_gcm_decrypt(&bundle_key, &iv, b"", sealed, &mut bundle)
        .map_err(|_| PhoneError::KeyBundleDecrypt)?;
    if bundle.len() != 96 {
        return Err(PhoneError::KeyBundleDecrypt);
    }
    let (bundle_companion, rest) = bundle.split_at(32);
    let (bundle_primary, random) = rest.split_at(32);
    if bundle_companion != companion_identity_pub {
        return Err(PhoneError::KeyBundleIdentity("companion"));
    }
    if bundle_primary != account.public_bytes() {
        return Err(PhoneError::KeyBundleIdentity("primary"));
    }

    let companion_identity = PublicKey::from_djb_public_key_bytes(companion_identity_pub)
        .map_err(|e| PhoneError::InvalidKey(e.to_string()))?;
    let identity_shared = account
        .pair
        .private_key
        .calculate_agreement(&companion_identity)
        .map_err(|e| PhoneError::InvalidKey(e.to_string()))?;

    let mut material = Vec::with_capacity(96);
    material.extend_from_slice(&ephemeral_shared);
    material.extend_from_slice(&identity_shared);
    material.extend_from_slice(random);
    let mut adv_secret = [0u8; 32];
    wacore::crypto::hkdf_sha256_into(&material, None, ADV_SECRET_INFO, &mut adv_secret)
        .map_err(|_| PhoneError::KeyDerivation)?;
    Ok(adv_secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wacore::companion_reg::CompanionWebClientType;
    use wacore::pair::{DeviceState, PairUtils};

    fn companion_state() -> DeviceState {
        let mut rng = rand::make_rng::<rand::rngs::StdRng>();
        let mut adv_secret_key = [0u8; 32];
        rand::RngExt::fill(&mut rng, &mut adv_secret_key);
        DeviceState {
            identity_key: KeyPair::generate(&mut rng),
            noise_key: KeyPair::generate(&mut rng),
            adv_secret_key,
        }
    }

    #[test]
    fn parses_the_qr_code_the_client_makes() {
        let state = companion_state();
        let qr = PairUtils::make_qr_data(&state, "2@abcDEF+/=", CompanionWebClientType::Chrome);
        let parsed = parse_qr(&qr).expect("client QR parses");
        assert_eq!(parsed.reference, "2@abcDEF+/=");
        assert_eq!(parsed.noise_pub, raw_public(&state.noise_key.public_key));
        assert_eq!(
            parsed.identity_pub,
            raw_public(&state.identity_key.public_key)
        );
        assert_eq!(parsed.adv_secret, state.adv_secret_key);
        assert_eq!(
            parsed.client_type,
            Some(CompanionWebClientType::Chrome.to_string())
        );
    }

    #[test]
    fn rejects_malformed_qr_codes_with_typed_errors() {
        let key = BASE64.encode([7u8; 32]);
        let short = BASE64.encode([7u8; 31]);
        let ok = format!("ref,{key},{key},{key},9");
        assert!(parse_qr(&ok).is_ok());
        let four = parse_qr(&format!("ref,{key},{key},{key}")).expect("4-field QR parses");
        assert_eq!(four.client_type, None);
        assert_eq!(four.adv_secret, [7u8; 32]);
        assert!(matches!(parse_qr(""), Err(PhoneError::QrFieldCount(1))));
        assert!(matches!(
            parse_qr(&format!("ref,{key},{key}")),
            Err(PhoneError::QrFieldCount(3))
        ));
        assert!(matches!(
            parse_qr(&format!("ref,{key},{key},{key},9,extra")),
            Err(PhoneError::QrFieldCount(6))
        ));
        assert!(matches!(
            parse_qr(&format!(",{key},{key},{key},9")),
            Err(PhoneError::QrEmptyField("ref"))
        ));
        assert!(matches!(
            parse_qr(&format!("ref,{key},{key},{key},")),
            Err(PhoneError::QrEmptyField("client_type"))
        ));
        assert!(matches!(
            parse_qr(&format!("ref,{key},not*base64,{key},9")),
            Err(PhoneError::QrBase64("identity_pub"))
        ));
        assert!(matches!(
            parse_qr(&format!("ref,{key},{key},{short},9")),
            Err(PhoneError::QrKeyLength {
                field: "adv_secret",
                len: 31
            })
        ));
    }

    #[test]
    fn account_key_round_trips_and_is_deterministic_per_phone() {
        let key = AccountKey::generate();
        let again = AccountKey::from_bytes(&key.to_bytes()).unwrap();
        assert_eq!(key.public_bytes(), again.public_bytes());

        let json = serde_json::to_string(&key).unwrap();
        let back: AccountKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back.public_bytes(), key.public_bytes());

        assert_eq!(
            AccountKey::for_phone("15551234567").public_bytes(),
            AccountKey::for_phone("15551234567").public_bytes()
        );
        assert_ne!(
            AccountKey::for_phone("15551234567").public_bytes(),
            AccountKey::for_phone("15551234568").public_bytes()
        );
    }

    #[test]
    fn client_accepts_the_device_identity_container() {
        let state = companion_state();
        let account = AccountKey::generate();
        let companion_pub = raw_public(&state.identity_key.public_key);
        let container =
            device_identity_container(&account, &companion_pub, &state.adv_secret_key, 1, 7)
                .unwrap();

        let (signed_back, key_index) =
            PairUtils::do_pair_crypto(&state, &container).expect("client verifies the container");
        assert_eq!(key_index, 1);

        // The companion's reply carries a device signature we can check.
        assert_eq!(
            verify_pair_device_sign(&account, &companion_pub, &signed_back).unwrap(),
            1
        );
        let other_account = AccountKey::generate();
        assert!(matches!(
            verify_pair_device_sign(&other_account, &companion_pub, &signed_back),
            Err(PhoneError::DeviceIdentityAccount)
        ));
        let other_companion = raw_public(&companion_state().identity_key.public_key);
        assert!(matches!(
            verify_pair_device_sign(&account, &other_companion, &signed_back),
            Err(PhoneError::DeviceSignature)
        ));
    }

    #[test]
    fn client_rejects_a_wrong_adv_secret_with_hmac_mismatch() {
        let state = companion_state();
        let account = AccountKey::generate();
        let companion_pub = raw_public(&state.identity_key.public_key);
        let wrong = [0x5Au8; 32];
        let container = device_identity_container(&account, &companion_pub, &wrong, 1, 7).unwrap();
        let err = PairUtils::do_pair_crypto(&state, &container).expect_err("must be rejected");
        assert_eq!((err.code, err.text), (401, "hmac-mismatch"));
    }

    #[test]
    fn client_rejects_a_signature_for_another_companion() {
        let state = companion_state();
        let account = AccountKey::generate();
        let someone_else = raw_public(&companion_state().identity_key.public_key);
        let container =
            device_identity_container(&account, &someone_else, &state.adv_secret_key, 1, 7)
                .unwrap();
        let err = PairUtils::do_pair_crypto(&state, &container).expect_err("must be rejected");
        assert_eq!((err.code, err.text), (401, "signature-mismatch"));
    }

    /// Runs the client's own pair-code functions for the companion side and
    /// ours for the phone side; both must land on the same ADV secret, and the
    /// container keyed by it must pass the client's verification.
    #[test]
    fn pair_code_derivation_matches_the_client() {
        let code = PairCodeUtils::generate_code();
        let mut state = companion_state();
        let account = AccountKey::generate();
        let companion_ephemeral = KeyPair::generate(&mut rand::make_rng::<rand::rngs::StdRng>());

        // Stage 1 (companion_hello), client side.
        let wrapped_companion = PairCodeUtils::encrypt_ephemeral_pub(
            &raw_public(&companion_ephemeral.public_key),
            &code,
        );
        // Stage 2 (primary_hello), phone side.
        let (session, wrapped_primary) = primary_hello(&code, &wrapped_companion).unwrap();
        assert_eq!(wrapped_primary.len(), 80);
        // Stage 2 handling and companion_finish, client side.
        let primary_ephemeral =
            PairCodeUtils::decrypt_primary_ephemeral_pub(&wrapped_primary, &code).unwrap();
        assert_eq!(primary_ephemeral, session.ephemeral_pub());
        let (bundle, client_adv_secret) = PairCodeUtils::prepare_key_bundle(
            &companion_ephemeral,
            &primary_ephemeral,
            &account.public_bytes(),
            &state.identity_key,
        )
        .unwrap();
        // Stage 3, phone side.
        let companion_pub = raw_public(&state.identity_key.public_key);
        let phone_adv_secret = finish(&session, &account, &companion_pub, &bundle).unwrap();
        assert_eq!(phone_adv_secret, client_adv_secret);

        // The client now verifies pair-success with the rotated secret.
        state.adv_secret_key = client_adv_secret;
        let container =
            device_identity_container(&account, &companion_pub, &phone_adv_secret, 1, 3).unwrap();
        PairUtils::do_pair_crypto(&state, &container).expect("pair-code pair-success verifies");

        // A bundle meant for another account is refused.
        let stranger = AccountKey::generate();
        assert!(matches!(
            finish(&session, &stranger, &companion_pub, &bundle),
            Err(PhoneError::KeyBundleIdentity("primary"))
        ));
        assert!(matches!(
            finish(&session, &account, &[9u8; 32], &bundle),
            Err(PhoneError::KeyBundleIdentity("companion"))
        ));
        assert!(matches!(
            finish(&session, &account, &companion_pub, &bundle[1..]),
            Err(PhoneError::KeyBundleLength(_))
        ));
    }

    #[test]
    fn wrong_pair_code_fails_at_finish() {
        let code = PairCodeUtils::generate_code();
        let wrong_code = if code == "AAAAAAAA" {
            "BBBBBBBB"
        } else {
            "AAAAAAAA"
        };
        let state = companion_state();
        let account = AccountKey::generate();
        let companion_ephemeral = KeyPair::generate(&mut rand::make_rng::<rand::rngs::StdRng>());

        let wrapped_companion = PairCodeUtils::encrypt_ephemeral_pub(
            &raw_public(&companion_ephemeral.public_key),
            &code,
        );
        let (session, wrapped_primary) = primary_hello(wrong_code, &wrapped_companion)
            .expect("a wrong code is not detectable at primary_hello");
        // Whatever the companion unwraps, the bundle cannot be opened.
        let primary_ephemeral =
            PairCodeUtils::decrypt_primary_ephemeral_pub(&wrapped_primary, &code).unwrap();
        let (bundle, _) = PairCodeUtils::prepare_key_bundle(
            &companion_ephemeral,
            &primary_ephemeral,
            &account.public_bytes(),
            &state.identity_key,
        )
        .unwrap();
        let companion_pub = raw_public(&state.identity_key.public_key);
        assert!(matches!(
            finish(&session, &account, &companion_pub, &bundle),
            Err(PhoneError::KeyBundleDecrypt)
        ));
        assert!(matches!(
            primary_hello(&code, &wrapped_companion[..79]),
            Err(PhoneError::PairCode(_))
        ));
    }
}
