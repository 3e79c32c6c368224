//! `wardgate demo`: the whole chain on loopback with recorded real devices, nothing to set up.
//!
//! 1. A throw-away PKI ([`wardgate_sim::pki`]): CA, broker certificate for 127.0.0.1, gateway and
//!    receiver client certificates.
//! 2. The embedded broker ([`wardgate_sim::broker`]) with TLS requiring client certificates, on a random
//!    loopback port.
//! 3. One pseudo-terminal per device ([`wardgate_sim::devsim`]) replaying its recording from
//!    `data/real/serial/` at the device's own pace (`--speed` to hurry); the CMS50 waits for the
//!    gateway's start-live command like the real oximeter.
//!    A plug-in device (`[[exec]]`): the shipped `examples/plugins/oximeter_bridge.py`, run by
//!    `python3` as a child process, replaying `oximeter_demo.csv` (left out without python3).
//!    An ECG device (`[[exec]]`, no Python: `/bin/sh` reading a file): the first
//!    [`ECG_SECONDS`] seconds of the real MIT-BIH 208 ECG (`data/real/physio/`, 360 Hz) as one
//!    waveform line per second, at one line a second (`--speed` to hurry).
//! 4. The gateway itself (`config/demo.toml`: real serial adapters, store, uplink) and the
//!    upstream receiver (`config/receiver-demo.toml`), both through the same code as `run` and
//!    `receive`.
//! 5. When every recording has been replayed and delivered, it prints per device: observations
//!    in the recording (decoded offline by the same decoder), stored by the gateway, delivered
//!    upstream, and verified independently from the raw messages with only `gateway.pem`;
//!    and the device's location (`ward-7/bed-1` …) as the receiver stored it with the rows,
//!    read from the receiver's SQLite output: it travelled in the batches.
//! 6. Firmware ([`super::demo_firmware`]): the CMS50 also serves SMP on its line, and the bonded
//!    BLE scale the SMP GATT service (a Rust Zephyr/MCUboot device model,
//!    [`wardgate_sim::smp_device`]); once the recordings are delivered, one signed job per
//!    device class is published retained, and the real relay downloads each image over HTTPS
//!    with the gateway's certificate, verifies it, uploads it, tests, resets, confirms. The
//!    firmware table shows from/to versions, bytes, seconds, and the version the device runs.
//!
//! It succeeds only when all four counts match and the stored location is the configured one
//! for every device, and every update ended `done`
//! with the device running the job's version, confirmed.

use super::demo_firmware;
use crate::signing::Verifier;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wardgate_sim::broker::{BrokerTls, EmbeddedBroker};
use wardgate_sim::demo_serial::{devices, expected_observations, start_with_smp};
use wardgate_sim::devsim::SimulatedPort;
use wardgate_sim::smp_device::{self, SmpDeviceModel, SmpDeviceOptions};
use wardgate_sim::{demo_ble, pki};

/// The demo's plug-in device (`[[exec]]`): the shipped example plug-in, from the checkout.
const PLUGIN_DEVICE: &str = "exec:bed15-plugin";

/// The `[[exec]]` section of the demo's plug-in device and the readings its replay holds (the
/// non-missing cells of `examples/plugins/oximeter_demo.csv`), or why it is left out (no
/// `python3`, not a checkout).
fn demo_plugin(speed: f64) -> Result<(String, u64), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins");
    let (script, csv) = (
        dir.join("oximeter_bridge.py"),
        dir.join("oximeter_demo.csv"),
    );
    let python = ["/usr/local/bin/python3", "/usr/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .ok_or("no python3 in /usr/local/bin, /usr/bin or /bin")?;
    let text = std::fs::read_to_string(&csv).map_err(|e| format!("{}: {e}", csv.display()))?;
    if !script.is_file() {
        return Err(format!(
            "{} is not there (not a checkout?)",
            script.display()
        ));
    }
    let readings = text
        .lines()
        .skip(1)
        .flat_map(|l| l.split(','))
        .filter(|v| !v.trim().is_empty() && v.trim() != "-")
        .count() as u64;
    let section = format!(
        "\n[[exec]]\nname = \"{}\"\ncommand = \"{python}\"\nargs = [\"{}\", \"--replay\", \"{}\", \"--rate\", \"{}\"]\nlocation = \"ward-7/bed-15\"\n",
        PLUGIN_DEVICE.trim_start_matches("exec:"),
        script.display(),
        csv.display(),
        // The CMS50E's own rate: the CSV holds one row per live frame, 60 a second.
        60.0 * speed.max(0.1)
    );
    Ok((section, readings))
}

