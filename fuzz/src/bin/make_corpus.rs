//! Writes the seed corpus `fuzz/corpus/<target>/` (run by `fuzz/make-corpus`; not a fuzz
//! target). Seeds come from the real recordings in `data/real/` (cut into small files), the
//! unit tests' examples, and valid messages signed with the fixed fuzz identities of
//! `wardgate_fuzz::fixture` (a signed batch, a signed ack, the certificates).
//! Deterministic: the same files on every run. It is built like the fuzz targets (cargo fuzz
//! links every binary of this crate with libFuzzer's coverage hooks), so it is written as one:
//! the work runs in the `init` block, which then exits before any fuzzing.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use wardgate::batch::{Ack, BatchPayload, WireEvent, WireObservation};
use wardgate_adapters::ble::decode::advertisement::bthome_crypto::encrypt_bthome;
use wardgate_fuzz::{fixture, GATEWAY, SITE, TOPIC, WARD};

struct Corpus {
    dir: PathBuf,
    files: BTreeMap<String, Vec<Vec<u8>>>,
}

impl Corpus {
    fn add(&mut self, target: &str, bytes: Vec<u8>) {
        self.files.entry(target.into()).or_default().push(bytes);
    }
    /// A seed for a target dispatched on its first byte.
    fn sel(&mut self, target: &str, sel: u8, rest: &[u8]) {
        let mut b = vec![sel];
        b.extend_from_slice(rest);
        self.add(target, b);
    }
    fn write(self) {
        for (target, seeds) in self.files {
            let d = self.dir.join(&target);
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(d.join(format!("seed-{i:03}")), s).unwrap();
            }
            println!("{target}: {} seeds", seeds.len());
        }
    }
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(char::is_ascii_hexdigit).collect();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Rows of a CSV without quoted commas (the data/real files), as column → value.
fn csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let head: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines
        .map(|l| {
            head.iter()
                .cloned()
                .zip(l.split(',').map(String::from))
                .collect()
        })
        .collect()
}

fn ad(ad_type: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![data.len() as u8 + 1, ad_type];
    v.extend_from_slice(data);
    v
}

libfuzzer_sys::fuzz_target!(init: { make(); exit_now() }, |_data: &[u8]| {});

