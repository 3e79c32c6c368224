//! The firmware relay's engine (issue 10, DESIGN §7): signed jobs in, devices updated over SMP
//! on the connections their adapters own, progress out.
//!
//! ```text
//! uplink (…/firmware/job) ──► Relay::run ── verify + accept (job.rs, store) ──► executions
//!                                  │ every second, per execution: policy.rs decides
//!                                  ▼ Go
//!        runner: download.rs (cache) → image.rs checks → OpenSmp on the adapter →
//!                from_versions → smp::update::apply (upload at the device's offset, test,
//!                reset, reconnect, confirm) → done | failed (step, reason) → back-off, retry
//!                                  │
//!                                  ▼ progress.rs → RetainedSet → uplink (signed, sealed, retained)
//! ```
//!
//! Invariants: nothing reaches a device unverified (the job verified and accepted, the image's
//! size, SHA-256, MCUboot hash, version and key hash equal to the job's, before `OpenSmp`); the
//! device's offset is the only truth about an upload (the SMP client follows it, a resumed
//! attempt starts where the device says); every execution is persisted (`firmware_executions`),
//! so a restart or `kill -9` resumes it (the device's offset decides how much is sent again), and
//! so is a failed attempt's back-off deadline (`retry_after_ms`: a restart in the back-off
//! neither retries at once nor forgets the attempts); the image is never held whole in memory
//! (the cached file is verified and uploaded through one open descriptor, read in chunks); one
//! runner per device at a time, at most `max_parallel` at once; a cancel stops a runner (its
//! SMP session closes, the adapter returns to the device's data protocol). The running version
//! each device reports over SMP (at every attempt, and after the update) is recorded in the
//! store (`device_firmware`) for device status, the heartbeat and `wardgate status`.

use super::download;
use super::image::ImageInfo;
use super::job::{self, Job, Message, Mode};
use super::policy::{decide, Decision, Rules, Situation, Zone};
use super::progress::Progress;
use super::target::Fleet;
use crate::config::schema::TimeOfDay;
use crate::signing::Verifier;
use crate::store::firmware::{DeviceFirmwareRow, ExecutionRow, FINAL_STATES};
use crate::store::Store;
use crate::uplink::RetainedSet;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use wardgate_adapters::observation::now_ms;
use wardgate_adapters::smp::channel::ChannelTransport;
use wardgate_adapters::smp::client::{ClientSettings, SmpClient, TransportError};
use wardgate_adapters::smp::image::SlotState;
use wardgate_adapters::smp::source::FileImage;
use wardgate_adapters::smp::update::{self, UpdateMode, UpdateStep};

/// What the relay needs to know of a device now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceView {
    /// Its adapter has a connection to it.
    pub connected: bool,
    /// Last observation, Unix seconds.
    pub last_observation_s: Option<u64>,
    /// Last battery level, percent.
    pub battery: Option<u8>,
}

/// The devices as the daemon's adapters see them.
pub trait DeviceLinks: Send + Sync + 'static {
    /// What is known of `device` now.
    fn view(&self, device: &str) -> DeviceView;
    /// An SMP session on the device's current connection (the adapter pauses its data
    /// protocol meanwhile); `None` when the device has no adapter that can carry SMP.
    fn open_smp(&self, device: &str) -> Option<ChannelTransport>;
}

/// The gateway's `[firmware]` defaults that a job's policy may override.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Maintenance window.
    pub window: Option<(TimeOfDay, TimeOfDay)>,
    /// Its time zone.
    pub zone: Zone,
    /// Minutes after an observation a device counts as in clinical use.
    pub in_use_minutes: u64,
    /// Least battery, percent.
    pub min_battery: u8,
    /// Most transfers at once.
    pub max_parallel: usize,
    /// Back-off before the first retry after a transient failure, seconds.
    pub retry_initial_s: u64,
}

