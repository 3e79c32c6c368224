//! The data model shared by adapters, the store and the uplink (DESIGN §3).
//!
//! An [`Observation`] is one reading: an IEEE 11073-10101 (MDC) code, a value in the unit named by
//! [`Unit`], the device that produced it and when. Device events ([`DeviceEvent`]) travel the same
//! path. Both are produced by pure decoders and adapters, buffered by the gateway's store and
//! forwarded upstream in signed batches.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable device identifier, e.g. `serial:bed12-spo2:0000092845` or `ble:C8:2B:96:A1:00:01`.
///
/// For serial devices it is `serial:<configured device name>` — the name an installer gives the
/// bedside monitor in the config, never the kernel's ttyUSB number (which can change at reboot).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub String);

impl DeviceId {
    /// `serial:<name>` for a serial device configured under `name`.
    pub fn serial(name: &str) -> Self {
        DeviceId(format!("serial:{name}"))
    }
    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One decoded reading, before the adapter stamps it with device id and gateway time: what
/// every pure decoder (serial protocols, BLE profiles, advertisements, vendor profiles) emits.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// IEEE 11073-10101 code (see [`crate::observation::mdc`]).
    pub code: u32,
    /// Value in `unit`.
    pub value: f64,
    /// Unit of `value`.
    pub unit: Unit,
    /// The device's own time stamp (`YYYY-MM-DDThh:mm:ss`, device local time) if it sent one.
    pub device_time: Option<String>,
    /// Status flags (e.g. `alarm`, `low-perfusion`), empty when normal.
    pub status: Vec<String>,
}

/// A unit of measure: the IEEE 11073-10101 unit code (partition 4, DIM) and its UCUM spelling.
///
/// Source: PROTOCOLS.md §E.2 (antidote `nomenclature.h`, HL7 PHD IG).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Unit {
    /// 32-bit MDC unit code, e.g. 262688 (MDC_DIM_PERCENT).
    pub mdc: u32,
    /// UCUM code, e.g. `%`, `/min`, `mm[Hg]`, `Cel`.
    pub ucum: &'static str,
}

impl Unit {
    /// MDC_DIM_PERCENT, `%`.
    pub const PERCENT: Unit = Unit {
        mdc: 262_688,
        ucum: "%",
    };
    /// MDC_DIM_BEAT_PER_MIN, `/min` (beats).
    pub const BEAT_PER_MIN: Unit = Unit {
        mdc: 264_864,
        ucum: "/min",
    };
    /// MDC_DIM_RESP_PER_MIN, `/min` (breaths).
    pub const RESP_PER_MIN: Unit = Unit {
        mdc: 264_928,
        ucum: "/min",
    };
    /// MDC_DIM_MMHG, `mm[Hg]`.
    pub const MMHG: Unit = Unit {
        mdc: 266_016,
        ucum: "mm[Hg]",
    };
    /// MDC_DIM_DEGC, `Cel`.
    pub const DEGC: Unit = Unit {
        mdc: 268_192,
        ucum: "Cel",
    };
    /// MDC_DIM_DIMLESS (term 512), `1`: a dimensionless number such as a pleth sample.
    pub const DIMLESS: Unit = Unit {
        mdc: 262_656,
        ucum: "1",
    };

