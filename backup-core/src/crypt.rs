//! Encryption at rest: a chain's key, kept wrapped in the chain itself, and the framing that
//! seals each archive with it.
//!
//! - **The chain key** is 32 random bytes, made by the first encrypted backup of a chain. The
//!   chain keeps it in its key file ([`KEY_FILE`]), wrapped with [age](https://age-encryption.org)
//!   once per way in: a passphrase (scrypt) and/or X25519 recipients (`age1…`). Opening a chain
//!   unwraps it once (one scrypt for a passphrase), however many archives the chain holds.
//! - **An archive** (every byte of the zip, and the manifest an object store's seal carries) is
//!   sealed with ChaCha20-Poly1305 in age's STREAM framing: a header of 48 bytes (`"TMCRYPT1"`,
//!   the key's id, a random salt), then 64 KiB chunks, each with its 16-byte tag, under a key
//!   derived from the chain key and the salt. Any chunk can be opened alone, so ranged reads and
//!   restores work on the sealed file as on a plain one. `docs/FORMAT.md` §5 gives every byte.

use crate::archive::{ArchiveManifest, ArchiveOutput, ArchiveRead};
use crate::error::{Error, Result};
use age::secrecy::{ExposeSecret, SecretString};
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{AeadInPlace, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// What an encrypted chain opened without a key says: the options that open it.
pub const NEEDS_KEY: &str = "this backup is encrypted: give --encrypt-passphrase-file or \
                             --encrypt-identity (encrypt_passphrase_file or encrypt_identities \
                             in a job)";

/// The name of a chain's key file (in a directory, or an object under the prefix).
pub const KEY_FILE: &str = ".tidemark-key";

/// The name of the copy of the key file a chain keeps beside it: every archive is sealed with
/// the one key, so a flipped bit in a single file would lose them all. A damaged (or missing)
/// key file is read from its copy and the other way round ([`read_key_files`]); a backup puts
/// the damaged one right ([`repair_key_files`]). Chains made before copies were kept get one
/// at their next backup.
pub const KEY_FILE_COPY: &str = ".tidemark-key.copy";

/// Whether the chain in the directory `dir` is encrypted: it holds the key file or its copy.
pub fn is_encrypted_dir(dir: &Path) -> bool {
    [KEY_FILE, KEY_FILE_COPY]
        .iter()
        .any(|name| dir.join(name).exists())
}

/// A chain's key file as it can be read: [`read_key_files`].
#[derive(Debug)]
pub struct KeyFiles {
    /// The bytes that open the chain: the key file's, or its copy's when the key file is
    /// damaged or missing.
    pub bytes: Vec<u8>,
    /// Where `bytes` were read (the key file, or its copy).
    pub path: std::path::PathBuf,
    /// What is wrong with one of the two files (each an `Error::Damaged` naming it); empty
    /// when both check out, or the chain keeps no copy yet.
    pub problems: Vec<Error>,
    /// Whether the chain keeps no copy (one made before copies were kept).
    pub no_copy: bool,
}

/// Reads the key file of the chain in `store` and its copy ([`KEY_FILE_COPY`]), each checked
/// ([`ChainKey::check_file`]); `None` for a chain with neither (not encrypted). One damaged or
/// missing file is a problem the other opens the chain despite; with no intact file left, the
/// key file's damage is the error (`Error::Damaged`, as before copies were kept).
pub fn read_key_files(store: &dyn crate::ChainStore) -> Result<Option<KeyFiles>> {
    let main_path = store.location_of(KEY_FILE);
    let copy_path = store.location_of(KEY_FILE_COPY);
    let main = store.read_key()?;
    let copy = store.read_key_copy()?;
    // Damage falls back to the other file; anything else (a newer key file format) fails.
    let checked = |path: &Path, bytes: &[u8]| match ChainKey::check_file(path, bytes) {
        Ok(()) => Ok(None),
        Err(e @ Error::Damaged { .. }) => Ok(Some(e)),
        Err(e) => Err(e),
    };
    let files = |bytes: Vec<u8>, path: &Path, problems: Vec<Error>, no_copy: bool| KeyFiles {
        bytes,
        path: path.to_path_buf(),
        problems,
        no_copy,
    };
    Ok(Some(match (main, copy) {
        (None, None) => return Ok(None),
        (Some(main), None) => match checked(&main_path, &main)? {
            None => files(main, &main_path, Vec::new(), true),
            Some(e) => return Err(e),
        },
        (None, Some(copy)) => match checked(&copy_path, &copy)? {
            None => {
                let gone = Error::Damaged {
                    path: main_path,
                    cause: "missing, while its copy is there: the chain's key file".into(),
                };
                files(copy, &copy_path, vec![gone], false)
            }
            Some(e) => return Err(e),
        },
        (Some(main), Some(copy)) => {
            match (checked(&main_path, &main)?, checked(&copy_path, &copy)?) {
                (None, None) if main == copy => files(main, &main_path, Vec::new(), false),
                (None, None) => {
                    let other = Error::Damaged {
                        path: copy_path,
                        cause: "it is not the same as the key file it copies".into(),
                    };
                    files(main, &main_path, vec![other], false)
                }
                (None, Some(e)) => files(main, &main_path, vec![e], false),
                (Some(e), None) => files(copy, &copy_path, vec![e], false),
                (Some(e), Some(_)) => return Err(e),
            }
        }
    }))
}

/// What verify reports of the key file and its copy of the chain in `store` (none for a plain
/// chain): each one damaged or missing, the other then opening the chain, or the key file's
/// damage when neither is intact.
pub(crate) fn key_file_problems(store: &dyn crate::ChainStore) -> Result<Vec<Error>> {
    match read_key_files(store) {
        Ok(files) => Ok(files.map(|f| f.problems).unwrap_or_default()),
        Err(e @ Error::Damaged { .. }) => Ok(vec![e]),
        Err(e) => Err(e),
    }
}

/// A chain's key as [`open_chain_key`] opened (or made) it, and what it found on the way.
pub struct OpenedKey {
    /// The chain key.
    pub key: ChainKey,
    /// What is wrong with the key file or its copy (see [`KeyFiles::problems`]), if anything.
    pub problems: Vec<Error>,
    /// The file the key was read from (the key file, or its copy), or written to.
    pub path: std::path::PathBuf,
    /// The key files written: a new chain's two, or the damaged, missing or not yet made one
    /// a writer put right ([`repair_key_files`]).
    pub written: Vec<String>,
    /// Whether the key is new: made now for a chain that held nothing.
    pub made: bool,
}

/// The key of the chain in `store` (opened without a key), unwrapped with `options` from its
/// key file or the copy ([`read_key_files`]); `None` for a plain chain. A `writer` (a backup,
/// which holds the destination's lock) also puts a damaged or missing key file or copy right
/// once the key opened the chain, and, given encryption options, makes the key of a chain
/// that holds nothing yet: written (the key file, then its copy) before any archive. A writer
/// with encryption options over a chain of plain archives is refused: encryption starts with
/// a new chain.
pub fn open_chain_key(
    store: &dyn crate::ChainStore,
    options: &KeyOptions,
    writer: bool,
) -> Result<Option<OpenedKey>> {
    if let Some(files) = read_key_files(store)? {
        let key = match &options.remembered {
            Some(remembered) => remembered.unwrap(&files.path, &files.bytes, options)?,
            None => ChainKey::unwrap(&files.path, &files.bytes, options)?,
        };
        let written = if writer {
            repair_key_files(store, &files)?
        } else {
            Vec::new()
        };
        return Ok(Some(OpenedKey {
            key,
            problems: files.problems,
            path: files.path,
            written,
            made: false,
        }));
    }
    if !(writer && options.any()) {
        return Ok(None);
    }
    let listing = store.listing()?;
    if !listing.slots.is_empty() || listing.head.is_some() {
        return Err(Error::BadInput {
            path: store.location(),
            cause: "holds unencrypted archives; encryption starts with a new chain (back up to \
                    another directory or prefix)"
                .into(),
            source: None,
        });
    }
    let path = store.location_of(KEY_FILE);
    let key = ChainKey::generate();
    let bytes = key.wrap(&path, options)?;
    store.write_key(&bytes)?;
    store.replace_key_file(KEY_FILE_COPY, &bytes)?;
    if let Some(remembered) = &options.remembered {
        // What made the key opens it too (with a passphrase or an identity given).
        if options.can_open() {
            remembered.keep(RememberedKeys::opener(options), &bytes, &key);
        }
    }
    Ok(Some(OpenedKey {
        key,
        problems: Vec::new(),
        path,
        written: vec![KEY_FILE.to_string(), KEY_FILE_COPY.to_string()],
        made: true,
    }))
}

/// Puts right what [`read_key_files`] found in the chain in `store`, once `files` opened it
/// (so their bytes are this chain's key): a damaged or missing key file or copy is written
/// again from the intact one, and a chain without a copy gets one. Only a writer holding the
/// destination's lock (a backup) calls it. Returns the names of the files written.
pub fn repair_key_files(store: &dyn crate::ChainStore, files: &KeyFiles) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for name in [KEY_FILE, KEY_FILE_COPY] {
        let path = store.location_of(name);
        let broken = files
            .problems
            .iter()
            .any(|p| matches!(p, Error::Damaged { path: at, .. } if *at == path));
        if broken || (name == KEY_FILE_COPY && files.no_copy) {
            store.replace_key_file(name, &files.bytes)?;
            written.push(name.to_string());
        }
    }
    Ok(written)
}

