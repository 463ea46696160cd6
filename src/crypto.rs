//! Encryption at rest for Haven: patient data leaving the primary tables (operation
//! parameters, before-images, backups, uploads, exports) is encrypted with AES-256-GCM,
//! so a copied disk, backup or dump reveals nothing without the master key.
//!
//! * Sealed blobs: `0x48 0x01 | key id (8) | nonce (12) | ciphertext+tag`, aad = caller
//!   context (e.g. operation id) so blobs cannot be swapped between rows.
//! * Files (STREAM construction, constant memory): header `"HVNF" 0x01 | key id (8) |
//!   nonce prefix (7)`, then segments of up to [`SEGMENT_SIZE`] plaintext bytes + tag.
//!   Segment `i` uses nonce `prefix || i (u32 BE) || last` and aad `header || caller aad`,
//!   detecting truncation, reordering and swapping between files.
//!
//! Every ciphertext names its key by id, so a [`Keyring`] can hold old keys after rotation.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use anyhow::Context;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use futures::Stream;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Plaintext bytes per file segment: large enough to amortise the tag, small enough that
/// streaming a 1 GB export needs only a few segments of memory.
pub const SEGMENT_SIZE: usize = 64 * 1024;

const TAG_LEN: usize = 16;
const KEY_ID_LEN: usize = 8;
const SEAL_MAGIC: u8 = 0x48; // 'H'
const SEAL_VERSION: u8 = 1;
const SEAL_NONCE_LEN: usize = 12;
const SEAL_HEADER_LEN: usize = 2 + KEY_ID_LEN + SEAL_NONCE_LEN;
const FILE_MAGIC: &[u8; 4] = b"HVNF";
const FILE_VERSION: u8 = 1;
const NONCE_PREFIX_LEN: usize = 7;
const FILE_HEADER_LEN: usize = 4 + 1 + KEY_ID_LEN + NONCE_PREFIX_LEN; // 20
const ENC_SEGMENT_SIZE: usize = SEGMENT_SIZE + TAG_LEN;

/// Errors from key parsing and decryption. Messages never include key or plaintext
/// bytes, so they are safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The configured master key is malformed; the service must not start with it.
    #[error("invalid master key: {0}")]
    InvalidKey(String),
    /// The data names a key id that is not in the keyring (e.g. a rotated-out key).
    #[error("data was encrypted with a key that is not in the keyring")]
    UnknownKey,
    /// Bad format, truncation, tampering, wrong context (aad) or wrong key.
    #[error("encrypted data is corrupt, truncated or does not belong here")]
    Corrupt,
}

/// The 32-byte AES-256 master key. Opaque (redacted `Debug`) so it cannot leak through
/// logs or error reports.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Parse a key from configuration (e.g. an environment variable): standard base64 of
    /// exactly 32 bytes, surrounding whitespace ignored.
    pub fn from_base64(s: &str) -> Result<MasterKey, CryptoError> {
        let bytes = BASE64
            .decode(s.trim())
            .map_err(|_| CryptoError::InvalidKey("not valid standard base64".into()))?;
        let len = bytes.len();
        let bytes = <[u8; 32]>::try_from(bytes)
            .map_err(|_| CryptoError::InvalidKey(format!("expected 32 bytes, got {len}")))?;
        Ok(MasterKey(bytes))
    }

    /// Load the key file at `path`, or create it (mode 0600) with a fresh random key on
    /// first start. An existing file is never overwritten: replacing a key would make all
    /// data encrypted under it unreadable.
    pub fn load_or_create(path: &Path) -> anyhow::Result<MasterKey> {
        let ctx = |what: &str| format!("{what} master key file {}", path.display());
        match std::fs::read_to_string(path) {
            Ok(s) => return MasterKey::from_base64(&s).with_context(|| ctx("invalid")),
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| ctx("reading"))
            }
            Err(_) => {}
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            let mut builder = std::fs::DirBuilder::new();
            let created = builder.recursive(true).mode(0o700).create(dir);
            created.with_context(|| ctx("creating the directory of"))?;
        }
        let mut key = MasterKey([0u8; 32]);
        OsRng.fill_bytes(&mut key.0);
        let mut options = std::fs::OpenOptions::new();
        let mut file = match options.write(true).create_new(true).mode(0o600).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Lost a creation race: use the winner's key once it has been written.
                std::thread::sleep(Duration::from_millis(200));
                let s = std::fs::read_to_string(path).with_context(|| ctx("reading"))?;
                return MasterKey::from_base64(&s).with_context(|| ctx("invalid"));
            }
            Err(e) => return Err(e).with_context(|| ctx("creating")),
        };
        let line = format!("{}\n", BASE64.encode(key.0));
        if let Err(e) = file
            .write_all(line.as_bytes())
            .and_then(|_| file.sync_all())
        {
            // Nothing is encrypted under this key yet: remove the partial file so the
            // next start can retry instead of failing on a half-written key.
            let _ = std::fs::remove_file(path);
            return Err(e).with_context(|| ctx("writing"));
        }
        // Persist the directory entry too: losing the key file means losing the data.
        if let Some(dir) = dir {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(key)
    }

    /// Short public identifier of this key (16 hex chars), stored with every ciphertext so
    /// the right key can be picked after a rotation. Reveals nothing about the key.
    pub fn key_id(&self) -> String {
        hex::encode(self.id_bytes())
    }

    fn id_bytes(&self) -> [u8; KEY_ID_LEN] {
        let digest = Sha256::new()
            .chain_update(b"haven-key-id")
            .chain_update(self.0)
            .finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        id
    }
}