/// Everything the relay runs with.
pub struct Relay {
    /// The store (jobs, executions, the anti-rollback seq).
    pub store: Arc<Store>,
    /// The firmware trust anchor.
    pub trust: Arc<Verifier>,
    /// The configured devices and classes.
    pub fleet: Fleet,
    /// Image download (mutual TLS, cache).
    pub download: download::Settings,
    /// `[firmware]` defaults.
    pub defaults: Defaults,
    /// The adapters.
    pub devices: Arc<dyn DeviceLinks>,
    /// Where progress goes (the uplink publishes it signed and retained).
    pub retained: watch::Sender<RetainedSet>,
}

/// Back-off after failed attempt number `attempt`: `initial` s (`[firmware] retry_initial_s`,
/// default 30), doubling, at most 15 min.
fn backoff(attempt: u32, initial: u64) -> u64 {
    (initial.max(1) << attempt.saturating_sub(1).min(5)).min(900)
}

/// A job as the tick loop needs it: the job and its rules (or why they cannot be made).
type CachedJob = (Arc<Job>, Arc<Result<Rules, String>>);

/// How a runner ended.
enum Ended {
    Done {
        version: String,
    },
    Failed {
        step: String,
        reason: String,
        transient: bool,
    },
}

struct Running {
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    fn publish(&self, p: &Progress) {
        let suffix = p.topic_suffix();
        let payload = Arc::new(p.to_cbor());
        self.retained.send_modify(|set| {
            set.insert(suffix, payload);
        });
    }

    fn progress(&self, job: &str, device: &str, state: &'static str, attempt: u32) -> Progress {
        Progress {
            job: job.into(),
            device: device.into(),
            state,
            attempt,
            time_ms: now_ms(),
            ..Progress::default()
        }
    }

    /// The job's policy over the gateway's defaults. Errors: the job names a time zone this
    /// gateway cannot load (never a silent fall-back to another zone: the window would open
    /// at the wrong hour).
    fn rules(&self, job: &Job) -> Result<Rules, String> {
        let p = &job.policy;
        let zone = match p.tz.as_deref() {
            Some(z) => Zone::parse(z)?,
            None => self.defaults.zone.clone(),
        };
        Ok(Rules {
            window: p.window.or(self.defaults.window),
            zone,
            not_in_use: p.not_in_use,
            in_use_minutes: self.defaults.in_use_minutes,
            min_battery: p.min_battery.unwrap_or(self.defaults.min_battery),
            max_attempts: p.max_attempts,
            deadline: p.deadline,
            max_parallel: self.defaults.max_parallel,
        })
    }

    /// Verifies and accepts one message from `…/firmware/job`; refusals become a `failed`
    /// progress report (device `-`) unless the job was simply seen before (a retained job is
    /// delivered again at every connection).
    async fn intake(&self, raw: Vec<u8>) {
        let now = now_ms();
        let trust = self.trust.clone();
        let verified = match job::verify(&raw, &trust, (now / 1000) as u64) {
            Ok(v) => v,
            Err(r) => {
                log::warn!("firmware job refused: {} ({})", r.reason.as_str(), r.detail);
                let mut p = self.progress("-", "-", "failed", 0);
                p.job = claimed_job_id(&raw).unwrap_or_else(|| "-".into());
                p.step = Some("accept".into());
                p.reason = Some(r.reason.as_str().into());
                self.publish(&p);
                return;
            }
        };
        if let Message::Job(j) = &verified.message {
            if let Some(Err(e)) = j.policy.tz.as_deref().map(Zone::parse) {
                log::warn!("firmware job {} refused: unknown_time_zone ({e})", j.id);
                let mut p = self.progress(&j.id, "-", "failed", 0);
                p.step = Some("accept".into());
                p.reason = Some("unknown_time_zone".into());
                self.publish(&p);
                return;
            }
        }
        let store = self.store.clone();
        let fleet = self.fleet.clone();
        let v = verified.clone();
        let accepted =
            tokio::task::spawn_blocking(move || job::accept(&store, &fleet, &v, now)).await;
        let id = match &verified.message {
            Message::Job(j) => j.id.clone(),
            Message::Cancel(c) => c.job.clone(),
        };
        match accepted {
            Ok(Ok(job::Accepted::Job { devices })) => {
                log::info!(
                    "firmware job {id} accepted from {}: {} device(s)",
                    verified.signer,
                    devices.len()
                );
                for d in devices {
                    self.publish(&self.progress(&id, &d, "queued", 0));
                }
            }
            Ok(Ok(job::Accepted::Cancel { cancelled })) => {
                log::info!("firmware job {id} cancelled ({cancelled} execution(s) stopped)");
            }
            Ok(Err(job::AcceptError::Refused(r))) if r.reason == job::Reason::DuplicateJob => {}
            Ok(Err(job::AcceptError::Refused(r))) => {
                log::warn!(
                    "firmware job {id} refused: {} ({})",
                    r.reason.as_str(),
                    r.detail
                );
                let mut p = self.progress(&id, "-", "failed", 0);
                p.step = Some("accept".into());
                p.reason = Some(r.reason.as_str().into());
                self.publish(&p);
            }
            Ok(Err(job::AcceptError::Store(e))) => {
                log::error!("firmware job {id}: the store failed, not recorded: {e}")
            }
            Err(e) => log::error!("firmware job {id}: {e}"),
        }
    }

