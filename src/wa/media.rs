//! Received media: fetching an attachment's encrypted bytes from the CDN
//! into a file, proving them (`file_enc_sha256` and the MAC) before anything
//! is decrypted, and decrypting the proven file into any writer with its
//! plaintext SHA-256 checked as it goes.
//!
//! The GET goes through the client's own `HttpClient` (the one whatsd
//! installs, which trusts fakewa's CA in test builds), not through the
//! library's `download_to_writer`: that writes *plaintext* into its writer
//! before the MAC at the very end is checked, so the bytes at rest in the
//! data dir would be plaintext. Here the file only ever holds WhatsApp's
//! ciphertext, and both hashes are proven over it as it streams in, in the
//! same pass (ring's SHA-256 and HMAC; the keys from wacore's
//! `get_media_keys`); decryption is wacore's `decrypt_stream_to_writer`.

use std::io::{Read, Seek, SeekFrom, Write};

use whatsapp_rust::download::{DownloadParams, DownloadUtils, MediaHost, MediaRoute, MediaType};
use whatsapp_rust::http::{HttpClient, HttpRequest};
use whatsapp_rust::wacore::libsignal::crypto::aes_256_cbc_decrypt_into;

use super::Queries;
use crate::store::media_refs::MediaRef;

/// The truncated HMAC-SHA256 at the end of every encrypted media file.
const MAC_LEN: usize = 10;
const BLOCK: usize = 16;
const READ_CHUNK: usize = 64 * 1024;
/// Largest encrypted body fetched when the message gave no length
/// (WhatsApp's own cap on documents is 2 GB).
const MAX_UNKNOWN_LEN: u64 = 2 << 30;

/// Why a media download did not yield the file.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The CDN no longer has it (404/410), even with a fresh media
    /// connection.
    #[error("the media is no longer on WhatsApp's servers ({0})")]
    Expired(String),
    /// The bytes are not what the message promised: a hash or the MAC
    /// does not match, or the file is malformed.
    #[error("{0}")]
    Undecryptable(String),
    /// The CDN could not be reached or refused for another reason.
    #[error("WhatsApp's media servers did not deliver the file: {0}")]
    Unavailable(String),
}

/// An encrypted file fetched and proven: its length, and the plaintext's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub encrypted_len: u64,
    pub plaintext_len: u64,
}

/// wacore's key-derivation type of an attachment kind.
fn media_type(kind: &str) -> Result<MediaType, MediaError> {
    Ok(match kind {
        "image" => MediaType::Image,
        "video" => MediaType::Video,
        "audio" => MediaType::Audio,
        "document" => MediaType::Document,
        "sticker" => MediaType::Sticker,
        other => {
            return Err(MediaError::Undecryptable(format!(
                "unknown media kind {other:?}"
            )));
        }
    })
}

/// IV, cipher key and MAC key.
type MediaKeys = ([u8; 16], [u8; 32], [u8; 32]);

/// The keys a media key expands to.
fn keys(r: &MediaRef) -> Result<MediaKeys, MediaError> {
    DownloadUtils::get_media_keys(&r.media_key, media_type(&r.kind)?)
        .map_err(|e| MediaError::Undecryptable(format!("bad media key: {e}")))
}

/// The encrypted length a plaintext of `plain` bytes has (PKCS#7 always
/// pads, 1 to 16 bytes), MAC included.
pub fn encrypted_len(plain: u64) -> u64 {
    (plain / BLOCK as u64 + 1) * BLOCK as u64 + MAC_LEN as u64
}

/// What one GET gave.
enum Got {
    Done {
        len: u64,
        sha: Vec<u8>,
        mac: Vec<u8>,
    },
    Status(u16),
}