/// One key, ready to use: its id, expanded cipher and the audit chain key derived from it.
#[derive(Clone)]
struct KeyEntry {
    id: [u8; KEY_ID_LEN],
    cipher: Aes256Gcm,
    audit: [u8; 32],
}

impl KeyEntry {
    fn new(key: &MasterKey) -> KeyEntry {
        KeyEntry {
            id: key.id_bytes(),
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key.0)),
            audit: derive_subkey(key, b"haven-audit-chain-v1"),
        }
    }
}

/// A key for another purpose than encryption, derived from the master key with
/// HMAC-SHA256 under a label (HKDF's extract step): it reveals nothing of the master key,
/// and the database never holds it.
fn derive_subkey(key: &MasterKey, label: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC accepts keys of any length");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

#[derive(Clone)]
struct KeyringInner {
    active: KeyEntry,
    old: Vec<KeyEntry>,
}

/// The keys the service can use: one active key for new data, plus older keys kept only
/// to decrypt data written before a rotation. Cheap to clone (shared `Arc`), so it can be
/// moved into request handlers and streams.
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<KeyringInner>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let old: Vec<String> = self.inner.old.iter().map(|k| hex::encode(k.id)).collect();
        f.debug_struct("Keyring")
            .field("active_key_id", &self.active_key_id())
            .field("old_key_ids", &old)
            .finish()
    }
}

impl Keyring {
    /// Build a keyring that encrypts with `active`.
    pub fn new(active: MasterKey) -> Keyring {
        let inner = KeyringInner {
            active: KeyEntry::new(&active),
            old: Vec::new(),
        };
        Keyring {
            inner: Arc::new(inner),
        }
    }

    /// Add a retired key so data written under it stays readable after rotation.
    pub fn with_old_key(mut self, key: MasterKey) -> Keyring {
        let entry = KeyEntry::new(&key);
        let inner = Arc::make_mut(&mut self.inner);
        if entry.id != inner.active.id && inner.old.iter().all(|k| k.id != entry.id) {
            inner.old.push(entry);
        }
        self
    }

    /// Id of the key new data is encrypted with; lets operators see which data still
    /// needs re-encryption before an old key can be dropped.
    pub fn active_key_id(&self) -> String {
        hex::encode(self.inner.active.id)
    }

    /// The keys of the audit chain's HMAC by key id, the active key's first; the older
    /// ones verify entries written before a rotation.
    pub fn audit_keys(&self) -> Vec<(String, [u8; 32])> {
        std::iter::once(&self.inner.active)
            .chain(&self.inner.old)
            .map(|k| (hex::encode(k.id), k.audit))
            .collect()
    }

