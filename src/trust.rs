//! Keys, package signatures and the site's trust policy.
//!
//! Keys and signatures are minisign's (Ed25519; the secret key encrypted with a password
//! through scrypt, or unencrypted for CI), so a site can check a package with Debian's
//! `minisign` as well as with `sealer`. A package is signed by signing its manifest bytes, which
//! commit to every frame's sha256; the signature text is kept in the package's signature record
//! (`packer::signature`). This module makes and checks those signatures and reads the trust
//! policy (`/etc/sealer/trust/*.pub` or `$SEALER_TRUST_DIR`). It does no printing and no
//! prompting: callers pass passwords in, and decide what to show.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Cursor, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use packer::{ReadError, RunFile, SignatureRecord};
use sha2::{Digest, Sha256};

use crate::store::{Image, Store};

/// Where the site's public keys live unless `$SEALER_TRUST_DIR` names another directory.
pub const DEFAULT_TRUST_DIR: &str = "/etc/sealer/trust";

/// A minisign key id: 8 bytes, shown as minisign shows it (16 upper-case hex digits of the
/// little-endian number), so it matches `minisign -V` output and the comment of a `.pub` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    fn from_slice(bytes: &[u8]) -> KeyId {
        let mut id = [0u8; 8];
        let n = bytes.len().min(8);
        id[..n].copy_from_slice(&bytes[..n]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

/// Why a key could not be made or read, or a package could not be signed or trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{} already exists; choose another name or remove it first", path.display())]
    KeyExists { path: PathBuf },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is not a minisign secret key ({reason})", path.display())]
    SecretKeyUnreadable { path: PathBuf, reason: String },
    #[error("the password for {} is wrong", path.display())]
    WrongPassword { path: PathBuf },
    #[error(
        "{} is encrypted: give its password (SEALER_KEY_PASSWORD, --password-stdin or a terminal)",
        path.display()
    )]
    PasswordNeeded { path: PathBuf },
    #[error("an empty password protects nothing; give a password or use --unencrypted")]
    EmptyPassword,
    #[error("{origin} is not a minisign public key ({reason}); give a .pub file or its key line")]
    PublicKeyUnreadable { origin: String, reason: String },
    #[error("making the key pair: {0}")]
    Generate(String),
    #[error("signing with key {key}: {reason}")]
    Sign { key: KeyId, reason: String },
    #[error(transparent)]
    SignatureWrite(#[from] packer::signature::SignatureWriteError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(
        "{} is unsigned, but {policy} requires a signature by {keys}; ask the vendor for a \
         signed package",
        path.display()
    )]
    Unsigned {
        path: PathBuf,
        policy: String,
        keys: String,
    },
    #[error(
        "the signature record of {} is damaged; copy the file again or have it signed again",
        path.display()
    )]
    SignatureDamaged { path: PathBuf },
    #[error("the signature of {} cannot be read ({reason}); have it signed again", path.display())]
    SignatureUnreadable { path: PathBuf, reason: String },
    #[error(
        "{} is signed by key {signer}, which {policy} does not trust (trusted: {keys})",
        path.display()
    )]
    Untrusted {
        path: PathBuf,
        signer: KeyId,
        policy: String,
        keys: String,
    },
    #[error(
        "the signature of {} by key {signer} does not match its manifest: the package was \
         changed after it was signed",
        path.display()
    )]
    BadSignature { path: PathBuf, signer: KeyId },
    #[error(
        "image {image} is unsigned, but {policy} requires a signature by {keys}; pull it with \
         its signature (sealer pull, sealer load) or have it signed (sealer sign IMAGE --key KEY)"
    )]
    ImageUnsigned {
        image: String,
        policy: String,
        keys: String,
    },
    #[error(
        "image {image} is signed by key {signer}, which {policy} does not trust (trusted: {keys})"
    )]
    ImageUntrusted {
        image: String,
        signer: KeyId,
        policy: String,
        keys: String,
    },
    #[error(
        "the signature of image {image} by key {signer} does not match its manifest {digest}: the \
         signature or the image was changed after signing"
    )]
    ImageBadSignature {
        image: String,
        digest: String,
        signer: KeyId,
    },
    #[error("the signature of image {image} cannot be read ({reason}); have it signed again")]
    ImageSignatureUnreadable { image: String, reason: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the trust policy directory {} does not exist (named by SEALER_TRUST_DIR)", path.display())]
    PolicyDirMissing { path: PathBuf },
    #[error(
        "the trust policy directory {} holds no *.pub key, so no package can be trusted; add \
         the vendor's public key",
        path.display()
    )]
    PolicyEmpty { path: PathBuf },
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> TrustError + 'p {
    move |source| TrustError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// How a new secret key is kept on disk.