impl Queries {
    /// Fetches `r`'s encrypted file into `file` (truncated first) and
    /// proves it; retried once with a fresh media connection when the CDN
    /// refuses the reference (401/403/404/410), as the library does.
    pub async fn fetch_media(
        &self,
        r: &MediaRef,
        file: std::fs::File,
    ) -> Result<Fetched, MediaError> {
        let media_type = media_type(&r.kind)?;
        let (iv, cipher_key, mac_key) = keys(r)?;
        let params = DownloadParams::encrypted(
            r.direct_path.clone(),
            &r.media_key,
            &r.file_sha256,
            &r.file_enc_sha256,
            r.file_length,
            media_type,
        );
        let cap = if r.file_length > 0 {
            encrypted_len(r.file_length)
        } else {
            MAX_UNKNOWN_LEN
        };
        let http = self.0.http_client.clone();
        let mut last = String::from("no media host answered");
        let mut refused = None;
        for attempt in 0..2 {
            let conn = self
                .0
                .refresh_media_conn(attempt > 0)
                .await
                .map_err(|e| MediaError::Unavailable(format!("media connection: {e}")))?;
            let route = MediaRoute::authenticated(
                conn.hosts
                    .iter()
                    .map(|h| MediaHost::new(h.hostname.clone()))
                    .collect(),
                conn.auth.clone(),
            );
            let requests = DownloadUtils::prepare_download_requests(&params, &route)
                .map_err(|e| MediaError::Undecryptable(format!("incomplete reference: {e}")))?;
            refused = None;
            for request in requests {
                let http = http.clone();
                let handle = file
                    .try_clone()
                    .map_err(|e| MediaError::Unavailable(e.to_string()))?;
                let url = request.url.clone();
                let got = tokio::task::spawn_blocking(move || {
                    get_into(http.as_ref(), &url, handle, &iv, &mac_key, cap)
                })
                .await
                .map_err(|e| MediaError::Unavailable(e.to_string()))?;
                match got {
                    Ok(Got::Done { len, sha, mac }) => {
                        return prove(
                            r,
                            len,
                            &sha,
                            &mac,
                            &file_tail(&file, len)?,
                            &iv,
                            &cipher_key,
                        );
                    }
                    Ok(Got::Status(status @ (401 | 403 | 404 | 410))) => {
                        refused = Some(status);
                        break;
                    }
                    Ok(Got::Status(status)) => last = format!("HTTP {status}"),
                    Err(e) => last = e,
                }
            }
            if refused.is_none() {
                break;
            }
        }
        match refused {
            Some(status @ (404 | 410)) => Err(MediaError::Expired(format!("HTTP {status}"))),
            Some(status) => Err(MediaError::Unavailable(format!("HTTP {status}"))),
            None => Err(MediaError::Unavailable(last)),
        }
    }

    /// Asks the sender's phone to upload `r` again (WhatsApp's media
    /// retry); the new direct path on success. Waits for the phone's
    /// answer (the library bounds it). [`MediaError::Expired`] when the
    /// phone refused (it no longer has the file, or the request did not
    /// open); [`MediaError::Unavailable`] when no answer came.
    pub async fn request_reupload(&self, r: &MediaRef) -> Result<String, MediaError> {
        use whatsapp_rust::{MediaRetryResult, MediaReuploadRequest};
        let chat: whatsapp_rust::Jid = r
            .chat
            .parse()
            .map_err(|e| MediaError::Unavailable(format!("chat {:?}: {e}", r.chat)))?;
        let sender: Option<whatsapp_rust::Jid> = r.sender.parse().ok();
        let participant = sender.as_ref().filter(|s| **s != chat);
        let request = MediaReuploadRequest {
            msg_id: &r.message_id,
            chat_jid: &chat,
            media_key: &r.media_key,
            is_from_me: r.from_me,
            participant,
        };
        match self.0.media_reupload().request(&request).await {
            Ok(MediaRetryResult::Success { direct_path }) => Ok(direct_path),
            Ok(other) => Err(MediaError::Expired(format!("re-upload refused: {other:?}"))),
            Err(e) => Err(MediaError::Unavailable(format!("re-upload: {e}"))),
        }
    }
}