    fn find(&self, id: &[u8]) -> Option<&Aes256Gcm> {
        std::iter::once(&self.inner.active)
            .chain(&self.inner.old)
            .find(|k| k.id == id)
            .map(|k| &k.cipher)
    }

    /// Encrypt a small value (operation parameters, before-images, backups) under the
    /// active key. `aad` binds it to its context: `open` needs the same `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let key = &self.inner.active;
        let mut nonce = [0u8; SEAL_NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let mut out = [&[SEAL_MAGIC, SEAL_VERSION][..], &key.id, &nonce, plaintext].concat();
        let tag = key
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut out[SEAL_HEADER_LEN..])
            // AES-GCM only refuses plaintexts over 64 GiB, far beyond any in-memory value.
            .expect("AES-GCM plaintext length limit exceeded");
        out.extend_from_slice(&tag);
        out
    }

    /// Decrypt and authenticate a value from [`Keyring::seal`], choosing the key by id.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < SEAL_HEADER_LEN + TAG_LEN
            || sealed[0] != SEAL_MAGIC
            || sealed[1] != SEAL_VERSION
        {
            return Err(CryptoError::Corrupt);
        }
        let cipher = self
            .find(&sealed[2..2 + KEY_ID_LEN])
            .ok_or(CryptoError::UnknownKey)?;
        let nonce = Nonce::from_slice(&sealed[2 + KEY_ID_LEN..SEAL_HEADER_LEN]);
        let (body, tag) =
            sealed[SEAL_HEADER_LEN..].split_at(sealed.len() - SEAL_HEADER_LEN - TAG_LEN);
        let mut plain = body.to_vec();
        cipher
            .decrypt_in_place_detached(nonce, aad, &mut plain, Tag::from_slice(tag))
            .map_err(|_| CryptoError::Corrupt)?;
        Ok(plain)
    }

    /// Start encrypting a file of any size under the active key; `aad` names the file's
    /// context (e.g. upload id) so files cannot be swapped.
    pub fn encryptor(&self, aad: &[u8]) -> SegmentEncryptor {
        let key = &self.inner.active;
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        OsRng.fill_bytes(&mut prefix);
        SegmentEncryptor {
            cipher: key.cipher.clone(),
            aad: [&FILE_MAGIC[..], &[FILE_VERSION], &key.id, &prefix, aad].concat(),
            header_sent: false,
            buf: Vec::with_capacity(SEGMENT_SIZE),
            counter: 0,
        }
    }

    /// Start decrypting a file written by a [`SegmentEncryptor`] with the same `aad`.
    pub fn decryptor(&self, aad: &[u8]) -> SegmentDecryptor {
        SegmentDecryptor {
            keyring: self.clone(),
            aad: aad.to_vec(),
            cipher: None,
            buf: Vec::new(),
            counter: 0,
            failed: false,
        }
    }

    /// Wrap a writer so everything written to it is encrypted; call
    /// [`EncryptedWriter::finish`] or the file will be rejected as truncated.
    pub fn encrypted_writer<W: Write>(&self, inner: W, aad: &[u8]) -> EncryptedWriter<W> {
        let enc = self.encryptor(aad);
        EncryptedWriter { inner, enc }
    }

    /// Wrap a reader of an encrypted file so reads yield authenticated plaintext.
    pub fn decrypted_reader<R: Read>(&self, inner: R, aad: &[u8]) -> DecryptedReader<R> {
        DecryptedReader {
            inner,
            dec: self.decryptor(aad),
            chunk: vec![0u8; ENC_SEGMENT_SIZE],
            out: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    /// Stream the plaintext of an encrypted file (for downloads) in constant memory.
    /// A corrupt or truncated file ends the stream with an `InvalidData` error, so a
    /// consumer must treat the output as void unless the stream ends cleanly.
    pub fn decrypt_file_stream<R: AsyncRead + Unpin + Send + 'static>(
        &self,
        file: R,
        aad: Vec<u8>,
    ) -> impl Stream<Item = io::Result<Vec<u8>>> + Send + 'static {
        let state = Some((file, self.decryptor(&aad), vec![0u8; ENC_SEGMENT_SIZE]));
        futures::stream::unfold(state, |state| async move {
            let (mut file, mut dec, mut buf) = state?;
            loop {
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => return Some((Err(e), None)),
                };
                // At end of input the buffered segment must be the final one.
                let result = match n {
                    0 => dec.process(true),
                    _ => dec.push(&buf[..n]),
                };
                match result {
                    Err(e) => return Some((Err(invalid_data(e)), None)),
                    Ok(p) if n == 0 => return (!p.is_empty()).then_some((Ok(p), None)),
                    Ok(p) if p.is_empty() => continue, // need more input for a full segment
                    Ok(p) => return Some((Ok(p), Some((file, dec, buf)))),
                }
            }
        })
    }
}

