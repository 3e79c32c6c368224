//! Firmware images and jobs (issue 10 items 3 and 7), against independent tools: real MCUboot
//! images made by PyPI `imgtool` (FIRMWARE.md §4.2) checked by `wardgate firmware inspect`
//! against imgtool's own digest and version; jobs made by `wardgate firmware job`, printed by
//! `wardgate verify`, checked by an independent Python verifier (`tests/python/verify_job.py`),
//! and accepted or refused by `wardgate firmware accept` against a gateway config and store,
//! each refusal with its machine-readable reason.

use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wardgate_e2e::process::{run, Output};
use wardgate_e2e::python;
use wardgate_sim::pki::{write_cert, write_key, Ca};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const TARGET_TMP: &str = env!("CARGO_TARGET_TMPDIR");

fn cmd(program: &Path, args: &[&OsStr], dir: &Path) -> Output {
    let mut c = std::process::Command::new(program);
    c.args(args).current_dir(dir);
    run(c, b"", Duration::from_secs(120)).unwrap()
}

fn wardgate(args: &[&OsStr], dir: &Path) -> Output {
    cmd(Path::new(BIN), args, dir)
}

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

struct Imgtool {
    py: PathBuf,
    bin: PathBuf,
}

impl Imgtool {
    fn new() -> Imgtool {
        let py = python::firmware_venv_python(Path::new(TARGET_TMP)).unwrap();
        let bin = py.with_file_name("imgtool");
        Imgtool { py, bin }
    }

    fn run(&self, args: &[&OsStr], dir: &Path) -> Output {
        cmd(&self.bin, args, dir)
    }

    fn keygen(&self, dir: &Path, name: &str, kind: &str) -> PathBuf {
        let k = dir.join(name);
        let o = self.run(
            &[os("keygen"), os("-k"), k.as_os_str(), os("-t"), os(kind)],
            dir,
        );
        assert!(o.status.success(), "imgtool keygen: {o:?}");
        k
    }

    /// `imgtool sign` of `body` (written to DIR/NAME.bin) → DIR/NAME.signed.bin.
    fn sign(
        &self,
        dir: &Path,
        key: &Path,
        name: &str,
        version: &str,
        body: &[u8],
        extra: &[&str],
    ) -> PathBuf {
        let raw = dir.join(format!("{name}.bin"));
        std::fs::write(&raw, body).unwrap();
        let out = dir.join(format!("{name}.signed.bin"));
        let mut args = vec![
            os("sign"),
            os("--key"),
            key.as_os_str(),
            os("--header-size"),
            os("0x200"),
            os("--align"),
            os("4"),
            os("--version"),
            os(version),
            os("--slot-size"),
            os("0x20000"),
            os("--pad-header"),
        ];
        args.extend(extra.iter().map(os));
        args.push(raw.as_os_str());
        args.push(out.as_os_str());
        let o = self.run(&args, dir);
        assert!(o.status.success(), "imgtool sign: {o:?}");
        out
    }

    /// `imgtool verify`: `Some((digest hex, version))` when it validates, `None` when it refuses.
    fn verify(&self, dir: &Path, key: &Path, image: &Path) -> Option<(String, String)> {
        let o = self.run(
            &[
                os("verify"),
                os("--key"),
                key.as_os_str(),
                image.as_os_str(),
            ],
            dir,
        );
        if !o.status.success() {
            return None;
        }
        let field = |name: &str| {
            o.stdout
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("imgtool verify printed no `{name}`: {o:?}"))
        };
        Some((field("Image digest:"), field("Image version:")))
    }
}

fn sha256_hex(path: &Path) -> String {
    let o = cmd(Path::new("sha256sum"), &[path.as_os_str()], Path::new("/"));
    o.stdout.split_whitespace().next().unwrap().to_owned()
}

fn inspect_json(image: &Path, dir: &Path) -> (Option<i32>, Value) {
    let o = wardgate(
        &[
            os("firmware"),
            os("inspect"),
            os("--json"),
            image.as_os_str(),
        ],
        dir,
    );
    let v = serde_json::from_str(o.stdout.trim())
        .unwrap_or_else(|e| panic!("inspect --json ({e}): {o:?}"));
    (o.code(), v)
}

