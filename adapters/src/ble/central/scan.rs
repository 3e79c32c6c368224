//! The scan loop's state: classifies every advertisement report (admitted device, asset tag,
//! refused), feeds presence aggregation, starts sessions and recovers a blind adapter.

use super::admission::{RejectDecision, RejectTracker, Sighting, TagState};
use super::bluez::{address_from_id, Bus};
use super::session::Session;
use super::{device_id, event, inc, send, BleAdapter, DeviceSpec, SessionHandle, MAX_TRACKED};
use crate::ble::config::{Address, TagRule};
use crate::ble::decode::advertisement;
use crate::ble::decode::presence::PresenceSummary;
use crate::ble::decode::uuid::{to_sig16, Uuid};
use crate::ble::decode::Profile;
use crate::observation::{DeviceEvent, DeviceId, EventKind, Observation, PresenceReport};
use crate::{AdapterContext, AdapterError, AdapterEvent};
use btleplug::api::{Central, CentralEvent, CentralState, Peripheral as _, ScanFilter};
use btleplug::platform::{Adapter as BtAdapter, PeripheralId};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

/// The scanning side: classification, admission, presence, sessions.
pub(super) struct Scan<'a> {
    pub(super) owner: &'a BleAdapter,
    pub(super) central: &'a BtAdapter,
    pub(super) bus: Arc<Bus>,
    pub(super) ctx: &'a AdapterContext,
    pub(super) admitted: HashMap<Address, Arc<DeviceSpec>>,
    pub(super) sessions: HashMap<Address, SessionHandle>,
    pub(super) rejects: RejectTracker,
    pub(super) tags: Vec<TagState>,
    /// Which rule a tag address matched (bounded like the reject map).
    pub(super) tag_of: HashMap<Address, usize>,
    pub(super) powered_off_reported: bool,
    /// Last advertisement report of any device.
    pub(super) last_advert: Instant,
    /// Recovery stage of a blind adapter (0: hearing fine).
    pub(super) blind_stage: u32,
    /// The adapter is pairable: `wardgate pair` is running, so unknown devices are not pruned
    /// (the device being paired is one of them). Refreshed every tick.
    pub(super) pairing_in_progress: bool,
}

impl<'a> Scan<'a> {
    pub(super) fn new(
        owner: &'a BleAdapter,
        central: &'a BtAdapter,
        bus: Arc<Bus>,
        ctx: &'a AdapterContext,
    ) -> Self {
        let cfg = &owner.cfg;
        let admitted =
            cfg.devices
                .iter()
                .filter_map(|d| {
                    let address = Address::parse(&d.address).ok()?;
                    let spec = DeviceSpec {
                        address,
                        device: device_id(address),
                        adapter: cfg.adapter.clone(),
                        profiles: d
                            .profiles
                            .as_ref()
                            .map(|v| v.iter().filter_map(|n| Profile::from_name(n)).collect()),
                        vendor: d.vendor_profile.as_ref().and_then(|n| {
                            cfg.vendor_profiles.iter().find(|p| &p.name == n).cloned()
                        }),
                        cfg: d.clone(),
                    };
                    Some((address, Arc::new(spec)))
                })
                .collect();
        Scan {
            owner,
            central,
            bus,
            ctx,
            admitted,
            sessions: HashMap::new(),
            rejects: RejectTracker::new(
                Duration::from_secs(cfg.rejected_repeat_s),
                cfg.rejected_per_minute,
            ),
            tags: cfg.tags.iter().map(TagState::new).collect(),
            tag_of: HashMap::new(),
            powered_off_reported: false,
            last_advert: Instant::now(),
            blind_stage: 0,
            pairing_in_progress: false,
        }
    }