fn make() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let real = root.join("data/real");
    let mut c = Corpus {
        dir: root.join("fuzz/corpus"),
        files: BTreeMap::new(),
    };

    // Serial: the real captures, cut into small pieces.
    let cms = std::fs::read(real.join("serial/cms50e_live_capture.bin")).unwrap();
    c.add("serial_cms50", cms[..90].to_vec());
    c.add("serial_cms50", cms[4..200].to_vec()); // starts mid-frame
    c.add("serial_cms50", cms.clone());
    // 5.1 s back to back: pleth arrays end at second boundaries (60 frames), then a flush.
    c.add("serial_cms50", cms.repeat(3));
    // Status changes inside a second: searching pulse (high byte E2), then finger out (E1),
    // then normal frames again: arrays end at each change.
    let mut flags = cms[..27 * 9].to_vec();
    for (i, f) in flags.chunks_mut(9).enumerate() {
        f[1] = match i {
            9..=14 => 0xE2,
            18..=20 => 0xE1,
            _ => f[1],
        };
    }
    c.add("serial_cms50", flags);
    let mut handshake = Vec::new();
    for r in csv(&real.join("serial/cms50dplus_handshake_and_live.csv")) {
        if r["direction"] == "dev->host" {
            handshake.extend(hex(&r["hex"]));
        }
    }
    c.add("serial_cms50", handshake);
    let ansar = std::fs::read(real.join("serial/ivy450c_ansarb_capture.bin")).unwrap();
    let starts: Vec<usize> = (0..ansar.len()).filter(|&i| ansar[i] == 0xff).collect();
    c.add("serial_ansar_b", ansar[..starts[1].min(1500)].to_vec()); // starts mid-message
    for w in starts.windows(2).take(3) {
        c.add("serial_ansar_b", ansar[w[0]..w[1]].to_vec());
    }
    if starts.len() > 3 {
        c.add("serial_ansar_b", ansar[starts[0]..starts[3]].to_vec());
    }
    // No real Masimo recording exists in data/real/: the documented ASCII 1 lines the decoder's
    // unit tests cite (operator's manuals, mdpnp), and a garbled one.
    for line in [
        "12/01/05 11:56:29 SN=0123456789 SPO2=098% BPM=240 PI=20.00% SPCO=01.0% SPMET=00.5% DESAT=01 PIDELTA=-02 PVI=027 ALARM=0000 EXC=000820\r\n",
        "09/15/10 15:10:29 SPO2=097% BPM=064 PI=11.82% ALARM=20 EXC=800\r\n",
        "02/22/16 22:47:45 SN=0000056661 SPO2=098% BPM=097 PI=03.60% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800\r\n\r\n02/22/16 22:47:46 SN=0000056661 SPO2=098% BPM=096 PI=03.95% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800\r\n",
        "03/15/11 14:22:05 SN=0000092845 SPO2=---% BPM=--- PI=--.--% ALARM=0030 EXC=00000C\r\n",
        "SPO2=097% BPM=064 ALARM=20 EXC=800\r\n13/45/10 15:10:29 SPO2=097%\r\n09/15/10 15:10:30 SPO2=1x7% BPM=064\r\n",
    ] {
        c.add("serial_masimo", line.as_bytes().to_vec());
    }

    // GATT: the real notifications, then the unit tests' examples (selector = Profile::ALL index).
    for r in csv(&real.join("ble/gatt_notifications.csv")) {
        let sel = if r["characteristic"].starts_with("0x2A9D") { 6 } else { 0 };
        c.sel("ble_gatt", sel, &hex(&r["hex_payload"]));
    }
    for (sel, h) in [
        (1, "1e0400000000000000041114293b3c00012700"),
        (1, "06ff0700085a00e9070c1f173b3bfe07"),
        (2, "156ff0000000003c001200"),
        (3, "06b00e00fedc070c050b321b04"),
        (4, "0562004800e9070c1f173b3b008000"),
        (5, "1f62003c0061003d0060003e00400020000019f0"),
        (7, "1b0700e207041a0b091e1e005ab0110100"),
        (8, "64"),
        (9, "ff0700000105e001510807320105f041f0"),
        (10, "0400000002543334ea070816082a24"),
        (11, "a3004010800100"),
        (12, "e9070c1f173b3b0500"),
    ] {
        c.sel("ble_gatt", sel, &hex(h));
    }

    // Advertisements: the real ones, as whole payloads (AD structures) and per parser.
    for r in csv(&real.join("ble/advertisements.csv")) {
        let p = hex(&r["hex_payload"]);
        let field = r["ad_field"].as_str();
        let key = r["key"].as_str();
        let company = hex(key.get(2..6).unwrap_or("")).into_iter().rev().collect::<Vec<u8>>();
        match field {
            "raw_advertisement" | "manufacturer_specific (as logged with its AD header)" => {
                c.sel("ble_advertisement", 0, &p);
                c.sel("ble_advertisement", 1, &p);
            }
            "manufacturer_specific" if company.len() == 2 => {
                let mut d = company.clone();
                d.extend(&p);
                c.sel("ble_advertisement", 0, &[ad(0x01, &[0x06]), ad(0xff, &d)].concat());
                c.sel("ble_advertisement", 5, &p);
                c.sel("ble_advertisement", 6, &d);
            }
            "service_data" if company.len() == 2 => {
                let mut d = company.clone();
                d.extend(&p);
                c.sel("ble_advertisement", 0, &ad(0x16, &d));
                let sel = match key.get(2..6) {
                    Some("FEAA" | "feaa") => 2,
                    Some("FCD2" | "fcd2") => 3,
                    Some("181D" | "181d") => 4,
                    _ => 2,
                };
                c.sel("ble_advertisement", sel, &p);
            }
            "complete_local_name" => {
                let name = String::from_utf8(p.clone()).unwrap_or_default();
                let name = if name.is_empty() { key.to_string() } else { name };
                c.sel("ble_advertisement", 0, &ad(0x09, name.as_bytes()));
                c.sel("ble_advertisement", 7, name.as_bytes());
            }
            _ => c.sel("ble_advertisement", 0, &p),
        }
    }
    // BTHome v2 plain (battery 100 %, temperature 25.06 °C), also inside an advertisement.
    let bthome = hex("40 01 64 02 ca 09");
    c.sel("ble_advertisement", 3, &bthome);
    c.sel("ble_advertisement", 0, &ad(0x16, &[hex("d2fc"), bthome.clone()].concat()));

    // Encrypted BTHome: frames to encrypt (mode 1), encrypted frames (mode 0), a bindkey (2).
    const KEY: [u8; 16] = [
        0x23, 0x1d, 0x39, 0xc1, 0xd7, 0xcc, 0x1a, 0xb1, 0xae, 0xe2, 0x24, 0xcd, 0x09, 0x6d,
        0xb9, 0x32,
    ];
    const MAC: [u8; 6] = [0x54, 0x48, 0xe6, 0x8f, 0x80, 0xa5];
    for (info, objects) in [(0x41u8, hex("01 64 02 ca 09")), (0x43, hex("2e 3f 45 1f 01"))] {
        let mut m1 = vec![info, 0x33, 0x22, 0x11, 0x00];
        m1.extend(&objects);
        c.sel("ble_bthome_crypto", 1, &m1);
        let frame = encrypt_bthome(MAC, info, &objects, 0x0011_2233, &KEY).unwrap();
        c.sel("ble_bthome_crypto", 0, &frame);
    }
    c.sel("ble_bthome_crypto", 2, b"231d39c1d7cc1ab1aee224cd096db932");

    // Vendor profiles: the example's characteristics, and the example TOML itself.
    c.sel("ble_vendor", 0, &hex("6553f067 01 2c01")); // actuation: time, 1 puff, 300 doses
    c.sel("ble_vendor", 0, &hex("55"));
    let example = std::fs::read(root.join("config/profiles/inhaler-example.toml")).unwrap();
    c.sel("ble_vendor", 1, &example);
    c.sel("ble_vendor", 2, b"5e1f0001-7c3a-4b8e-9d2f-1a2b3c4d5e6f");
    c.sel("ble_vendor", 2, b"fe50");

    // Config: the reference configs of the repository.
    for f in ["wardgate.toml", "receiver.toml", "demo.toml", "demo-ble.toml", "receiver-demo.toml"] {
        c.add("config", std::fs::read(root.join("config").join(f)).unwrap());
    }

    // Receiver: a signed batch of the fixed gateway, its payload, a foreign topic.
    let f = fixture();
    let payload = BatchPayload {
        v: 1,
        gateway: GATEWAY.into(),
        site: SITE.into(),
        ward: WARD.into(),
        batch: 7,
        observations: vec![WireObservation {
            seq: 41,
            device: "serial:bed12-spo2".into(),
            code: 150456,
            value: 97.0,
            unit: 262688,
            ucum: "%".into(),
            gateway_time: 1_760_000_000_000,
            time_quality: "synced".into(),
            device_time: Some("2026-01-02T03:04:05".into()),
            status: vec!["probe-off".into()],
            waveform: None,
        }],
        events: vec![WireEvent {
            seq: 42,
            device: "serial:bed12-spo2".into(),
            kind: "connected".into(),
            detail: "/dev/ttyUSB0".into(),
            gateway_time: 1_760_000_000_001,
        }],
        locations: Default::default(),
    }
    .to_cbor();
    let signed_batch = f.gateway.sign(payload.clone());
    c.sel("receive_batch", 0, &signed_batch);
    c.sel("receive_batch", 1, &payload);
    c.sel("receive_batch", 2, &payload);
    let topic = TOPIC.replace("gw-1", "gw-2");
    c.sel(
        "receive_batch",
        3,
        &[&[topic.len() as u8], topic.as_bytes(), &payload].concat(),
    );
    // A waveform observation (issue 11): one second of a 60 Hz pleth.
    let mut wave = BatchPayload::from_cbor(&payload).unwrap();
    wave.observations[0].code = 150452;
    wave.observations[0].unit = 262656;
    wave.observations[0].ucum = "1".into();
    wave.observations[0].waveform = Some(wardgate_adapters::observation::Waveform {
        period_us: 16_667,
        scale: 1.0,
        offset: 0.0,
        samples: (0..60).map(|i| (i * 17) % 128).collect(),
    });
    let wave = wave.to_cbor();
    c.sel("receive_batch", 1, &wave);
    c.sel("receive_batch", 2, &wave);
    // Where the device was (issue 11 item 7): a valid `locations`, then a refused one.
    let mut located = BatchPayload::from_cbor(&payload).unwrap();
    located.locations = [("serial:bed12-spo2".to_owned(), "ward-7/bed-12".to_owned())].into();
    c.sel("receive_batch", 1, &located.to_cbor());
    c.sel("receive_batch", 2, &located.to_cbor());
    located.locations = [
        ("serial:bed12-spo2".to_owned(), "ward 7//x".to_owned()),
        ("serial:nobody".to_owned(), "a".to_owned()),
    ]
    .into();
    c.sel("receive_batch", 1, &located.to_cbor());

    // Gateway ack path: a signed v2 ack from the fixed receiver, its payload, a v1 plain ack.
    let ack = |v: u32, batches: Vec<u64>| {
        Ack {
            v,
            gateway: GATEWAY.into(),
            batches,
            refused: None,
        }
        .to_cbor()
    };
    c.sel("uplink_ack", 0, &f.receiver.sign(ack(2, vec![7, 8])));
    c.sel("uplink_ack", 0, &ack(1, vec![7]));
    c.sel("uplink_ack", 1, &ack(2, vec![7, 8, 9]));
    c.sel("uplink_ack", 1, &ack(2, vec![]));
    c.sel("uplink_ack", 2, &ack(2, vec![7]));

    // COSE: messages whose x5chain chains to the CA, and the certificates.
    c.sel("cose_verify", 0, &signed_batch);
    c.sel("cose_verify", 0, &f.receiver.sign(ack(2, vec![7])));
    c.sel("cose_verify", 1, &f.gateway_der);
    c.sel("cose_verify", 1, &f.receiver_der);
    c.sel("cose_verify", 1, &f.ca_der);
    c.sel("cose_verify", 2, &payload);

    // The Content-Range forms nginx sends for a resumed image download (RFC 9110 §14.4).
    for v in ["bytes 0-499/1234", "bytes 1048576-2097151/2097152", "bytes 42-1233/*", "bytes */1234"] {
        c.add("http_content_range", v.as_bytes().to_vec());
    }
    smp(&mut c);

    // `lines`: the example maps' own lines (selector = map), good and refused.
    let esp = "{\"dev\":\"ox-001\",\"spo2\":97,\"pulse\":72,\"ts\":1718000000250000,\"seq\":17}\n\
{\"dev\":\"ox-001\",\"spo2\":-1,\"pulse\":\"71\",\"seq\":18}\r\n\
{\"dev\":\"ox-001\",\"spo2\":101,\"pulse\":72}\n{\"dev\":\"ox-002\",\"spo2\":[97]}\n{\"dev\":\"ox\"\n";
    c.sel("serial_lines", 0, esp.as_bytes());
    let nmea = |body: &str| {
        let sum = body.bytes().fold(0u8, |a, b| a ^ b);
        format!("${body}*{sum:02X}\r\n")
    };
    let nibp = [
        nmea("NIBP,2024-06-10 06:13:20,121,79,93,64,368,0041"),
        "$STAT,ok*00\r\n".into(),
        nmea("NIBP,2024-06-10 06:18:20,118,77,90,---,369,0000"),
        "$NIBP,2024-06-10 06:18:20,118,77,90,---,369,0000*00\r\n".into(),
        nmea("NIBP,\"2024-06-10 06:18:20\",\"1\"\"8\",77"),
    ]
    .concat();
    c.sel("serial_lines", 1, nibp.as_bytes());
    c.sel(
        "serial_lines",
        2,
        b"\n12/01/05 11:56:29 SN=0123456789 SPO2=098% BPM=240 PI=20.00% ALARM=0000 EXC=000820\r\n\
09/15/10 15:10:29 SPO2=097% BPM=064 PI=11.82% ALARM=20 EXC=800\r\n\
03/15/11 14:22:07 SPO2=090% BPM=--- PI=--.--% ALARM=0012 EXC=800604\r\n",
    );
    let crc = |body: &str| {
        let sum = wardgate_adapters::serial::protocols::lines::checksum::Algorithm::Crc16Xmodem
            .compute(body.as_bytes());
        format!("{body}|{sum:04X}\r")
    };
    let kv = [
        "# booted\r".to_string(),
        crc("id:ab-1;t:01.02.24 03:04:05.123+01:00;n:7;st:ALM;b:0x8000000000000001;hr:150bpm;ev:1"),
        crc("id:ab-1;st:OK;hr:--"),
        crc("st:weird;hr:9e9"),
        "id:ab-1;hr:70|0000\r".into(),
    ]
    .concat();
    c.sel("serial_lines", 3, kv.as_bytes());
    c.sel(
        "serial_lines",
        4,
        include_str!("../../../config/profiles/lines-example.toml").as_bytes(),
    );
    // Plug-in lines: the example plug-in's output, the unit tests' refusals, two waveforms.
    let plugin_lines = [
        r#"{"v":1,"type":"event","kind":"connected","detail":"replaying oximeter_demo.csv"}"#,
        r#"{"v":1,"type":"observation","code":"MDC_PULS_OXIM_SAT_O2","value":97.0,"unit":"%","record":1}"#,
        r#"{"v":1,"type":"observation","device":"pump-2","code":150456,"value":96.5,"unit":262688,"device_time":"2024-06-10T06:13:20","status":["alarm"],"record":17}"#,
        r#"{"v":2,"type":"observation","new_thing":1}"#,
        r#"{"v":1,"type":"observation","code":1,"valeu":2,"unit":"%"}"#,
        r#"{"v":1,"type":"event","kind":"error","device":"pump-9","detail":"NAK
again"}"#,
        r#"[1,"observation"]"#,
        r#"{"v":1,"type":"waveform","code":"MDC_ECG_ELEC_POTL_II","unit":"mV","period_us":2778,"scale":0.005,"offset":-5.12,"samples":[975,981,987,989,990],"record":1}"#,
        r#"{"v":1,"type":"waveform","device":"pump-1","code":150452,"unit":262656,"period_us":16667,"samples":[64,66,70,-2147483648,2147483647],"status":["alarm"]}"#,
    ];
    for l in plugin_lines {
        c.sel("exec_plugin_line", 0, l.as_bytes());
    }
    let stream = plugin_lines.join("\n") + "\n" + &"x".repeat(300) + "\n";
    c.sel("exec_plugin_line", 2, &[[255u8].as_slice(), stream.as_bytes()].concat());
    c.write();
}