/// The demo's ECG device (`[[exec]]`): a shell script replaying the MIT-BIH 208 excerpt as
/// waveform lines (plug-in schema v1 `"type":"waveform"`, `docs/plugins.md`).
const ECG_DEVICE: &str = "exec:bed16-ecg";
/// Seconds of the MIT-BIH 208 excerpt the demo replays: one waveform observation (360 samples)
/// each.
const ECG_SECONDS: usize = 20;

/// Writes `dir/ecg/ecg.jsonl` (the first [`ECG_SECONDS`] seconds of the MIT-BIH 208 excerpt,
/// lead MLII, 360 Hz, raw ADC with `mV = (adc − 1024) / 200`, PROVENANCE.md) and
/// `dir/ecg/replay.sh` (prints one line every `1 / speed` s, then waits to be stopped), and
/// returns the `[[exec]]` section and the observations it yields, or why it is left out (no
/// `/bin/sh`, not a checkout).
fn demo_ecg(dir: &Path, speed: f64) -> Result<(String, u64), String> {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/real/physio/mitdb208_excerpt_360hz_adc_u16le.bin");
    let bytes = std::fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    if !Path::new("/bin/sh").is_file() {
        return Err("no /bin/sh".into());
    }
    let adc: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut lines = String::new();
    for (i, second) in adc.chunks(360).take(ECG_SECONDS).enumerate() {
        let samples: Vec<String> = second.iter().map(u16::to_string).collect();
        lines.push_str(&format!(
            "{{\"v\":1,\"type\":\"waveform\",\"code\":\"MDC_ECG_ELEC_POTL_II\",\"unit\":\"mV\",\"period_us\":2778,\"scale\":0.005,\"offset\":-5.12,\"record\":{i},\"samples\":[{}]}}\n",
            samples.join(",")
        ));
    }
    let ecg_dir = dir.join("ecg");
    let write = |name: &str, text: &str| {
        std::fs::create_dir_all(&ecg_dir)
            .and_then(|()| std::fs::write(ecg_dir.join(name), text))
            .map_err(|e| format!("{}: {e}", ecg_dir.join(name).display()))
    };
    write("ecg.jsonl", &lines)?;
    write(
        "replay.sh",
        &format!(
            "while IFS= read -r line; do sleep {:.3}; printf '%s\\n' \"$line\"; done < ecg.jsonl\nexec sleep 86400\n",
            1.0 / speed.max(0.1)
        ),
    )?;
    let section = format!(
        "\n[[exec]]\nname = \"{}\"\ncommand = \"/bin/sh\"\nargs = [\"replay.sh\"]\nworking_dir = \"{}\"\nlocation = \"ward-7/bed-16\"\n",
        ECG_DEVICE.trim_start_matches("exec:"),
        ecg_dir.display()
    );
    Ok((section, adc.chunks(360).take(ECG_SECONDS).count() as u64))
}

/// The embedded gateway config.
pub const DEMO_CONFIG: &str = include_str!("../../../config/demo.toml");
/// The embedded receiver config.
pub const RECEIVER_CONFIG: &str = include_str!("../../../config/receiver-demo.toml");
/// The serial device the demo updates (it also takes firmware over SMP on its line).
const FIRMWARE_SERIAL: &str = "bed1-spo2";
/// The version the demo's serial device runs before the update.
const FIRMWARE_FROM: &str = "1.0.0";
/// The version the demo's BLE scale runs before the update.
const FIRMWARE_BLE_FROM: &str = "2.0.0";