    /// MDC_DIM_KILO_PASCAL (term 3843), `kPa`: blood pressure from a BLE cuff set to kPa.
    pub const KILO_PASCAL: Unit = Unit {
        mdc: 265_987,
        ucum: "kPa",
    };
    /// MDC_DIM_FAHR (term 4416), `[degF]`: a thermometer reporting in °F.
    pub const FAHR: Unit = Unit {
        mdc: 266_560,
        ucum: "[degF]",
    };
    /// MDC_DIM_KILO_G (term 1731), `kg`.
    pub const KILO_G: Unit = Unit {
        mdc: 263_875,
        ucum: "kg",
    };
    /// MDC_DIM_LB (term 1760), `[lb_av]` (avoirdupois pound).
    pub const LB: Unit = Unit {
        mdc: 263_904,
        ucum: "[lb_av]",
    };
    /// MDC_DIM_MILLI_G_PER_DL (term 2130), `mg/dL`: glucose concentration (mass).
    pub const MILLI_G_PER_DL: Unit = Unit {
        mdc: 264_274,
        ucum: "mg/dL",
    };
    /// MDC_DIM_MILLI_MOLE_PER_L (term 4722), `mmol/L`: glucose concentration (amount).
    pub const MILLI_MOLE_PER_L: Unit = Unit {
        mdc: 266_866,
        ucum: "mmol/L",
    };
    /// MDC_DIM_CENTI_M (term 1297), `cm`: body height.
    pub const CENTI_M: Unit = Unit {
        mdc: 263_441,
        ucum: "cm",
    };
    /// MDC_DIM_INCH (term 1376), `[in_i]` (international inch): body height.
    pub const INCH: Unit = Unit {
        mdc: 263_520,
        ucum: "[in_i]",
    };
    /// MDC_DIM_KG_PER_M_SQ (term 1952), `kg/m2`: body mass index.
    pub const KG_PER_M_SQ: Unit = Unit {
        mdc: 264_096,
        ucum: "kg/m2",
    };
    /// MDC_DIM_MILLI_SEC (term 2194), `ms`: RR intervals.
    ///
    /// Not in PROTOCOLS.md §E.2. Term 2194 (262144 + 2194 = 264338) as given by a C# MDC
    /// enumeration and a Java MDC constant class, and an HL7 v2 OBX unit `264338^MDC_DIM_MILLI_SEC`
    /// (public repositories, found by search; one Go table says 2177 and was outvoted).
    pub const MILLI_SEC: Unit = Unit {
        mdc: 264_338,
        ucum: "ms",
    };

    /// MDC_DIM_HECTO_PASCAL (term 3842), `hPa`: barometric pressure from a BLE sensor tag.
    /// Term from the antidote-derived MDC unit tables in public repositories (a Java `DIM`
    /// constant class listing `MDC_DIM_HECTO_PASCAL = 3842` next to `MDC_DIM_KILO_PASCAL =
    /// 3843`, which PROTOCOLS.md §E.2 confirms).
    pub const HECTO_PASCAL: Unit = Unit {
        mdc: 265_986,
        ucum: "hPa",
    };
    /// MDC_DIM_VOLT (term 4256), `V`: a tag's battery voltage. Same source as
    /// [`Unit::HECTO_PASCAL`].
    pub const VOLT: Unit = Unit {
        mdc: 266_400,
        ucum: "V",
    };
    /// MDC_DIM_MILLI_VOLT (term 4274), `mV`: ECG potentials (a waveform's physical unit).
    pub const MILLI_VOLT: Unit = Unit {
        mdc: 266_418,
        ucum: "mV",
    };
    /// wardgate-private unit (MDC_PART_PVT, term 1001; unit terms start at 1001 so they never
    /// look like a private measurement code), `lx`: illuminance. No MDC unit code for lux was
    /// found in the sources this project uses; consumers read the UCUM string.
    pub const PVT_LUX: Unit = Unit {
        mdc: (1024 << 16) + 1001,
        ucum: "lx",
    };

    /// Every unit this crate emits; used to map a stored unit code back to its UCUM string.
    pub const ALL: [Unit; 20] = [
        Unit::PERCENT,
        Unit::BEAT_PER_MIN,
        Unit::RESP_PER_MIN,
        Unit::MMHG,
        Unit::DEGC,
        Unit::DIMLESS,
        Unit::KILO_PASCAL,
        Unit::FAHR,
        Unit::KILO_G,
        Unit::LB,
        Unit::MILLI_G_PER_DL,
        Unit::MILLI_MOLE_PER_L,
        Unit::CENTI_M,
        Unit::INCH,
        Unit::KG_PER_M_SQ,
        Unit::MILLI_SEC,
        Unit::HECTO_PASCAL,
        Unit::VOLT,
        Unit::MILLI_VOLT,
        Unit::PVT_LUX,
    ];

    /// The unit with MDC code `mdc`, if this crate knows it.
    pub fn from_mdc(mdc: u32) -> Option<Unit> {
        Unit::ALL.iter().copied().find(|u| u.mdc == mdc)
    }
}