const MAGIC: &[u8; 8] = b"TMCRYPT1";
/// Plaintext bytes per chunk.
const CHUNK: usize = 64 << 10;
/// The Poly1305 tag after each chunk.
const TAG: usize = 16;
/// Magic, key id, salt.
const HEADER: usize = 8 + 8 + 32;
/// A sealed chunk.
const SEALED_CHUNK: usize = CHUNK + TAG;
/// The largest scrypt work factor (log2 N) a key file may ask for: age picks about one second
/// of work on the machine that wrapped it; this allows a machine many times slower, but not a
/// damaged file that asks for hours.
const MAX_SCRYPT_LOG_N: u8 = 24;

/// How to make or open a chain's key: what the user gave (`--encrypt-passphrase-file`,
/// `--encrypt-recipient`, `--encrypt-identity`).
#[derive(Clone, Default)]
pub struct KeyOptions {
    /// A passphrase (read from a file; wraps the key with scrypt, and unwraps it).
    pub passphrase: Option<SecretString>,
    /// age X25519 recipients (`age1…`) to wrap a new chain key to.
    pub recipients: Vec<String>,
    /// age identity files (`AGE-SECRET-KEY-1…` lines) to unwrap the key with.
    pub identity_files: Vec<PathBuf>,
    /// Keys these options unwrapped before, to open the same key file again without
    /// unwrapping it ([`RememberedKeys`]); `None`: every open unwraps.
    pub remembered: Option<Arc<RememberedKeys>>,
}

/// Chain keys a process unwrapped, by key file and by what opened it: a process that opens
/// the same chain again and again (a scheduled job: its backup, its prune and its compaction,
/// at every run) unwraps its key once. A passphrase costs age's scrypt at every unwrap, at the
/// work factor the chain's maker picked: about a second, and 512 MiB of memory at N = 2^19.
/// The same key file bytes opened with the same passphrase and identity files give the same
/// key, so a key is answered only for those; a key file written again (a repair, another
/// chain at the same place) is unwrapped anew.
#[derive(Default)]
pub struct RememberedKeys {
    /// Newest last.
    keys: Mutex<Vec<Remembered>>,
    /// Opens answered from memory.
    hits: AtomicU64,
}

/// A key a [`RememberedKeys`] holds: what opened it (a digest), the key file's bytes, the key.
type Remembered = ([u8; 32], Vec<u8>, ChainKey);