#[derive(Debug, Clone)]
pub enum KeyProtection {
    /// Encrypted with a key derived from this password (scrypt, as minisign does).
    Password(String),
    /// Stored in the clear (CI signers whose secret store protects the file).
    Unencrypted,
}

/// The files [`generate_key`] wrote.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub secret: PathBuf,
    pub public: PathBuf,
    pub key_id: KeyId,
    /// The public key line (`RW…`), what `--trust` also accepts.
    pub public_line: String,
}

/// `NAME.key` and `NAME.pub` for the name a user gave.
pub fn key_paths(name: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = name.as_os_str().to_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".key"), with(".pub"))
}

/// Make an Ed25519 key pair in minisign's format: `NAME.key` (the secret key, mode 0600) and
/// `NAME.pub`. Existing files are never overwritten.
pub fn generate_key(name: &Path, protection: &KeyProtection) -> Result<NewKey, TrustError> {
    let (secret, public) = key_paths(name);
    for path in [&secret, &public] {
        if path.symlink_metadata().is_ok() {
            return Err(TrustError::KeyExists { path: path.clone() });
        }
    }
    let generate_err = |e: minisign::PError| TrustError::Generate(e.to_string());
    let (pair, encrypted) = match protection {
        KeyProtection::Password(password) if password.is_empty() => {
            return Err(TrustError::EmptyPassword)
        }
        KeyProtection::Password(password) => (
            minisign::KeyPair::generate_encrypted_keypair(Some(password.clone()))
                .map_err(generate_err)?,
            true,
        ),
        KeyProtection::Unencrypted => (
            minisign::KeyPair::generate_unencrypted_keypair().map_err(generate_err)?,
            false,
        ),
    };
    let key_id = KeyId::from_slice(pair.pk.keynum());
    let comment = if encrypted {
        format!("sealer secret key {key_id} (encrypted)")
    } else {
        format!("sealer secret key {key_id} (unencrypted)")
    };
    let secret_text = pair
        .sk
        .to_box(Some(&comment))
        .map_err(generate_err)?
        .into_string();
    let public_line = pair.pk.to_base64();
    let public_text = format!("untrusted comment: minisign public key {key_id}\n{public_line}\n");
    write_new(&secret, secret_text.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&public, public_text.as_bytes(), 0o644) {
        let _ = fs::remove_file(&secret);
        return Err(e);
    }
    Ok(NewKey {
        secret,
        public,
        key_id,
        public_line,
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TrustError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => TrustError::KeyExists {
                path: path.to_path_buf(),
            },
            _ => io_err("creating", path)(e),
        })?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(io_err("writing", path))
}

/// A secret key read from its file, ready to sign.
pub struct SigningKey {
    secret: minisign::SecretKey,
    key_id: KeyId,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.key_id)
    }
}

/// The base64 line of a minisign key file (the second line; the first is a comment).
fn key_line(text: &str) -> Option<&str> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next()?;
    if first.starts_with("untrusted comment:") {
        lines.next()
    } else {
        Some(first)
    }
}