/// Deterministic filler for image bodies.
fn body(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn inspect_agrees_with_imgtool_on_real_images_and_refuses_tampered_and_truncated_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgtool = Imgtool::new();
    let ec = imgtool.keygen(dir, "ec.pem", "ecdsa-p256");
    let ed = imgtool.keygen(dir, "ed.pem", "ed25519");
    let cases = [
        (&ec, "ec", "1.2.3+4", 4096, &[][..], "ECDSA_SIG"),
        (&ed, "ed", "0.9.17", 3000, &[][..], "ED25519"),
        // Padded to the slot with the MCUboot trailer: the file SHA-256 covers the padding,
        // the image hash does not.
        (
            &ec,
            "padded",
            "2.0.0+7",
            1024,
            &["--pad", "--confirm"][..],
            "ECDSA_SIG",
        ),
        // Protected TLVs (security counter, boot record, dependency: the shape of PROTOCOLS
        // A-28): they are covered by the image hash.
        (
            &ec,
            "protected",
            "3.1.0+9",
            4096,
            &[
                "--security-counter",
                "5",
                "--boot-record",
                "SPE",
                "--dependencies",
                "(1,1.0.0+0)",
            ][..],
            "ECDSA_SIG",
        ),
    ];
    for (key, name, version, len, extra, sig) in cases {
        let img = imgtool.sign(dir, key, name, version, &body(len, name.len() as u8), extra);
        let (digest, imgtool_version) = imgtool
            .verify(dir, key, &img)
            .expect("imgtool validates its image");
        let (code, j) = inspect_json(&img, dir);
        assert_eq!(code, Some(0), "{name}: {j}");
        assert_eq!(
            j["image_hash"],
            digest.as_str(),
            "{name}: the SHA256 TLV is imgtool's digest"
        );
        assert_eq!(j["computed_hash"], digest.as_str(), "{name}");
        assert_eq!(j["hash_ok"], true);
        assert_eq!(
            j["version"],
            imgtool_version.as_str(),
            "{name}: imgtool's version"
        );
        assert_eq!(
            j["file_sha256"],
            sha256_hex(&img).as_str(),
            "{name}: the SMP upload sha"
        );
        assert_ne!(j["file_sha256"], j["image_hash"]);
        assert_eq!(j["file_size"], std::fs::metadata(&img).unwrap().len());
        assert_eq!(j["img_size"], len as u64);
        assert_eq!(j["signature_type"], sig);
        assert_eq!(
            j["key_hash"].as_str().map(str::len),
            Some(64),
            "{name}: KEYHASH TLV"
        );
        if name == "padded" {
            assert_eq!(j["file_size"], 0x20000, "padded to the slot");
        }
        if name == "protected" {
            assert_eq!(j["protect_tlv_size"], 123);
            let prot: Vec<&str> = j["tlvs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["protected"] == true)
                .map(|t| t["name"].as_str().unwrap())
                .collect();
            assert_eq!(prot, ["SEC_CNT", "BOOT_RECORD", "DEPENDENCY"]);
            // A changed security counter (inside the protected area): imgtool and inspect
            // both refuse the image.
            let mut bytes = std::fs::read(&img).unwrap();
            let sec_cnt = j["tlvs"][0]["offset"].as_u64().unwrap() as usize + 4;
            bytes[sec_cnt] ^= 0x01;
            let t = dir.join("protected-tampered.bin");
            std::fs::write(&t, &bytes).unwrap();
            assert!(imgtool.verify(dir, key, &t).is_none());
            let (code, tj) = inspect_json(&t, dir);
            assert_eq!(
                (code, &tj["hash_ok"]),
                (Some(1), &Value::Bool(false)),
                "{tj}"
            );
        }
        // The text form says the same.
        let o = wardgate(&[os("firmware"), os("inspect"), img.as_os_str()], dir);
        assert_eq!(o.code(), Some(0), "{o:?}");
        assert!(
            o.stdout.contains(&format!(
                "image hash        {digest} (SHA256 TLV matches the image)"
            )),
            "{}",
            o.stdout
        );
    }
    // A flipped byte in the body: imgtool says "invalid hash", inspect exits 1.
    let img = dir.join("ec.signed.bin");
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[0x300] ^= 0x01;
    let tampered = dir.join("tampered.bin");
    std::fs::write(&tampered, &bytes).unwrap();
    assert!(
        imgtool.verify(dir, &ec, &tampered).is_none(),
        "imgtool refuses it too"
    );
    let (code, j) = inspect_json(&tampered, dir);
    assert_eq!(code, Some(1), "{j}");
    assert_eq!(j["hash_ok"], false);
    assert_ne!(j["image_hash"], j["computed_hash"]);
    let o = wardgate(&[os("firmware"), os("inspect"), tampered.as_os_str()], dir);
    assert_eq!(o.code(), Some(1));
    assert!(o.stderr.contains("does not match the image"), "{o:?}");
    // Signed by another key: still a well-formed image (the hash is right), but its KEYHASH is
    // that other key's, which a job naming the device's key hash refuses (unit-tested).
    let other = imgtool.keygen(dir, "other.pem", "ecdsa-p256");
    let by_other = imgtool.sign(dir, &other, "other", "1.2.3+4", &body(4096, 2), &[]);
    assert!(
        imgtool.verify(dir, &ec, &by_other).is_none(),
        "imgtool: not signed by ec.pem"
    );
    let (code, j2) = inspect_json(&by_other, dir);
    assert_eq!(code, Some(0));
    let (_, j1) = inspect_json(&img, dir);
    assert_ne!(
        j2["key_hash"], j1["key_hash"],
        "another key, another KEYHASH"
    );
    // Truncated inside the TLV area, and inside the body: malformed, with the offset.
    let good = std::fs::read(&img).unwrap();
    for (cut, offset) in [(good.len() - 20, 0x1202u64), (0x1100, 12)] {
        let t = dir.join(format!("truncated-{cut}.bin"));
        std::fs::write(&t, &good[..cut]).unwrap();
        let (code, j) = inspect_json(&t, dir);
        assert_eq!(code, Some(1), "{j}");
        assert_eq!(j["offset"], offset, "{j}");
        assert!(j["error"].as_str().unwrap().contains("truncated"), "{j}");
    }
    let o = wardgate(
        &[
            os("firmware"),
            os("inspect"),
            dir.join("ec.pem").as_os_str(),
        ],
        dir,
    );
    assert_eq!(o.code(), Some(1), "a PEM key is no image: {o:?}");
    assert!(o.stderr.contains("not an MCUboot image"), "{o:?}");
}

/// A firmware CA with one signer `release`, and its files.
struct FirmwarePki {
    ca_pem: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn firmware_pki(dir: &Path, stem: &str, uri: &str) -> FirmwarePki {
    let ca = Ca::new(&format!("{stem} firmware CA")).unwrap();
    let ca_pem = dir.join(format!("{stem}-ca.pem"));
    write_cert(&ca_pem, &ca.cert_pem).unwrap();
    let (cert_pem, key_pem) = ca
        .leaf_with(stem, &[], false, |p| {
            p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        })
        .unwrap();
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    write_cert(&cert, &cert_pem).unwrap();
    write_key(&key, &key_pem).unwrap();
    FirmwarePki { ca_pem, cert, key }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn jobs_are_signed_verified_and_accepted_or_refused_with_their_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgtool = Imgtool::new();
    let key = imgtool.keygen(dir, "dev.pem", "ecdsa-p256");
    let img = imgtool.sign(dir, &key, "app", "1.2.3+4", &body(4096, 9), &[]);
    let (digest, _) = imgtool.verify(dir, &key, &img).unwrap();
    let fw = firmware_pki(dir, "release", "urn:wardgate-firmware:release");
    let rogue = firmware_pki(dir, "rogue", "urn:wardgate-firmware:release");
    let gw = firmware_pki(dir, "gw", "urn:wardgate:s:w:gw-1");
    let config = dir.join("wardgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 1
[gateway]
id = "gw-1"
site = "s"
ward = "w"
[store]
path = "store.db"
[uplink]
host = "127.0.0.1"
ca = "tls-ca.pem"
cert = "gw.pem"
key = "gw.key"
receiver_certs = ["rx.pem"]
[[serial]]
name = "bed12"
path = "/dev/null"
protocol = "cms50"
[[serial]]
name = "bed14"
path = "/dev/null"
protocol = "cms50"
[ble]
[[ble.device]]
name = "bed12"
address = "A0:9E:1A:12:34:56"
[firmware]
signer_ca = "{ca}"
timezone = "UTC"
window = ["22:00", "05:00"]
[firmware.classes]
acme = ["serial:bed12", "bed14", "a0:9e:1a:12:34:56"]
"#,
            ca = fw.ca_pem.display()
        ),
    )
    .unwrap();
    let job = |name: &str, pki: &FirmwarePki, seq: u64, extra: &[&str]| -> PathBuf {
        let out = dir.join(name);
        let seq = seq.to_string();
        let mut args = vec![
            os("firmware"),
            os("job"),
            os("--image"),
            img.as_os_str(),
            os("--url"),
            os("https://fw.example/acme/app-1.2.3.bin"),
            os("--class"),
            os("acme"),
            os("--seq"),
            os(&seq),
            os("--cert"),
            pki.cert.as_os_str(),
            os("--key"),
            pki.key.as_os_str(),
            os("-o"),
            out.as_os_str(),
        ];
        args.extend(extra.iter().map(os));
        let o = wardgate(&args, dir);
        assert_eq!(o.code(), Some(0), "firmware job: {o:?}");
        out
    };
    let accept = |file: &Path| -> (Option<i32>, Value) {
        let o = wardgate(
            &[
                os("firmware"),
                os("accept"),
                os("--config"),
                config.as_os_str(),
                file.as_os_str(),
            ],
            dir,
        );
        let v =
            serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("accept ({e}): {o:?}"));
        (o.code(), v)
    };
    let refused = |file: &Path| -> String {
        let (code, v) = accept(file);
        assert_eq!(code, Some(1), "{v}");
        assert_eq!(v["accepted"], false);
        v["reason"].as_str().unwrap().to_owned()
    };

    // A job for two named devices, signed by the firmware signer.
    let j5 = job(
        "j5.cose",
        &fw,
        5,
        &["--device", "serial:bed12", "--device", "bed14"],
    );
    // `wardgate verify` with the firmware CA prints it.
    let o = wardgate(
        &[
            os("verify"),
            os("--ca"),
            fw.ca_pem.as_os_str(),
            j5.as_os_str(),
        ],
        dir,
    );
    assert_eq!(o.code(), Some(0), "{o:?}");
    let v: Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(v["kind"], "firmware_job");
    assert_eq!(v["firmware_signer"], "release");
    assert_eq!(v["image"]["mcuboot_hash"], digest.as_str());
    assert_eq!(v["image"]["sha256"], sha256_hex(&img).as_str());
    assert_eq!(v["image"]["version"], "1.2.3+4");
    assert_eq!(v["policy"]["mode"], "test-confirm");
    assert_eq!(v["policy"]["first_chunk_timeout_s"], 60);
    // The independent Python check of the COSE_Sign1 and the hashes.
    let o = cmd(
        &imgtool.py,
        &[
            wardgate_e2e::workspace_root()
                .join("tests/python/verify_job.py")
                .as_os_str(),
            os("--cert"),
            fw.cert.as_os_str(),
            os("--image"),
            img.as_os_str(),
            os("--digest"),
            os(&digest),
            j5.as_os_str(),
        ],
        dir,
    );
    assert!(o.status.success(), "verify_job.py: {o:?}");
    assert!(o.stdout.contains(r#""signer": "release""#), "{o:?}");

    // The image against the job, as a gateway checks it after the download.
    let against = |image: &Path| -> (Option<i32>, Value) {
        let o = wardgate(
            &[
                os("firmware"),
                os("inspect"),
                os("--json"),
                os("--job"),
                j5.as_os_str(),
                image.as_os_str(),
            ],
            dir,
        );
        (
            o.code(),
            serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {o:?}")),
        )
    };
    let (code, v) = against(&img);
    assert_eq!(
        (code, &v["job_check"]),
        (Some(0), &serde_json::json!({"ok": true}))
    );
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[0x400] ^= 0x80;
    let tampered = dir.join("tampered.bin");
    std::fs::write(&tampered, &bytes).unwrap();
    let (code, v) = against(&tampered);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["job_check"]["reason"], "image_sha256_mismatch");
    // Upstream names the devices' key: an image signed by another key gets no job.
    let device_keyhash = v["key_hash"].as_str().unwrap().to_owned();
    let other = imgtool.keygen(dir, "other.pem", "ecdsa-p256");
    let by_other = imgtool.sign(dir, &other, "other", "1.2.3+4", &body(4096, 9), &[]);
    let o = wardgate(
        &[
            os("firmware"),
            os("job"),
            os("--image"),
            by_other.as_os_str(),
            os("--url"),
            os("https://x.example/a"),
            os("--class"),
            os("acme"),
            os("--seq"),
            os("9"),
            os("--keyhash"),
            os(&device_keyhash),
            os("--cert"),
            fw.cert.as_os_str(),
            os("--key"),
            fw.key.as_os_str(),
        ],
        dir,
    );
    assert_eq!(o.code(), Some(1), "{o:?}");
    assert!(o.stderr.contains("signed for another key"), "{o:?}");
    assert!(o.stdout.is_empty(), "no job written: {o:?}");

    // A dry run says which devices it would update and leaves no store behind.
    let o = wardgate(
        &[
            os("firmware"),
            os("accept"),
            os("--dry-run"),
            os("--config"),
            config.as_os_str(),
            j5.as_os_str(),
        ],
        dir,
    );
    let v: Value = serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {o:?}"));
    assert_eq!(
        (o.code(), &v["accepted"]),
        (Some(0), &Value::Bool(false)),
        "{o:?}"
    );
    assert_eq!(
        v["devices"],
        serde_json::json!(["serial:bed12", "serial:bed14"])
    );
    assert!(
        !dir.join("store.db").exists(),
        "a dry run created the store"
    );

    // Accepted: two queued executions, recorded in the store.
    let (code, v) = accept(&j5);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["accepted"], true);
    assert_eq!(
        v["devices"],
        serde_json::json!(["serial:bed12", "serial:bed14"])
    );
    // The same job again (a retained job seen at every reconnect): a duplicate, not a replay;
    // an older seq after the store recorded 5: replayed.
    assert_eq!(refused(&j5), "duplicate_job");
    let j3 = job("j3.cose", &fw, 3, &[]);
    assert_eq!(refused(&j3), "seq_replayed");
    // Signed by a signer of another CA (same name): the signature is refused.
    assert_eq!(
        refused(&job("rogue.cose", &rogue, 6, &[])),
        "signature_refused"
    );
    // Expired an hour ago.
    let (issued, expires) = ((now() - 7200).to_string(), (now() - 3600).to_string());
    assert_eq!(
        refused(&job(
            "expired.cose",
            &fw,
            6,
            &["--issued", &issued, "--expires", &expires]
        )),
        "expired"
    );
    // Targets: not configured, a name that is a serial and a BLE device, another class.
    assert_eq!(
        refused(&job("unknown.cose", &fw, 6, &["--device", "bed99"])),
        "unknown_device"
    );
    assert_eq!(
        refused(&job("ambiguous.cose", &fw, 6, &["--device", "bed12"])),
        "ambiguous_device"
    );
    let o = wardgate(
        &[
            os("firmware"),
            os("job"),
            os("--image"),
            img.as_os_str(),
            os("--url"),
            os("https://x.example/a"),
            os("--class"),
            os("other"),
            os("--seq"),
            os("9"),
            os("--cert"),
            fw.cert.as_os_str(),
            os("--key"),
            fw.key.as_os_str(),
            os("-o"),
            dir.join("other.cose").as_os_str(),
        ],
        dir,
    );
    assert_eq!(o.code(), Some(0), "{o:?}");
    assert_eq!(refused(&dir.join("other.cose")), "unknown_class");
    // `firmware job` of the image for class acme at seq 10, signed with `cert`/`key`, and `extra`.
    let job_of_img = |cert: &Path, key: &Path, extra: &[&std::ffi::OsStr]| {
        let mut args = vec![
            os("firmware"),
            os("job"),
            os("--image"),
            img.as_os_str(),
            os("--url"),
            os("https://x.example/a"),
            os("--class"),
            os("acme"),
            os("--seq"),
            os("10"),
            os("--cert"),
            cert.as_os_str(),
            os("--key"),
            key.as_os_str(),
        ];
        args.extend_from_slice(extra);
        wardgate(&args, dir)
    };
    // `-o` naming the image would overwrite it: refused (usage), the image untouched.
    let before = std::fs::read(&img).unwrap();
    let o = job_of_img(&fw.cert, &fw.key, &[os("-o"), img.as_os_str()]);
    assert_eq!(o.code(), Some(2), "{o:?}");
    assert!(o.stderr.contains("is one of the job's inputs"), "{o:?}");
    assert_eq!(std::fs::read(&img).unwrap(), before);
    // A gateway certificate cannot make a job: the tool refuses (usage, exit 2).
    let o = job_of_img(&gw.cert, &gw.key, &[]);
    assert_eq!(o.code(), Some(2), "{o:?}");
    assert!(o.stderr.contains("not a firmware signer"), "{o:?}");
    // None of the refused jobs left a trace; the accepted one is there.
    let db = rusqlite::Connection::open(dir.join("store.db")).unwrap();
    let jobs: Vec<(String, i64)> = db
        .prepare("SELECT id, seq FROM firmware_jobs")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(jobs, [("acme-5".to_owned(), 5)]);
    let seq: i64 = db
        .query_row(
            "SELECT seq FROM firmware_seq WHERE class = 'acme'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(seq, 5);

    // A whole-class job (seq 6) resolves to every device of the class.
    let (code, v) = accept(&job("j6.cose", &fw, 6, &[]));
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        v["devices"],
        serde_json::json!(["serial:bed12", "serial:bed14", "ble:A0:9E:1A:12:34:56"])
    );
    // A signed cancel (seq 7) stops its executions; the job cannot come back afterwards.
    let cancel = dir.join("cancel.cose");
    let o = wardgate(
        &[
            os("firmware"),
            os("job"),
            os("--cancel"),
            os("acme-6"),
            os("--reason"),
            os("bad build"),
            os("--class"),
            os("acme"),
            os("--seq"),
            os("7"),
            os("--cert"),
            fw.cert.as_os_str(),
            os("--key"),
            fw.key.as_os_str(),
            os("-o"),
            cancel.as_os_str(),
        ],
        dir,
    );
    assert_eq!(o.code(), Some(0), "{o:?}");
    let (code, v) = accept(&cancel);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["cancelled"], 3);
    assert_eq!(v["message"]["kind"], "firmware_cancel");
    let states: Vec<String> = db
        .prepare("SELECT state FROM firmware_executions WHERE job = 'acme-6'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(states, ["cancelled"; 3]);
}