/// Key files a [`RememberedKeys`] keeps (a job's chain has one; a repair writes another).
const REMEMBERED_KEYS: usize = 4;

impl RememberedKeys {
    /// How many opens were answered without unwrapping.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// What opens a key with `options`: a digest of the passphrase and the identity files'
    /// names (never the passphrase itself).
    fn opener(options: &KeyOptions) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        if let Some(p) = &options.passphrase {
            h.update(b"passphrase\0");
            h.update(p.expose_secret().as_bytes());
            h.update(b"\0");
        }
        for f in &options.identity_files {
            h.update(b"identity\0");
            h.update(f.as_os_str().as_encoded_bytes());
            h.update(b"\0");
        }
        h.finalize().into()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Remembered>> {
        // A panic while holding the list leaves it whole (each change is one push or remove).
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`ChainKey::unwrap`], answered from memory when `options` opened `bytes` before.
    fn unwrap(&self, path: &Path, bytes: &[u8], options: &KeyOptions) -> Result<ChainKey> {
        let opener = Self::opener(options);
        let known = self
            .entries()
            .iter()
            .find(|(o, b, _)| *o == opener && b == bytes)
            .map(|(_, _, k)| k.clone());
        if let Some(key) = known {
            self.hits.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = %key.id(), file = %path.display(), "chain key opened from memory");
            return Ok(key);
        }
        let key = ChainKey::unwrap(path, bytes, options)?;
        self.keep(opener, bytes, &key);
        Ok(key)
    }

    /// Remembers `key` as what `opener` opens in the key file `bytes`.
    fn keep(&self, opener: [u8; 32], bytes: &[u8], key: &ChainKey) {
        let mut keys = self.entries();
        if keys.len() >= REMEMBERED_KEYS {
            keys.remove(0);
        }
        keys.push((opener, bytes.to_vec(), key.clone()));
    }
}

impl std::fmt::Debug for KeyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyOptions")
            .field("passphrase", &self.passphrase.as_ref().map(|_| "…"))
            .field("recipients", &self.recipients)
            .field("identity_files", &self.identity_files)
            .field("remembered", &self.remembered.is_some())
            .finish()
    }
}

impl KeyOptions {
    /// Whether any encryption option was given.
    pub fn any(&self) -> bool {
        self.passphrase.is_some() || !self.recipients.is_empty() || !self.identity_files.is_empty()
    }

    /// Whether these options can unwrap a key (a passphrase or an identity).
    pub fn can_open(&self) -> bool {
        self.passphrase.is_some() || !self.identity_files.is_empty()
    }

    /// Reads a passphrase file: its first line (a trailing newline is not part of it).
    pub fn read_passphrase(path: &Path) -> Result<SecretString> {
        let text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?);
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(Error::Key {
                path: path.to_path_buf(),
                cause: "the passphrase file is empty".into(),
            });
        }
        Ok(SecretString::from(line.to_string()))
    }
}

/// A chain's key (32 bytes, wiped from memory when dropped) and its id.
#[derive(Clone)]
pub struct ChainKey {
    key: Zeroizing<[u8; 32]>,
    id: [u8; 8],
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainKey({})", hex(&self.id))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hkdf(ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) {
    hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .expect("HKDF-SHA256 gives 32 bytes");
}