/// IEEE 11073-10101 measurement codes (partition 2, SCADA) that wardgate emits.
///
/// Source: PROTOCOLS.md §E.2 (HL7 PHD IG examples, antidote specialisations).
pub mod mdc {
    /// MDC_PULS_OXIM_SAT_O2, SpO2 in %.
    pub const SPO2: u32 = 150_456;
    /// MDC_PULS_OXIM_PULS_RATE, pulse rate from an oximeter, /min.
    pub const PULSE_RATE_OXIM: u32 = 149_530;
    /// MDC_PULS_OXIM_PLETH, plethysmogram sample (dimensionless, device scale).
    pub const PLETH: u32 = 150_452;
    /// MDC_PULS_OXIM_PERF_REL, perfusion index in %.
    pub const PERFUSION_INDEX: u32 = 150_488;
    /// MDC_ECG_HEART_RATE, heart rate from ECG, /min.
    pub const HEART_RATE_ECG: u32 = 147_842;
    /// MDC_ECG_ELEC_POTL_II (term 258), ECG lead II potential, mV: a waveform's code (MIT-BIH
    /// lead MLII is a modified lead II).
    pub const ECG_ELEC_POTL_II: u32 = 131_330;
    /// MDC_PRESS_BLD_NONINV_SYS, NIBP systolic, mmHg.
    pub const NIBP_SYS: u32 = 150_021;
    /// MDC_PRESS_BLD_NONINV_DIA, NIBP diastolic, mmHg.
    pub const NIBP_DIA: u32 = 150_022;
    /// MDC_PRESS_BLD_NONINV_MEAN, NIBP mean, mmHg.
    pub const NIBP_MEAN: u32 = 150_023;
    /// MDC_PULS_RATE_NON_INV, pulse rate from the NIBP cuff, /min.
    pub const PULSE_RATE_NIBP: u32 = 149_546;
    /// MDC_RESP_RATE, respiration rate, breaths/min.
    pub const RESP_RATE: u32 = 151_562;
    /// MDC_TEMP_BODY, body temperature, °C.
    pub const TEMP_BODY: u32 = 150_364;
    /// MDC_PRESS_BLD (invasive blood pressure, generic label) systolic, mmHg.
    pub const IBP_SYS: u32 = 150_017;
    /// MDC_PRESS_BLD_DIA, invasive diastolic, mmHg.
    pub const IBP_DIA: u32 = 150_018;
    /// MDC_PRESS_BLD_MEAN, invasive mean, mmHg.
    pub const IBP_MEAN: u32 = 150_019;

    // --- BLE health profiles (PROTOCOLS.md §E.2 unless stated otherwise) ---

    /// MDC_MASS_BODY_ACTUAL (term 57664), body weight, kg or lb.
    pub const BODY_WEIGHT: u32 = 188_736;
    /// MDC_LEN_BODY_ACTUAL (term 57668), body height, cm or in.
    pub const BODY_HEIGHT: u32 = 188_740;
    /// MDC_RATIO_MASS_BODY_LEN_SQ (term 57680), body mass index, kg/m².
    pub const BMI: u32 = 188_752;
    /// MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD (term 29112), glucose, capillary whole blood.
    pub const GLU_CAPILLARY_WHOLEBLOOD: u32 = 160_184;
    /// MDC_CONC_GLU_UNDETERMINED_PLASMA (term 29296), glucose, undetermined plasma.
    pub const GLU_UNDETERMINED_PLASMA: u32 = 160_368;
    /// MDC_ATTR_VAL_BATT_CHARGE (partition 1, term 2460), battery charge, %.
    pub const BATTERY_CHARGE: u32 = 67_996;

    // Not in PROTOCOLS.md §E.2: terms from signove/antidote-derived MDC tables in public
    // repositories (Java `Nomenclature` classes and C headers listing the glucometer terms
    // 28948–29140, a C# MDC enumeration for 29292/29296, 57436 and 16168), checked by the
    // partition arithmetic 2·65536 + term. 160364/160368 agree with the HL7 PHD example for
    // undetermined plasma.