fn invalid_data(e: CryptoError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Nonce of segment `counter`: prefix (end of the header, which starts `aad`) ||
/// counter (BE) || last flag.
fn segment_nonce(aad: &[u8], counter: u32, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..NONCE_PREFIX_LEN]
        .copy_from_slice(&aad[FILE_HEADER_LEN - NONCE_PREFIX_LEN..FILE_HEADER_LEN]);
    nonce[NONCE_PREFIX_LEN..11].copy_from_slice(&counter.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

/// Incremental file encryptor: feed plaintext in any chunk sizes, append what it returns
/// to the file. Memory stays at one segment regardless of file size.
pub struct SegmentEncryptor {
    cipher: Aes256Gcm,
    aad: Vec<u8>, // header (first FILE_HEADER_LEN bytes) || caller aad
    header_sent: bool,
    buf: Vec<u8>, // partial plaintext segment
    counter: u32,
}

impl SegmentEncryptor {
    /// Encrypt more plaintext; returns bytes to append (the header first, then any full
    /// segments). A partial segment is buffered until more data or `finish`.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.put_header(&mut out);
        if !self.buf.is_empty() {
            let take = data.len().min(SEGMENT_SIZE - self.buf.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == SEGMENT_SIZE {
                let buf = std::mem::take(&mut self.buf);
                self.seal_segment(&buf, false, &mut out);
                self.buf = buf;
                self.buf.clear();
            }
        }
        // Full segments straight from the input; only the remainder is buffered.
        while data.len() >= SEGMENT_SIZE {
            self.seal_segment(&data[..SEGMENT_SIZE], false, &mut out);
            data = &data[SEGMENT_SIZE..];
        }
        self.buf.extend_from_slice(data);
        out
    }

    /// End the file: returns the remaining output including the final segment (possibly
    /// empty), which is what lets a reader detect truncation.
    pub fn finish(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.put_header(&mut out);
        let buf = std::mem::take(&mut self.buf);
        self.seal_segment(&buf, true, &mut out);
        out
    }

    fn put_header(&mut self, out: &mut Vec<u8>) {
        if !self.header_sent {
            out.extend_from_slice(&self.aad[..FILE_HEADER_LEN]);
            self.header_sent = true;
        }
    }

    fn seal_segment(&mut self, plain: &[u8], last: bool, out: &mut Vec<u8>) {
        let nonce = segment_nonce(&self.aad, self.counter, last);
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &self.aad, &mut out[start..])
            // Segments are at most SEGMENT_SIZE bytes, far below AES-GCM's 64 GiB limit.
            .expect("AES-GCM segment length limit exceeded");
        out.extend_from_slice(&tag);
        // 2^32 segments is 256 TiB; wrapping would reuse nonces, so refuse outright.
        self.counter = self
            .counter
            .checked_add(u32::from(!last))
            .expect("encrypted file exceeds 256 TiB");
    }
}

/// Incremental file decryptor: feed ciphertext in any chunk sizes, get authenticated
/// plaintext back. Only `finish` proves the file was complete.
pub struct SegmentDecryptor {
    keyring: Keyring,
    aad: Vec<u8>, // caller aad until the header is read, then header || caller aad
    cipher: Option<Aes256Gcm>,
    buf: Vec<u8>, // unprocessed ciphertext (at most one segment between calls)
    counter: u32,
    failed: bool,
}

impl SegmentDecryptor {
    /// Decrypt more ciphertext; returns the plaintext of every segment known not to be
    /// the last. The latest full segment stays buffered until more data or `finish`.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.buf.extend_from_slice(data);
        self.process(false)
    }

    /// End of input: decrypt the final segment. Fails with `Corrupt` if the file was
    /// truncated, extended or tampered with.
    pub fn finish(mut self) -> Result<Vec<u8>, CryptoError> {
        self.process(true)
    }

    /// Sticky failure: never continue past an error (later data would be out of context).
    fn process(&mut self, at_end: bool) -> Result<Vec<u8>, CryptoError> {
        if self.failed {
            return Err(CryptoError::Corrupt);
        }
        let result = self.process_inner(at_end);
        self.failed = result.is_err();
        result
    }

    fn process_inner(&mut self, at_end: bool) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::new();
        let mut pos = 0;
        if self.cipher.is_none() {
            if self.buf.len() < FILE_HEADER_LEN {
                return if at_end {
                    Err(CryptoError::Corrupt)
                } else {
                    Ok(out)
                };
            }
            let header = &self.buf[..FILE_HEADER_LEN];
            if &header[..4] != FILE_MAGIC || header[4] != FILE_VERSION {
                return Err(CryptoError::Corrupt);
            }
            let cipher = self
                .keyring
                .find(&header[5..5 + KEY_ID_LEN])
                .ok_or(CryptoError::UnknownKey)?;
            self.cipher = Some(cipher.clone());
            let mut aad = header.to_vec();
            aad.extend_from_slice(&self.aad);
            self.aad = aad;
            pos = FILE_HEADER_LEN;
        }
        // A segment is known not to be the last only once bytes beyond it have arrived.
        while self.buf.len() - pos > ENC_SEGMENT_SIZE {
            self.open_segment(pos, ENC_SEGMENT_SIZE, false, &mut out)?;
            pos += ENC_SEGMENT_SIZE;
        }
        if at_end {
            let rest = self.buf.len() - pos;
            if rest < TAG_LEN {
                return Err(CryptoError::Corrupt);
            }
            self.open_segment(pos, rest, true, &mut out)?;
            pos += rest;
        }
        if pos > 0 {
            self.buf.drain(..pos);
        }
        Ok(out)
    }

    fn open_segment(
        &mut self,
        start: usize,
        len: usize,
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        // Header already parsed by the caller; a missing cipher would be a bug, not input.
        let cipher = self.cipher.as_ref().ok_or(CryptoError::Corrupt)?;
        let nonce = segment_nonce(&self.aad, self.counter, last);
        let (body, tag) = self.buf[start..start + len].split_at(len - TAG_LEN);
        let plain_start = out.len();
        out.extend_from_slice(body);
        cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &self.aad,
                &mut out[plain_start..],
                Tag::from_slice(tag),
            )
            .map_err(|_| CryptoError::Corrupt)?;
        if !last {
            self.counter = self.counter.checked_add(1).ok_or(CryptoError::Corrupt)?;
        }
        Ok(())
    }
}