/// Whether the secret key at `path` needs a password (read before asking for one).
pub fn secret_key_is_encrypted(path: &Path) -> Result<bool, TrustError> {
    let text = fs::read_to_string(path).map_err(io_err("reading the secret key", path))?;
    let unreadable = |reason: &str| TrustError::SecretKeyUnreadable {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let line = key_line(&text).ok_or_else(|| unreadable("no key line"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|_| unreadable("the key line is not base64"))?;
    // sig_alg (2) then kdf_alg (2): zeros for a key stored in the clear.
    match bytes.get(2..4) {
        Some([0, 0]) => Ok(false),
        Some(b"Sc") => Ok(true),
        _ => Err(unreadable("unknown key encryption")),
    }
}

impl SigningKey {
    /// Read the secret key at `path`; `password` is needed when it is encrypted.
    pub fn open(path: &Path, password: Option<String>) -> Result<SigningKey, TrustError> {
        let encrypted = secret_key_is_encrypted(path)?;
        let text = fs::read_to_string(path).map_err(io_err("reading the secret key", path))?;
        let unreadable = |e: minisign::PError| TrustError::SecretKeyUnreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let key_box = minisign::SecretKeyBox::from_string(&text).map_err(unreadable)?;
        let secret = if encrypted {
            let password = password.ok_or_else(|| TrustError::PasswordNeeded {
                path: path.to_path_buf(),
            })?;
            key_box.into_secret_key(Some(password)).map_err(|e| {
                if e.to_string().contains("Wrong password") {
                    TrustError::WrongPassword {
                        path: path.to_path_buf(),
                    }
                } else {
                    unreadable(e)
                }
            })?
        } else {
            key_box.into_unencrypted_secret_key().map_err(unreadable)?
        };
        let key_id = KeyId::from_slice(secret.keynum());
        Ok(SigningKey { secret, key_id })
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// A minisign signature of `manifest` (a package's manifest bytes), its trusted comment
    /// naming the image and the payload id. The text is what a `.minisig` file holds.
    pub fn sign_manifest(&self, manifest: &[u8], image: &str) -> Result<String, TrustError> {
        let payload_id = hex::encode(Sha256::digest(manifest));
        self.sign_with_comment(manifest, image, &format!("payload:{payload_id}"))
    }

    /// A minisign signature of an image's manifest bytes (so of its manifest digest), its
    /// trusted comment naming the image and the digest.
    pub fn sign_image_manifest(&self, manifest: &[u8], image: &str) -> Result<String, TrustError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(manifest)));
        self.sign_with_comment(manifest, image, &format!("digest:{digest}"))
    }

    fn sign_with_comment(
        &self,
        manifest: &[u8],
        image: &str,
        identity: &str,
    ) -> Result<String, TrustError> {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Tabs and newlines would break the signature's line format.
        let image: String = image
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let trusted = format!("timestamp:{timestamp}\timage:{image}\t{identity}");
        let untrusted = format!("signature from sealer key {}", self.key_id);
        let signature = minisign::sign(
            None,
            &self.secret,
            Cursor::new(manifest),
            Some(&trusted),
            Some(&untrusted),
        )
        .map_err(|e| TrustError::Sign {
            key: self.key_id,
            reason: e.to_string(),
        })?;
        Ok(signature.into_string())
    }
}

/// A public key the caller trusts, and where it came from (for messages).
#[derive(Debug, Clone)]
pub struct TrustedKey {
    key: minisign::PublicKey,
    key_id: KeyId,
    pub origin: String,
}

impl TrustedKey {
    /// A `.pub` file, or the key itself: its base64 line or the whole two-line text.
    pub fn parse(arg: &str) -> Result<TrustedKey, TrustError> {
        let path = Path::new(arg);
        if !arg.contains('\n') && path.is_file() {
            return Self::from_file(path);
        }
        match Self::from_text(arg, "the key given") {
            // Not a key, and it looks like a path: say that the file is missing.
            Err(_) if !arg.contains('\n') && (arg.ends_with(".pub") || arg.contains('/')) => {
                Self::from_file(path)
            }
            result => result,
        }
    }

    pub fn from_file(path: &Path) -> Result<TrustedKey, TrustError> {
        let text = fs::read_to_string(path).map_err(io_err("reading the public key", path))?;
        Self::from_text(&text, &path.display().to_string())
    }

    fn from_text(text: &str, origin: &str) -> Result<TrustedKey, TrustError> {
        let unreadable = |reason: String| TrustError::PublicKeyUnreadable {
            origin: origin.to_string(),
            reason,
        };
        let line = key_line(text).ok_or_else(|| unreadable("it is empty".into()))?;
        let key = minisign::PublicKey::from_base64(line).map_err(|e| unreadable(e.to_string()))?;
        Ok(TrustedKey {
            key_id: KeyId::from_slice(key.keynum()),
            key,
            origin: origin.to_string(),
        })
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }
}

/// The keys a package must be signed by, and what named them (for messages).
#[derive(Debug, Clone)]
pub struct Trust {
    pub keys: Vec<TrustedKey>,
    /// "--trust" or "the trust policy in DIR".
    pub policy: String,
}