    /// MDC_CONC_GLU_GEN (term 28948), glucose, sample type not stated.
    pub const GLU_GEN: u32 = 160_020;
    /// MDC_CONC_GLU_CAPILLARY_PLASMA (term 29116).
    pub const GLU_CAPILLARY_PLASMA: u32 = 160_188;
    /// MDC_CONC_GLU_VENOUS_WHOLEBLOOD (term 29120).
    pub const GLU_VENOUS_WHOLEBLOOD: u32 = 160_192;
    /// MDC_CONC_GLU_VENOUS_PLASMA (term 29124).
    pub const GLU_VENOUS_PLASMA: u32 = 160_196;
    /// MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD (term 29128).
    pub const GLU_ARTERIAL_WHOLEBLOOD: u32 = 160_200;
    /// MDC_CONC_GLU_ARTERIAL_PLASMA (term 29132).
    pub const GLU_ARTERIAL_PLASMA: u32 = 160_204;
    /// MDC_CONC_GLU_CONTROL (term 29136): a control-solution test, not a patient value.
    pub const GLU_CONTROL: u32 = 160_208;
    /// MDC_CONC_GLU_ISF (term 29140), glucose in interstitial fluid.
    pub const GLU_ISF: u32 = 160_212;
    /// MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD (term 29292).
    pub const GLU_UNDETERMINED_WHOLEBLOOD: u32 = 160_364;
    /// MDC_ECG_TIME_PD_RR_GL (term 16168), RR interval, ms. The MII (German Medical
    /// Informatics Initiative) cardiology FHIR examples use 147240 with UCUM `ms`.
    pub const RR_INTERVAL: u32 = 147_240;
    /// MDC_PRESS_CUFF (term 19228), current cuff pressure during inflation/deflation, mmHg or
    /// kPa (BLE Intermediate Cuff Pressure). Source: an OpenICE/MD PnP DDS constant table
    /// (`MDC_PRESS_CUFF = 19228`, `_SYS` 19229, `_MEAN` 19231), consistent with HL7 v2 OBX
    /// lines `150301^MDC_PRESS_CUFF_SYS`.
    pub const CUFF_PRESSURE: u32 = 150_300;
    /// MDC_TEMP_ROOM (term 57436), ambient temperature, °C: used for a beacon's own temperature
    /// sensor (Eddystone TLM, BTHome). Two public sources agree on 188508.
    pub const TEMP_ROOM: u32 = 188_508;

    // --- Private partition: codes with no standard MDC term ---
    //
    // IEEE 11073-10101 reserves partition 1024, MDC_PART_PVT ("Private"), for codes outside
    // the standard nomenclature. Source: antidote-derived MDC tables in public repositories (a
    // Java constant class `MDC_PART_PVT = 1024 /* Private */` next to MDC_PART_RET_CODE 255 and
    // MDC_PART_EXT_NOM 256, and a C `nomenclature.h` with the same line). A code in this
    // partition means "wardgate-defined": a consumer must not read it as a standard term, and
    // upstream systems map it through wardgate's documentation, not through the MDC tables.
    //
    // Inhalers: no standard MDC term for "inhaler actuation" or "doses remaining" was found in
    // the sources this project uses (PROTOCOLS.md §E.2, the antidote-derived tables; IEEE
    // 11073-10472 "medication monitor" defines its own terms, which could not be checked here).
    // Until one is verified, wardgate uses the private codes below.

    /// MDC_PART_PVT, the private partition (1024).
    pub const PART_PVT: u32 = 1024;
    /// First code of the private partition, 1024 × 65536.
    pub const PVT_BASE: u32 = PART_PVT << 16;
    /// wardgate-private (term 1): an inhaler actuation **event**; value = puffs in the event
    /// (normally 1), unit `1`. Not a standard MDC code.
    pub const PVT_INHALER_ACTUATION: u32 = PVT_BASE + 1;
    /// wardgate-private (term 2): doses remaining in an inhaler canister (the dose counter),
    /// unit `1`. Not a standard MDC code.
    pub const PVT_DOSES_REMAINING: u32 = PVT_BASE + 2;