/// Ends the process once the corpus is written (before libFuzzer starts).
fn exit_now() {
    std::process::exit(0)
}

/// SMP seeds: the PROTOCOLS §A.7 frames, the same framed for the serial console (with console
/// text around it) and cut for BLE (first byte: the piece size / MTU selector).
fn smp(c: &mut Corpus) {
    use wardgate_adapters::smp::console::{encode, MAX_LINE};
    let mut a10 = hex("0200004c00010001a4636c656e1832636f66660064646174615832");
    a10.extend([0u8; 50]);
    a10.extend(hex("65696d61676501"));
    let frames = [
        hex("0a00001000008b00a161646c48656c6c6f20776f726c6421"),
        hex("0900005900010000a166696d6167657382a464736c6f740066616374697665f46776657273696f6e65302e312e30697065726d616e656e74f4a464736c6f740066616374697665f46776657273696f6e65302e312e30697065726d616e656e74f4"),
        a10,
        hex("0b00000600011501a1636f666600"),
        hex("0300000500010901a162726306"),
        hex("0a00000700010f05a164736c6f7400"),
        hex("0b00000700010701a1636f66661840"),
    ];
    for f in &frames {
        c.add("smp_frame", f.clone());
        let mut lines = b"[00:00:01.000] <inf> boot\r\n".to_vec();
        lines.extend(encode(f, MAX_LINE));
        c.sel("smp_console", 7, &lines);
        c.sel("smp_ble", 20, f);
    }
    c.sel("smp_console", 0, &hex("0609414139495a5778736279776764323979624751686574343d0a"));
}
