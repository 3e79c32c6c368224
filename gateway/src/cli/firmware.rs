//! `wardgate firmware …`: the firmware subcommand group (issue 10; contracts outside checks
//! rely on).
//!
//! - `inspect IMAGE [--json]`: an MCUboot image's header, version, sizes, TLVs, image hash (the
//!   SHA256 TLV) and whether it matches the recomputed hash, the whole file's SHA-256 (the SMP
//!   upload `sha`), key hash, signature type. Exit 1 when the file is malformed or the hash TLV
//!   is missing or does not match; with `--job JOB`, also when the image is not the one the job
//!   names (size, SHA-256, image hash, version, key hash: the reason as in the wire format).
//! - `job --image IMG --url URL --class C --seq N --cert PEM --key PEM […]`: the upstream tool:
//!   makes a signed job (COSE_Sign1, `docs/wire-format.md` "Firmware jobs") from the image itself
//!   (version, size, hashes, key hash read with the parser; `--keyhash` refuses an image signed
//!   for another key), or a signed cancel (`--cancel JOB`).
//! - `accept --config F JOB`: what the gateway does on receiving a job, by hand: verify against
//!   `[firmware]` trust, check the clock, resolve the targets, check and record `seq` and the
//!   executions in the store. One JSON line; exit 1 when refused (with the reason).
//! - `list (--port PATH | --ble ADDRESS)` and `upload (--port PATH | --ble ADDRESS) IMAGE
//!   [--mode …]`: the bench's SMP client on a serial port or a bonded BLE device
//!   (`super::firmware_bench`).
//!
//! The group's enum is [`Command`]; each variant has its own `Args` and `main`.

use crate::error::UsageError;
use crate::firmware::image::{self, ImageInfo};
use crate::firmware::job::{self, Cancel, Job, JobImage, Message, Mode, Policy, Target, TimeOfDay};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `wardgate firmware` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

/// The firmware subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show an MCUboot image: header, version, TLVs, image hash (checked), file SHA-256, key
    /// hash, signature type. Exit 1 when malformed or when the hash TLV does not match.
    Inspect(InspectArgs),
    /// Make and sign a firmware job (or a cancel) for upstream to publish.
    Job(Box<JobArgs>),
    /// Verify a job as the gateway would and record it in the gateway's store.
    Accept(AcceptArgs),
    /// The device's image slots as JSON lines (SMP over a serial port or a bonded BLE device).
    List(super::firmware_bench::ListArgs),
    /// Upload an MCUboot image to a device over SMP (serial port or bonded BLE device) and
    /// test/confirm it; resumes when re-run after an interruption.
    Upload(super::firmware_bench::UploadArgs),
}

/// Runs a firmware subcommand.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Inspect(a) => inspect(a),
        Command::Job(a) => make_job(*a),
        Command::Accept(a) => accept(a),
        Command::List(a) => super::firmware_bench::list_main(a),
        Command::Upload(a) => super::firmware_bench::upload_main(a),
    }
}

/// `wardgate firmware inspect` arguments.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The image file (as imgtool wrote it).
    image: PathBuf,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also check the image against this job file (its payload, read **without** verifying the
    /// signature: `wardgate verify` or `firmware accept` do that): the checks a gateway makes
    /// after the download, each failure with its reason. Exit 1 when one fails.
    #[arg(long)]
    job: Option<PathBuf>,
}

fn parse_file(path: &PathBuf) -> anyhow::Result<Result<ImageInfo, image::ImageError>> {
    // A FIFO would block, a device has no size: images are regular files.
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            anyhow::bail!(
                "{}: not a regular file (an image is a file)",
                path.display()
            )
        }
        _ => {}
    }
    let mut f = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    Ok(image::parse_reader(&mut f))
}