/// The key file's content (inside `{"crc32": n, "key": …}`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    format_version: u32,
    /// The key's id, 16 hex digits (also in every sealed archive's header).
    key_id: String,
    /// The key, wrapped once per way in.
    wraps: Vec<Wrap>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrap {
    /// `passphrase` (an age file with one scrypt stanza) or `recipients` (X25519 stanzas).
    kind: String,
    /// The recipients, for people to read (the age file is what counts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    recipients: Vec<String>,
    /// The age file that holds the 32 key bytes, in standard base64.
    age: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileEntry {
    crc32: u32,
    key: serde_json::Value,
}

fn key_err(path: &Path, cause: impl Into<String>) -> Error {
    Error::Key {
        path: path.to_path_buf(),
        cause: cause.into(),
    }
}

impl ChainKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut key[..]);
        Self::from_bytes(key)
    }

    fn from_bytes(key: Zeroizing<[u8; 32]>) -> Self {
        let mut id = [0u8; 8];
        hkdf(&key[..], b"", b"tidemark key id", &mut id);
        ChainKey { key, id }
    }

    /// The key's id (16 hex digits): not secret, it tells keys apart.
    pub fn id(&self) -> String {
        hex(&self.id)
    }

    /// The key file that holds this key, wrapped for each way in `options` gives (a passphrase,
    /// recipients). `path` is where it will be stored, for messages.
    pub fn wrap(&self, path: &Path, options: &KeyOptions) -> Result<Vec<u8>> {
        let mut wraps = Vec::new();
        if let Some(p) = &options.passphrase {
            // age picks the scrypt work factor: about a second on this machine.
            let r = age::scrypt::Recipient::new(p.clone());
            let sealed = age_encrypt(&[&r as &dyn age::Recipient], &self.key[..])
                .map_err(|e| key_err(path, format!("wrapping the key: {e}")))?;
            wraps.push(Wrap {
                kind: "passphrase".into(),
                recipients: Vec::new(),
                age: b64(&sealed),
            });
        }
        if !options.recipients.is_empty() {
            let parsed = parse_recipients(path, &options.recipients)?;
            let refs: Vec<&dyn age::Recipient> =
                parsed.iter().map(|r| r as &dyn age::Recipient).collect();
            let sealed = age_encrypt(&refs, &self.key[..])
                .map_err(|e| key_err(path, format!("wrapping the key: {e}")))?;
            wraps.push(Wrap {
                kind: "recipients".into(),
                recipients: options.recipients.clone(),
                age: b64(&sealed),
            });
        }
        if wraps.is_empty() {
            return Err(key_err(
                path,
                "a new encrypted chain needs a passphrase file or a recipient to wrap its key to",
            ));
        }
        let file = KeyFile {
            format: "tidemark-key".into(),
            format_version: 1,
            key_id: self.id(),
            wraps,
        };
        let value = serde_json::to_value(&file).expect("a key file serializes");
        let crc32 = crc32fast::hash(&serde_json::to_vec(&value).expect("JSON serializes"));
        let mut out = serde_json::to_vec_pretty(&KeyFileEntry { crc32, key: value })
            .expect("a key file serializes");
        out.push(b'\n');
        Ok(out)
    }

    /// Checks the key file `bytes` (stored at `path`) as far as it can be checked without a
    /// passphrase or identity: it parses, matches its CRC32, and is a format this reader knows.
    /// A key file that does not parse or check out is damage (`Error::Damaged`, exit 3 as a
    /// damaged archive), not a wrong option: every archive of the chain is sealed with its key.
    pub fn check_file(path: &Path, bytes: &[u8]) -> Result<()> {
        Self::read_file(path, bytes).map(|_| ())
    }

    fn read_file(path: &Path, bytes: &[u8]) -> Result<KeyFile> {
        let damaged = |cause: String| Error::Damaged {
            path: path.to_path_buf(),
            cause: format!("{cause}: the chain's key file, without which no archive opens"),
        };
        let entry: KeyFileEntry = serde_json::from_slice(bytes)
            .map_err(|e| damaged(format!("not a tidemark key file: {e}")))?;
        let crc = crc32fast::hash(&serde_json::to_vec(&entry.key).expect("JSON serializes"));
        if crc != entry.crc32 {
            return Err(damaged("it does not match its CRC32".into()));
        }
        let file: KeyFile = serde_json::from_value(entry.key)
            .map_err(|e| damaged(format!("not a tidemark key file: {e}")))?;
        if file.format != "tidemark-key" || file.format_version != 1 {
            return Err(key_err(
                path,
                format!(
                    "key file format {} v{} is not supported",
                    file.format, file.format_version
                ),
            ));
        }
        Ok(file)
    }

    /// Opens the key file `bytes` (stored at `path`) with what `options` gives: the passphrase
    /// opens a passphrase wrap, an identity a recipients wrap. A wrong passphrase or identity
    /// fails here, before anything else is read.
    pub fn unwrap(path: &Path, bytes: &[u8], options: &KeyOptions) -> Result<ChainKey> {
        let file = Self::read_file(path, bytes)?;
        if !options.can_open() {
            return Err(key_err(path, NEEDS_KEY));
        }
        let mut tried = Vec::new();
        for wrap in &file.wraps {
            let sealed =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &wrap.age)
                    .map_err(|e| {
                        key_err(path, format!("a {} wrap is not base64: {e}", wrap.kind))
                    })?;
            let opened = match (wrap.kind.as_str(), &options.passphrase) {
                ("passphrase", Some(p)) => {
                    tried.push("the passphrase");
                    let mut id = age::scrypt::Identity::new(p.clone());
                    id.set_max_work_factor(MAX_SCRYPT_LOG_N);
                    age_decrypt(&[&id as &dyn age::Identity], &sealed)
                }
                ("recipients", _) if !options.identity_files.is_empty() => {
                    tried.push("the identities");
                    let ids = read_identities(&options.identity_files)?;
                    let refs: Vec<&dyn age::Identity> = ids.iter().map(|b| &**b).collect();
                    age_decrypt(&refs, &sealed)
                }
                _ => continue,
            };
            let Ok(plain) = opened else { continue };
            let plain = Zeroizing::new(plain);
            let bytes: [u8; 32] = plain[..]
                .try_into()
                .map_err(|_| key_err(path, "a wrap holds no 32-byte key (damaged)"))?;
            let key = ChainKey::from_bytes(Zeroizing::new(bytes));
            if key.id() != file.key_id {
                return Err(key_err(
                    path,
                    format!(
                        "the key opened is {}, not {} (damaged)",
                        key.id(),
                        file.key_id
                    ),
                ));
            }
            tracing::debug!(key = %key.id(), file = %path.display(), "chain key unwrapped");
            return Ok(key);
        }
        let kinds: Vec<&str> = file.wraps.iter().map(|w| w.kind.as_str()).collect();
        Err(key_err(
            path,
            if tried.is_empty() {
                format!(
                    "this backup's key is wrapped for {} only: give {}",
                    kinds.join(" and "),
                    if kinds.contains(&"passphrase") {
                        "--encrypt-passphrase-file"
                    } else {
                        "--encrypt-identity"
                    }
                )
            } else {
                format!(
                    "{} did not open this backup's key: wrong key, or another chain's",
                    tried.join(" and ")
                )
            },
        ))
    }

    /// The AEAD of one sealed object, from its salt.
    fn cipher(&self, salt: &[u8]) -> ChaCha20Poly1305 {
        let mut k = Zeroizing::new([0u8; 32]);
        hkdf(
            &self.key[..],
            salt,
            b"tidemark archive payload v1",
            &mut k[..],
        );
        ChaCha20Poly1305::new(Key::from_slice(&k[..]))
    }

    /// Seals `plain` whole (an object store's manifest in a seal).
    pub fn seal_bytes(&self, plain: &[u8]) -> Vec<u8> {
        let mut w = SealWriter::new(self, Vec::new()).expect("writing to memory");
        w.write_all(plain).expect("writing to memory");
        w.finish().expect("writing to memory")
    }

    /// Opens what [`ChainKey::seal_bytes`] sealed (`path` for messages).
    pub fn open_bytes(&self, path: &Path, sealed: &[u8]) -> Result<Vec<u8>> {
        let archive = SealedArchive::new(
            self,
            Box::new(MemoryArchive {
                path: path.to_path_buf(),
                bytes: sealed.to_vec(),
            }),
        )?;
        archive
            .read_at(0, archive.size() as usize)
            .map_err(|e| Error::Damaged {
                path: path.to_path_buf(),
                cause: e.to_string(),
            })
    }
}

fn b64(b: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b)
}