/// `wardgate demo` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Replay speed-up factor (1 = the devices' own pace).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Also write DIR/gateway.pem and DIR/messages/*.cose (every message on the batch topic).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `wardgate demo`: exit 0 when every device's counts match, 1 otherwise.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    // Before the runtime: the bus address must be in the environment before any thread or D-Bus
    // connection exists.
    let ble = demo_ble::start_bus();
    let ok = super::runtime()?.block_on(run(DemoOptions {
        speed: args.speed,
        out: args.out,
        ble,
    }))?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Options of `wardgate demo`.
#[derive(Debug)]
pub struct DemoOptions {
    /// Replay speed-up (1 = real time).
    pub speed: f64,
    /// Where to leave `gateway.pem` and `messages/*.cose`; a temporary directory otherwise.
    pub out: Option<PathBuf>,
    /// The private bus for the simulated BlueZ ([`demo_ble::start_bus`]), or why the
    /// BLE devices are left out.
    pub ble: Result<wardgate_sim::blesim::Bus, String>,
}

/// Per-device result row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// Observations in the recording.
    pub recorded: u64,
    /// Accepted by the gateway's store.
    pub stored: u64,
    /// Written by the upstream receiver.
    pub delivered: u64,
    /// Found in independently verified raw messages (unique seq).
    pub verified: u64,
}