    // Environment quantities of BLE sensor tags and beacons (BTHome v2, Eddystone TLM): no
    // term for ambient humidity, barometric pressure, illuminance, battery voltage or dew point
    // was found in IEEE 11073-10101 as this project's sources give it (PROTOCOLS.md §E.2, the
    // antidote-derived tables); MDC_TEMP_ROOM is used for the tags' temperature. wardgate
    // defines private codes for the rest (docs/wire-format.md, "Codes used").

    /// wardgate-private (term 3): relative humidity around a tag (medicine fridge, ward), `%`.
    pub const PVT_HUMIDITY_REL: u32 = PVT_BASE + 3;
    /// wardgate-private (term 4): barometric (ambient) pressure, `hPa`.
    pub const PVT_PRESSURE_AMBIENT: u32 = PVT_BASE + 4;
    /// wardgate-private (term 5): illuminance, `lx` ([`super::Unit::PVT_LUX`]).
    pub const PVT_ILLUMINANCE: u32 = PVT_BASE + 5;
    /// wardgate-private (term 6): a tag's or beacon's battery voltage, `V`.
    pub const PVT_BATTERY_VOLTAGE: u32 = PVT_BASE + 6;
    /// wardgate-private (term 7): dew point of the air around a tag, `Cel`.
    pub const PVT_DEW_POINT: u32 = PVT_BASE + 7;

    /// Whether `code` lies in the private partition (wardgate- or vendor-defined).
    pub fn is_private(code: u32) -> bool {
        code >> 16 == PART_PVT
    }

    /// Reference ids (and wardgate's names for its private codes) of the codes above, for
    /// configuration files that name a code instead of giving its number.
    pub const NAMES: &[(&str, u32)] = &[
        ("MDC_PULS_OXIM_SAT_O2", SPO2),
        ("MDC_PULS_OXIM_PULS_RATE", PULSE_RATE_OXIM),
        ("MDC_PULS_OXIM_PLETH", PLETH),
        ("MDC_PULS_OXIM_PERF_REL", PERFUSION_INDEX),
        ("MDC_ECG_HEART_RATE", HEART_RATE_ECG),
        ("MDC_ECG_ELEC_POTL_II", ECG_ELEC_POTL_II),
        ("MDC_PRESS_BLD_NONINV_SYS", NIBP_SYS),
        ("MDC_PRESS_BLD_NONINV_DIA", NIBP_DIA),
        ("MDC_PRESS_BLD_NONINV_MEAN", NIBP_MEAN),
        ("MDC_PULS_RATE_NON_INV", PULSE_RATE_NIBP),
        ("MDC_RESP_RATE", RESP_RATE),
        ("MDC_TEMP_BODY", TEMP_BODY),
        ("MDC_PRESS_BLD_SYS", IBP_SYS),
        ("MDC_PRESS_BLD_DIA", IBP_DIA),
        ("MDC_PRESS_BLD_MEAN", IBP_MEAN),
        ("MDC_MASS_BODY_ACTUAL", BODY_WEIGHT),
        ("MDC_LEN_BODY_ACTUAL", BODY_HEIGHT),
        ("MDC_RATIO_MASS_BODY_LEN_SQ", BMI),
        (
            "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD",
            GLU_CAPILLARY_WHOLEBLOOD,
        ),
        ("MDC_CONC_GLU_UNDETERMINED_PLASMA", GLU_UNDETERMINED_PLASMA),
        ("MDC_ATTR_VAL_BATT_CHARGE", BATTERY_CHARGE),
        ("MDC_CONC_GLU_GEN", GLU_GEN),
        ("MDC_CONC_GLU_CAPILLARY_PLASMA", GLU_CAPILLARY_PLASMA),
        ("MDC_CONC_GLU_VENOUS_WHOLEBLOOD", GLU_VENOUS_WHOLEBLOOD),
        ("MDC_CONC_GLU_VENOUS_PLASMA", GLU_VENOUS_PLASMA),
        ("MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD", GLU_ARTERIAL_WHOLEBLOOD),
        ("MDC_CONC_GLU_ARTERIAL_PLASMA", GLU_ARTERIAL_PLASMA),
        ("MDC_CONC_GLU_CONTROL", GLU_CONTROL),
        ("MDC_CONC_GLU_ISF", GLU_ISF),
        (
            "MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD",
            GLU_UNDETERMINED_WHOLEBLOOD,
        ),
        ("MDC_ECG_TIME_PD_RR_GL", RR_INTERVAL),
        ("MDC_PRESS_CUFF", CUFF_PRESSURE),
        ("MDC_TEMP_ROOM", TEMP_ROOM),
        ("WARDGATE_PVT_INHALER_ACTUATION", PVT_INHALER_ACTUATION),
        ("WARDGATE_PVT_DOSES_REMAINING", PVT_DOSES_REMAINING),
        ("WARDGATE_PVT_HUMIDITY_REL", PVT_HUMIDITY_REL),
        ("WARDGATE_PVT_PRESSURE_AMBIENT", PVT_PRESSURE_AMBIENT),
        ("WARDGATE_PVT_ILLUMINANCE", PVT_ILLUMINANCE),
        ("WARDGATE_PVT_BATTERY_VOLTAGE", PVT_BATTERY_VOLTAGE),
        ("WARDGATE_PVT_DEW_POINT", PVT_DEW_POINT),
    ];