fn parse_recipients(path: &Path, list: &[String]) -> Result<Vec<age::x25519::Recipient>> {
    list.iter()
        .map(|r| {
            r.trim().parse::<age::x25519::Recipient>().map_err(|e| {
                key_err(
                    path,
                    format!("recipient `{r}` is not an age X25519 key (age1…): {e}"),
                )
            })
        })
        .collect()
}

fn read_identities(files: &[PathBuf]) -> Result<Vec<Box<dyn age::Identity>>> {
    let mut out = Vec::new();
    for f in files {
        let file = age::IdentityFile::from_file(f.to_string_lossy().into_owned())
            .map_err(|e| key_err(f, format!("not an age identity file: {e}")))?;
        out.extend(
            file.into_identities()
                .map_err(|e| key_err(f, format!("not an age identity file: {e}")))?,
        );
    }
    Ok(out)
}

fn age_encrypt(
    recipients: &[&dyn age::Recipient],
    plain: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let enc =
        age::Encryptor::with_recipients(recipients.iter().copied()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out).map_err(|e| e.to_string())?;
    w.write_all(plain).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

fn age_decrypt(
    identities: &[&dyn age::Identity],
    sealed: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let dec = age::Decryptor::new_buffered(sealed).map_err(|e| e.to_string())?;
    let mut r = dec
        .decrypt(identities.iter().copied())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The nonce of chunk `counter`: 11 bytes of big-endian counter, then 1 for the last chunk.
fn nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    *Nonce::from_slice(&n)
}

/// The plaintext size of a sealed object of `sealed` bytes (`None`: too short to be one).
fn plain_size(sealed: u64) -> Option<u64> {
    let payload = sealed.checked_sub(HEADER as u64)?;
    let chunks = payload.div_ceil(SEALED_CHUNK as u64);
    (chunks > 0 && payload - (chunks - 1) * SEALED_CHUNK as u64 >= TAG as u64)
        .then(|| payload - chunks * TAG as u64)
}

fn corrupt(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Seals bytes written through it into `inner` (header first, then chunks); [`SealWriter::finish`]
/// writes the last chunk.
pub struct SealWriter<W: Write> {
    inner: W,
    cipher: ChaCha20Poly1305,
    buf: Vec<u8>,
    counter: u64,
}

impl<W: Write> SealWriter<W> {
    /// Starts sealing into `inner` with `key`: writes the header.
    pub fn new(key: &ChainKey, mut inner: W) -> std::io::Result<Self> {
        let mut salt = [0u8; 32];
        OsRng.fill_bytes(&mut salt);
        inner.write_all(MAGIC)?;
        inner.write_all(&key.id)?;
        inner.write_all(&salt)?;
        Ok(SealWriter {
            inner,
            cipher: key.cipher(&salt),
            buf: Vec::with_capacity(SEALED_CHUNK),
            counter: 0,
        })
    }

    fn emit(&mut self, last: bool) -> std::io::Result<()> {
        self.cipher
            .encrypt_in_place(&nonce(self.counter, last), b"", &mut self.buf)
            .map_err(|_| corrupt("sealing a chunk failed".into()))?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.counter += 1;
        Ok(())
    }

    /// Writes the last chunk (possibly short; empty only if nothing was written) and returns
    /// the inner writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.emit(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            // A full chunk is sealed only once more data comes: the last one is marked.
            if self.buf.len() == CHUNK {
                self.emit(false)?;
            }
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An [`ArchiveOutput`] that seals what is written before handing it to the chain's own output.
struct SealedOutput {
    writer: Option<SealWriter<Box<dyn ArchiveOutput>>>,
}

impl Write for SealedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.writer {
            Some(w) => w.write(buf),
            None => Err(corrupt("the archive is finished".into())),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.writer {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl SealedOutput {
    /// Seals the last chunk; the chain's output to finish.
    fn sealed(mut self, manifest: &ArchiveManifest) -> Result<Box<dyn ArchiveOutput>> {
        let w = self.writer.take().expect("finished once");
        let path = PathBuf::from(format!("archive {}", manifest.sequence));
        w.finish().map_err(|e| Error::io("seal", path, e))
    }
}

impl ArchiveOutput for SealedOutput {
    fn finish(self: Box<Self>, manifest: &ArchiveManifest) -> Result<(String, u64)> {
        self.sealed(manifest)?.finish(manifest)
    }

    fn finish_with(
        self: Box<Self>,
        manifest: &ArchiveManifest,
        companion: &mut dyn FnMut(&str) -> Result<Vec<crate::durable::Unsynced>>,
    ) -> Result<(String, u64)> {
        self.sealed(manifest)?.finish_with(manifest, companion)
    }
}

/// Seals an archive on its way into `out` (a chain's output) with `key`.
pub fn seal_output(key: &ChainKey, out: Box<dyn ArchiveOutput>) -> Result<Box<dyn ArchiveOutput>> {
    let w = SealWriter::new(key, out).map_err(|e| Error::io("seal", "archive", e))?;
    Ok(Box::new(SealedOutput { writer: Some(w) }))
}

/// A sealed archive read through its chain's reader: sizes, ranged reads and streams are of the
/// plaintext; the whole-file checks (the CRC32 in the name, an object's size) are of the sealed
/// bytes, so they need no key.
pub struct SealedArchive {
    inner: Box<dyn ArchiveRead>,
    cipher: ChaCha20Poly1305,
    plain: u64,
    chunks: u64,
}

impl SealedArchive {
    /// Opens `inner` (sealed bytes) with `key`: checks the header, the key id and the size.
    pub fn new(key: &ChainKey, inner: Box<dyn ArchiveRead>) -> Result<Self> {
        let path = inner.location().to_path_buf();
        let damaged = |cause: String| Error::Damaged {
            path: path.clone(),
            cause,
        };
        let raw = inner.size();
        let plain = plain_size(raw)
            .ok_or_else(|| damaged(format!("{raw} bytes: too short for a sealed archive")))?;
        let head = inner
            .read_at(0, HEADER)
            .map_err(|e| Error::io("read", &path, e))?;
        if &head[..8] != MAGIC {
            return Err(damaged(
                "not sealed: an encrypted chain holds only sealed archives".into(),
            ));
        }
        if head[8..16] != key.id {
            return Err(Error::Key {
                path,
                cause: format!(
                    "sealed with key {}, not this chain's key {}",
                    hex(&head[8..16]),
                    key.id()
                ),
            });
        }
        let chunks = (raw - HEADER as u64).div_ceil(SEALED_CHUNK as u64);
        Ok(SealedArchive {
            cipher: key.cipher(&head[16..48]),
            inner,
            plain,
            chunks,
        })
    }

    /// Opens chunk `index` (its sealed bytes, tag included) in place.
    fn open_chunk(&self, index: u64, data: &mut Vec<u8>) -> std::io::Result<()> {
        let body = self.open_in_place(index, data)?;
        data.truncate(body);
        Ok(())
    }

    /// Opens chunk `index`, whose sealed bytes (tag included) are `sealed`, in place; returns
    /// the length of its plaintext, which starts `sealed`.
    fn open_in_place(&self, index: u64, sealed: &mut [u8]) -> std::io::Result<usize> {
        let unauthentic = || {
            corrupt(format!(
                "{}: chunk {index} does not authenticate: the archive was changed, or sealed \
                 with another key",
                self.inner.location().display()
            ))
        };
        let body = sealed.len().checked_sub(TAG).ok_or_else(unauthentic)?;
        let (plain, tag) = sealed.split_at_mut(body);
        self.cipher
            .decrypt_in_place_detached(
                &nonce(index, index + 1 == self.chunks),
                b"",
                plain,
                chacha20poly1305::Tag::from_slice(tag),
            )
            .map_err(|_| unauthentic())?;
        Ok(body)
    }
}

impl ArchiveRead for SealedArchive {
    fn location(&self) -> &Path {
        self.inner.location()
    }
    fn size(&self) -> u64 {
        self.plain
    }
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let end = offset + len as u64;
        if end > self.plain {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the archive",
            ));
        }
        let first = offset / CHUNK as u64;
        let last = (end - 1) / CHUNK as u64;
        let from = HEADER as u64 + first * SEALED_CHUNK as u64;
        let to = (HEADER as u64 + (last + 1) * SEALED_CHUNK as u64).min(self.inner.size());
        // Each chunk is opened where it was read, and its plaintext moved down over the tags
        // before it (and, in the first chunk, over the bytes before `offset`): one move of
        // the bytes asked for, where a copy per chunk, a copy into the result and a drain of
        // its head were four.
        let mut buf = self.inner.read_at(from, (to - from) as usize)?;
        let skip = (offset - first * CHUNK as u64) as usize;
        let mut kept = 0;
        for (i, start) in (0..buf.len()).step_by(SEALED_CHUNK).enumerate() {
            let end = (start + SEALED_CHUNK).min(buf.len());
            let body_end = start + self.open_in_place(first + i as u64, &mut buf[start..end])?;
            let keep_from = if i == 0 {
                (start + skip).min(body_end)
            } else {
                start
            };
            buf.copy_within(keep_from..body_end, kept);
            kept += body_end - keep_from;
        }
        if kept < len {
            return Err(corrupt(format!(
                "{}: {kept} bytes opened where {len} were asked",
                self.inner.location().display()
            )));
        }
        buf.truncate(len);
        Ok(buf)
    }
    fn stream(&self) -> std::io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(OpenReader::new(self, self.inner.stream()?)))
    }
    fn span(&self) -> usize {
        self.inner.span()
    }
    fn check_before_restore(&self, crc: u32) -> Result<()> {
        self.inner.check_before_restore(crc)
    }
    fn raw_size(&self) -> u64 {
        self.inner.size()
    }
    fn raw_stream(&self) -> std::io::Result<Box<dyn Read + Send + '_>> {
        self.inner.stream()
    }
    fn decode<'a>(&'a self, raw: Box<dyn Read + 'a>) -> std::io::Result<Box<dyn Read + 'a>> {
        Ok(Box::new(OpenReader::new(self, raw)))
    }
}

