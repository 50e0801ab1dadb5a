//! `sealer key generate`, `sealer sign` and `sealer verify`, and how the CLI gets a key's
//! password (stdin, `SEALER_KEY_PASSWORD` or a terminal prompt).

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use packer::RunFile;
use sealer::store::{Store, StoreError};
use sealer::trust::{self, KeyProtection, SigningKey, Trust};
use sealer::ui::progress::ByteProgress;

#[derive(Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Make an Ed25519 key pair in minisign's format: NAME.key (secret) and NAME.pub.
    #[command(
        after_help = "Examples:\n  sealer key generate -o vendor\n  SEALER_KEY_PASSWORD=secret sealer key generate -o vendor"
    )]
    Generate {
        /// Name of the pair: writes NAME.key and NAME.pub (never overwrites).
        #[arg(short, long, value_name = "NAME")]
        output: PathBuf,
        /// Store the secret key unencrypted (for CI whose secret store protects the file).
        #[arg(long)]
        unencrypted: bool,
        /// Read the password from the first line of stdin instead of a terminal prompt.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// How a command that signs gets the secret key's password.
#[derive(Args)]
pub struct PasswordArgs {
    /// Read the secret key's password from the first line of stdin (else $SEALER_KEY_PASSWORD,
    /// else a terminal prompt).
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Args)]
pub struct SignArgs {
    /// The package to sign (its first file when split; only its signature record changes), or
    /// an image of the local store (NAME:TAG; its signature is kept beside it and travels with
    /// push, pull, save and load).
    package: PathBuf,
    /// The secret key (NAME.key from `sealer key generate`).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    #[command(flatten)]
    password: PasswordArgs,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The package to check (its first file when split).
    package: PathBuf,
    /// A public key the package must be signed by: a .pub file or its key line (repeatable).
    /// Without it the site policy ($SEALER_TRUST_DIR or /etc/sealer/trust) applies, if any.
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,
}

fn read_stdin_line() -> Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// The password for a new key: stdin, the environment, or asked twice on the terminal.
fn new_password(from_stdin: bool) -> Result<String> {
    if from_stdin {
        return read_stdin_line();
    }
    if let Ok(password) = std::env::var("SEALER_KEY_PASSWORD") {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "no terminal to ask for the key's password: pass --password-stdin, set \
             SEALER_KEY_PASSWORD, or use --unencrypted"
        );
    }
    let first = rpassword::prompt_password("Password for the new secret key: ")?;
    let again = rpassword::prompt_password("The same password again: ")?;
    if first != again {
        bail!("the two passwords differ; nothing was written");
    }
    Ok(first)
}

/// Open a secret key, asking for its password only when it is encrypted.
pub fn open_signing_key(path: &Path, password: &PasswordArgs) -> Result<SigningKey> {
    if !trust::secret_key_is_encrypted(path)? {
        return Ok(SigningKey::open(path, None)?);
    }
    let secret = if password.password_stdin {
        Some(read_stdin_line()?)
    } else if let Ok(p) = std::env::var("SEALER_KEY_PASSWORD") {
        Some(p)
    } else if std::io::stdin().is_terminal() {
        Some(rpassword::prompt_password(format!(
            "Password for {}: ",
            path.display()
        ))?)
    } else {
        None
    };
    Ok(SigningKey::open(path, secret)?)
}

pub fn key(args: KeyArgs) -> Result<()> {
    match args.command {
        KeyCommand::Generate {
            output,
            unencrypted,
            password_stdin,
        } => {
            let protection = if unencrypted {
                KeyProtection::Unencrypted
            } else {
                KeyProtection::Password(new_password(password_stdin)?)
            };
            let made = trust::generate_key(&output, &protection)?;
            println!("Key {} written:", made.key_id);
            println!("  secret key  {} (keep it private)", made.secret.display());
            println!("  public key  {} (give it to sites)", made.public.display());
            println!("Sites trust it with: --trust {}", made.public_line);
            Ok(())
        }
    }
}

pub fn sign(args: SignArgs) -> Result<()> {
    if !args.package.exists() {
        return sign_image(args);
    }
    let key = open_signing_key(&args.key, &args.password)?;
    let signed = trust::sign_package(&args.package, &key)?;
    match signed.replaced {
        Some(old) if old != signed.key_id => println!(
            "Signed {} with key {} (replacing the signature by key {old}; payload {})",
            args.package.display(),
            signed.key_id,
            signed.payload_id
        ),
        _ => println!(
            "Signed {} with key {} (payload {})",
            args.package.display(),
            signed.key_id,
            signed.payload_id
        ),
    }
    Ok(())
}

/// `sealer sign IMAGE`: what is not a file is an image of the local store.
fn sign_image(args: SignArgs) -> Result<()> {
    let name = args.package.to_string_lossy().into_owned();
    let store = Store::open_default()?;
    let image = match store.image_by_name(&name) {
        Ok(image) => image,
        Err(StoreError::ImageNotFound(_)) | Err(StoreError::Reference(_)) => bail!(
            "{name} is neither a .run file nor an image in the local store (see `sealer images`)"
        ),
        Err(e) => return Err(e.into()),
    };
    let key = open_signing_key(&args.key, &args.password)?;
    let signed = trust::sign_image(&store, &image, &key)?;
    match signed.replaced {
        Some(old) if old != signed.key_id => println!(
            "Signed image {name} ({}) with key {} (replacing the signature by key {old})",
            signed.digest, signed.key_id
        ),
        _ => println!(
            "Signed image {name} ({}) with key {}",
            signed.digest, signed.key_id
        ),
    }
    Ok(())
}

pub fn verify(args: VerifyArgs) -> Result<()> {
    let run = RunFile::open(&args.package)?;
    let trust = Trust::from_args(&args.trust)?;
    let verified = trust::check_for_verify(&run, trust.as_ref())?;
    let payload = run.payload()?;
    let progress = ByteProgress::new("verifying", payload.compressed_len());
    payload.verify(Some(&|done| progress.update(done)))?;
    progress.finish();
    match verified {
        Some(v) => println!(
            "{}: signed by key {} (trusted: {}); {}",
            args.package.display(),
            v.key_id,
            v.key_origin,
            v.trusted_comment
        ),
        None => println!(
            "{}: signature not checked (no --trust key and no site policy)",
            args.package.display()
        ),
    }
    println!(
        "{}: all {} frames of {} layers are intact (payload {})",
        args.package.display(),
        run.manifest().frame_count(),
        run.manifest().layers.len(),
        run.payload_id()
    );
    Ok(())
}