    /// The code named `name` in [`NAMES`] (exact, case-sensitive).
    pub fn by_name(name: &str) -> Option<u32> {
        NAMES.iter().find(|(n, _)| *n == name).map(|&(_, c)| c)
    }
}

/// How trustworthy an observation's time is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeQuality {
    /// `gateway_time` from a clock known to be synchronised (NTP).
    Synced,
    /// `gateway_time` from a clock not known to be synchronised (no RTC, no NTP yet).
    Unsynced,
    /// The device reported its own time stamp (`device_time`).
    Device,
}

impl TimeQuality {
    /// The wire spelling: `synced`, `unsynced` or `device`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeQuality::Synced => "synced",
            TimeQuality::Unsynced => "unsynced",
            TimeQuality::Device => "device",
        }
    }
    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "synced" => Some(TimeQuality::Synced),
            "unsynced" => Some(TimeQuality::Unsynced),
            "device" => Some(TimeQuality::Device),
            _ => None,
        }
    }
}

/// One reading from one device (DESIGN §3).
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The device that measured it.
    pub device: DeviceId,
    /// IEEE 11073-10101 measurement code (see [`mdc`]).
    pub code: u32,
    /// The value, in `unit`. Never a placeholder: an absent or invalid reading is no observation.
    pub value: f64,
    /// Unit of `value`.
    pub unit: Unit,
    /// The device's own time stamp as it reported it (`YYYY-MM-DDThh:mm:ss`, device local time,
    /// no offset), when it gives one.
    pub device_time: Option<String>,
    /// Gateway wall-clock time in milliseconds since the Unix epoch (UTC) when the reading arrived.
    pub gateway_time: i64,
    /// How far `gateway_time`/`device_time` can be trusted.
    pub time_quality: TimeQuality,
    /// Measurement-status flags from the device (e.g. `alarm`, `low-perfusion`); empty when the
    /// device reported nothing unusual.
    pub status: Vec<String>,
    /// For a waveform observation: the sample array of one period ([`Waveform`]); `value` is
    /// then the physical value of the first sample and `gateway_time` the time of that sample.
    /// `None` for a numeric.
    pub waveform: Option<Waveform>,
}

/// Most samples one waveform observation carries (a store row, a wire object). 4,096 holds one
/// second at up to 4 kHz: the CMS50's 60 Hz pleth and MIT-BIH's 360 Hz ECG with room to spare.
pub const MAX_WAVEFORM_SAMPLES: usize = 4096;