impl Trust {
    /// Keys given on the command line (`--trust`, repeatable).
    pub fn from_args(args: &[String]) -> Result<Option<Trust>, TrustError> {
        if args.is_empty() {
            return Ok(None);
        }
        let keys = args
            .iter()
            .map(|a| TrustedKey::parse(a))
            .collect::<Result<_, _>>()?;
        Ok(Some(Trust {
            keys,
            policy: "--trust".into(),
        }))
    }

    /// The site's policy: every `*.pub` in `$SEALER_TRUST_DIR` (which must exist when set) or
    /// in [`DEFAULT_TRUST_DIR`] (no policy when that directory does not exist). A directory
    /// without keys, or with a key that cannot be read, is an error: it must not silently trust
    /// everything.
    pub fn site_policy() -> Result<Option<Trust>, TrustError> {
        let named = std::env::var_os("SEALER_TRUST_DIR").filter(|d| !d.is_empty());
        let dir = match &named {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(DEFAULT_TRUST_DIR),
        };
        if !dir.exists() {
            return match named {
                Some(_) => Err(TrustError::PolicyDirMissing { path: dir }),
                None => Ok(None),
            };
        }
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(io_err("listing the trust policy directory", &dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(TrustError::PolicyEmpty { path: dir });
        }
        let keys = files
            .iter()
            .map(|f| TrustedKey::from_file(f))
            .collect::<Result<_, _>>()?;
        Ok(Some(Trust {
            keys,
            policy: format!("the trust policy in {}", dir.display()),
        }))
    }

    fn key_list(&self) -> String {
        self.keys
            .iter()
            .map(|k| k.key_id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a package says about its signer, unchecked (for `inspect` and the summary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Unsigned,
    /// The key id the signature names and its trusted comment; not yet checked.
    SignedBy {
        key_id: KeyId,
        trusted_comment: String,
    },
    /// The signature record is damaged or its text is not a minisign signature.
    Damaged,
}

/// What [`claim`] and [`check`] read from a package: the signature, parsed.
fn signature_box(run: &RunFile) -> Result<Option<minisign::SignatureBox>, TrustError> {
    match run.signature() {
        SignatureRecord::Unsigned => Ok(None),
        SignatureRecord::Damaged => Err(TrustError::SignatureDamaged {
            path: run.path().to_path_buf(),
        }),
        SignatureRecord::Signed { text, .. } => minisign::SignatureBox::from_string(text)
            .map(Some)
            .map_err(|e| TrustError::SignatureUnreadable {
                path: run.path().to_path_buf(),
                reason: e.to_string(),
            }),
    }
}

/// Who the package says signed it, without checking.
pub fn claim(run: &RunFile) -> Claim {
    match signature_box(run) {
        Ok(None) => Claim::Unsigned,
        Ok(Some(sig)) => Claim::SignedBy {
            key_id: KeyId::from_slice(sig.keynum()),
            trusted_comment: sig.trusted_comment().unwrap_or_default(),
        },
        Err(_) => Claim::Damaged,
    }
}

/// A signature checked against a trusted key.
#[derive(Debug, Clone)]
pub struct Verified {
    pub key_id: KeyId,
    /// Where the trusting key came from (a file or "the key given").
    pub key_origin: String,
    pub trusted_comment: String,
}

/// Check that `run` is signed by one of `trust`'s keys: the signature over its manifest bytes
/// and over its trusted comment. Reads only what [`RunFile::open`] read; the frames are the
/// integrity check's business (the manifest commits to their sha256).
pub fn check(run: &RunFile, trust: &Trust) -> Result<Verified, TrustError> {
    let path = run.path().to_path_buf();
    let Some(sig) = signature_box(run)? else {
        return Err(TrustError::Unsigned {
            path,
            policy: trust.policy.clone(),
            keys: trust.key_list(),
        });
    };
    let signer = KeyId::from_slice(sig.keynum());
    let Some(key) = trust.keys.iter().find(|k| k.key_id == signer) else {
        return Err(TrustError::Untrusted {
            path,
            signer,
            policy: trust.policy.clone(),
            keys: trust.key_list(),
        });
    };
    minisign::verify(
        &key.key,
        &sig,
        Cursor::new(run.manifest_bytes()),
        true,
        false,
        false,
    )
    .map_err(|_| TrustError::BadSignature {
        path: path.clone(),
        signer,
    })?;
    Ok(Verified {
        key_id: signer,
        key_origin: key.origin.clone(),
        trusted_comment: sig.trusted_comment().unwrap_or_default(),
    })
}

/// The site policy applied to a package before `install`, `extract` or `load` writes anything:
/// `Ok(None)` when there is no policy, the checked signer when there is one.
pub fn enforce_site_policy(run: &RunFile) -> Result<Option<Verified>, TrustError> {
    match Trust::site_policy()? {
        Some(trust) => check(run, &trust).map(Some),
        None => Ok(None),
    }
}

/// The signature check of `verify`: against `trust` (`--trust` keys) when given, else the site
/// policy; `Ok(None)` when neither asks for a signature. The integrity check follows it.
pub fn check_for_verify(
    run: &RunFile,
    trust: Option<&Trust>,
) -> Result<Option<Verified>, TrustError> {
    let verified = match trust {
        Some(trust) => Some(check(run, trust)?),
        None => enforce_site_policy(run)?,
    };
    // Unchecked, a signature record must still be intact: `verify` vouches for every byte.
    if verified.is_none() {
        signature_box(run)?;
    }
    Ok(verified)
}

/// What [`sign_package`] did.
#[derive(Debug, Clone)]
pub struct Signed {
    pub key_id: KeyId,
    pub payload_id: String,
    /// The signer the package had before, if any.
    pub replaced: Option<KeyId>,
}

/// `sealer sign app.run`: check every frame's sha256 against the manifest (a signature vouches
/// for the payload), then store a new signature of the manifest in place. Only the signature
/// record changes; split packages are signed through their first file.
pub fn sign_package(path: &Path, key: &SigningKey) -> Result<Signed, TrustError> {
    let run = RunFile::open(path)?;
    run.payload()?.verify_digests(None)?;
    let replaced = match claim(&run) {
        Claim::SignedBy { key_id, .. } => Some(key_id),
        _ => None,
    };
    let text = key.sign_manifest(run.manifest_bytes(), &run.manifest().image.name)?;
    packer::signature::write_record(path, run.header_offset(), &text)?;
    Ok(Signed {
        key_id: key.key_id,
        payload_id: run.payload_id(),
        replaced,
    })
}

/// What [`sign_image`] did.
#[derive(Debug, Clone)]
pub struct SignedImage {
    pub key_id: KeyId,
    pub digest: String,
    /// The signer the image had before, if any.
    pub replaced: Option<KeyId>,
}

/// Who signed an image of the store, unchecked (`None`: unsigned or unreadable).
pub fn image_claim(store: &Store, image: &Image) -> Result<Claim, TrustError> {
    Ok(match store.signature(&image.digest)? {
        None => Claim::Unsigned,
        Some(text) => match minisign::SignatureBox::from_string(&text) {
            Ok(sig) => Claim::SignedBy {
                key_id: KeyId::from_slice(sig.keynum()),
                trusted_comment: sig.trusted_comment().unwrap_or_default(),
            },
            Err(_) => Claim::Damaged,
        },
    })
}

/// `sealer sign IMAGE`: sign the image's manifest bytes (its digest) and record the signature
/// in the store, where push and save find it. Every local name of the digest is then signed.
pub fn sign_image(
    store: &Store,
    image: &Image,
    key: &SigningKey,
) -> Result<SignedImage, TrustError> {
    let manifest = store.read_blob(&image.digest)?;
    let replaced = match image_claim(store, image)? {
        Claim::SignedBy { key_id, .. } => Some(key_id),
        _ => None,
    };
    let text = key.sign_image_manifest(&manifest, &image.reference.store_key())?;
    store.put_signature(&image.digest, &text)?;
    Ok(SignedImage {
        key_id: key.key_id,
        digest: image.digest.clone(),
        replaced,
    })
}

/// Check that the store's image is signed by one of `trust`'s keys: its recorded signature over
/// the manifest bytes (read back and checked against the digest) and its trusted comment.
pub fn check_image(store: &Store, image: &Image, trust: &Trust) -> Result<Verified, TrustError> {
    let name = image.reference.store_key();
    let Some(text) = store.signature(&image.digest)? else {
        return Err(TrustError::ImageUnsigned {
            image: name,
            policy: trust.policy.clone(),
            keys: trust.key_list(),
        });
    };
    let sig = minisign::SignatureBox::from_string(&text).map_err(|e| {
        TrustError::ImageSignatureUnreadable {
            image: name.clone(),
            reason: e.to_string(),
        }
    })?;
    let signer = KeyId::from_slice(sig.keynum());
    let Some(key) = trust.keys.iter().find(|k| k.key_id == signer) else {
        return Err(TrustError::ImageUntrusted {
            image: name,
            signer,
            policy: trust.policy.clone(),
            keys: trust.key_list(),
        });
    };
    let manifest = store.read_blob(&image.digest)?;
    minisign::verify(&key.key, &sig, Cursor::new(&manifest), true, false, false).map_err(|_| {
        TrustError::ImageBadSignature {
            image: name,
            digest: image.digest.clone(),
            signer,
        }
    })?;
    Ok(Verified {
        key_id: signer,
        key_origin: key.origin.clone(),
        trusted_comment: sig.trusted_comment().unwrap_or_default(),
    })
}

/// The signature `sealer run` and `sealer pack` require of a store image: by `trust` (`--trust`)
/// when given, else by the site policy; `Ok(None)` when neither asks for one.
pub fn enforce_image_trust(
    store: &Store,
    image: &Image,
    trust: Option<&Trust>,
) -> Result<Option<Verified>, TrustError> {
    match trust {
        Some(trust) => check_image(store, image, trust).map(Some),
        None => match Trust::site_policy()? {
            Some(policy) => check_image(store, image, &policy).map(Some),
            None => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_read_as_minisign_shows_them() {
        let id = KeyId([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        assert_eq!(id.to_string(), "EFCDAB8967452301");
    }

    #[test]
    fn a_signature_checks_only_with_its_key_and_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let a = generate_key(&dir.path().join("a"), &KeyProtection::Unencrypted).unwrap();
        let b = generate_key(&dir.path().join("b"), &KeyProtection::Unencrypted).unwrap();
        let key = SigningKey::open(&a.secret, None).unwrap();
        let text = key.sign_manifest(b"{\"manifest\":1}", "x:1").unwrap();
        let sig = minisign::SignatureBox::from_string(&text).unwrap();
        let trusted = TrustedKey::from_file(&a.public).unwrap();
        let other = TrustedKey::from_file(&b.public).unwrap();
        let ok = |k: &TrustedKey, data: &[u8]| {
            minisign::verify(&k.key, &sig, Cursor::new(data), true, false, false).is_ok()
        };
        assert!(ok(&trusted, b"{\"manifest\":1}"));
        assert!(!ok(&trusted, b"{\"manifest\":2}"));
        assert!(!ok(&other, b"{\"manifest\":1}"));
        assert!(sig.trusted_comment().unwrap().contains("image:x:1"));
    }

    #[test]
    fn a_trusted_key_is_a_file_or_the_key_line_and_a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let made = generate_key(&dir.path().join("k"), &KeyProtection::Unencrypted).unwrap();
        let from_file = TrustedKey::parse(made.public.to_str().unwrap()).unwrap();
        let from_line = TrustedKey::parse(&made.public_line).unwrap();
        assert_eq!(from_file.key_id(), made.key_id);
        assert_eq!(from_line.key_id(), made.key_id);
        let missing = dir.path().join("typo.pub");
        let err = TrustedKey::parse(missing.to_str().unwrap()).unwrap_err();
        assert!(
            err.to_string().starts_with("reading the public key"),
            "{err}"
        );
        assert!(matches!(
            TrustedKey::parse("RWnotakey"),
            Err(TrustError::PublicKeyUnreadable { .. })
        ));
    }

    #[test]
    fn an_encrypted_key_needs_its_password() {
        let dir = tempfile::tempdir().unwrap();
        let made = generate_key(
            &dir.path().join("k"),
            &KeyProtection::Password("right".into()),
        )
        .unwrap();
        assert!(secret_key_is_encrypted(&made.secret).unwrap());
        assert!(matches!(
            SigningKey::open(&made.secret, None),
            Err(TrustError::PasswordNeeded { .. })
        ));
        assert!(matches!(
            SigningKey::open(&made.secret, Some("wrong".into())),
            Err(TrustError::WrongPassword { .. })
        ));
        let key = SigningKey::open(&made.secret, Some("right".into())).unwrap();
        assert_eq!(key.key_id(), made.key_id);
        assert!(matches!(
            generate_key(&dir.path().join("k"), &KeyProtection::Unencrypted),
            Err(TrustError::KeyExists { .. })
        ));
    }
}