/// Opens a sealed stream chunk by chunk.
struct OpenReader<'a, R> {
    archive: &'a SealedArchive,
    raw: R,
    header_read: bool,
    index: u64,
    buf: Vec<u8>,
    at: usize,
}

impl<'a, R: Read> OpenReader<'a, R> {
    fn new(archive: &'a SealedArchive, raw: R) -> Self {
        OpenReader {
            archive,
            raw,
            header_read: false,
            index: 0,
            buf: Vec::new(),
            at: 0,
        }
    }
}

impl<R: Read> Read for OpenReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if !self.header_read {
            let mut head = [0u8; HEADER];
            self.raw.read_exact(&mut head)?;
            if &head[..8] != MAGIC {
                return Err(corrupt("the sealed header changed while reading".into()));
            }
            self.header_read = true;
        }
        if self.at == self.buf.len() {
            if self.index == self.archive.chunks {
                return Ok(0);
            }
            self.buf.resize(SEALED_CHUNK, 0);
            let mut got = 0;
            while got < SEALED_CHUNK {
                let n = self.raw.read(&mut self.buf[got..])?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            self.buf.truncate(got);
            if got < TAG {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the sealed archive ends inside a chunk",
                ));
            }
            let mut data = std::mem::take(&mut self.buf);
            self.archive.open_chunk(self.index, &mut data)?;
            self.buf = data;
            self.at = 0;
            self.index += 1;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// What [`verify_sealed`] found.
#[derive(Debug, Default)]
pub struct SealedReport {
    /// Archives checked.
    pub archives: usize,
    /// Their stored bytes, in all.
    pub bytes: u64,
    /// Archives whose stored bytes do not match their name's CRC32 or their recorded size, and
    /// a damaged key file or copy.
    pub problems: Vec<Error>,
}