/// One GET of `url` into `file` (blocking): the body is written as it
/// arrives, with its SHA-256 and the HMAC over IV ‖ ciphertext (all but the
/// last [`MAC_LEN`] bytes) computed in the same pass. A body longer than
/// `cap` is refused.
fn get_into(
    http: &dyn HttpClient,
    url: &str,
    mut file: std::fs::File,
    iv: &[u8; 16],
    mac_key: &[u8; 32],
    cap: u64,
) -> Result<Got, String> {
    let request = HttpRequest::get(url);
    let mut body: Box<dyn Read + Send> = if http.supports_streaming() {
        let response = http.execute_streaming(request).map_err(|e| e.to_string())?;
        if !(200..300).contains(&response.status_code) {
            return Ok(Got::Status(response.status_code));
        }
        response.body
    } else {
        // A client that cannot stream answers in memory; never the case
        // for whatsd's own client (src/wa/http.rs).
        let response = tokio::runtime::Handle::current()
            .block_on(http.execute(request))
            .map_err(|e| e.to_string())?;
        if !(200..300).contains(&response.status_code) {
            return Ok(Got::Status(response.status_code));
        }
        Box::new(std::io::Cursor::new(response.body))
    };
    file.set_len(0).map_err(|e| e.to_string())?;
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut out = std::io::BufWriter::with_capacity(READ_CHUNK, file);
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut mac =
        ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, mac_key));
    mac.update(iv);
    // The last MAC_LEN bytes seen are held back from the HMAC: they are
    // the MAC itself once the body ends.
    let mut held: Vec<u8> = Vec::with_capacity(READ_CHUNK + MAC_LEN);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut len: u64 = 0;
    loop {
        let n = body.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        len += n as u64;
        if len > cap {
            return Err(format!("the CDN sent more than the {cap} bytes expected"));
        }
        let chunk = &buf[..n];
        sha.update(chunk);
        out.write_all(chunk).map_err(|e| e.to_string())?;
        held.extend_from_slice(chunk);
        if held.len() > MAC_LEN {
            let ready = held.len() - MAC_LEN;
            mac.update(&held[..ready]);
            held.drain(..ready);
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    out.get_ref().sync_data().ok();
    let expected_mac = mac.sign();
    let mac_ok = held.len() == MAC_LEN && held == expected_mac.as_ref()[..MAC_LEN];
    Ok(Got::Done {
        len,
        sha: sha.finish().as_ref().to_vec(),
        mac: if mac_ok { held } else { Vec::new() },
    })
}

/// The last two cipher blocks and the MAC of a fetched file (enough to
/// learn the padding, hence the plaintext length).
fn file_tail(file: &std::fs::File, len: u64) -> Result<Vec<u8>, MediaError> {
    let want = (2 * BLOCK + MAC_LEN) as u64;
    let start = len.saturating_sub(want);
    let mut f = file
        .try_clone()
        .map_err(|e| MediaError::Unavailable(e.to_string()))?;
    f.seek(SeekFrom::Start(start))
        .map_err(|e| MediaError::Unavailable(e.to_string()))?;
    let mut tail = Vec::with_capacity(want as usize);
    f.take(want)
        .read_to_end(&mut tail)
        .map_err(|e| MediaError::Unavailable(e.to_string()))?;
    Ok(tail)
}

/// Checks a fetched file against its ref: `file_enc_sha256`, then the
/// MAC, then the padding (from the last block), which gives the plaintext
/// length.
fn prove(
    r: &MediaRef,
    len: u64,
    sha: &[u8],
    mac: &[u8],
    tail: &[u8],
    iv: &[u8; 16],
    cipher_key: &[u8; 32],
) -> Result<Fetched, MediaError> {
    if sha != r.file_enc_sha256.as_slice() {
        return Err(MediaError::Undecryptable(
            "the encrypted file's SHA-256 is not the message's file_enc_sha256".into(),
        ));
    }
    if mac.is_empty() {
        return Err(MediaError::Undecryptable(
            "the media MAC does not match: the file was altered or the key is wrong".into(),
        ));
    }
    let cipher_len = len.saturating_sub(MAC_LEN as u64);
    if cipher_len == 0 || !cipher_len.is_multiple_of(BLOCK as u64) {
        return Err(MediaError::Undecryptable(
            "the encrypted file is not whole AES blocks".into(),
        ));
    }
    let blocks = &tail[..tail.len() - MAC_LEN];
    let (prev, last) = if blocks.len() >= 2 * BLOCK {
        (
            &blocks[blocks.len() - 2 * BLOCK..blocks.len() - BLOCK],
            &blocks[blocks.len() - BLOCK..],
        )
    } else {
        (&iv[..], &blocks[blocks.len() - BLOCK..])
    };
    let mut plain_last = Vec::with_capacity(BLOCK);
    aes_256_cbc_decrypt_into(last, cipher_key, prev, &mut plain_last)
        .map_err(|_| MediaError::Undecryptable("bad padding in the last block".into()))?;
    let plaintext_len = cipher_len - BLOCK as u64 + plain_last.len() as u64;
    Ok(Fetched {
        encrypted_len: len,
        plaintext_len,
    })
}

/// Decrypts a fetched, proven file into `out` (blocking), checking the
/// plaintext against `file_sha256`. `out` has seen every byte but the
/// last write when a mismatch is found: the caller must treat its output
/// as void on `Err` (the API aborts the response).
pub fn decrypt_into(
    r: &MediaRef,
    file: std::fs::File,
    out: &mut impl Write,
) -> Result<u64, MediaError> {
    let media_type = media_type(&r.kind)?;
    let mut hashing = HashingWriter {
        inner: out,
        sha: ring::digest::Context::new(&ring::digest::SHA256),
    };
    let reader = std::io::BufReader::with_capacity(READ_CHUNK, file);
    // wacore writes a block (16 bytes) at a time: gathered here, so the
    // hash and the body see large writes.
    let mut gathered = std::io::BufWriter::with_capacity(READ_CHUNK, &mut hashing);
    let written =
        DownloadUtils::decrypt_stream_to_writer(reader, &r.media_key, media_type, &mut gathered)
            .map_err(|e| MediaError::Undecryptable(format!("decryption failed: {e}")))?;
    gathered
        .flush()
        .map_err(|e| MediaError::Unavailable(e.to_string()))?;
    drop(gathered);
    if hashing.sha.finish().as_ref() != r.file_sha256.as_slice() {
        return Err(MediaError::Undecryptable(
            "the decrypted file's SHA-256 is not the message's file_sha256".into(),
        ));
    }
    Ok(written)
}

struct HashingWriter<'a, W> {
    inner: &'a mut W,
    sha: ring::digest::Context,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Encrypts `plain` as a contact's phone would (tests and benches): the
/// ref's keys and hashes, and the encrypted file.
#[doc(hidden)]
pub fn encrypt_for_test(plain: &[u8], kind: &str) -> (MediaRef, Vec<u8>) {
    let media_type = media_type(kind).unwrap_or(MediaType::Document);
    let enc = whatsapp_rust::wacore::upload::encrypt_media(plain, media_type)
        .expect("encrypting test media");
    let r = MediaRef {
        message_id: "3EB0TEST".into(),
        kind: kind.into(),
        direct_path: "/v/t62/test".into(),
        media_key: enc.media_key.to_vec(),
        file_sha256: enc.file_sha256.to_vec(),
        file_enc_sha256: enc.file_enc_sha256.to_vec(),
        file_length: plain.len() as u64,
        mimetype: "application/octet-stream".into(),
        ..Default::default()
    };
    (r, enc.data_to_upload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP client serving one canned body, streaming.
    struct Canned(u16, Vec<u8>);

    #[async_trait::async_trait]
    impl HttpClient for Canned {
        async fn execute(
            &self,
            _: HttpRequest,
        ) -> anyhow::Result<whatsapp_rust::http::HttpResponse> {
            Ok(whatsapp_rust::http::HttpResponse {
                status_code: self.0,
                body: self.1.clone(),
            })
        }
        fn supports_streaming(&self) -> bool {
            true
        }
        fn execute_streaming(
            &self,
            _: HttpRequest,
        ) -> anyhow::Result<whatsapp_rust::wacore::net::StreamingHttpResponse> {
            Ok(whatsapp_rust::wacore::net::StreamingHttpResponse {
                status_code: self.0,
                body: Box::new(std::io::Cursor::new(self.1.clone())),
            })
        }
    }

    fn fetch(r: &MediaRef, body: Vec<u8>) -> (Result<Fetched, MediaError>, std::fs::File) {
        let file = tempfile::tempfile().unwrap();
        let (iv, cipher_key, mac_key) = keys(r).unwrap();
        let cap = encrypted_len(r.file_length);
        let got = get_into(
            &Canned(200, body),
            "https://x/",
            file.try_clone().unwrap(),
            &iv,
            &mac_key,
            cap,
        );
        let result = match got {
            Ok(Got::Done { len, sha, mac }) => prove(
                r,
                len,
                &sha,
                &mac,
                &file_tail(&file, len).unwrap(),
                &iv,
                &cipher_key,
            ),
            Ok(Got::Status(s)) => panic!("status {s}"),
            Err(e) => Err(MediaError::Unavailable(e)),
        };
        (result, file)
    }

    #[test]
    fn a_fetched_file_is_proven_then_decrypted_streaming() {
        for len in [0usize, 1, 15, 16, 17, 64 * 1024, 200 * 1024 + 5] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let (r, encrypted) = encrypt_for_test(&plain, "image");
            assert_eq!(encrypted.len() as u64, encrypted_len(len as u64));
            let (fetched, file) = fetch(&r, encrypted.clone());
            let fetched = fetched.unwrap();
            assert_eq!(fetched.plaintext_len, len as u64, "length {len}");
            assert_eq!(fetched.encrypted_len, encrypted.len() as u64);
            // At rest: the ciphertext, never the plaintext.
            let mut at_rest = Vec::new();
            file.try_clone().unwrap().seek(SeekFrom::Start(0)).unwrap();
            file.try_clone().unwrap().read_to_end(&mut at_rest).unwrap();
            assert_eq!(at_rest, encrypted);
            let mut out = Vec::new();
            file.try_clone().unwrap().seek(SeekFrom::Start(0)).unwrap();
            assert_eq!(decrypt_into(&r, file, &mut out).unwrap(), len as u64);
            assert_eq!(out, plain);
        }
    }

    #[test]
    fn a_bad_mac_or_hash_is_refused_before_decryption() {
        let plain = vec![42u8; 5000];
        let (r, encrypted) = encrypt_for_test(&plain, "document");
        // A flipped MAC byte, the enc hash patched to match: the MAC catches it.
        let mut bad_mac = encrypted.clone();
        let last = bad_mac.len() - 1;
        bad_mac[last] ^= 1;
        let mut r_mac = r.clone();
        r_mac.file_enc_sha256 = ring::digest::digest(&ring::digest::SHA256, &bad_mac)
            .as_ref()
            .to_vec();
        let err = fetch(&r_mac, bad_mac.clone()).0.unwrap_err();
        assert!(err.to_string().contains("MAC"), "{err}");
        // The same bytes against the real ref: the enc hash catches it first.
        let err = fetch(&r, bad_mac).0.unwrap_err();
        assert!(err.to_string().contains("file_enc_sha256"), "{err}");
        // A body longer than the message said is cut off.
        let mut long = encrypted.clone();
        long.extend_from_slice(&[0; 64]);
        assert!(matches!(fetch(&r, long).0, Err(MediaError::Unavailable(_))));
    }

    #[test]
    fn a_plaintext_hash_mismatch_fails_the_decryption() {
        let plain = vec![1u8; 100_000];
        let (mut r, encrypted) = encrypt_for_test(&plain, "video");
        r.file_sha256 = vec![0; 32];
        let (fetched, file) = fetch(&r, encrypted);
        fetched.unwrap();
        file.try_clone().unwrap().seek(SeekFrom::Start(0)).unwrap();
        let err = decrypt_into(&r, file, &mut std::io::sink()).unwrap_err();
        assert!(err.to_string().contains("file_sha256"), "{err}");
    }
}