    pub(super) async fn on_event(&mut self, ev: CentralEvent) -> Result<(), AdapterError> {
        if matches!(
            ev,
            CentralEvent::DeviceDiscovered(_)
                | CentralEvent::RssiUpdate { .. }
                | CentralEvent::ManufacturerDataAdvertisement { .. }
                | CentralEvent::ServiceDataAdvertisement { .. }
        ) {
            self.last_advert = Instant::now();
            if self.blind_stage > 0 {
                log::info!("ble: {} hears advertisements again", self.owner.cfg.adapter);
                self.blind_stage = 0;
            }
        }
        let stats = &self.owner.stats;
        match ev {
            CentralEvent::DeviceConnected(id) => {
                if let Some(spec) = self.spec_of(&id) {
                    self.ensure_session(spec, id);
                }
            }
            CentralEvent::DeviceDisconnected(id) => {
                if let Some(a) = address_from_id(&id.to_string()) {
                    if let Some(s) = self.sessions.get(&a) {
                        s.link.send_modify(|n| *n += 1);
                    }
                }
            }
            CentralEvent::StateUpdate(state) => {
                let off = state != CentralState::PoweredOn;
                if off && !self.powered_off_reported {
                    log::warn!(
                        "ble: adapter {} is not powered on ({state:?})",
                        self.owner.cfg.adapter
                    );
                    send(
                        &self.ctx.out,
                        event(
                            &DeviceId(format!("adapter:{}", self.ctx.id)),
                            EventKind::Error,
                            format!("Bluetooth adapter {} is not powered on ({state:?}); no BLE device can be heard", self.owner.cfg.adapter),
                        ),
                    )
                    .await?;
                }
                self.powered_off_reported = off;
            }
            CentralEvent::DeviceDiscovered(id) => {
                inc(&stats.advertisements);
                self.on_sighting(id, None, true).await?;
            }
            CentralEvent::RssiUpdate { id, rssi } => {
                inc(&stats.advertisements);
                self.on_sighting(id, Some(rssi), false).await?;
            }
            CentralEvent::ServiceDataAdvertisement { id, service_data } => {
                // Tags: refresh the beacon readings from the event's own data (the count comes
                // from RSSI reports).
                if let Some(a) = address_from_id(&id.to_string()) {
                    if let Some(&rule) = self.tag_of.get(&a) {
                        self.tag_data(rule, a, &service_data);
                    } else if let Some(s) = self.sessions.get(&a) {
                        s.link.send_modify(|n| *n += 1);
                    }
                }
            }
            CentralEvent::ManufacturerDataAdvertisement { id, .. } => {
                if let Some(s) =
                    address_from_id(&id.to_string()).and_then(|a| self.sessions.get(&a))
                {
                    s.link.send_modify(|n| *n += 1);
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn spec_of(&self, id: &PeripheralId) -> Option<Arc<DeviceSpec>> {
        address_from_id(&id.to_string()).and_then(|a| self.admitted.get(&a).cloned())
    }

    pub(super) async fn sighting(&self, id: &PeripheralId) -> Option<Sighting> {
        let p = self.central.peripheral(id).await.ok()?;
        let props = p.properties().await.ok()??;
        Some(Sighting {
            rssi: props.rssi,
            // `local_name` is BlueZ's Alias, which defaults to the address: not a name.
            name: props.advertisement_name,
            address_type: props.address_type.map(|t| format!("{t:?}").to_lowercase()),
            manufacturer_data: props.manufacturer_data,
            service_data: props.service_data,
        })
    }

    pub(super) async fn on_sighting(
        &mut self,
        id: PeripheralId,
        rssi: Option<i16>,
        discovered: bool,
    ) -> Result<(), AdapterError> {
        let Some(a) = address_from_id(&id.to_string()) else {
            return Ok(());
        };
        if let Some(spec) = self.admitted.get(&a).cloned() {
            match self.sessions.get(&a) {
                Some(s) if !s.task.is_finished() => s.link.send_modify(|n| *n += 1),
                _ => self.ensure_session(spec, id),
            }
            return Ok(());
        }
        if let Some(&rule) = self.tag_of.get(&a) {
            if let Some(r) = rssi {
                self.tags[rule]
                    .presence
                    .record(&a.to_string(), r, std::time::Instant::now());
            }
            return Ok(());
        }
        // Unknown so far: look at what it advertises.
        let now = Instant::now();
        if !discovered
            && self
                .rejects
                .last
                .get(&a)
                .is_some_and(|t| now.duration_since(*t) < self.rejects.repeat)
        {
            inc(&self.owner.stats.rejected);
            return Ok(());
        }
        // What it advertises is needed only to match tag rules or to report it: a ward full of
        // phones costs no extra D-Bus round trip per advertisement when there are no tag rules.
        let mut s = None;
        if !self.tags.is_empty() {
            let Some(got) = self.sighting(&id).await else {
                return Ok(());
            };
            s = Some(got);
        }
        if let Some(rule) = s
            .as_ref()
            .and_then(|s| self.tags.iter().position(|t| t.matches(a, s)))
        {
            let s = s.unwrap_or_default();
            if self.tag_of.len() >= MAX_TRACKED {
                self.tag_of.clear();
            }
            if self.tag_of.insert(a, rule).is_none() {
                if let (Some(hook), Some(l)) = (
                    &self.owner.tag_location,
                    self.tags[rule].rule.location.as_deref(),
                ) {
                    hook(&device_id(a), l);
                }
            }
            if let Some(r) = rssi.or(s.rssi) {
                self.tags[rule]
                    .presence
                    .record(&a.to_string(), r, std::time::Instant::now());
            }
            self.tag_data(rule, a, &s.service_data);
            return Ok(());
        }
        inc(&self.owner.stats.rejected);
        let decision = self.rejects.decide(a, now);
        self.owner
            .stats
            .tracked
            .store(self.rejects.last.len() as u64, Ordering::Relaxed);
        match decision {
            RejectDecision::Recent => return Ok(()),
            RejectDecision::Suppress => inc(&self.owner.stats.rejected_suppressed),
            RejectDecision::Report => {
                inc(&self.owner.stats.rejected_events);
                let s = match s {
                    Some(s) => s,
                    None => self.sighting(&id).await.unwrap_or_default(),
                };
                let detail = format!(
                    "address={a} address_type={} rssi={} name={:?} reason=not-allowlisted",
                    s.address_type.as_deref().unwrap_or("unknown"),
                    rssi.or(s.rssi).map_or("unknown".into(), |r| r.to_string()),
                    s.name.as_deref().unwrap_or(""),
                );
                // Advertised names are often people's (a phone's): upstream only, not the log.
                log::info!(
                    "ble: refused {a} ({}), not allowlisted",
                    s.address_type.as_deref().unwrap_or("unknown")
                );
                send(
                    &self.ctx.out,
                    event(&device_id(a), EventKind::Rejected, detail),
                )
                .await?;
            }
        }
        if self.owner.cfg.prune_rejected && !self.pairing_in_progress {
            if let Ok(st) = self.bus.bond_state(&self.owner.cfg.adapter, a).await {
                if !st.paired
                    && !st.connected
                    && self
                        .bus
                        .remove_device(&self.owner.cfg.adapter, a)
                        .await
                        .is_ok()
                {
                    inc(&self.owner.stats.pruned);
                }
            }
        }
        Ok(())
    }

    /// Decodes the tag's advertised service data into readings kept for its next summary.
    pub(super) fn tag_data(
        &mut self,
        rule: usize,
        a: Address,
        service_data: &HashMap<Uuid, Vec<u8>>,
    ) {
        let mut readings = Vec::new();
        for (uuid, data) in service_data {
            let frame = match to_sig16(*uuid) {
                Some(advertisement::UUID_EDDYSTONE) => advertisement::parse_eddystone(data)
                    .ok()
                    .map(advertisement::Beacon::Eddystone),
                Some(advertisement::UUID_BTHOME) => {
                    let t = &mut self.tags[rule];
                    bthome(a, data, t.keys.get(&a))
                        .filter(|b| t.accept_counter(a, b.counter))
                        .map(advertisement::Beacon::BtHome)
                }
                _ => None,
            };
            if let Some(b) = frame {
                readings.extend(b.readings());
            }
        }
        self.tags[rule].keep_latest(a, readings);
    }

    pub(super) fn ensure_session(&mut self, spec: Arc<DeviceSpec>, id: PeripheralId) {
        if let Some(s) = self.sessions.get(&spec.address) {
            if !s.task.is_finished() {
                s.link.send_modify(|n| *n += 1);
                return;
            }
        }
        let (link, link_rx) = watch::channel(0u64);
        let session = Session {
            spec: spec.clone(),
            central: self.central.clone(),
            id,
            bus: self.bus.clone(),
            out: self.ctx.out.clone(),
            shutdown: self.ctx.shutdown.clone(),
            clock: self.ctx.clock_synced.clone(),
            stats: self.owner.stats.clone(),
            glucose_last: self.owner.glucose_last.clone(),
            port: match self.owner.ports.get(&spec.address) {
                Some(p) => p.clone(),
                None => return,
            },
            smp_link_renewed: Default::default(),
        };
        let task = tokio::spawn(session.run(link_rx));
        self.sessions
            .insert(spec.address, SessionHandle { link, task });
    }

    /// A blind adapter: no advertisement for `blind_after_s` while tags it heard before should
    /// be heard. Recovery in stages: restart discovery, power-cycle the adapter, then fail (the
    /// supervisor restarts the BLE adapter with a new D-Bus connection).
    pub(super) async fn check_blind(&mut self) -> Result<(), AdapterError> {
        let blind_after = Duration::from_secs(self.owner.cfg.blind_after_s.max(1));
        if self.tags.is_empty()
            || self.tag_of.is_empty()
            || self.last_advert.elapsed() < blind_after
        {
            return Ok(());
        }
        self.blind_stage += 1;
        inc(&self.owner.stats.blind_episodes);
        let adapter = self.owner.cfg.adapter.clone();
        let secs = blind_after.as_secs();
        let action = match self.blind_stage {
            1 => "restarting discovery",
            2 => "power-cycling the adapter",
            _ => "restarting the BLE adapter",
        };
        let detail = format!("Bluetooth adapter {adapter} heard no advertisement for {secs} s while known asset tags should be heard (blind?); {action}");
        log::warn!("ble: {detail}");
        send(
            &self.ctx.out,
            event(
                &DeviceId(format!("adapter:{}", self.ctx.id)),
                EventKind::Error,
                detail,
            ),
        )
        .await?;
        self.last_advert = Instant::now();
        match self.blind_stage {
            1 => {
                let _ = self.central.stop_scan().await;
                self.central
                    .start_scan(ScanFilter::default())
                    .await
                    .map_err(|e| AdapterError::Transport(format!("restarting discovery: {e}")))?;
            }
            2 => {
                let _ = self.bus.set_powered(&adapter, false).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = self.bus.set_powered(&adapter, true).await;
                let _ = self.central.stop_scan().await;
                self.central
                    .start_scan(ScanFilter::default())
                    .await
                    .map_err(|e| {
                        AdapterError::Transport(format!(
                            "restarting discovery after a power cycle: {e}"
                        ))
                    })?;
            }
            _ => {
                return Err(AdapterError::Transport(format!(
                    "adapter {adapter} stayed blind after a discovery restart and a power cycle"
                )))
            }
        }
        Ok(())
    }

    pub(super) async fn on_tick(&mut self) -> Result<(), AdapterError> {
        self.check_blind().await?;
        if self.owner.cfg.prune_rejected {
            self.pairing_in_progress = self
                .bus
                .pairable(&self.owner.cfg.adapter)
                .await
                .unwrap_or(false);
        }
        let now = std::time::Instant::now();
        for t in &mut self.tags {
            for s in t.presence.drain_due(now) {
                inc(&self.owner.stats.presence_summaries);
                let Some(a) = Address::parse(&s.key).ok() else {
                    continue;
                };
                let dev = device_id(a);
                send(&self.ctx.out, presence_event(&dev, &t.rule, &s)).await?;
                for r in t.latest.remove(&s.key).unwrap_or_default() {
                    let o =
                        Observation::from_reading(dev.clone(), r, *self.ctx.clock_synced.borrow());
                    send(&self.ctx.out, AdapterEvent::Observation(o)).await?;
                }
            }
        }
        if let Some(n) = self.rejects.take_summary(Instant::now()) {
            let detail = format!("{n} more refused devices in the last minute were not reported one by one (limit rejected_per_minute = {})", self.owner.cfg.rejected_per_minute);
            send(
                &self.ctx.out,
                event(
                    &DeviceId(format!("adapter:{}", self.ctx.id)),
                    EventKind::Rejected,
                    detail,
                ),
            )
            .await?;
        }
        Ok(())
    }

    pub(super) async fn stop(&mut self) {
        let tasks: Vec<_> = self.sessions.drain().map(|(_, s)| s.task).collect();
        for t in tasks {
            if timeout(Duration::from_secs(5), t).await.is_err() {
                log::warn!("ble: a device session did not stop within 5 s");
            }
        }
        for t in &mut self.tags {
            for s in t.presence.flush_all() {
                if let Ok(a) = Address::parse(&s.key) {
                    let _ = self
                        .ctx
                        .out
                        .try_send(presence_event(&device_id(a), &t.rule, &s));
                }
            }
        }
    }
}

/// BTHome v2 service data, decrypted with the tag's key when it is encrypted.
pub(super) fn bthome(
    a: Address,
    data: &[u8],
    key: Option<&[u8; 16]>,
) -> Option<advertisement::BtHome> {
    match key {
        Some(k) => advertisement::parse_bthome_with_key(data, a.0, k).ok(),
        None => advertisement::parse_bthome(data).ok(),
    }
}

/// The `rssi` event of a tag's presence summary: typed ([`PresenceReport`]), its detail text
/// rendered by [`DeviceEvent::presence`] (wire-format.md).
fn presence_event(device: &DeviceId, rule: &TagRule, s: &PresenceSummary) -> AdapterEvent {
    AdapterEvent::Event(DeviceEvent::presence(
        device.clone(),
        PresenceReport {
            rule: rule.name.clone(),
            window_s: rule.window_s,
            count: s.count,
            rssi_min: s.rssi_min,
            rssi_median: s.rssi_median,
            rssi_max: s.rssi_max,
        },
    ))
}