/// Runs the demo; `Ok(true)` when every device's counts match.
pub async fn run(mut opts: DemoOptions) -> anyhow::Result<bool> {
    let _tmp;
    let dir = match &opts.out {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.canonicalize()?
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("wardgate-demo-")
                .tempdir()?;
            let p = t.path().to_path_buf();
            _tmp = t;
            p
        }
    };
    let messages = dir.join("messages");
    if messages.exists() {
        std::fs::remove_dir_all(&messages)?;
    }
    for f in [
        "store.db",
        "store.db-wal",
        "store.db-shm",
        "upstream.db",
        "upstream.db-wal",
        "upstream.db-shm",
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    std::fs::create_dir_all(dir.join("dev"))?;
    println!("wardgate demo: working in {}", dir.display());

    // 1. PKI
    let ca = pki::Ca::new("wardgate demo CA")?;
    pki::write_cert(&dir.join("ca.pem"), &ca.cert_pem)?;
    let (broker_cert, broker_key) = ca.leaf("demo broker", &["127.0.0.1", "localhost"], true)?;
    // Each names its role (crate::identity): the receiver trusts the gateway, and the gateway
    // the receiver's acks, through the CA and these names, not through copies of certificates.
    for (name, cn, urn) in [
        (
            "gateway",
            "gw-demo-01",
            "urn:wardgate:demo-hospital:ward-7:gw-demo-01",
        ),
        (
            "receiver",
            "demo-receiver",
            "urn:wardgate-receiver:demo-receiver",
        ),
    ] {
        let (c, k) = ca.leaf(cn, &[urn], false)?;
        pki::write_cert(&dir.join(format!("{name}.pem")), &c)?;
        pki::write_key(&dir.join(format!("{name}.key")), &k)?;
    }

    // 2. Broker
    let tls = BrokerTls {
        cert_chain: vec![demo_firmware::pem_cert(&broker_cert)?],
        key: rustls_pki_types::pem::PemObject::from_pem_slice(broker_key.as_bytes())?,
        client_ca: vec![demo_firmware::pem_cert(&ca.cert_pem)?],
    };
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse()?, tls).await?;
    let port = broker.local_addr().port();
    println!("embedded MQTT broker (TLS, client certificates required) on 127.0.0.1:{port}");

    // 3. Firmware: the device that takes an update, the upstream side (signer, image, server).
    let fw_model = SmpDeviceModel::new(SmpDeviceOptions {
        running_version: FIRMWARE_FROM.into(),
        erase_delay: Duration::from_millis(300),
        swap_time: Duration::from_secs(1),
        ..Default::default()
    })
    .shared();
    let running = fw_model.clone();
    let plans = vec![demo_firmware::Planned {
        device: format!("serial:{FIRMWARE_SERIAL}"),
        class: "oximeter-cms50".into(),
        from: FIRMWARE_FROM.into(),
        to: "1.1.0".into(),
        body_len: 48 * 1024,
        running: Box::new(move || {
            let m = smp_device::lock(&running);
            m.running_confirmed()
                .then(|| m.running_version().to_owned())
        }),
    }];
    let mut plans = plans;
    // The bonded scale takes firmware over the SMP GATT service when BLE runs.
    let scale_model = opts.ble.is_ok().then(|| {
        SmpDeviceModel::new(SmpDeviceOptions {
            running_version: FIRMWARE_BLE_FROM.into(),
            erase_delay: Duration::from_millis(300),
            swap_time: Duration::from_secs(1),
            ..Default::default()
        })
        .shared()
    });
    if let Some(m) = &scale_model {
        let running = m.clone();
        plans.push(demo_firmware::Planned {
            device: format!("ble:{}", demo_ble::SCALE),
            class: "scale-uc352".into(),
            from: FIRMWARE_BLE_FROM.into(),
            to: "2.1.0".into(),
            body_len: 64 * 1024,
            running: Box::new(move || {
                let m = smp_device::lock(&running);
                m.running_confirmed()
                    .then(|| m.running_version().to_owned())
            }),
        });
    }
    let (mut upstream, fw_section) = demo_firmware::Upstream::prepare(&dir, &ca, plans).await?;

    // 4. Configs through the real loader
    let gw_path = dir.join("wardgate.toml");
    let mut gw_text = DEMO_CONFIG.replace("port = 8883", &format!("port = {port}"));
    let ble = match std::mem::replace(&mut opts.ble, Err(String::new())) {
        Ok(bus) => {
            let ble = demo_ble::DemoBle::start(bus, scale_model)?;
            gw_text.push_str(demo_ble::DEMO_BLE_CONFIG);
            println!("simulated BlueZ on a private D-Bus: Polar H7 strap, A&D UC-352BLE scale, one stranger");
            Some(ble)
        }
        Err(why) => {
            println!("BLE devices left out: {why}");
            None
        }
    };
    let plugin = demo_plugin(opts.speed);
    match &plugin {
        Ok((section, _)) => {
            gw_text.push_str(section);
            println!(
                "plug-in device {PLUGIN_DEVICE}: examples/plugins/oximeter_bridge.py (python3), replaying oximeter_demo.csv"
            );
        }
        Err(why) => println!("plug-in device left out: {why}"),
    }
    let ecg = demo_ecg(&dir, opts.speed);
    match &ecg {
        Ok((section, n)) => {
            gw_text.push_str(section);
            println!(
                "ECG device {ECG_DEVICE}: /bin/sh replaying {n} s of MIT-BIH 208 (360 Hz) as waveforms"
            );
        }
        Err(why) => println!("ECG device left out: {why}"),
    }
    gw_text.push_str(&fw_section);
    std::fs::write(&gw_path, gw_text)?;
    let rx_path = dir.join("receiver.toml");
    std::fs::write(
        &rx_path,
        RECEIVER_CONFIG.replace("port = 8883", &format!("port = {port}")),
    )?;

    // 5. Devices on ptys (before the gateway opens them); one of them also takes firmware.
    let mut sims = Vec::new();
    let mut fw_serial = None;
    let mut expected = BTreeMap::new();
    for d in devices() {
        expected.insert(
            format!("serial:{}", d.name),
            expected_observations(d.protocol, d.recording),
        );
        let link = dir.join("dev").join(d.name);
        if d.name == FIRMWARE_SERIAL {
            let dev = start_with_smp(&d, &link, fw_model.clone(), opts.speed, false)?;
            fw_serial = Some((d, dev));
        } else {
            let port = SimulatedPort::open(&link, d.start.clone())?;
            sims.push((d, port));
        }
    }
    if ble.is_some() {
        expected.extend(demo_ble::DemoBle::expected());
    }
    if let Ok((_, readings)) = &plugin {
        expected.insert(PLUGIN_DEVICE.to_string(), *readings);
    }
    if let Ok((_, n)) = &ecg {
        expected.insert(ECG_DEVICE.to_string(), *n);
    }
    let cfg = crate::config::load(&gw_path)?;
    let rcfg = crate::config::load_receiver(&rx_path)?;
    let receiver = crate::receive::start(rcfg)?;
    let gateway = crate::daemon::start(&cfg).await?;

    let speed = opts.speed;
    let mut replays = Vec::new();
    for (d, mut port) in sims {
        println!(
            "replaying {} ({} bytes, {}) on {}",
            d.name,
            d.recording.len(),
            d.protocol.as_str(),
            port.link.display()
        );
        replays.push(std::thread::spawn(move || {
            let r = port.replay(d.recording, d.pace, speed, Duration::from_secs(20));
            (d.name, r, port)
        }));
    }
    let ble_play = ble.map(|b| {
        std::thread::spawn(move || {
            let r = b.play(speed);
            (b, r)
        })
    });
    let mut ports = Vec::new();
    for r in replays {
        let (name, result, port) = tokio::task::spawn_blocking(move || r.join())
            .await?
            .map_err(|_| anyhow::anyhow!("replay thread panicked"))?;
        result.map_err(|e| anyhow::anyhow!("replaying {name}: {e}"))?;
        ports.push(port);
    }
    if let Some((d, dev)) = &fw_serial {
        println!(
            "replaying {} ({} bytes, {}) on {}, with an SMP firmware service on the same line",
            d.name,
            d.recording.len(),
            d.protocol.as_str(),
            dev.link.display()
        );
        let deadline = Instant::now() + Duration::from_secs(60).mul_f64(1.0 / speed.max(0.01));
        while dev.counts().2 < d.recording.len() as u64 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "replaying {}: the gateway did not take the recording in time",
                d.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut ble = None;
    if let Some(t) = ble_play {
        let (b, r) = tokio::task::spawn_blocking(move || t.join())
            .await?
            .map_err(|_| anyhow::anyhow!("BLE demo thread panicked"))?;
        r?;
        ble = Some(b);
    }

    // 6. Wait until everything recorded is delivered (or a deadline passes).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = receiver
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let done = expected
            .iter()
            .all(|(dev, n)| stats.delivered.get(dev).copied().unwrap_or(0) >= *n);
        let queued = gateway.store.queued();
        if (done && queued == 0) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 7. The firmware roll-out, once the observations are delivered (the serial adapter pauses
    // the data protocol while SMP runs on the line).
    println!("publishing signed firmware jobs (retained on …/firmware/job)");
    let origin = crate::batch::Origin {
        gateway: cfg.gateway.id.get_ref().clone(),
        site: cfg.gateway.site.get_ref().clone(),
        ward: cfg.gateway.ward.get_ref().clone(),
    };
    upstream.publish(&origin, port, &dir).await?;
    let firmware = upstream
        .wait(&gateway.store, Duration::from_secs(120))
        .await?;
    let stored = gateway
        .writer
        .per_device
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let uplink = gateway.uplink.borrow().clone();
    gateway.stop().await;
    drop(ports);
    drop(fw_serial);
    drop(ble);
    let stats = receiver
        .stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let _ = receiver.shutdown.send(true);
    let _ = receiver.task.await;
    broker.shutdown().await;

    // 8. Independent verification of the raw messages with only the gateway certificate.
    let verified = verify_dir(&dir.join("gateway.pem"), &messages)?;
    // Where each device was, as the receiver stored it with its rows (it travelled in the
    // batches' `locations`), against the configuration.
    let located = upstream_locations(&dir.join("upstream.db"))?;
    let configured = crate::daemon::configured_locations(&cfg);
    let mut ok = true;
    println!();
    println!(
        "{:<22} {:>9} {:>8} {:>10} {:>9}  {:<8}  location (as stored upstream)",
        "device", "recorded", "stored", "delivered", "verified", ""
    );
    for (dev, recorded) in &expected {
        let row = Row {
            recorded: *recorded,
            stored: stored.get(dev).map(|c| c.observations).unwrap_or(0),
            delivered: stats.delivered.get(dev).copied().unwrap_or(0),
            verified: verified.get(dev).copied().unwrap_or(0),
        };
        let location = located.get(dev).map(String::as_str).unwrap_or("-");
        let good = row.recorded > 0
            && row.recorded == row.stored
            && row.stored == row.delivered
            && row.delivered == row.verified
            && location == configured.get(dev).map(String::as_str).unwrap_or("-");
        ok &= good;
        println!(
            "{:<22} {:>9} {:>8} {:>10} {:>9}  {:<8}  {}",
            dev,
            row.recorded,
            row.stored,
            row.delivered,
            row.verified,
            if good { "ok" } else { "MISMATCH" },
            location
        );
    }
    println!();
    ok &= demo_firmware::print_table(&firmware);
    println!(
        "firmware: {} image bytes served over HTTPS (client certificate required)",
        upstream.bytes_served()
    );
    if let Some(c) = stored.get(&format!("ble:{}", demo_ble::STRANGER)) {
        println!(
            "refused:  ble:{} ({} observations stored; reported upstream as `rejected`)",
            demo_ble::STRANGER,
            c.observations
        );
        ok &= c.observations == 0;
    }
    println!();
    println!(
        "batches: {} sent ({} re-sent), {} acknowledged; upstream: {} messages verified, {} rejected, {} duplicate batches, {} device events",
        uplink.batches_sent, uplink.batches_resent, uplink.batches_acked, stats.verified_messages, stats.rejected_messages, stats.duplicate_batches, stats.events
    );
    if opts.out.is_some() {
        println!("gateway certificate: {}", dir.join("gateway.pem").display());
        println!(
            "raw messages:        {}/*.cose ({} files)",
            messages.display(),
            stats.raw_messages
        );
        println!(
            "verify them with:    wardgate verify --cert {} {}/*.cose",
            dir.join("gateway.pem").display(),
            messages.display()
        );
    }
    println!(
        "{}",
        if ok {
            "demo: every recorded observation was stored, delivered and verified; every device updated"
        } else {
            "demo: FAILED (counts differ or an update did not end on its version)"
        }
    );
    Ok(ok)
}

/// Device → the location(s) the receiver stored with its observations in its SQLite output at
/// `path` (several joined by `,`: a device moved while its rows travelled; devices whose rows
/// have none are absent).
fn upstream_locations(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let c =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut st = c.prepare(
        "SELECT device, group_concat(location, ',') FROM (SELECT DISTINCT device, location FROM observations WHERE location IS NOT NULL ORDER BY device, location) GROUP BY device",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Verifies every `*.cose` in `dir` with the certificate(s) in `cert` alone, and counts unique
/// observations per device. Errors: a message that does not verify.
pub fn verify_dir(cert: &Path, dir: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut v = Verifier::default();
    v.add_file(cert)?;
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    let mut per = BTreeMap::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cose"))
    {
        let bytes = std::fs::read(&path)?;
        let payload = v
            .verify(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let batch = crate::batch::BatchPayload::from_cbor(&payload)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for o in batch.observations {
            if seen.insert((batch.gateway.clone(), o.seq)) {
                *per.entry(o.device).or_insert(0) += 1;
            }
        }
    }
    Ok(per)
}