/// `std::io::Write` adaptor that encrypts into `inner` (e.g. an export file).
/// After an error the output is incomplete (and will fail to decrypt): discard it.
pub struct EncryptedWriter<W: Write> {
    inner: W,
    enc: SegmentEncryptor,
}

impl<W: Write> Write for EncryptedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // At most one segment per call keeps the output buffer bounded.
        let n = buf.len().min(SEGMENT_SIZE);
        self.inner.write_all(&self.enc.push(&buf[..n]))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> EncryptedWriter<W> {
    /// Write the final segment and flush; without it the file reads as truncated.
    pub fn finish(self) -> io::Result<W> {
        let EncryptedWriter { mut inner, enc } = self;
        inner.write_all(&enc.finish())?;
        inner.flush()?;
        Ok(inner)
    }
}

/// `std::io::Read` adaptor yielding plaintext of an encrypted file; corruption or
/// truncation surfaces as `io::ErrorKind::InvalidData`, never as a clean end of file.
pub struct DecryptedReader<R: Read> {
    inner: R,
    dec: SegmentDecryptor,
    chunk: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read> Read for DecryptedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() && !self.done {
            let n = self.inner.read(&mut self.chunk)?;
            // At end of input the buffered segment must be the final one. Errors are
            // sticky in the decryptor, so later reads fail again rather than end cleanly.
            let result = match n {
                0 => self.dec.process(true),
                _ => self.dec.push(&self.chunk[..n]),
            };
            self.out = result.map_err(invalid_data)?;
            self.pos = 0;
            self.done = n == 0;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Async encrypted writer for uploads: encrypts as chunks arrive, so an upload never
/// touches disk or object storage in clear and memory does not grow with its size.
/// After a failed (or cancelled) `write` the output is incomplete and will fail to
/// decrypt: discard it.
pub struct AsyncEncryptedFile<W = tokio::fs::File> {
    file: W,
    enc: SegmentEncryptor,
    written: u64,
}

impl AsyncEncryptedFile {
    /// Create (or truncate) `path` with mode 0600 and start an encrypted file in it.
    pub async fn create(keyring: &Keyring, path: &Path, aad: &[u8]) -> io::Result<Self> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .await?;
        Ok(AsyncEncryptedFile::wrap(keyring, file, aad))
    }

    /// Write the final segment and fsync, so a reported upload survives a crash.
    /// Returns the number of plaintext bytes written.
    pub async fn finish(self) -> io::Result<u64> {
        let (file, written) = self.finish_into().await?;
        file.sync_all().await?;
        Ok(written)
    }
}

impl<W: AsyncWrite + Unpin> AsyncEncryptedFile<W> {
    /// Start an encrypted file in `inner` (e.g. a blob being uploaded to object storage).
    pub fn wrap(keyring: &Keyring, inner: W, aad: &[u8]) -> Self {
        AsyncEncryptedFile {
            file: inner,
            enc: keyring.encryptor(aad),
            written: 0,
        }
    }