#[test]
fn check_config_refuses_a_bad_firmware_section_at_its_position() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = "version = 1\n[gateway]\nid = \"gw-1\"\nsite = \"s\"\nward = \"w\"\n[uplink]\nhost = \"h\"\nca = \"tls-ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nreceiver_certs = [\"rx.pem\"]\n[[serial]]\nname = \"bed12\"\npath = \"/dev/null\"\nprotocol = \"cms50\"\n";
    std::fs::write(dir.join("a-file"), b"not a directory").unwrap();
    let check = |firmware: &str| -> Output {
        let p = dir.join("w.toml");
        std::fs::write(&p, format!("{base}{firmware}")).unwrap();
        wardgate(&[os("check-config"), p.as_os_str()], dir)
    };
    // Lines: the base has 15; [firmware] is line 16.
    for (section, want) in [
        (
            "[firmware]\nsigner_ca = \"tls-ca.pem\"\n",
            "w.toml:17:13: signer_ca is the TLS CA",
        ),
        (
            "[firmware]\nsigner_ca = \"fw-ca.pem\"\nwindow = [\"25:00\", \"03:00\"]\n",
            "w.toml:18:11: window start `25:00` is not a time of day: HH:MM from 00:00 to 23:59",
        ),
        (
            // The text form: the value that is wrong and the allowed range.
            "[firmware]\nsigner_ca = \"fw-ca.pem\"\nwindow = \"08:00-25:00\"\n",
            "w.toml:18:10: window end `25:00` is not a time of day: HH:MM from 00:00 to 23:59",
        ),

        (
            "[firmware]\nsigner_ca = \"fw-ca.pem\"\ntimezone = \"Europe Berlin\"\n",
            "w.toml:18:12: time zone `Europe Berlin`",
        ),
        (
            // A well-formed name the tz database does not have: `run` could not load it.
            "[firmware]\nsigner_ca = \"fw-ca.pem\"\ntimezone = \"Mars/Base\"\n",
            "w.toml:18:12: time zone `Mars/Base`: /usr/share/zoneinfo/Mars/Base",
        ),
        (
            "[firmware]\nsigner_ca = \"fw-ca.pem\"\n[firmware.classes]\nacme = [\"bed12\", \"bed99\"]\n",
            "w.toml:19:18: class `acme`: device `bed99` is not configured",
        ),
        ("[firmware]\nmin_battery = 30\n", "w.toml:16:1: [firmware] needs its own trust"),
        (
            // An absurd value overflowed the policy's minutes → seconds (the relay task died).
            "[firmware]\nsigner_ca = \"fw-ca.pem\"\nin_use_minutes = 307445734561825861\n",
            "w.toml:18:18: in_use_minutes 307445734561825861 is out of range (0 to 10080, one week)",
        ),
        (
            "[firmware]\nsigner_ca = \"fw-ca.pem\"\nretry_initial_s = 3600\n",
            "w.toml:18:19: retry_initial_s 3600 is out of range (1 to 900",
        ),
    ] {
        let o = check(section);
        assert_eq!(o.code(), Some(2), "{section}: {o:?}");
        assert!(o.stderr.contains(want), "{section}: want `{want}` in:\n{}", o.stderr);
    }
    // A cache directory that is a file would only fail at the first download.
    let o = check("[firmware]\nsigner_ca = \"fw-ca.pem\"\ncache_dir = \"a-file\"\n");
    assert_eq!(o.code(), Some(2), "{o:?}");
    let line = o
        .stderr
        .lines()
        .find(|l| l.contains("w.toml:18:13: cache_dir "))
        .unwrap_or_else(|| panic!("no cache_dir error at 18:13 in:\n{}", o.stderr));
    assert!(line.ends_with(&format!("{} is a file, not a directory; the relay keeps downloaded images in a directory: remove the file or name another path", dir.join("a-file").display())), "{line}");
    let o = check("[firmware]\nsigner_ca = \"fw-ca.pem\"\ntimezone = \"Europe/Berlin\"\nwindow = \"22:00-05:00\"\n[firmware.classes]\nacme = [\"bed12\"]\n");
    assert_eq!(o.code(), Some(0), "a good section: {o:?}");
}