/// Checks what can be checked of a chain without its key: the key file's CRC32, and every
/// archive's stored bytes against the CRC32 in its name (and, on an object store, the size in
/// its seal). The records,
/// manifests and chain continuity are sealed; [`crate::verify_chain`] with the key checks them.
/// `progress` is told the bytes read so far and the total.
pub fn verify_sealed(
    store: &dyn crate::ChainStore,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SealedReport> {
    let stored = store.stored()?;
    let total: u64 = stored.iter().map(|(_, a)| a.size()).sum();
    let mut report = SealedReport::default();
    // The key file and its copy, without which no archive opens, are checked as far as they
    // can be without the key: their CRC32s and format, and that they are the same.
    report.problems.extend(key_file_problems(store)?);
    for (name, archive) in &stored {
        let done = report.bytes;
        // The archive read as stored, each byte once; the entries inside are sealed.
        let checked = crate::archive::read_whole(
            name,
            &**archive,
            &mut |bytes| progress(done + bytes, total),
            |r| {
                std::io::copy(r, &mut std::io::sink())
                    .map(|_| ())
                    .map_err(|e| Error::io("read", archive.location(), e))
            },
        );
        if let Err(e) = checked {
            report.problems.push(e);
        }
        report.archives += 1;
        report.bytes += archive.size();
    }
    Ok(report)
}

/// Bytes in memory as an archive (a sealed manifest).
struct MemoryArchive {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl ArchiveRead for MemoryArchive {
    fn location(&self) -> &Path {
        &self.path
    }
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let from = offset as usize;
        self.bytes
            .get(from..from + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "short"))
    }
    fn stream(&self) -> std::io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(&self.bytes[..]))
    }
    fn check_before_restore(&self, _: u32) -> Result<()> {
        Ok(())
    }
}

