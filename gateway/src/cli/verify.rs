//! `wardgate verify --cert PEM FILE…` (or `--ca PEM [--crl CRL]`): verifies COSE_Sign1 messages
//! (batches, retained device status, heartbeats, acks) against listed certificates or, through
//! their `x5chain`, a CA, and prints each payload as a JSON line (a waveform observation with
//! its `waveform`: `period_us`, `scale`, `offset` and every raw sample; a batch with its
//! `locations`, device id → where the device was when its rows were read);
//! `N verified, M failed` on stderr; exit 1 when any failed. An encrypted message (COSE_Encrypt,
//! `docs/wire-format.md` "Encryption") needs `--key RECEIVER.key` (a receiver's P-256 key; its
//! recipient is found by the `kid` of its public key): it is decrypted, then the signed message
//! inside is verified. A firmware job or cancel is printed too (`kind` `firmware_job` or
//! `firmware_cancel`; the gateway's own checks of expiry, `seq` and targets are `wardgate
//! firmware accept`'s).

use crate::error::UsageError;
use std::path::PathBuf;
use std::process::ExitCode;

/// `wardgate verify` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// PEM certificate(s) of the gateway(s) (listed: trusted by `kid`).
    #[arg(long)]
    cert: Vec<PathBuf>,
    /// PEM CA certificate(s): a message whose `x5chain` chains to one is trusted too (its signer
    /// is printed on stderr).
    #[arg(long)]
    ca: Vec<PathBuf>,
    /// Certificate revocation list(s) for `--ca` (PEM or DER).
    #[arg(long, requires = "ca")]
    crl: Vec<PathBuf>,
    /// A receiver's private key (PEM, P-256), to decrypt messages encrypted to it.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Message files, or `-` for one message on standard input.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Verifies every file; one bad file does not stop the others.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    if args.cert.is_empty() && args.ca.is_empty() {
        return Err(UsageError(
            "verify needs --cert PEM (the gateway certificate) or --ca PEM (its CA)".into(),
        )
        .into());
    }
    let mut v = crate::signing::Verifier::default();
    for c in &args.cert {
        v.add_file(c)
            .map_err(|e| UsageError(format!("--cert {}: {e}", c.display())))?;
    }
    for c in &args.ca {
        v.add_ca_file(c)
            .map_err(|e| UsageError(format!("--ca {}: {e}", c.display())))?;
    }
    for c in &args.crl {
        v.add_crl_file(c)
            .map_err(|e| UsageError(format!("--crl {}: {e}", c.display())))?;
    }
    let decryptor = match &args.key {
        Some(k) => Some(
            crate::encryption::Decryptor::from_key_file(k)
                .map_err(|e| UsageError(format!("--key: {e}")))?,
        ),
        None => None,
    };
    let (mut ok, mut failed) = (0u64, 0u64);
    for f in &args.files {
        match verify_one(&v, decryptor.as_ref(), f) {
            Ok(p) => {
                println!("{}", serde_json::to_string(&p)?);
                ok += 1;
            }
            Err(e) => {
                eprintln!("{}: {e}", f.display());
                failed += 1;
            }
        }
    }
    eprintln!("{ok} verified, {failed} failed");
    Ok(super::exit_if(failed == 0))
}

/// Largest message read, bytes (the MQTT maximum, 256 MiB, is far more than any batch).
const MAX_MESSAGE_BYTES: u64 = 64 << 20;

/// The verified payload of one message file (`-`: standard input) as JSON.
fn verify_one(
    v: &crate::signing::Verifier,
    decryptor: Option<&crate::encryption::Decryptor>,
    f: &PathBuf,
) -> Result<serde_json::Value, String> {
    let source: Box<dyn std::io::Read> = if f.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(f).map_err(|e| format!("cannot read: {e}"))?)
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(source, MAX_MESSAGE_BYTES + 1),
        &mut bytes,
    )
    .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_MESSAGE_BYTES {
        return Err(format!(
            "larger than {} MiB: not a wardgate message",
            MAX_MESSAGE_BYTES >> 20
        ));
    }
    if crate::encryption::is_encrypted(&bytes) && decryptor.is_none() {
        return Err(
            "encrypted (COSE_Encrypt): give --key with the key of a receiver it is \
                    encrypted to"
                .into(),
        );
    }
    let bytes = crate::receive::verify::open_message(decryptor, &bytes)?;
    let verified = v.verify_signed(&bytes).map_err(|e| e.to_string())?;
    if !verified.listed {
        eprintln!("{}: signed by {}", f.display(), verified.signer);
    }
    let p = verified.payload;
    match crate::batch::BatchPayload::from_cbor(&p) {
        // A batch, printed as its wire payload: a waveform observation with its `waveform`
        // object (period, scale, offset, every raw sample), after the receiver's bounds check.
        Ok(b) => {
            crate::receive::verify::decode_batch(&p)?;
            serde_json::to_value(&b).map_err(|e| e.to_string())
        }
        Err(e) => {
            let json = crate::health::retained::to_json(&p);
            let kind = json
                .as_ref()
                .and_then(|j| j.get("kind")?.as_str().map(str::to_owned));
            match (json, kind.as_deref()) {
                // Retained device status and heartbeat (crate::health::retained) are signed
                // too: checked with the upstream's typed decoder, printed as they are.
                (Some(j), Some(k @ ("device-status" | "heartbeat"))) => {
                    crate::health::retained::decode(&p).map_err(|e| format!("{k}: {e}"))?;
                    Ok(j)
                }
                (Some(j), Some(_)) => Ok(j),
                // A firmware progress message (crate::firmware::progress: `job`, `device`,
                // `state`, no `kind`), printed as it is.
                (Some(j), None)
                    if j.get("job").is_some_and(|v| v.is_string())
                        && j.get("device").is_some_and(|v| v.is_string())
                        && j.get("state").is_some_and(|v| v.is_string()) =>
                {
                    Ok(j)
                }
                // A firmware job or cancel (`wardgate firmware job`): printed with `kind`
                // `firmware_job`/`firmware_cancel`; its signer must name a firmware signer.
                _ => firmware_job(&p, &verified.signer, f).ok_or_else(|| e.to_string()),
            }
        }
    }
}

/// A firmware job's JSON, when `payload` is one (a `firmware_signer` field names its signer,
/// `null` when the certificate names no firmware signer: gateways would refuse it).
fn firmware_job(
    payload: &[u8],
    signer: &crate::identity::Identity,
    f: &std::path::Path,
) -> Option<serde_json::Value> {
    let m = crate::firmware::job::Message::from_cbor(payload).ok()?;
    let mut j = m.to_json();
    match signer {
        crate::identity::Identity::FirmwareSigner { name } => {
            j["firmware_signer"] = name.clone().into()
        }
        other => {
            eprintln!(
                "{}: signed by {other}, not a firmware signer: gateways refuse this job",
                f.display()
            );
            j["firmware_signer"] = serde_json::Value::Null;
        }
    }
    Some(j)
}