    /// Runs until `shutdown`: takes jobs from `jobs`, drives every unfinished execution.
    pub async fn run(
        self: Arc<Self>,
        mut jobs: mpsc::Receiver<Vec<u8>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut running: HashMap<(String, String), Running> = HashMap::new();
        let (done_tx, mut done_rx) = mpsc::channel::<(String, String, Ended)>(16);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut jobs_cache: HashMap<String, Option<CachedJob>> = HashMap::new();
        let mut last_wait: HashMap<(String, String), &'static str> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    for (_, r) in running.drain() {
                        r.task.abort();
                    }
                    return;
                }
                Some(raw) = jobs.recv() => self.intake(raw).await,
                Some((job_id, device, ended)) = done_rx.recv() => {
                    running.remove(&(job_id.clone(), device.clone()));
                    self.finish(&job_id, &device, ended).await;
                }
                _ = tick.tick() => {
                    let store = self.store.clone();
                    let Ok(Ok(execs)) = tokio::task::spawn_blocking(move || store.firmware_executions(None)).await else {
                        continue;
                    };
                    // Cancelled (or otherwise finished) executions stop their runner.
                    running.retain(|(j, d), r| {
                        let live = execs.iter().any(|e| &e.job == j && &e.device == d && !FINAL_STATES.contains(&e.state.as_str()));
                        if !live {
                            r.task.abort();
                            log::info!("firmware job {j}: {d}: stopped (cancelled)");
                        }
                        live
                    });
                    for e in execs.iter().filter(|e| e.state == "cancelled") {
                        let key = (e.job.clone(), e.device.clone());
                        if last_wait.get(&key) != Some(&"cancelled") {
                            last_wait.insert(key, "cancelled");
                            self.publish(&self.progress(&e.job, &e.device, "cancelled", e.attempt));
                        }
                    }
                    let busy: std::collections::HashSet<String> = running.keys().map(|(_, d)| d.clone()).collect();
                    for e in execs.iter().filter(|e| !FINAL_STATES.contains(&e.state.as_str())) {
                        let key = (e.job.clone(), e.device.clone());
                        if running.contains_key(&key) {
                            continue;
                        }
                        let Some((job, rules)) = self.job(&e.job, &mut jobs_cache).await else {
                            continue;
                        };
                        let view = self.devices.view(&e.device);
                        let situation = Situation {
                            now_s: (now_ms() / 1000) as u64,
                            connected: view.connected,
                            last_observation_s: view.last_observation_s,
                            battery: view.battery,
                            attempts: e.attempt,
                            // Persisted: a restart in the back-off waits it out.
                            retry_not_before_s: e.retry_after_ms.map(|ms| (ms.max(0) as u64).div_ceil(1000)),
                            running: running.len(),
                        };
                        let rules = match rules.as_ref() {
                            Ok(r) => r,
                            Err(why) => {
                                log::warn!("firmware job {}: {}: {why}", e.job, e.device);
                                self.set(e, "failed", e.attempt, Some("unknown_time_zone")).await;
                                let mut p = self.progress(&e.job, &e.device, "failed", e.attempt);
                                p.step = Some("policy".into());
                                p.reason = Some("unknown_time_zone".into());
                                self.publish(&p);
                                continue;
                            }
                        };
                        let mut decision = decide(rules, &situation);
                        // Two jobs for the same device never interleave.
                        if decision == Decision::Go && busy.contains(&e.device) {
                            decision = Decision::Wait(super::policy::WaitReason::TransferSlotsBusy);
                        }
                        match decision {
                            Decision::Go => {
                                let attempt = e.attempt + 1;
                                self.set(e, "downloading", attempt, None).await;
                                last_wait.remove(&key);
                                let task = tokio::spawn(run_one(self.clone(), job.clone(), e.device.clone(), attempt, done_tx.clone()));
                                running.insert(key, Running { task });
                            }
                            Decision::Wait(why) => {
                                if last_wait.get(&key) != Some(&why.as_str()) {
                                    last_wait.insert(key, why.as_str());
                                    self.set(e, "waiting", e.attempt, Some(why.as_str())).await;
                                    let mut p = self.progress(&e.job, &e.device, "waiting", e.attempt);
                                    p.reason = Some(why.as_str().into());
                                    self.publish(&p);
                                }
                            }
                            Decision::Fail(why) => {
                                self.set(e, "failed", e.attempt, Some(why.as_str())).await;
                                let mut p = self.progress(&e.job, &e.device, "failed", e.attempt);
                                p.step = Some("policy".into());
                                p.reason = Some(why.as_str().into());
                                self.publish(&p);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The job `id` (from the store, verified again as it was when accepted), cached.
    async fn job(
        &self,
        id: &str,
        cache: &mut HashMap<String, Option<CachedJob>>,
    ) -> Option<CachedJob> {
        if let Some(j) = cache.get(id) {
            return j.clone();
        }
        let store = self.store.clone();
        let rows = tokio::task::spawn_blocking(move || store.firmware_jobs())
            .await
            .ok()?
            .ok()?;
        let row = rows.into_iter().find(|r| r.id == id)?;
        // Verified at the time it was accepted: an accepted job may outlive its `expires`.
        let at = (row.accepted_ms / 1000) as u64;
        let parsed = match job::verify(&row.message, &self.trust, at) {
            Ok(v) => match v.message {
                Message::Job(j) => Some(Arc::new(*j)),
                Message::Cancel(_) => None,
            },
            Err(r) => {
                log::error!(
                    "firmware job {id}: the stored job no longer verifies ({}); skipped",
                    r.detail
                );
                None
            }
        };
        // Its rules once (a tz database zone is read from disk), not at every tick.
        let cached = parsed.map(|j| {
            let rules = Arc::new(self.rules(&j));
            (j, rules)
        });
        cache.insert(id.to_owned(), cached.clone());
        cached
    }

    /// Records `state` for the execution of `job` on `device` (what `wardgate status` shows
    /// while a runner works), keeping its attempt.
    async fn mark(&self, job: &str, device: &str, state: &str) {
        let store = self.store.clone();
        let j = job.to_owned();
        let Ok(Ok(execs)) =
            tokio::task::spawn_blocking(move || store.firmware_executions(Some(&j))).await
        else {
            return;
        };
        if let Some(e) = execs.iter().find(|e| e.device == device) {
            if !FINAL_STATES.contains(&e.state.as_str()) {
                self.set(e, state, e.attempt, None).await;
            }
        }
    }

    /// Records `state` (a `waiting` execution keeps its back-off deadline; any other state
    /// clears it).
    async fn set(&self, e: &ExecutionRow, state: &str, attempt: u32, reason: Option<&str>) {
        let retry = if state == "waiting" {
            e.retry_after_ms
        } else {
            None
        };
        self.set_row(e, state, attempt, reason, retry).await
    }

    async fn set_row(
        &self,
        e: &ExecutionRow,
        state: &str,
        attempt: u32,
        reason: Option<&str>,
        retry_after_ms: Option<i64>,
    ) {
        let row = ExecutionRow {
            state: state.into(),
            attempt,
            reason: reason.map(str::to_owned),
            updated_ms: now_ms(),
            retry_after_ms,
            ..e.clone()
        };
        let store = self.store.clone();
        if let Ok(Err(err)) =
            tokio::task::spawn_blocking(move || store.firmware_set_execution(&row)).await
        {
            log::error!(
                "firmware job {}: {}: cannot record state {state}: {err}",
                e.job,
                e.device
            );
        }
    }

    async fn finish(&self, job_id: &str, device: &str, ended: Ended) {
        let store = self.store.clone();
        let j = job_id.to_owned();
        let Ok(Ok(execs)) =
            tokio::task::spawn_blocking(move || store.firmware_executions(Some(&j))).await
        else {
            return;
        };
        let Some(e) = execs.into_iter().find(|e| e.device == device) else {
            return;
        };
        if FINAL_STATES.contains(&e.state.as_str()) {
            return; // cancelled meanwhile
        }
        match ended {
            Ended::Done { version } => {
                let version = crate::firmware::image::version_as_imgtool(&version);
                log::info!("firmware job {job_id}: {device} runs {version}");
                self.set(&e, "done", e.attempt, None).await;
                let mut p = self.progress(job_id, device, "done", e.attempt);
                p.version = Some(version);
                self.publish(&p);
            }
            Ended::Failed {
                step,
                reason,
                transient,
            } => {
                log::warn!(
                    "firmware job {job_id}: {device}: attempt {} failed at {step}: {reason}",
                    e.attempt
                );
                let mut p = self.progress(job_id, device, "failed", e.attempt);
                p.step = Some(step);
                p.reason = Some(reason.clone());
                if transient {
                    // The policy fails it for good once the attempts are used up. The deadline
                    // is in the store: a restart waits it out too.
                    let retry_ms =
                        now_ms() + 1000 * backoff(e.attempt, self.defaults.retry_initial_s) as i64;
                    self.set_row(&e, "waiting", e.attempt, Some(&reason), Some(retry_ms))
                        .await;
                    p.state = "waiting";
                    p.retry_at_ms = Some(retry_ms);
                } else {
                    self.set(&e, "failed", e.attempt, Some(&reason)).await;
                }
                self.publish(&p);
            }
        }
    }
}

/// The job id a refused message claims (for the progress topic), if it decodes that far and is
/// usable as a topic level.
fn claimed_job_id(raw: &[u8]) -> Option<String> {
    use coset::{CborSerializable, TaggedCborSerializable};
    let s = coset::CoseSign1::from_tagged_slice(raw)
        .or_else(|_| coset::CoseSign1::from_slice(raw))
        .ok()?;
    let m: ciborium::Value = ciborium::from_reader(s.payload.as_deref()?).ok()?;
    let id = m
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some("job"))?
        .1
        .as_text()?;
    (id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    .then(|| id.to_owned())
}

/// One attempt on one device: download, verify, relay, confirm.
async fn run_one(
    relay: Arc<Relay>,
    job: Arc<Job>,
    device: String,
    attempt: u32,
    done: mpsc::Sender<(String, String, Ended)>,
) {
    let ended = attempt_update(&relay, &job, &device, attempt).await;
    let _ = done.send((job.id.clone(), device, ended)).await;
}

fn failed(step: &str, reason: impl Into<String>, transient: bool) -> Ended {
    Ended::Failed {
        step: step.into(),
        reason: reason.into(),
        transient,
    }
}

async fn attempt_update(relay: &Relay, job: &Job, device: &str, attempt: u32) -> Ended {
    let mut p = relay.progress(&job.id, device, "downloading", attempt);
    relay.publish(&p);
    // 1. The image, into the cache, size and SHA-256 checked while it streams.
    let want = download::Image {
        uris: job.image.uri.clone(),
        size: job.image.size,
        sha256: job.image.sha256,
    };
    let mut last = std::time::Instant::now();
    let path = {
        let mut report = |pr: download::Progress| {
            if last.elapsed() >= Duration::from_secs(1) {
                last = std::time::Instant::now();
                p.off = Some(pr.bytes);
                p.len = Some(pr.total);
                p.time_ms = now_ms();
                relay.publish(&p);
            }
        };
        match download::fetch(&relay.download, &want, &mut report).await {
            Ok(path) => path,
            Err(e) => return failed("download", e.reason(), e.is_transient()),
        }
    };
    // 2. The MCUboot checks against the job: nothing unverified reaches the device. The file
    //    is checked through the descriptor the upload then reads from, in pieces: the image is
    //    never held whole, and a file changed after the check is refused at the next chunk.
    let image = match tokio::task::spawn_blocking({
        let path = path.clone();
        let expected = job.image.expected();
        move || -> Result<FileImage, String> {
            FileImage::open_verified(&path, |f| {
                let info: ImageInfo =
                    super::image::parse_reader(f).map_err(|_| "not_mcuboot".to_string())?;
                info.check_against(&expected)
                    .map_err(|c| c.reason().to_string())?;
                Ok(info.file_sha256)
            })
            .map_err(|e| match e {
                wardgate_adapters::smp::source::Verified::Io(_) => "cache_unreadable".to_string(),
                wardgate_adapters::smp::source::Verified::Changed(_) => "image_changed".to_string(),
                wardgate_adapters::smp::source::Verified::Refused(r) => r,
            })
        }
    })
    .await
    {
        Ok(Ok(image)) => image,
        Ok(Err(reason)) => return failed("verify", reason, false),
        Err(e) => return failed("verify", format!("task: {e}"), true),
    };
    relay.publish(&relay.progress(&job.id, device, "verified", attempt));
    relay.mark(&job.id, device, "uploading").await;
    // 3. SMP on the adapter's connection.
    let Some(transport) = relay.devices.open_smp(device) else {
        return failed("upload", "device_offline", true);
    };
    let settings = ClientSettings {
        timeout: Duration::from_secs(job.policy.chunk_timeout_s),
        first_chunk_timeout: Duration::from_secs(job.policy.first_chunk_timeout_s),
        ..ClientSettings::default()
    };
    let mut client = SmpClient::new(transport, settings);
    // What the device runs now: recorded (device status, heartbeat, `wardgate status`), and
    // checked against the job's `from_versions`.
    let slots = match client.image_list().await {
        Ok(slots) => slots,
        Err(e) => {
            let reason = e.reason();
            let transient = is_transient(&reason);
            return failed("upload", reason, transient);
        }
    };
    record_running(relay, device, &slots).await;
    if let Some(from) = &job.target.from_versions {
        let running = slots.iter().find(|s| s.active).map(|s| s.version.clone());
        let applies = running.as_deref().is_some_and(|v| {
            from.iter().any(|f| {
                v == f.to_string()
                    || v.starts_with(&format!("{f}."))
                    || f.to_string().starts_with(v)
            })
        });
        let already = slots.iter().any(|s| {
            s.active && s.confirmed && s.hash.as_deref() == Some(&job.image.mcuboot_hash[..])
        });
        if !applies && !already {
            return failed("verify", "version_not_applicable", false);
        }
    }
    let mode = match job.policy.mode {
        Mode::TestConfirm => UpdateMode::TestConfirm,
        Mode::ConfirmOnly => UpdateMode::ConfirmOnly,
        Mode::TestOnly => UpdateMode::TestOnly,
    };
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now() - Duration::from_secs(2);
    let mut on_step = |s: UpdateStep| {
        let mut q = relay.progress(&job.id, device, "uploading", attempt);
        match s {
            UpdateStep::Uploading { off, len } => {
                if last.elapsed() < Duration::from_secs(1) && off < len {
                    return;
                }
                last = std::time::Instant::now();
                q.off = Some(off);
                q.len = Some(len);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                q.rate_bps = Some((off as f64 / secs) as u64);
            }
            UpdateStep::Testing => q.state = "testing",
            UpdateStep::Rebooting => q.state = "rebooting",
            UpdateStep::Confirming => q.state = "confirming",
        }
        relay.publish(&q);
    };
    let swap = Duration::from_secs(job.policy.swap_time_s);
    let devices = relay.devices.clone();
    let dev = device.to_owned();
    let reconnect = move || {
        let devices = devices.clone();
        let dev = dev.clone();
        async move {
            let deadline = tokio::time::Instant::now() + swap;
            loop {
                if devices.view(&dev).connected {
                    if let Some(t) = devices.open_smp(&dev) {
                        return Ok(t);
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(TransportError::Closed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    match update::apply(
        &mut client,
        &image,
        &job.image.mcuboot_hash,
        mode,
        swap,
        reconnect,
        &mut on_step,
    )
    .await
    {
        Ok(report) => {
            let running = SlotState {
                image: None,
                slot: 0,
                version: report.version.clone(),
                hash: Some(job.image.mcuboot_hash.to_vec()),
                bootable: true,
                pending: false,
                confirmed: report.confirmed,
                active: true,
                permanent: false,
            };
            record_running(relay, device, std::slice::from_ref(&running)).await;
            Ended::Done {
                version: report.version,
            }
        }
        Err(e) => {
            let transient = is_transient(&e.reason);
            failed(e.step, e.reason.clone(), transient)
        }
    }
}

/// Whether a failed attempt may pass by waiting (the execution waits with back-off): a
/// timeout, a lost link, a device that did not come back or is offline, a transport error. A
/// refusal that needs a person (`not_bonded`, `no_smp_service`) or anything the device said
/// fails at once.
fn is_transient(reason: &str) -> bool {
    matches!(
        reason,
        "timeout" | "link_lost" | "device_gone" | "device_offline"
    ) || reason.starts_with("transport")
}

/// Records the image `device` runs (the active slot 0 of `slots`) in the store, for device
/// status, the heartbeat and `wardgate status`; a store failure is logged, nothing more.
async fn record_running(relay: &Relay, device: &str, slots: &[SlotState]) {
    let Some(s) = slots.iter().find(|s| s.active && s.slot == 0) else {
        return;
    };
    let row = DeviceFirmwareRow {
        device: device.to_owned(),
        version: crate::firmware::image::version_as_imgtool(&s.version),
        hash: s.hash.clone(),
        confirmed: s.confirmed,
        source: "smp".into(),
        updated_ms: now_ms(),
    };
    let store = relay.store.clone();
    match tokio::task::spawn_blocking(move || store.firmware_set_device(&row)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("firmware: {device}: cannot record its version: {e}"),
        Err(e) => log::warn!("firmware: {device}: cannot record its version: {e}"),
    }
}

/// The `[firmware]` window of the config, parsed (`check-config` refused anything else).
pub fn window_of(w: Option<&Vec<String>>) -> Option<(TimeOfDay, TimeOfDay)> {
    let w = w?;
    Some((TimeOfDay::parse(w.first()?)?, TimeOfDay::parse(w.get(1)?)?))
}

/// Executions by job, for status (`wardgate status`): `job → [(device, state, reason)]`.
pub fn summary(execs: &[ExecutionRow]) -> BTreeMap<String, Vec<(String, String, Option<String>)>> {
    let mut m: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for e in execs {
        m.entry(e.job.clone()).or_default().push((
            e.device.clone(),
            e.state.clone(),
            e.reason.clone(),
        ));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_and_is_capped() {
        assert_eq!(backoff(1, 30), 30);
        assert_eq!(backoff(2, 30), 60);
        assert_eq!(backoff(3, 30), 120);
        assert_eq!(backoff(20, 30), 900);
        assert_eq!(backoff(1, 2), 2);
        assert_eq!(backoff(2, 2), 4);
        assert_eq!(backoff(1, 0), 1);
    }

    #[test]
    fn refusals_that_need_a_person_are_not_retried() {
        for r in [
            "timeout",
            "link_lost",
            "device_gone",
            "device_offline",
            "transport",
        ] {
            assert!(is_transient(r), "{r}");
        }
        for r in [
            "not_bonded",
            "no_smp_service",
            "bad_state",
            "reverted",
            "hash_mismatch",
        ] {
            assert!(!is_transient(r), "{r}");
        }
    }

    #[test]
    fn a_refused_message_names_its_job_only_when_usable_as_a_topic_level() {
        assert_eq!(claimed_job_id(b"junk"), None);
    }
}