/// A shared chain key, as the chain stores hold it.
pub type SharedKey = Arc<ChainKey>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A new age identity, written as `name` in `dir` (as age-keygen writes one).
    fn identity_file(dir: &Path, name: &str) -> (age::x25519::Identity, PathBuf) {
        let id = age::x25519::Identity::generate();
        let path = dir.join(name);
        std::fs::write(&path, id.to_string().expose_secret()).unwrap();
        (id, path)
    }

    fn seal(key: &ChainKey, plain: &[u8], writes: usize) -> Vec<u8> {
        let mut w = SealWriter::new(key, Vec::new()).unwrap();
        for c in plain.chunks(writes.max(1)) {
            w.write_all(c).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn sealed_objects_read_back_at_any_offset_and_as_a_stream() {
        let key = ChainKey::generate();
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 77] {
            let plain: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = seal(&key, &plain, 10_000);
            assert_eq!(plain_size(sealed.len() as u64), Some(size as u64));
            assert!(
                size < 64 || !sealed.windows(64).any(|w| w == &plain[..64]),
                "plaintext shows"
            );
            let a = SealedArchive::new(
                &key,
                Box::new(MemoryArchive {
                    path: "m".into(),
                    bytes: sealed.clone(),
                }),
            )
            .unwrap();
            assert_eq!(a.size(), size as u64);
            let mut all = Vec::new();
            a.stream().unwrap().read_to_end(&mut all).unwrap();
            assert_eq!(all, plain);
            // Reads that start and end inside chunks, on their edges, and across several.
            let mut reads = vec![
                (0, 0),
                (0, size),
                (size / 3, size / 3),
                (size.saturating_sub(5), 5.min(size)),
            ];
            for off in [1, CHUNK - 3, CHUNK, CHUNK + 5, 2 * CHUNK - 1] {
                for len in [1, 3, CHUNK - 1, CHUNK, CHUNK + 9, 2 * CHUNK + 1] {
                    if off + len <= size {
                        reads.push((off, len));
                    }
                }
            }
            for (off, len) in reads {
                assert_eq!(
                    a.read_at(off as u64, len).unwrap(),
                    &plain[off..off + len],
                    "size {size}, {len} bytes at {off}"
                );
            }
        }
    }

    #[test]
    fn a_flipped_byte_a_cut_or_another_key_is_refused() {
        let key = ChainKey::generate();
        let plain = vec![42u8; 2 * CHUNK + 10];
        let sealed = seal(&key, &plain, 4096);
        let open = |bytes: Vec<u8>, k: &ChainKey| -> std::result::Result<Vec<u8>, String> {
            let a = SealedArchive::new(
                k,
                Box::new(MemoryArchive {
                    path: "m".into(),
                    bytes,
                }),
            )
            .map_err(|e| e.to_string())?;
            let mut v = Vec::new();
            a.stream()
                .and_then(|mut s| s.read_to_end(&mut v))
                .map_err(|e| e.to_string())?;
            Ok(v)
        };
        assert_eq!(open(sealed.clone(), &key).unwrap(), plain);
        let mut flipped = sealed.clone();
        flipped[HEADER + CHUNK + 100] ^= 1;
        assert!(open(flipped, &key)
            .unwrap_err()
            .contains("does not authenticate"));
        // Cut after the first two chunks: the second is then the last, and its nonce differs.
        let cut = sealed[..HEADER + 2 * SEALED_CHUNK].to_vec();
        assert!(open(cut, &key)
            .unwrap_err()
            .contains("does not authenticate"));
        let other = ChainKey::generate();
        assert!(open(sealed, &other)
            .unwrap_err()
            .contains("not this chain's key"));
    }

    /// Options that remember their keys open the same key file again from memory (a job's
    /// every run), with the key they made too; other identities through the same memory are
    /// still checked (and refused), and a key file written again is unwrapped anew.
    #[test]
    fn remembered_keys_open_the_same_key_file_without_unwrapping_it_again() {
        use crate::ChainStore as _;
        let dir = tempfile::tempdir().unwrap();
        let (id, id_file) = identity_file(dir.path(), "id.txt");
        let (_, other_file) = identity_file(dir.path(), "other.txt");
        let chain_dir = dir.path().join("bk");
        std::fs::create_dir(&chain_dir).unwrap();
        let store = crate::LocalChain::new(&chain_dir);
        let remembered = Arc::new(RememberedKeys::default());
        let job = KeyOptions {
            recipients: vec![id.to_public().to_string()],
            identity_files: vec![id_file.clone()],
            remembered: Some(Arc::clone(&remembered)),
            ..KeyOptions::default()
        };
        let made = open_chain_key(&store, &job, true).unwrap().unwrap();
        assert!(made.made);
        let sealed = made.key.seal_bytes(b"a record");
        for n in 1..=3 {
            let again = open_chain_key(&store, &job, n == 2).unwrap().unwrap();
            assert_eq!(again.key.id(), made.key.id());
            assert_eq!(
                again.key.open_bytes(Path::new("x"), &sealed).unwrap(),
                b"a record"
            );
            assert_eq!(remembered.hits(), n);
        }
        // Another identity through the same memory is tried on the key file, and refused.
        let wrong = KeyOptions {
            identity_files: vec![other_file],
            ..job.clone()
        };
        assert!(matches!(
            open_chain_key(&store, &wrong, false),
            Err(Error::Key { .. })
        ));
        assert_eq!(remembered.hits(), 3);
        // The key wrapped again (new bytes): unwrapped, then remembered in turn.
        let bytes = made.key.wrap(&chain_dir.join(KEY_FILE), &job).unwrap();
        store.replace_key_file(KEY_FILE, &bytes).unwrap();
        store.replace_key_file(KEY_FILE_COPY, &bytes).unwrap();
        for hits in [3, 4] {
            let again = open_chain_key(&store, &job, false).unwrap().unwrap();
            assert_eq!(again.key.id(), made.key.id());
            assert_eq!(remembered.hits(), hits);
        }
        // Without the memory, nothing is remembered or answered.
        let plain = KeyOptions {
            remembered: None,
            ..job.clone()
        };
        open_chain_key(&store, &plain, false).unwrap().unwrap();
        assert_eq!(remembered.hits(), 4);
    }

    /// The key-file protocol on a real directory: a writer makes the key file and its copy;
    /// with one damaged a reader opens the chain with the other and reports it, and a writer
    /// writes it again; with both damaged, opening fails as damage.
    #[test]
    fn a_chain_key_survives_one_damaged_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let (id, id_file) = identity_file(dir.path(), "id.txt");
        let chain_dir = dir.path().join("bk");
        std::fs::create_dir(&chain_dir).unwrap();
        let store = crate::LocalChain::new(&chain_dir);
        let make = KeyOptions {
            recipients: vec![id.to_public().to_string()],
            identity_files: vec![id_file.clone()],
            ..KeyOptions::default()
        };
        let open = KeyOptions {
            identity_files: vec![id_file],
            ..KeyOptions::default()
        };
        assert!(open_chain_key(&store, &open, false).unwrap().is_none());
        let made = open_chain_key(&store, &make, true).unwrap().unwrap();
        assert!(made.made);
        let good = std::fs::read(chain_dir.join(KEY_FILE)).unwrap();
        assert_eq!(std::fs::read(chain_dir.join(KEY_FILE_COPY)).unwrap(), good);
        for damaged in [KEY_FILE, KEY_FILE_COPY] {
            let mut bad = good.clone();
            let at = bad.len() / 2;
            bad[at] ^= 4;
            std::fs::write(chain_dir.join(damaged), &bad).unwrap();
            let read = open_chain_key(&store, &open, false).unwrap().unwrap();
            assert_eq!(read.key.id(), made.key.id(), "{damaged}");
            assert!(read.written.is_empty(), "a reader writes nothing");
            assert!(
                matches!(&read.problems[..], [Error::Damaged { path, .. }] if path.ends_with(damaged)),
                "{damaged}: {:?}",
                read.problems
            );
            let fixed = open_chain_key(&store, &open, true).unwrap().unwrap();
            assert_eq!(fixed.written, [damaged.to_string()]);
            assert_eq!(std::fs::read(chain_dir.join(damaged)).unwrap(), good);
            assert!(read_key_files(&store).unwrap().unwrap().problems.is_empty());
        }
        let mut bad = good.clone();
        bad[10] ^= 4;
        std::fs::write(chain_dir.join(KEY_FILE), &bad).unwrap();
        std::fs::write(chain_dir.join(KEY_FILE_COPY), &bad).unwrap();
        assert!(matches!(
            open_chain_key(&store, &open, true),
            Err(Error::Damaged { .. })
        ));
        assert_eq!(
            std::fs::read(chain_dir.join(KEY_FILE)).unwrap(),
            bad,
            "nothing written"
        );
    }

    #[test]
    fn key_files_open_with_the_passphrase_or_an_identity_only() {
        let dir = tempfile::tempdir().unwrap();
        let (id, id_file) = identity_file(dir.path(), "id.txt");
        let key = ChainKey::generate();
        let opts = KeyOptions {
            passphrase: Some(SecretString::from("correct horse".to_string())),
            recipients: vec![id.to_public().to_string()],
            identity_files: Vec::new(),
            remembered: None,
        };
        let file = key.wrap(Path::new("k"), &opts).unwrap();
        let by_id = KeyOptions {
            identity_files: vec![id_file],
            ..KeyOptions::default()
        };
        assert_eq!(
            ChainKey::unwrap(Path::new("k"), &file, &by_id)
                .unwrap()
                .id(),
            key.id()
        );
        let wrong = KeyOptions {
            passphrase: Some(SecretString::from("wrong".to_string())),
            ..KeyOptions::default()
        };
        let e = ChainKey::unwrap(Path::new("k"), &file, &wrong)
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not open"), "{e}");
        let none = ChainKey::unwrap(Path::new("k"), &file, &KeyOptions::default())
            .unwrap_err()
            .to_string();
        assert!(none.contains("this backup is encrypted"), "{none}");
        let mut damaged = file.clone();
        let at = damaged.len() / 2;
        damaged[at] ^= 0x20;
        assert!(ChainKey::unwrap(Path::new("k"), &damaged, &by_id).is_err());
    }
}