/// The JSON form of a parsed image (the `inspect --json` contract).
pub fn image_json(i: &ImageInfo) -> serde_json::Value {
    let h = &i.header;
    let flags: Vec<&str> = image::FLAG_NAMES
        .iter()
        .filter(|(bit, _)| h.flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    json!({
        "magic": format!("{:#010x}", image::IMAGE_MAGIC),
        "load_addr": h.load_addr,
        "hdr_size": h.hdr_size,
        "protect_tlv_size": h.protect_tlv_size,
        "img_size": h.img_size,
        "flags": h.flags,
        "flag_names": flags,
        "version": h.version.to_string(),
        "version_fields": {
            "major": h.version.major, "minor": h.version.minor,
            "revision": h.version.revision, "build": h.version.build,
        },
        "file_size": i.file_size,
        "tlv_offset": i.tlv_offset,
        "tlv_end": i.tlv_end,
        "tlvs": i.tlvs.iter().map(|t| json!({
            "type": t.kind,
            "name": image::tlv_name(t.kind),
            "offset": t.offset,
            "len": t.value.len(),
            "protected": t.protected,
            "value": hex::encode(&t.value),
        })).collect::<Vec<_>>(),
        "image_hash": i.hash_tlv().map(hex::encode),
        "computed_hash": hex::encode(i.computed_hash),
        "hash_ok": i.hash_matches(),
        "file_sha256": hex::encode(i.file_sha256),
        "key_hash": i.key_hash().map(hex::encode),
        "signature_type": i.signature_type().map(|t| image::tlv_name(t).unwrap_or("?")),
        "signature_tlv": i.signature_type(),
    })
}

fn inspect(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let info = match parse_file(&a.image)? {
        Ok(i) => i,
        Err(e) => {
            if a.json {
                println!(
                    "{}",
                    json!({"file": a.image, "error": e.message, "offset": e.offset, "hash_ok": false})
                );
            }
            eprintln!(
                "{}: not a well-formed MCUboot image: {e}",
                a.image.display()
            );
            return Ok(ExitCode::from(crate::error::EXIT_FAILURE));
        }
    };
    let job_check = match &a.job {
        None => None,
        Some(p) => Some(check_job(&info, p)?),
    };
    if a.json {
        let mut j = image_json(&info);
        j["file"] = json!(a.image);
        if let Some(c) = &job_check {
            j["job_check"] = match c {
                Ok(()) => json!({"ok": true}),
                Err((reason, detail)) => json!({"ok": false, "reason": reason, "detail": detail}),
            };
        }
        println!("{j}");
    } else {
        print!("{}", image_text(&a.image, &info));
        if let Some(c) = &job_check {
            match c {
                Ok(()) => println!("job check        ok: the image is the one the job names"),
                Err((reason, detail)) => println!("job check        FAILED: {reason}: {detail}"),
            }
        }
    }
    if let Some(Err((reason, detail))) = &job_check {
        eprintln!(
            "{}: not the job's image: {reason}: {detail}",
            a.image.display()
        );
        return Ok(ExitCode::from(crate::error::EXIT_FAILURE));
    }
    if !info.hash_matches() {
        eprintln!(
            "{}: {}",
            a.image.display(),
            match info.hash_tlv() {
                None => "the image has no SHA256 TLV: it cannot be checked".to_owned(),
                Some(_) => format!(
                    "the SHA256 TLV does not match the image (recomputed {}): corrupt or tampered",
                    hex::encode(info.computed_hash)
                ),
            }
        );
        return Ok(ExitCode::from(crate::error::EXIT_FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}

/// The image against the job in `job_file` (payload decoded, signature not verified):
/// `Err((reason, detail))` for the first failed check.
fn check_job(
    info: &ImageInfo,
    job_file: &std::path::Path,
) -> anyhow::Result<Result<(), (&'static str, String)>> {
    use coset::{CborSerializable, TaggedCborSerializable};
    let bytes = crate::signing::read_regular_file(job_file, job::MAX_JOB_BYTES as u64)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", job_file.display()))?;
    let sign1 = coset::CoseSign1::from_tagged_slice(&bytes)
        .or_else(|_| coset::CoseSign1::from_slice(&bytes))
        .map_err(|e| {
            UsageError(format!(
                "--job {}: not a COSE_Sign1: {e}",
                job_file.display()
            ))
        })?;
    let m = Message::from_cbor(sign1.payload.as_deref().unwrap_or_default())
        .map_err(|r| UsageError(format!("--job {}: {r}", job_file.display())))?;
    let Message::Job(j) = m else {
        return Err(
            UsageError(format!("--job {}: a cancel, not a job", job_file.display())).into(),
        );
    };
    Ok(info
        .check_against(&j.image.expected())
        .map_err(|f| (f.reason(), f.to_string())))
}

fn image_text(path: &std::path::Path, i: &ImageInfo) -> String {
    use std::fmt::Write;
    let h = &i.header;
    let mut s = String::new();
    let _ = writeln!(s, "file              {}", path.display());
    let _ = writeln!(s, "file size         {} bytes", i.file_size);
    let _ = writeln!(s, "magic             {:#010x}", image::IMAGE_MAGIC);
    let _ = writeln!(s, "version           {}", h.version);
    let _ = writeln!(s, "load address      {:#010x}", h.load_addr);
    let _ = writeln!(s, "header size       {:#x} ({})", h.hdr_size, h.hdr_size);
    let _ = writeln!(s, "image size        {:#x} ({})", h.img_size, h.img_size);
    let _ = writeln!(s, "protected TLVs    {} bytes", h.protect_tlv_size);
    let flags: Vec<&str> = image::FLAG_NAMES
        .iter()
        .filter(|(bit, _)| h.flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    let _ = writeln!(s, "flags             {:#010x} {}", h.flags, flags.join(" "));
    let _ = writeln!(s, "TLV area          {:#x}..{:#x}", i.tlv_offset, i.tlv_end);
    for t in &i.tlvs {
        let v = hex::encode(&t.value);
        let shown = if v.len() > 64 {
            format!("{}…", &v[..64])
        } else {
            v
        };
        let _ = writeln!(
            s,
            "  TLV {:#04x} {:<12} {:>4} B at {:#x}{}  {shown}",
            t.kind,
            image::tlv_name(t.kind).unwrap_or("?"),
            t.value.len(),
            t.offset,
            if t.protected { " (protected)" } else { "" },
        );
    }
    let _ = writeln!(
        s,
        "image hash        {} ({})",
        i.hash_tlv()
            .map(hex::encode)
            .unwrap_or_else(|| "none".into()),
        if i.hash_matches() {
            "SHA256 TLV matches the image"
        } else {
            "DOES NOT MATCH the image"
        }
    );
    let _ = writeln!(
        s,
        "file SHA-256      {} (SMP upload sha)",
        hex::encode(i.file_sha256)
    );
    let _ = writeln!(
        s,
        "key hash          {}",
        i.key_hash()
            .map(hex::encode)
            .unwrap_or_else(|| "none".into())
    );
    let _ = writeln!(
        s,
        "signature         {}",
        i.signature_type()
            .map(|t| format!("{} ({t:#04x})", image::tlv_name(t).unwrap_or("?")))
            .unwrap_or_else(|| "none (unsigned)".into())
    );
    s
}

/// `wardgate firmware job` arguments.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// The firmware signer's certificate (PEM; SAN URI `urn:wardgate-firmware:{name}`; more
    /// certificates after it are sent as the chain).
    #[arg(long)]
    cert: PathBuf,
    /// The firmware signer's private key (PEM, PKCS#8, P-256 or Ed25519).
    #[arg(long)]
    key: PathBuf,
    /// Target class (`[firmware.classes]` on the gateways); its `seq` space.
    #[arg(long)]
    class: String,
    /// Sequence number: greater than every earlier job or cancel of the class.
    #[arg(long)]
    seq: u64,
    /// A signed cancel of this job id instead of a job.
    #[arg(long, conflicts_with_all = ["image", "url"])]
    cancel: Option<String>,
    /// Why the job is cancelled (with --cancel).
    #[arg(long, requires = "cancel")]
    reason: Option<String>,
    /// The MCUboot image: version, size, SHA-256, image hash and key hash are read from it.
    #[arg(long, required_unless_present = "cancel")]
    image: Option<PathBuf>,
    /// Where gateways download the image (https://; repeat for mirrors, at most 4).
    #[arg(long, required_unless_present = "cancel")]
    url: Vec<String>,
    /// Job id (an MQTT topic level); default `{class}-{seq}`.
    #[arg(long)]
    id: Option<String>,
    /// Devices (ids `serial:NAME`/`ble:ADDR`, names or BLE addresses); default: the whole class.
    #[arg(long)]
    device: Vec<String>,
    /// Only devices running this version get it (repeatable).
    #[arg(long)]
    from_version: Vec<String>,
    /// Leave the image's key hash out of the job (by default the job names it).
    #[arg(long, conflicts_with = "keyhash")]
    no_keyhash: bool,
    /// The key hash (hex SHA-256, MCUboot KEYHASH) of the key the devices trust: the tool
    /// refuses an image signed for another key.
    #[arg(long)]
    keyhash: Option<String>,
    /// MCUboot image number (SMP `image`); default 0.
    #[arg(long, default_value_t = 0)]
    index: u32,
    /// Issue time, Unix seconds; default now.
    #[arg(long)]
    issued: Option<u64>,
    /// Expiry, Unix seconds; default issued + --expires-in.
    #[arg(long)]
    expires: Option<u64>,
    /// Validity from issue: seconds, or with a unit `s`, `m`, `h`, `d`. Default 7d.
    #[arg(long, default_value = "7d")]
    expires_in: String,
    /// Maintenance window `HH:MM-HH:MM` (local time of --tz).
    #[arg(long)]
    window: Option<String>,
    /// Time zone of the window (IANA name, `UTC`, `±HH:MM`).
    #[arg(long)]
    tz: Option<String>,
    /// Update devices even while in clinical use; the reason is required and recorded.
    #[arg(long)]
    allow_in_use: Option<String>,
    /// Least battery level, percent.
    #[arg(long)]
    min_battery: Option<u8>,
    /// test-confirm (default), confirm-only or test-only.
    #[arg(long, default_value = "test-confirm")]
    mode: String,
    /// Seconds the device may take to swap and come back.
    #[arg(long, default_value_t = Policy::default().swap_time_s)]
    swap_time_s: u64,
    /// Timeout of the first chunk (slot erase), seconds, ≥ 40.
    #[arg(long, default_value_t = Policy::default().first_chunk_timeout_s)]
    first_chunk_timeout_s: u64,
    /// Timeout of other chunks, seconds.
    #[arg(long, default_value_t = Policy::default().chunk_timeout_s)]
    chunk_timeout_s: u64,
    /// Attempts per device.
    #[arg(long, default_value_t = Policy::default().max_attempts)]
    max_attempts: u32,
    /// No new attempt after this time, Unix seconds.
    #[arg(long)]
    deadline: Option<u64>,
    /// Output file (`-` or absent: standard output).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn duration_s(s: &str) -> Option<u64> {
    let (n, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        (i, 'd') => (&s[..i], 86_400),
        _ => (s, 1),
    };
    n.parse::<u64>().ok()?.checked_mul(mult)
}

/// What a gateway checks of a firmware signer's certificate besides the chain
/// (`signing::Verifier`, webpki for clientAuth): valid at `at` (Unix s) and, when it has an
/// extendedKeyUsage, one that includes clientAuth (RFC 5280 §4.2.1.12; a codeSigning-only
/// certificate is refused). Checked before signing so that an installer learns it here, not
/// from a `failed signature_refused` on every gateway.
fn signer_usable(cert: &rustls_pki_types::CertificateDer<'_>, at: u64) -> Result<(), String> {
    use x509_cert::ext::pkix::ExtendedKeyUsage;
    const CLIENT_AUTH: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");
    let (from, until) = crate::signing::validity(cert)?;
    let date = |d: std::time::Duration| crate::cli::provision::rfc3339(d);
    if at > until.as_secs() {
        return Err(format!(
            "the signer certificate expired on {}: gateways would refuse the job \
             (signature_refused); renew it",
            date(until)
        ));
    }
    if at < from.as_secs() {
        return Err(format!(
            "the signer certificate is not valid before {}: gateways would refuse the job \
             (signature_refused) until then",
            date(from)
        ));
    }
    let x = crate::signing::parse_x509(cert)?;
    if let Ok(Some((_, eku))) = x.tbs_certificate.get::<ExtendedKeyUsage>() {
        if !eku.0.contains(&CLIENT_AUTH) {
            return Err(
                "the signer certificate's extendedKeyUsage lacks clientAuth (gateways verify \
                 firmware signers as client certificates and would refuse the job, \
                 signature_refused); see docs/install.md for the signer certificate"
                    .into(),
            );
        }
    }
    Ok(())
}

fn make_job(a: JobArgs) -> anyhow::Result<ExitCode> {
    let usage = |m: String| anyhow::Error::from(UsageError(m));
    let signer = crate::signing::Signer::from_files(&a.cert, &a.key)
        .map_err(|e| usage(format!("--cert/--key: {e}")))?;
    let cert = crate::signing::read_certs(&a.cert).map_err(|e| usage(e.to_string()))?;
    match crate::identity::Identity::of(&cert[0]) {
        Ok(crate::identity::Identity::FirmwareSigner { .. }) => {}
        Ok(other) => {
            return Err(usage(format!(
                "--cert names {other}, not a firmware signer (SAN URI {}{{name}}): gateways \
                 would refuse the job",
                crate::identity::FIRMWARE_URN
            )))
        }
        Err(e) => return Err(usage(format!("--cert: {e}"))),
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let issued = a.issued.unwrap_or(now);
    signer_usable(&cert[0], now.max(issued)).map_err(|e| usage(format!("--cert: {e}")))?;
    let expires = match a.expires {
        Some(t) => t,
        None => issued.saturating_add(duration_s(&a.expires_in).ok_or_else(|| {
            usage(format!(
                "--expires-in `{}`: seconds, or a number with s, m, h, d",
                a.expires_in
            ))
        })?),
    };
    let message = if let Some(job_id) = a.cancel {
        Message::Cancel(Cancel {
            job: job_id,
            seq: a.seq,
            issued,
            expires,
            class: a.class,
            reason: a.reason,
        })
    } else {
        let path = a
            .image
            .clone()
            .expect("clap requires --image without --cancel");
        let info = parse_file(&path)?.map_err(|e| {
            anyhow::anyhow!("{}: not a well-formed MCUboot image: {e}", path.display())
        })?;
        if !info.hash_matches() {
            anyhow::bail!(
                "{}: the image's SHA256 TLV is missing or does not match its contents; refusing to sign a job for it",
                path.display()
            );
        }
        if let Some(want) = &a.keyhash {
            let want = hex::decode(want.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| usage(format!("--keyhash `{want}`: 64 hex digits")))?;
            match info.key_hash() {
                Some(have) if have == want => {}
                Some(have) => anyhow::bail!(
                    "{}: the image is signed for another key (KEYHASH {}, --keyhash {}): \
                     devices would refuse it",
                    path.display(),
                    hex::encode(have),
                    hex::encode(&want)
                ),
                None => anyhow::bail!(
                    "{}: the image names no key (no KEYHASH or PUBKEY TLV)",
                    path.display()
                ),
            }
        }
        let keyhash = match (a.no_keyhash, info.key_hash()) {
            (true, _) | (false, None) => None,
            (false, Some(k)) => Some(<[u8; 32]>::try_from(k.as_slice()).map_err(|_| {
                usage(format!(
                    "the image's key hash has {} bytes, a job names a 32-byte SHA-256 key hash; use --no-keyhash",
                    k.len()
                ))
            })?),
        };
        let window = match &a.window {
            None => None,
            Some(w) => {
                let bad = || usage(format!("--window `{w}`: HH:MM-HH:MM"));
                let (s, e) = w.split_once('-').ok_or_else(bad)?;
                Some((
                    TimeOfDay::parse(s).ok_or_else(bad)?,
                    TimeOfDay::parse(e).ok_or_else(bad)?,
                ))
            }
        };
        // A zone the gateways cannot load would stop the job there: refuse it here, where it
        // is made (the tz database of this machine is the reference).
        if let Some(tz) = &a.tz {
            crate::firmware::policy::Zone::parse(tz).map_err(|e| usage(format!("--tz: {e}")))?;
        }
        Message::Job(Box::new(Job {
            id: a.id.unwrap_or_else(|| format!("{}-{}", a.class, a.seq)),
            seq: a.seq,
            issued,
            expires,
            target: Target {
                class: a.class,
                devices: (!a.device.is_empty()).then_some(a.device),
                from_versions: if a.from_version.is_empty() {
                    None
                } else {
                    Some(
                        a.from_version
                            .iter()
                            .map(|v| image::ImageVersion::parse(v))
                            .collect::<Result<_, _>>()
                            .map_err(|e| usage(format!("--from-version: {e}")))?,
                    )
                },
            },
            image: JobImage {
                version: info.header.version,
                size: info.file_size,
                sha256: info.file_sha256,
                mcuboot_hash: info.computed_hash,
                keyhash,
                index: a.index,
                uri: a.url,
            },
            policy: Policy {
                window,
                tz: a.tz,
                not_in_use: a.allow_in_use.is_none(),
                override_reason: a.allow_in_use,
                min_battery: a.min_battery,
                mode: Mode::parse(&a.mode).ok_or_else(|| {
                    usage(format!(
                        "--mode `{}`: test-confirm, confirm-only or test-only",
                        a.mode
                    ))
                })?,
                swap_time_s: a.swap_time_s,
                first_chunk_timeout_s: a.first_chunk_timeout_s,
                chunk_timeout_s: a.chunk_timeout_s,
                max_attempts: a.max_attempts,
                deadline: a.deadline,
            },
        }))
    };
    // What a gateway will check about the contents: refuse to sign what it would refuse.
    let payload = message.to_cbor();
    Message::from_cbor(&payload).map_err(|r| usage(format!("the job would be refused: {r}")))?;
    let signed = signer.sign(payload);
    if signed.len() > job::MAX_JOB_BYTES {
        anyhow::bail!(
            "the signed job has {} bytes, more than gateways accept ({}): send a shorter certificate chain",
            signed.len(),
            job::MAX_JOB_BYTES
        );
    }
    match a.output.as_deref() {
        None => std::io::stdout().write_all(&signed)?,
        Some(p) if p.as_os_str() == "-" => std::io::stdout().write_all(&signed)?,
        Some(p) => {
            // `-o` naming the image (or the signer's files) would destroy what it was made from.
            let same = |q: &std::path::Path| matches!((std::fs::canonicalize(p), std::fs::canonicalize(q)), (Ok(a), Ok(b)) if a == b);
            if [
                Some(a.cert.as_path()),
                Some(a.key.as_path()),
                a.image.as_deref(),
            ]
            .into_iter()
            .flatten()
            .any(same)
            {
                return Err(UsageError(format!(
                    "-o {} is one of the job's inputs (the image, --cert or --key); write the \
                     job to another file",
                    p.display()
                ))
                .into());
            }
            std::fs::write(p, &signed)
                .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", p.display()))?;
            eprintln!(
                "{}: {} seq {} for class {} ({} bytes)",
                p.display(),
                match &message {
                    Message::Job(j) => format!("job {} (image {})", j.id, j.image.version),
                    Message::Cancel(c) => format!("cancel of job {}", c.job),
                },
                message.seq(),
                message.class(),
                signed.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `wardgate firmware accept` arguments.
#[derive(Debug, clap::Args)]
pub struct AcceptArgs {
    /// The gateway config (its `[firmware]` trust and classes, devices, store).
    #[arg(long)]
    config: PathBuf,
    /// Check only; record nothing in the store (the `seq` is still compared).
    #[arg(long)]
    dry_run: bool,
    /// The signed job or cancel.
    file: PathBuf,
}

fn accept(a: AcceptArgs) -> anyhow::Result<ExitCode> {
    let config = crate::config::load_gateway(&a.config, crate::config::Checks::NoFiles)?;
    let Some(fw) = &config.firmware else {
        return refused(
            &a.file,
            &job::refuse(
                job::Reason::FirmwareOff,
                "the config has no [firmware] section",
            ),
        );
    };
    let trust = crate::signing::Verifier::from_files(
        fw.signer_certs.iter().map(|p| p.get_ref().as_path()),
        fw.signer_ca.iter().map(|p| p.get_ref().as_path()),
        fw.signer_crl.iter().map(|p| p.get_ref().as_path()),
    )
    .map_err(|e| UsageError(format!("[firmware] trust: {e}")))?;
    // One byte over the limit is read so that `verify` refuses it as `too_large`.
    let bytes = crate::signing::read_regular_file(&a.file, job::MAX_JOB_BYTES as u64 + 1)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", a.file.display()))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let v = match job::verify(&bytes, &trust, now.as_secs()) {
        Ok(v) => v,
        Err(r) => return refused(&a.file, &r),
    };
    let fleet = crate::firmware::target::Fleet::from_config(&config);
    let store = || -> anyhow::Result<crate::Store> {
        let opts = crate::store::StoreOptions {
            synchronous: config.store.synchronous,
            max_bytes: config.store.max_bytes,
            max_age_ms: (config.store.max_age_hours as i64).saturating_mul(3_600_000),
            max_pages: config.store.max_pages,
        };
        Ok(crate::Store::open(&config.store.path, opts)?.0)
    };
    let outcome = if a.dry_run {
        // A dry run on a gateway that never ran leaves no store file behind.
        let last = if config.store.path.exists() {
            store()?.firmware_last_seq(v.message.class())?
        } else {
            None
        };
        match &v.message {
            Message::Job(j) => fleet
                .resolve(&j.target.class, j.target.devices.as_deref())
                .map(|d| json!({"devices": d})),
            Message::Cancel(_) => Ok(json!({})),
        }
        .and_then(|o| match last {
            Some(last) if v.message.seq() <= last => Err(job::refuse(
                job::Reason::SeqReplayed,
                format!("seq {} is not greater than {last}", v.message.seq()),
            )),
            _ => Ok(o),
        })
    } else {
        match job::accept(
            &store()?,
            &fleet,
            &v,
            wardgate_adapters::observation::now_ms(),
        ) {
            Ok(job::Accepted::Job { devices }) => Ok(json!({"devices": devices})),
            Ok(job::Accepted::Cancel { cancelled }) => Ok(json!({"cancelled": cancelled})),
            Err(job::AcceptError::Refused(r)) => Err(r),
            Err(job::AcceptError::Store(e)) => return Err(e.into()),
        }
    };
    match outcome {
        Ok(mut o) => {
            o["accepted"] = json!(!a.dry_run);
            o["signer"] = json!(v.signer);
            o["message"] = v.message.to_json();
            println!("{o}");
            Ok(ExitCode::SUCCESS)
        }
        Err(r) => refused(&a.file, &r),
    }
}

fn refused(file: &std::path::Path, r: &job::Refusal) -> anyhow::Result<ExitCode> {
    println!(
        "{}",
        json!({"accepted": false, "reason": r.reason.as_str(), "detail": r.detail})
    );
    eprintln!("{}: refused: {r}", file.display());
    Ok(ExitCode::from(crate::error::EXIT_FAILURE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(duration_s("90"), Some(90));
        assert_eq!(duration_s("90s"), Some(90));
        assert_eq!(duration_s("30m"), Some(1800));
        assert_eq!(duration_s("12h"), Some(43_200));
        assert_eq!(duration_s("7d"), Some(604_800));
        assert_eq!(duration_s("7w"), None);
        assert_eq!(duration_s(""), None);
    }

    #[test]
    fn a_signer_certificate_gateways_would_refuse_is_refused_before_signing() {
        let cert = |eku: Vec<rcgen::ExtendedKeyUsagePurpose>, from: (i32, u8), until: i32| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.extended_key_usages = eku;
            p.not_before = rcgen::date_time_ymd(from.0, from.1, 1);
            p.not_after = rcgen::date_time_ymd(until, 1, 1);
            p.self_signed(&key).unwrap().der().clone()
        };
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, CodeSigning};
        // 2027-01-01 and 2030-01-01 (+1 s), Unix seconds.
        let (now, after) = (1_798_761_600, 1_893_456_001);
        assert_eq!(
            signer_usable(&cert(vec![ClientAuth], (2023, 1), 2030), now),
            Ok(())
        );
        // No extendedKeyUsage at all: any use (RFC 5280 §4.2.1.12), as webpki reads it.
        assert_eq!(signer_usable(&cert(vec![], (2023, 1), 2030), now), Ok(()));
        let e = signer_usable(&cert(vec![CodeSigning], (2023, 1), 2030), now).unwrap_err();
        assert!(e.contains("lacks clientAuth"), "{e}");
        let e = signer_usable(&cert(vec![ClientAuth], (2023, 1), 2030), after).unwrap_err();
        assert!(e.contains("expired on 2030-01-01"), "{e}");
        let e = signer_usable(&cert(vec![ClientAuth], (2027, 6), 2030), now).unwrap_err();
        assert!(e.contains("not valid before 2027-06-01"), "{e}");
    }
}