/// The sample array of one waveform observation: the real-time sample array (RT-SA) of IEEE
/// 11073-10201 (DIM, object class `MDC_MOC_VMO_METRIC_SA_RT`) as IEEE 11073-20601 carries it
/// (§7.4.4, RT-SA object), reduced to what a consumer needs to rebuild the signal:
///
/// - `period_us`: `Sample-Period` (`MDC_ATTR_TIME_PD_SAMP`), the time between two samples, in
///   microseconds (20601 counts it in 1/8 ms; µs keeps 360 Hz exact to 1 µs: 2,778 µs);
/// - `scale`, `offset`: the linear map of `Scale-and-Range-Specification`
///   (`MDC_ATTR_SCALE_SPECN_I16`): the points (lower-scaled-value → lower-absolute-value) and
///   (upper-scaled-value → upper-absolute-value) define `physical = offset + scale × sample`, in
///   the observation's `unit`;
/// - `samples`: `Simple-Sa-Observed-Value` (`MDC_ATTR_SIMP_SA_OBS_VAL`), the raw samples in time
///   order, as signed integers (`Sa-Specification` sample sizes up to 32 bits), sample `i` taken
///   at `gateway_time + i × period_us / 1000` ms.
///
/// At most [`MAX_WAVEFORM_SAMPLES`] samples; never empty; `period_us` > 0; `scale` and `offset`
/// finite ([`Waveform::problem`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Waveform {
    /// Time between two samples, µs (> 0).
    pub period_us: u32,
    /// Physical units per raw sample step.
    pub scale: f64,
    /// Physical value of a raw sample 0.
    pub offset: f64,
    /// Raw samples, oldest first.
    pub samples: Vec<i32>,
}

impl Waveform {
    /// Why this array may not be stored or sent (`None` when it may): empty, more than
    /// [`MAX_WAVEFORM_SAMPLES`] samples, a zero period, a scale or offset that is not finite.
    pub fn problem(&self) -> Option<String> {
        if self.samples.is_empty() {
            Some("waveform without samples".into())
        } else if self.samples.len() > MAX_WAVEFORM_SAMPLES {
            Some(format!(
                "waveform of {} samples (at most {MAX_WAVEFORM_SAMPLES})",
                self.samples.len()
            ))
        } else if self.period_us == 0 {
            Some("waveform with sample period 0".into())
        } else if !self.scale.is_finite() || !self.offset.is_finite() {
            Some("waveform scale or offset not a finite number".into())
        } else {
            None
        }
    }

    /// The physical value of raw sample `raw`: `offset + scale × raw`.
    pub fn physical(&self, raw: i32) -> f64 {
        self.offset + self.scale * f64::from(raw)
    }

    /// Samples per second (1e6 / `period_us`).
    pub fn frequency_hz(&self) -> f64 {
        1e6 / f64::from(self.period_us.max(1))
    }

    /// The time of the first sample, ms since the Unix epoch, for an array whose last sample
    /// arrived at `arrival_ms`: (n − 1) periods earlier, rounded down to the ms.
    pub fn first_sample_ms(&self, arrival_ms: i64) -> i64 {
        let span_us = (self.samples.len() as i64 - 1).max(0) * i64::from(self.period_us);
        arrival_ms - span_us.div_euclid(1000) - i64::from(span_us.rem_euclid(1000) != 0)
    }
}

impl Observation {
    /// Stamps a decoded reading: `gateway_time` = [`now_ms`], `time_quality` = `device` when the
    /// device sent its own time stamp, else `synced`/`unsynced` from `clock_synced`.
    pub fn from_reading(device: DeviceId, r: Reading, clock_synced: bool) -> Observation {
        let time_quality = if r.device_time.is_some() {
            TimeQuality::Device
        } else if clock_synced {
            TimeQuality::Synced
        } else {
            TimeQuality::Unsynced
        };
        Observation {
            device,
            code: r.code,
            value: r.value,
            unit: r.unit,
            device_time: r.device_time,
            gateway_time: now_ms(),
            time_quality,
            status: r.status,
            waveform: None,
        }
    }
}

/// What a device event is about (DESIGN §3): travels the same path as observations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The device's transport came up (port opened and configured, BLE link established).
    Connected,
    /// The device's transport went away (unplug, EOF, EIO, link loss).
    Disconnected,
    /// Battery level report.
    Battery,
    /// Signal strength report.
    Rssi,
    /// An unknown or unauthorised device was seen and refused.
    Rejected,
    /// A device-side error: bad frame, checksum, identity mismatch, port problem.
    Error,
    /// The store dropped rows to stay within its retention limits (gateway-side event).
    Dropped,
}