/// The demo makes its images in Rust (`wardgate_sim::mcuboot`: it runs without Python): imgtool
/// must validate them with their key (signature, hash, key hash) and agree with
/// `wardgate firmware inspect` on the digest and the version; one flipped body byte and imgtool
/// refuses it.
#[test]
fn demo_images_made_in_rust_are_valid_for_imgtool() {
    use wardgate_sim::mcuboot;
    let tmp = wardgate_e2e::temp_dir("fw-demo-image").unwrap();
    let dir = tmp.path();
    let imgtool = Imgtool::new();
    let key = mcuboot::SigningKey::generate().unwrap();
    let key_path = dir.join("demo-key.pem");
    std::fs::write(&key_path, key.pkcs8_pem()).unwrap();
    let bytes = mcuboot::build(
        &mcuboot::demo_body(40_000, 3),
        mcuboot::Version::parse("1.3.0+7").unwrap(),
        &key,
    )
    .unwrap();
    let image = dir.join("demo.bin");
    std::fs::write(&image, &bytes).unwrap();
    let (digest, version) = imgtool
        .verify(dir, &key_path, &image)
        .expect("imgtool refused the Rust-made image");
    assert_eq!(
        digest,
        hex::encode(
            wardgate_sim::smp_device::mcuboot::read(&bytes)
                .unwrap()
                .computed
        )
    );
    assert_eq!(version, "1.3.0+7");
    let (code, json) = inspect_json(&image, dir);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["image_hash"], Value::String(digest.clone()), "{json}");
    assert_eq!(
        json["key_hash"],
        Value::String(hex::encode(key.key_hash())),
        "{json}"
    );
    // The same image signed by another key: imgtool refuses it with the first key.
    let other = dir.join("other-key.pem");
    std::fs::write(&other, mcuboot::SigningKey::generate().unwrap().pkcs8_pem()).unwrap();
    assert!(
        imgtool.verify(dir, &other, &image).is_none(),
        "validated with the wrong key"
    );
    let mut tampered = bytes.clone();
    tampered[0x200 + 10] ^= 1;
    let bad = dir.join("tampered.bin");
    std::fs::write(&bad, tampered).unwrap();
    assert!(
        imgtool.verify(dir, &key_path, &bad).is_none(),
        "a tampered body validated"
    );
}
