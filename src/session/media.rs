//! Taking in a media send's bytes: streamed from wherever they come (an
//! upload, a fetched URL, a stored blob being re-keyed), capped, sniffed
//! from their first bytes, encrypted with WhatsApp's media scheme and
//! written to a blob file (`crate::store::media_blobs`) — never held whole
//! in memory.

use super::outbound::{BlobMeta, MediaKind};
use super::sniff::{SNIFF_LEN, sniff};
use crate::store::media_blobs::BlobFile;
use crate::store::{Store, StoreError};
use crate::wa::media_out::BlobEncryptor;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the media is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the media is empty")]
    Empty,
    #[error("reading the media: {0}")]
    Source(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("encrypting the media: {0}")]
    Encrypt(String),
}

/// Bytes taken in: their blob (committed) and what they were found to be.
#[derive(Clone, Debug)]
pub struct Ingested {
    pub blob: BlobMeta,
    /// The sniffed MIME type, if known.
    pub sniffed: Option<&'static str>,
}

impl Ingested {
    pub fn size(&self) -> u64 {
        self.blob.file_length
    }
}

/// A blob being taken in: [`Ingest::push`] plaintext, then
/// [`Ingest::finish`]. Dropped unfinished, it leaves nothing behind.
pub struct Ingest {
    file: BlobFile,
    head: Vec<u8>,
    sniffed: Option<&'static str>,
    enc: Option<BlobEncryptor>,
    /// The kind whose keys encrypt it; `None`: chosen from the sniffed type.
    keys_for: Option<MediaKind>,
    total: u64,
    cap: u64,
    out: Vec<u8>,
}

impl Ingest {
    /// A new blob of the session under `prefix`, at most `cap` bytes.
    pub async fn start(
        store: &Store,
        prefix: &[u8],
        cap: u64,
        keys_for: Option<MediaKind>,
    ) -> Result<Self, IngestError> {
        Ok(Self {
            file: store.media_blob_create(prefix).await?,
            head: Vec::with_capacity(SNIFF_LEN),
            sniffed: None,
            enc: None,
            keys_for,
            total: 0,
            cap,
            out: Vec::new(),
        })
    }

    /// How many bytes came so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub async fn push(&mut self, chunk: &[u8]) -> Result<(), IngestError> {
        self.total += chunk.len() as u64;
        if self.total > self.cap {
            return Err(IngestError::TooLarge { limit: self.cap });
        }
        if self.enc.is_none() {
            self.head.extend_from_slice(chunk);
            if self.head.len() < SNIFF_LEN {
                return Ok(());
            }
            let head = std::mem::take(&mut self.head);
            self.begin(&head)?;
            return self.encrypt(&head).await;
        }
        self.encrypt(chunk).await
    }

    fn begin(&mut self, head: &[u8]) -> Result<(), IngestError> {
        self.sniffed = sniff(head);
        let kind = self
            .keys_for
            .unwrap_or_else(|| MediaKind::for_mime(self.sniffed.unwrap_or_default()));
        self.enc = Some(BlobEncryptor::new(kind).map_err(|e| IngestError::Encrypt(e.to_string()))?);
        Ok(())
    }

    async fn encrypt(&mut self, plain: &[u8]) -> Result<(), IngestError> {
        let Some(enc) = self.enc.as_mut() else {
            return Ok(());
        };
        self.out.clear();
        enc.update(plain, &mut self.out);
        self.file.write(&self.out).await?;
        Ok(())
    }

    /// Encrypts the end, commits the blob (durable on return).
    pub async fn finish(mut self) -> Result<Ingested, IngestError> {
        if self.total == 0 {
            return Err(IngestError::Empty);
        }
        if self.enc.is_none() {
            let head = std::mem::take(&mut self.head);
            self.begin(&head)?;
            self.encrypt(&head).await?;
        }
        let Some(enc) = self.enc.take() else {
            return Err(IngestError::Empty);
        };
        let mut tail = Vec::new();
        let blob = enc
            .finish(&mut tail, self.file.name().to_owned())
            .map_err(|e| IngestError::Encrypt(e.to_string()))?;
        self.file.write(&tail).await?;
        self.file.commit().await?;
        Ok(Ingested {
            blob,
            sniffed: self.sniffed,
        })
    }
}

/// A copy of a stored blob, encrypted again for `kind` (a Graph upload
/// sent as another kind, a picture sent as a document), as a new blob of
/// the session under `prefix`.
pub async fn rekey(
    store: &Store,
    prefix: &[u8],
    from: &BlobMeta,
    kind: MediaKind,
) -> Result<Ingested, IngestError> {
    let path = store.media_blob_path(&from.name)?;
    let mut ingest = Ingest::start(store, prefix, u64::MAX, Some(kind)).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let meta = from.clone();
    let reader =
        tokio::task::spawn_blocking(move || crate::wa::media_out::decrypt_blob(path, &meta, tx));
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.map_err(IngestError::Source)?;
        ingest.push(&chunk).await?;
    }
    let _ = reader.await;
    ingest.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ingest_sniffs_caps_and_rekeys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            &crate::store::crypto::MasterKey::generate().unwrap(),
        )
        .unwrap();
        let prefix = [7u8; 32];
        let mut jpeg = b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00".to_vec();
        jpeg.extend((0..100_000u32).map(|i| (i % 253) as u8));
        let mut ingest = Ingest::start(&store, &prefix, 1 << 20, None).await.unwrap();
        for chunk in jpeg.chunks(3).take(5) {
            ingest.push(chunk).await.unwrap();
        }
        ingest.push(&jpeg[15..]).await.unwrap();
        let got = ingest.finish().await.unwrap();
        assert_eq!(got.sniffed, Some("image/jpeg"));
        assert_eq!(got.blob.encrypted_as, MediaKind::Image);
        assert_eq!(got.size(), jpeg.len() as u64);
        let stored = std::fs::read(store.media_blob_path(&got.blob.name).unwrap()).unwrap();
        assert_ne!(&stored[..16], &jpeg[..16], "the bytes are stored encrypted");

        let doc = rekey(&store, &prefix, &got.blob, MediaKind::Document)
            .await
            .unwrap();
        assert_eq!(doc.blob.encrypted_as, MediaKind::Document);
        assert_eq!(
            doc.blob.file_sha256, got.blob.file_sha256,
            "the same plaintext"
        );
        assert_ne!(doc.blob.media_key, got.blob.media_key);

        let mut big = Ingest::start(&store, &prefix, 10, None).await.unwrap();
        assert!(matches!(
            big.push(&[0; 11]).await,
            Err(IngestError::TooLarge { limit: 10 })
        ));
        drop(big);
        let empty = Ingest::start(&store, &prefix, 10, None).await.unwrap();
        assert!(matches!(empty.finish().await, Err(IngestError::Empty)));
        // Only the two committed blobs are on disk.
        let files = std::fs::read_dir(dir.path().join("media-out"))
            .unwrap()
            .count();
        assert_eq!(files, 2);
    }
}