    /// Encrypt and append a chunk of plaintext.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(&self.enc.push(data)).await?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Write the final segment and flush; returns the writer (to make it durable) and
    /// the number of plaintext bytes written.
    pub async fn finish_into(self) -> io::Result<(W, u64)> {
        let AsyncEncryptedFile {
            mut file,
            enc,
            written,
        } = self;
        file.write_all(&enc.finish()).await?;
        file.flush().await?;
        Ok((file, written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::os::unix::fs::PermissionsExt;
    use CryptoError::{Corrupt, UnknownKey};

    fn ring(n: u8) -> Keyring {
        Keyring::new(MasterKey([n; 32]))
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn encrypt(k: &Keyring, data: &[u8], chunk: usize, aad: &[u8]) -> Vec<u8> {
        let mut enc = k.encryptor(aad);
        let mut out: Vec<u8> = data.chunks(chunk).flat_map(|c| enc.push(c)).collect();
        out.extend(enc.finish());
        out
    }

    fn decrypt(k: &Keyring, file: &[u8], chunk: usize, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut dec = k.decryptor(aad);
        let mut out = Vec::new();
        for c in file.chunks(chunk) {
            out.extend(dec.push(c)?);
        }
        out.extend(dec.finish()?);
        Ok(out)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn seal_open_roundtrip_and_wrong_aad() {
        let k = ring(1);
        let sealed = k.seal(b"params", b"op-1");
        assert_eq!(sealed.len(), SEAL_HEADER_LEN + 6 + TAG_LEN);
        assert_eq!(&sealed[..2], &[0x48, 1]);
        assert_eq!(hex::encode(&sealed[2..10]), k.active_key_id());
        assert_eq!(k.open(&sealed, b"op-1").unwrap(), b"params");
        assert_eq!(k.open(&sealed, b"op-2"), Err(Corrupt));
        assert_eq!(k.open(&k.seal(b"", b""), b"").unwrap(), b"");
        assert_ne!(k.seal(b"x", b"a"), k.seal(b"x", b"a")); // fresh nonce each time
    }

    #[test]
    fn tampered_or_short_blob_fails() {
        let (k, sealed) = (ring(1), ring(1).seal(b"before-image", b"op"));
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert!(k.open(&t, b"op").is_err(), "flipped byte {i} accepted");
            assert!(
                k.open(&sealed[..i], b"op").is_err(),
                "truncation to {i} accepted"
            );
        }
    }

    #[test]
    fn unknown_key_fails_and_old_key_still_opens() {
        let old = ring(1);
        let (blob, file) = (
            old.seal(b"backup", b"b"),
            encrypt(&old, &sample(99), 7, b"f"),
        );
        assert_eq!(ring(2).open(&blob, b"b"), Err(UnknownKey));
        assert_eq!(decrypt(&ring(2), &file, 7, b"f"), Err(UnknownKey));
        let rotated = ring(2).with_old_key(MasterKey([1; 32]));
        assert_eq!(rotated.open(&blob, b"b").unwrap(), b"backup");
        assert_eq!(decrypt(&rotated, &file, 50, b"f").unwrap(), sample(99));
        assert_eq!(rotated.active_key_id(), ring(2).active_key_id());
        assert_eq!(old.open(&rotated.seal(b"n", b""), b""), Err(UnknownKey));
    }

    #[test]
    fn key_parsing_id_and_redaction() {
        let b64 = BASE64.encode([7u8; 32]);
        let parsed = MasterKey::from_base64(&format!("  {b64}\n")).unwrap();
        let digest = Sha256::digest([&b"haven-key-id"[..], &[7u8; 32]].concat());
        assert_eq!(parsed.key_id(), hex::encode(&digest[..8]));
        for bad in [
            "!!!".to_string(),
            BASE64.encode([7u8; 31]),
            BASE64.encode([7u8; 33]),
        ] {
            assert!(matches!(
                MasterKey::from_base64(&bad),
                Err(CryptoError::InvalidKey(_))
            ));
        }
        assert_eq!(format!("{parsed:?}"), "MasterKey(<redacted>)");
        let dbg = format!("{:?}", ring(9).with_old_key(parsed));
        assert!(
            dbg.contains(&hex::encode(&digest[..8])) && !dbg.contains("9, 9"),
            "{dbg}"
        );
    }

    #[test]
    fn stream_roundtrip_in_odd_chunks() {
        let k = ring(1);
        let sizes = [
            0,
            1,
            SEGMENT_SIZE - 1,
            SEGMENT_SIZE,
            SEGMENT_SIZE + 1,
            3 * SEGMENT_SIZE + 5,
        ];
        for size in sizes {
            let data = sample(size);
            for chunk in [7, 10000, 4 * SEGMENT_SIZE] {
                let file = encrypt(&k, &data, chunk, b"upload-1");
                let segments = size / SEGMENT_SIZE + 1; // always exactly one final segment
                assert_eq!(file.len(), FILE_HEADER_LEN + size + segments * TAG_LEN);
                for dchunk in [7, 10000, file.len()] {
                    let out = decrypt(&k, &file, dchunk, b"upload-1");
                    assert!(
                        out.as_ref() == Ok(&data),
                        "size {size} chunks {chunk}/{dchunk}"
                    );
                }
                assert_eq!(decrypt(&k, &file, 10000, b"upload-2"), Err(Corrupt));
            }
        }
    }

    #[test]
    fn truncated_or_extended_stream_fails() {
        let k = ring(1);
        for size in [0, 5, SEGMENT_SIZE, 2 * SEGMENT_SIZE + 5] {
            let file = encrypt(&k, &sample(size), 1000, b"f");
            let without_final = file.len() - (size % SEGMENT_SIZE + TAG_LEN);
            for cut in [without_final, 0, 1, FILE_HEADER_LEN, file.len() - 1] {
                assert_eq!(decrypt(&k, &file[..cut], 1000, b"f"), Err(Corrupt));
            }
            let extended = [&file[..], &[0u8]].concat();
            assert_eq!(decrypt(&k, &extended, 1000, b"f"), Err(Corrupt));
        }
    }

    #[test]
    fn reordered_or_foreign_segments_fail() {
        let (k, data) = (ring(1), sample(3 * SEGMENT_SIZE + 5));
        let file = encrypt(&k, &data, 10000, b"f");
        let seg = |i: usize| {
            FILE_HEADER_LEN + i * ENC_SEGMENT_SIZE..FILE_HEADER_LEN + (i + 1) * ENC_SEGMENT_SIZE
        };
        let mut swapped = file.clone();
        swapped[seg(0)].copy_from_slice(&file[seg(1)]);
        swapped[seg(1)].copy_from_slice(&file[seg(0)]);
        assert_eq!(decrypt(&k, &swapped, 10000, b"f"), Err(Corrupt));
        // Same key, aad and data: a segment of another file still does not fit.
        let mut mixed = file.clone();
        mixed[seg(1)].copy_from_slice(&encrypt(&k, &data, 10000, b"f")[seg(1)]);
        assert_eq!(decrypt(&k, &mixed, 10000, b"f"), Err(Corrupt));
    }

    #[test]
    fn writer_reader_roundtrip() {
        let (k, data) = (ring(1), sample(2 * SEGMENT_SIZE + 123));
        let mut w = k.encrypted_writer(Vec::new(), b"export");
        for c in data.chunks(5000) {
            w.write_all(c).unwrap();
        }
        w.write_all(&data).unwrap(); // one large write too
        let file = w.finish().unwrap();
        let mut out = Vec::new();
        k.decrypted_reader(file.as_slice(), b"export")
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, [&data[..], &data[..]].concat());
        let mut r = k.decrypted_reader(&file[..file.len() - 1], b"export");
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A failed reader keeps failing instead of reporting a clean end of file.
        assert_eq!(
            r.read(&mut [0u8; 8]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn load_or_create_makes_private_file_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/sub/master.key");
        let first = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let contents = std::fs::read_to_string(&path).unwrap();
        assert!(contents.ends_with('\n'));
        assert_eq!(
            MasterKey::from_base64(&contents).unwrap().key_id(),
            first.key_id()
        );
        assert_eq!(
            MasterKey::load_or_create(&path).unwrap().key_id(),
            first.key_id()
        );
        // A damaged key file is an error, never silently replaced.
        std::fs::write(&path, "garbage").unwrap();
        assert!(MasterKey::load_or_create(&path).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage");
    }

    #[test]
    fn ciphertext_does_not_contain_plaintext() {
        let k = ring(1);
        let secret = b"Patient: Amina Yusuf, DOB 1990-02-03, HIV positive; ".repeat(3000);
        let (sealed, file) = (k.seal(&secret, b"op"), encrypt(&k, &secret, 10000, b"f"));
        for ct in [&sealed, &file] {
            assert!(!ct.windows(11).any(|w| w == b"Amina Yusuf"));
            assert!(!ct.windows(16).any(|w| w == &secret[..16]));
        }
        assert!(!k
            .open(&sealed, b"x")
            .unwrap_err()
            .to_string()
            .contains("Amina"));
    }

    #[tokio::test]
    async fn async_file_roundtrip_and_stream() {
        let (k, data) = (ring(1), sample(2 * SEGMENT_SIZE + 17));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upload.enc");
        let mut f = AsyncEncryptedFile::create(&k, &path, b"up").await.unwrap();
        for c in data.chunks(3000) {
            f.write(c).await.unwrap();
        }
        assert_eq!(f.finish().await.unwrap(), data.len() as u64);
        assert_eq!(mode(&path), 0o600);
        let stream =
            k.decrypt_file_stream(tokio::fs::File::open(&path).await.unwrap(), b"up".to_vec());
        // Send + 'static: the stream can move into a spawned task (an HTTP body).
        let parts = tokio::spawn(stream.collect::<Vec<_>>()).await.unwrap();
        let out: Vec<Vec<u8>> = parts.into_iter().collect::<io::Result<_>>().unwrap();
        assert_eq!(out.concat(), data);
        let file = tokio::fs::File::open(&path).await.unwrap();
        let parts: Vec<_> = k.decrypt_file_stream(file, b"x".to_vec()).collect().await;
        let last = parts.last().unwrap().as_ref().unwrap_err();
        assert_eq!(last.kind(), io::ErrorKind::InvalidData);
    }
}