impl EventKind {
    /// The wire spelling, e.g. `disconnected`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Connected => "connected",
            EventKind::Disconnected => "disconnected",
            EventKind::Battery => "battery",
            EventKind::Rssi => "rssi",
            EventKind::Rejected => "rejected",
            EventKind::Error => "error",
            EventKind::Dropped => "dropped",
        }
    }
}

/// A device event (DESIGN §3): connection changes, errors, rejections.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceEvent {
    /// The device concerned (for `rejected`, the identity it presented).
    pub device: DeviceId,
    /// What happened.
    pub kind: EventKind,
    /// Human-readable detail for an installer, e.g. `bad checksum at byte offset 4711`. Never
    /// carries clinical values.
    pub detail: String,
    /// Gateway wall-clock time, milliseconds since the Unix epoch (UTC).
    pub gateway_time: i64,
    /// For an `rssi` event of a BLE asset tag: the typed presence summary that `detail` renders.
    /// In-process only (the wire and the store carry `detail`); `None` for every other event.
    pub presence: Option<PresenceReport>,
    /// For a `connected` event: the firmware revision the device reports on this connection
    /// (BLE: Device Information, Firmware Revision String 0x2A26), for device status, the
    /// heartbeat and `wardgate status`. In-process only, like `presence`; `None` when the device
    /// does not say.
    pub firmware: Option<String>,
}

impl DeviceEvent {
    /// An event of `kind` for `device`, stamped now ([`now_ms`]).
    pub fn new(device: DeviceId, kind: EventKind, detail: impl Into<String>) -> Self {
        DeviceEvent {
            device,
            kind,
            detail: detail.into(),
            gateway_time: now_ms(),
            presence: None,
            firmware: None,
        }
    }

    /// The same event carrying the firmware revision the device reported (`None` or an empty
    /// text: not reported). At most 64 characters are kept.
    pub fn with_firmware(mut self, firmware: Option<&str>) -> Self {
        self.firmware = firmware
            .map(|f| f.trim().chars().take(64).collect::<String>())
            .filter(|f| !f.is_empty());
        self
    }

    /// The `rssi` event of a tag's presence summary, stamped now: `detail` is the report's wire
    /// text ([`PresenceReport`]'s `Display`), rendered here and nowhere else.
    pub fn presence(device: DeviceId, report: PresenceReport) -> Self {
        DeviceEvent {
            device,
            kind: EventKind::Rssi,
            detail: report.to_string(),
            gateway_time: now_ms(),
            presence: Some(report),
            firmware: None,
        }
    }
}

/// A BLE asset tag's presence over one window (PROTOCOLS.md §D.4): what a `rssi` event says.
#[derive(Clone, Debug, PartialEq)]
pub struct PresenceReport {
    /// The `[[ble.tag]]` rule the tag matched.
    pub rule: String,
    /// The rule's window, seconds.
    pub window_s: u64,
    /// Advertisements heard in the window.
    pub count: u64,
    /// Weakest RSSI, dBm.
    pub rssi_min: i16,
    /// Median RSSI, dBm (mean of the two middle samples for an even count).
    pub rssi_median: f64,
    /// Strongest RSSI, dBm.
    pub rssi_max: i16,
}

impl fmt::Display for PresenceReport {
    /// The wire-format detail (docs/wire-format.md): `rule=… window_s=… count=… rssi_min=…
    /// rssi_median=F rssi_max=…`, the median with one decimal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule={} window_s={} count={} rssi_min={} rssi_median={:.1} rssi_max={}",
            self.rule, self.window_s, self.count, self.rssi_min, self.rssi_median, self.rssi_max
        )
    }
}

/// Milliseconds of **monotonic** time since this process first asked, starting at 1 (so 0 can
/// mean "never"). For progress stamps and timeouts that a wall-clock step must not move
/// (DESIGN §11: timers use monotonic time).
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

/// Milliseconds since the Unix epoch from the system clock (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
