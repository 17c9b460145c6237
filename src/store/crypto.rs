//! Encryption at rest: the master key and the value sealer.
//!
//! Every value the store writes (except the phone index, which has no value)
//! is sealed with AES-256-GCM under the daemon's master key:
//!
//! ```text
//! sealed = FORMAT (1 byte) ‖ nonce (12 bytes, fresh from SystemRandom) ‖ ciphertext ‖ tag (16 bytes)
//! aad    = tree name ‖ 0x00 ‖ key
//! ```
//!
//! Binding the tree name and the key into the AAD means a value copied under
//! another key, into another session's keyspace or into another tree fails
//! to open instead of being served as someone else's secret.
//!
//! Random 96-bit nonces keep the collision risk negligible up to about 2^32
//! seals under one key; a long-lived daemon with heavy traffic should rotate
//! the key (`rekey`) well before that.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::error::StoreError;

/// Length of a master key in bytes (AES-256).
pub const MASTER_KEY_LEN: usize = 32;

/// File name of a generated master key inside the data dir.
pub const GENERATED_KEY_FILE: &str = "master.key";

/// File name looked up in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=master-key:…`).
pub const CREDENTIAL_NAME: &str = "master-key";

/// First byte of every sealed value; bump when the layout changes.
const SEAL_FORMAT_V1: u8 = 1;
const TAG_LEN: usize = 16;
const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// The 32-byte key every stored value is sealed with. Never printed; wiped
/// from memory on drop.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; MASTER_KEY_LEN]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, StoreError> {
        let mut bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| StoreError::Crypto("the system random generator failed"))?;
        Ok(Self(bytes))
    }

    /// Reads a key file: either exactly 32 raw bytes, or 64 hex digits
    /// (surrounding whitespace such as a trailing newline is ignored).
    pub fn from_file(path: &Path) -> Result<Self, StoreError> {
        let contents = Zeroizing::new(fs::read(path).map_err(|source| StoreError::KeyFile {
            path: path.to_path_buf(),
            source,
        })?);
        Self::parse(&contents).ok_or_else(|| StoreError::KeyFormat {
            path: path.to_path_buf(),
        })
    }

    pub(super) fn parse(contents: &[u8]) -> Option<Self> {
        if let Ok(raw) = <[u8; MASTER_KEY_LEN]>::try_from(contents) {
            return Some(Self::from_bytes(raw));
        }
        let text = std::str::from_utf8(contents).ok()?.trim();
        // `from_str_radix` alone would take a sign: "+f" reads as 15.
        if text.len() != MASTER_KEY_LEN * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        for (slot, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *slot = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self(bytes))
    }

    /// Writes the key as 64 hex digits to a new file with mode 0600. Fails if
    /// the file already exists, so an existing key is never overwritten.
    pub fn write_new_file(&self, path: &Path) -> Result<(), StoreError> {
        let io_err = |source| StoreError::KeyFile {
            path: path.to_path_buf(),
            source,
        };
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io_err)?;
        let mut hex = Zeroizing::new(String::with_capacity(MASTER_KEY_LEN * 2 + 1));
        crate::hex::push_hex(&mut hex, self.0.as_slice());
        hex.push('\n');
        file.write_all(hex.as_bytes()).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        if let Some(dir) = path.parent() {
            // Make the new directory entry durable too; best effort where the
            // platform cannot open directories.
            if let Ok(dir) = fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }

    /// Atomically installs the key at `path`, replacing any key there
    /// (e.g. `<data_dir>/master.key` after a rotation): writes a 0600
    /// temporary file next to it, syncs it, then renames it over `path`.
    pub fn install_file(&self, path: &Path) -> Result<(), StoreError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::KeyFile { path: tmp, source }),
        }
        self.write_new_file(&tmp)?;
        fs::rename(&tmp, path).map_err(|source| StoreError::KeyFile {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(dir) = path.parent()
            && let Ok(dir) = fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    pub(super) fn bytes(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.0
    }
}

/// Where the master key was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The configured key file.
    Configured(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/master-key` (systemd credentials).
    Credential(PathBuf),
    /// `<data_dir>/master.key`, generated on an earlier first start.
    DataDir(PathBuf),
    /// Generated just now into `<data_dir>/master.key` (first start).
    Generated(PathBuf),
}

/// Where to look for the master key, in order.
#[derive(Debug, Clone, Default)]
pub struct KeyConfig {
    /// An explicitly configured key file; wins over everything else.
    pub key_file: Option<PathBuf>,
    /// systemd's `$CREDENTIALS_DIRECTORY`.
    pub credentials_dir: Option<PathBuf>,
}

impl KeyConfig {
    /// The configured file plus `$CREDENTIALS_DIRECTORY` from the environment.
    pub fn from_env(key_file: Option<PathBuf>) -> Self {
        Self {
            key_file,
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }
}

/// Finds the master key for the store in `data_dir`: the configured file,
/// then `$CREDENTIALS_DIRECTORY/master-key`, then `<data_dir>/master.key`.
///
/// If none exists and the data dir holds no store yet (first start), a key is
/// generated into `<data_dir>/master.key` (mode 0600) and a warning is
/// logged. If a store already exists, no key is generated: a new key could
/// never open it.
pub fn load_master_key(
    config: &KeyConfig,
    data_dir: &Path,
) -> Result<(MasterKey, KeySource), StoreError> {
    if let Some(path) = &config.key_file {
        return Ok((
            MasterKey::from_file(path)?,
            KeySource::Configured(path.clone()),
        ));
    }
    if let Some(dir) = &config.credentials_dir {
        let path = dir.join(CREDENTIAL_NAME);
        if path.exists() {
            return Ok((MasterKey::from_file(&path)?, KeySource::Credential(path)));
        }
    }
    let generated = data_dir.join(GENERATED_KEY_FILE);
    if generated.exists() {
        return Ok((
            MasterKey::from_file(&generated)?,
            KeySource::DataDir(generated),
        ));
    }
    if super::store_exists(data_dir) {
        return Err(StoreError::MissingMasterKey {
            data_dir: data_dir.to_path_buf(),
        });
    }
    super::create_data_dir(data_dir)?;
    let key = MasterKey::generate()?;
    key.write_new_file(&generated)?;
    tracing::warn!(
        path = %generated.display(),
        "generated a new store master key; it sits next to the data it protects, \
         so back it up separately and prefer a key file or a systemd credential"
    );
    Ok((key, KeySource::Generated(generated)))
}

/// Seals and opens values with one master key.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(..)")
    }
}

/// A value did not open: wrong key, tampering, a value moved under another
/// key, truncation, or an unknown format byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenError;

impl Sealer {
    pub fn new(master: &MasterKey) -> Self {
        // AES_256_GCM accepts exactly 32 bytes, which MasterKey guarantees.
        let unbound = match UnboundKey::new(&AES_256_GCM, master.bytes()) {
            Ok(key) => key,
            Err(_) => unreachable!("a 32-byte key is always valid for AES-256-GCM"),
        };
        Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        }
    }

    /// Seals `plaintext` stored under `key` in tree `tree`.
    pub fn seal(&self, tree: &[u8], key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| StoreError::Crypto("the system random generator failed"))?;
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.push(SEAL_FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(tree, key)),
                &mut out[1 + NONCE_LEN..],
            )
            .map_err(|_| StoreError::Crypto("AES-GCM sealing failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a value sealed by [`Sealer::seal`] under the same tree and key.
    pub fn open(&self, tree: &[u8], key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < SEAL_OVERHEAD || sealed[0] != SEAL_FORMAT_V1 {
            return Err(OpenError);
        }
        let nonce =
            <[u8; NONCE_LEN]>::try_from(&sealed[1..1 + NONCE_LEN]).map_err(|_| OpenError)?;
        let mut buf = sealed[1 + NONCE_LEN..].to_vec();
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(tree, key)),
                &mut buf,
            )
            .map_err(|_| OpenError)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

fn aad(tree: &[u8], key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(tree.len() + 1 + key.len());
    aad.extend_from_slice(tree);
    aad.push(0);
    aad.extend_from_slice(key);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&MasterKey::from_bytes([byte; MASTER_KEY_LEN]))
    }

    #[test]
    fn seal_open_round_trip_and_fresh_nonces() {
        let s = sealer(1);
        let a = s.seal(b"t", b"k", b"secret").unwrap();
        let b = s.seal(b"t", b"k", b"secret").unwrap();
        assert_ne!(a, b, "each seal must use a fresh nonce");
        assert_eq!(s.open(b"t", b"k", &a).unwrap(), b"secret");
        assert_eq!(s.open(b"t", b"k", &b).unwrap(), b"secret");
    }

    #[test]
    fn aad_binds_tree_and_key() {
        let s = sealer(1);
        let sealed = s.seal(b"tree", b"key", b"v").unwrap();
        assert_eq!(s.open(b"tree", b"kex", &sealed), Err(OpenError));
        assert_eq!(s.open(b"tref", b"key", &sealed), Err(OpenError));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        let sealed = s.seal(b"ab", b"c", b"v").unwrap();
        assert_eq!(s.open(b"a", b"bc", &sealed), Err(OpenError));
    }

    #[test]
    fn wrong_key_tamper_truncation_fail() {
        let sealed = sealer(1).seal(b"t", b"k", b"secret").unwrap();
        assert_eq!(sealer(2).open(b"t", b"k", &sealed), Err(OpenError));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert_eq!(sealer(1).open(b"t", b"k", &bad), Err(OpenError), "byte {i}");
        }
        assert_eq!(
            sealer(1).open(b"t", b"k", &sealed[..sealed.len() - 1]),
            Err(OpenError)
        );
        assert_eq!(sealer(1).open(b"t", b"k", &[]), Err(OpenError));
    }

    #[test]
    fn signs_are_not_hex_digits() {
        // Found by the key-file property test: "+0" once read as 0.
        let mut text = "0".repeat(64);
        text.replace_range(8..9, "+");
        assert!(MasterKey::parse(text.as_bytes()).is_none());
        assert!(MasterKey::parse(format!("{}\n", "+f".repeat(32)).as_bytes()).is_none());
        assert!(MasterKey::parse("0f".repeat(32).as_bytes()).is_some());
    }

    #[test]
    fn key_file_formats() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        fs::write(&raw, [7u8; 32]).unwrap();
        assert_eq!(MasterKey::from_file(&raw).unwrap().bytes(), &[7u8; 32]);

        let hex = dir.path().join("hex");
        fs::write(&hex, format!("{}\n", "0a".repeat(32))).unwrap();
        assert_eq!(MasterKey::from_file(&hex).unwrap().bytes(), &[10u8; 32]);

        let short = dir.path().join("short");
        fs::write(&short, [1u8; 31]).unwrap();
        assert!(matches!(
            MasterKey::from_file(&short),
            Err(StoreError::KeyFormat { .. })
        ));

        let written = dir.path().join("written");
        let key = MasterKey::generate().unwrap();
        key.write_new_file(&written).unwrap();
        assert_eq!(MasterKey::from_file(&written).unwrap().bytes(), key.bytes());
        assert!(
            key.write_new_file(&written).is_err(),
            "an existing key file must never be overwritten"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&written).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
