//! Programme rules: the control stream and the registry every writer reads.
//!
//! `ConfigureProgramme` appends a `ControlRecord` with the next version to the
//! control log (one partition) and, once it is durable, publishes it in the
//! registry. Every version is kept: account records name the version they were
//! decided under, so a reader can always find the rules in force. On start the
//! registry is rebuilt by reading the control log from zero (it is small);
//! then a follower thread keeps reading it, so versions configured by other
//! instances (on a shared log) arrive too.
//!
//! The log arbitrates between instances here as well: a record counts only if
//! it carries the next version of its programme and a request id not seen
//! before; anything else is void for every reader. `configure` answers only
//! once the follower has read its record back and found it counted.
//!
//! In a cluster the control stream also holds the shares of programme-wide
//! daily caps (ARCHITECTURE.md, "The programme-wide cap in a cluster"): a
//! share counts only if the shares counted before it, plus it, stay within
//! the cap in force at its place in the stream; so shares never add up to
//! more than the cap, whoever takes them, in whatever order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::domain::{Millis, Points, Programme, ProgrammeKey};
use crate::log::record::{AlertActioned, CapShare, ControlEvent, ControlRecord, Position};
use crate::log::{EventLog, LogError, LogReader, LogRecord};

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("request id {0} was used for another configuration")]
    RequestIdReused(String),
    #[error("control log unavailable: {0}")]
    Unavailable(#[from] LogError),
    #[error("control log: {0}")]
    NotConfirmed(String),
    /// The cash ratio of an existing programme moves only with
    /// `allow_ratio_change`.
    #[error("points_per_cash_unit would change from {from} to {to}: set allow_ratio_change to change it")]
    RatioChange { from: i64, to: i64 },
}

/// All versions of all programmes, and the configure requests seen.
#[derive(Default)]
pub struct Registry {
    versions: HashMap<ProgrammeKey, Vec<Arc<Programme>>>,
    /// (tenant, request id) → (fingerprint, programme, position): configure idempotency.
    requests: HashMap<(String, String), (u64, Arc<Programme>, Position)>,
    /// The next control-log offset to fold.
    applied: u64,
    /// Cap shares per (programme, day).
    shares: HashMap<(ProgrammeKey, i64), DayShares>,
    /// Whether the share at each control-log offset counted.
    share_outcomes: HashMap<u64, bool>,
    /// Control records skipped because they do not decode.
    pub quarantined: u64,
    /// What the risk desk did with each alert, by (programme, alert id).
    alert_history: HashMap<(ProgrammeKey, String), Vec<AlertStep>>,
    /// (tenant, request id) → (fingerprint, position): idempotency of the
    /// admin acts kept in the control stream (alert actions, webhooks).
    admin_requests: HashMap<(String, String), (u64, Position)>,
    /// Each programme's webhooks as last configured.
    webhooks: std::collections::BTreeMap<(ProgrammeKey, String), Webhook>,
    /// The admin acts of the control stream, by programme, in order.
    audit: HashMap<ProgrammeKey, Vec<crate::finance::audit::AuditEntry>>,
}

/// A programme's webhook as last configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    pub config: crate::log::record::WebhookConfigured,
    /// When it was first configured: events decided before are not sent.
    pub since: Millis,
}

/// One step of an alert's lifecycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertStep {
    pub resolved: bool,
    pub operator: String,
    pub note: String,
    pub at: Millis,
}

/// The shares of one programme day's cap.
#[derive(Clone, Debug, Default)]
pub struct DayShares {
    pub taken: Points,
    pub by_partition: HashMap<u32, Points>,
}

impl Registry {
    pub fn current(&self, key: &ProgrammeKey) -> Option<Arc<Programme>> {
        self.versions.get(key).and_then(|v| v.last().cloned())
    }

    pub fn version(&self, key: &ProgrammeKey, version: u64) -> Option<Arc<Programme>> {
        let v = self.versions.get(key)?;
        v.get(usize::try_from(version).ok()?.checked_sub(1)?).cloned()
    }

    /// The version in force at `at` (the latest configured at or before it;
    /// the first version for instants before any).
    pub fn in_force_at(&self, key: &ProgrammeKey, at: Millis) -> Option<Arc<Programme>> {
        let v = self.versions.get(key)?;
        v.iter().rev().find(|p| p.configured_at <= at).or_else(|| v.first()).cloned()
    }

    pub fn all_current(&self) -> Vec<Arc<Programme>> {
        let mut v: Vec<_> = self.versions.values().filter_map(|v| v.last().cloned()).collect();
        v.sort_by_key(|p| p.key());
        v
    }

    /// Every version in the control log up to its current end, for tools
    /// that read the log without running the service.
    pub fn load(log: &dyn EventLog) -> anyhow::Result<Registry> {
        let mut registry = Registry::default();
        let end = log.end_offset(0)?;
        let mut reader = log.reader(0, 0)?;
        loop {
            let batch = crate::log::read_towards(reader.as_mut(), end, CONTROL_READ_RECORDS_MAX)?;
            if batch.is_empty() {
                return Ok(registry);
            }
            registry.fold(&batch);
        }
    }

    /// What partition `partition` may grant of `programme`'s cap on `day`:
    /// its shares, scaled down if the cap was lowered below what was shared.
    pub fn share(&self, programme: &ProgrammeKey, day: i64, partition: u32) -> Points {
        let Some(d) = self.shares.get(&(programme.clone(), day)) else { return 0 };
        let mine = d.by_partition.get(&partition).copied().unwrap_or(0);
        let cap = self.cap(programme);
        if d.taken <= cap || d.taken == 0 {
            return mine;
        }
        (i128::from(mine) * i128::from(cap) / i128::from(d.taken)) as Points
    }

    /// The part of `programme`'s cap on `day` no partition has taken.
    pub fn unshared(&self, programme: &ProgrammeKey, day: i64) -> Points {
        let taken = self.shares.get(&(programme.clone(), day)).map_or(0, |d| d.taken);
        (self.cap(programme) - taken).max(0)
    }

    /// The shares taken of `programme`'s cap on `day`.
    pub fn shares_taken(&self, programme: &ProgrammeKey, day: i64) -> Points {
        self.shares.get(&(programme.clone(), day)).map_or(0, |d| d.taken)
    }

    fn cap(&self, programme: &ProgrammeKey) -> Points {
        self.current(programme).map_or(0, |p| p.programme_daily_issuance_cap)
    }

    /// Folds one control record; false when the log's arbitration voids it.
    fn add(&mut self, record: &ControlRecord, position: Position) -> bool {
        self.applied = position.offset + 1;
        let counted = self.add_event(record, position);
        if counted {
            self.note_act(record, position);
        }
        counted
    }

    /// Keeps a counted record's admin act for the audit log.
    fn note_act(&mut self, record: &ControlRecord, position: Position) {
        let (programme, action, reason) = match &record.event {
            ControlEvent::Configured(p) => (p.key(), "configure_programme", format!("version {}", p.version)),
            ControlEvent::AlertActioned(a) => {
                let action = if a.resolved { "resolve_alert" } else { "acknowledge_alert" };
                (a.programme.clone(), action, format!("{}: {}", a.alert_id, a.note))
            }
            ControlEvent::WebhookConfigured(w) => {
                let state = if w.disabled { "disabled" } else { "enabled" };
                (w.programme.clone(), "configure_webhook", format!("{} {} ({state})", w.webhook_id, w.url))
            }
            ControlEvent::ShareTaken(_) | ControlEvent::AlertRaised(_) => return,
        };
        self.audit.entry(programme).or_default().push(crate::finance::audit::AuditEntry {
            at: record.at,
            client: record.client.clone(),
            operator: record.operator.clone(),
            action: action.to_string(),
            reason,
            member_id: String::new(),
            request_id: record.request_id.clone(),
            place: (crate::finance::audit::CONTROL, position.offset, 0),
            amount: 0,
        });
    }

    /// The admin acts of the control stream on a programme, in order.
    pub fn audit_of(&self, programme: &ProgrammeKey) -> &[crate::finance::audit::AuditEntry] {
        self.audit.get(programme).map_or(&[], Vec::as_slice)
    }

    fn add_event(&mut self, record: &ControlRecord, position: Position) -> bool {
        match &record.event {
            ControlEvent::Configured(p) => self.add_programme(record, p, position),
            ControlEvent::ShareTaken(share) => {
                let counted = self.add_share(share);
                self.share_outcomes.insert(position.offset, counted);
                counted
            }
            ControlEvent::WebhookConfigured(w) => {
                if !self.admin_request(&w.programme.tenant_id, record, position) {
                    return false;
                }
                let key = (w.programme.clone(), w.webhook_id.clone());
                let since = self.webhooks.get(&key).map_or(record.at, |old| old.since);
                self.webhooks.insert(key, Webhook { config: w.clone(), since });
                true
            }
            ControlEvent::AlertRaised(a) => self.admin_request(&a.programme.tenant_id, record, position),
            ControlEvent::AlertActioned(a) => {
                if !self.admin_request(&a.programme.tenant_id, record, position) {
                    return false;
                }
                let step = AlertStep {
                    resolved: a.resolved,
                    operator: record.operator.clone(),
                    note: a.note.clone(),
                    at: record.at,
                };
                self.alert_history.entry((a.programme.clone(), a.alert_id.clone())).or_default().push(step);
                true
            }
        }
    }

    /// Notes an admin act's request id: false when it was used before (the
    /// record is void).
    fn admin_request(&mut self, tenant: &str, record: &ControlRecord, position: Position) -> bool {
        let key = (tenant.to_string(), record.request_id.clone());
        if self.admin_requests.contains_key(&key) {
            return false;
        }
        self.admin_requests.insert(key, (record.fingerprint, position));
        true
    }

    /// Where the counted record of an admin act is (`None`: none counted).
    pub fn admin_request_at(&self, tenant: &str, request_id: &str) -> Option<Position> {
        self.admin_requests.get(&(tenant.to_string(), request_id.to_string())).map(|(_, p)| *p)
    }

    /// The next control-stream offset the registry folds.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Every programme's webhooks as last configured (disabled ones too).
    pub fn webhooks(&self) -> Vec<Webhook> {
        self.webhooks.values().cloned().collect()
    }

    /// A programme's webhooks.
    pub fn webhooks_of(&self, programme: &ProgrammeKey) -> Vec<Webhook> {
        self.webhooks.iter().filter(|((p, _), _)| p == programme).map(|(_, w)| w.clone()).collect()
    }

    /// What the risk desk did with an alert, oldest first.
    pub fn alert_history(&self, programme: &ProgrammeKey, alert_id: &str) -> &[AlertStep] {
        self.alert_history.get(&(programme.clone(), alert_id.to_string())).map(Vec::as_slice).unwrap_or_default()
    }

    /// A share counts when it is positive and the shares before it plus it
    /// stay within the cap in force.
    fn add_share(&mut self, share: &CapShare) -> bool {
        let cap = self.cap(&share.programme);
        let d = self.shares.entry((share.programme.clone(), share.day)).or_default();
        if share.points <= 0 || d.taken.checked_add(share.points).is_none_or(|t| t > cap) {
            return false;
        }
        d.taken += share.points;
        *d.by_partition.entry(share.partition).or_default() += share.points;
        true
    }

    /// A new version counts when it is the next of its programme and its
    /// request id is new.
    fn add_programme(&mut self, record: &ControlRecord, programme: &Programme, position: Position) -> bool {
        let p = Arc::new(programme.clone());
        let key = (p.tenant_id.clone(), record.request_id.clone());
        let versions = self.versions.entry(p.key()).or_default();
        if p.version as usize != versions.len() + 1 || self.requests.contains_key(&key) {
            return false;
        }
        versions.push(p.clone());
        self.requests.insert(key, (record.fingerprint, p, position));
        true
    }

    /// Folds control records. One that does not decode is skipped by every
    /// reader alike (named at error level, counted in `quarantined`), as
    /// in the account partitions: garbage in the control stream never stops
    /// a start or the follower (ARCHITECTURE.md, "A record no reader can use").
    fn fold(&mut self, entries: &[crate::log::LogEntry]) {
        for e in entries {
            let position = Position { partition: 0, offset: e.offset };
            let r = match crate::log::codec::decode_control_record(&e.payload) {
                Ok(r) => r,
                Err(why) => {
                    crate::log::arbiter::report("control", position, &why.to_string());
                    self.applied = e.offset + 1;
                    self.quarantined += 1;
                    continue;
                }
            };
            if !self.add(&r, position) {
                tracing::debug!(offset = e.offset, "void control record (version or request id taken)");
            }
        }
    }
}

pub type SharedRegistry = Arc<RwLock<Registry>>;

/// Appends programme configurations to the control log, one at a time.
pub struct Programmes {
    log: Arc<dyn EventLog>,
    registry: SharedRegistry,
    /// Serialises configuration: versions are assigned under this lock.
    append_lock: Mutex<()>,
    stop: Arc<AtomicBool>,
    follower: Mutex<Option<JoinHandle<()>>>,
}

/// How long the follower waits after a failed read before reopening.
const FOLLOW_RETRY: Duration = Duration::from_millis(500);
/// How long the follower waits for new control records per poll.
const FOLLOW_WAIT: Duration = Duration::from_millis(100);
/// How long `configure` waits to read its own record back.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `configure` looks whether the follower has read its record.
const CONFIRM_POLL: Duration = Duration::from_millis(1);
/// Control records read per batch at most.
const CONTROL_READ_RECORDS_MAX: usize = 1024;
/// Times `configure` tries again when another instance took the version.
const CONFIGURE_ATTEMPTS_MAX: usize = 3;

impl Programmes {
    /// Opens the control stream, rebuilds the registry from it, and starts
    /// following it.
    pub fn open(log: Arc<dyn EventLog>) -> anyhow::Result<Programmes> {
        let registry = SharedRegistry::default();
        let end = log.end_offset(0)?;
        let mut reader = log.reader(0, 0)?;
        loop {
            let batch = crate::log::read_towards(reader.as_mut(), end, CONTROL_READ_RECORDS_MAX)?;
            if batch.is_empty() {
                break;
            }
            registry.write().expect("registry lock").fold(&batch);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let follower = {
            let (log, registry, stop) = (log.clone(), registry.clone(), stop.clone());
            std::thread::Builder::new()
                .name("control-follower".into())
                .spawn(move || follow(log, reader, registry, stop))?
        };
        Ok(Programmes { log, registry, append_lock: Mutex::new(()), stop, follower: Mutex::new(Some(follower)) })
    }

    /// Stops following the control stream.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.follower.lock().expect("follower lock").take() {
            let _ = t.join();
        }
    }

    pub fn registry(&self) -> SharedRegistry {
        self.registry.clone()
    }

    /// Records a new version of `programme` (whose version and time this sets).
    /// Blocking: call from a blocking thread. Returns the stored programme,
    /// its position and whether this repeats an earlier identical request.
    pub fn configure(
        &self,
        request_id: &str,
        operator: &str,
        client: &str,
        mut programme: Programme,
        fingerprint: u64,
        now: Millis,
    ) -> Result<(Arc<Programme>, Position, bool), ConfigureError> {
        let _guard = self.append_lock.lock().expect("control lock");
        let key = (programme.tenant_id.clone(), request_id.to_string());
        for _attempt in 0..CONFIGURE_ATTEMPTS_MAX {
            if let Some((fp, p, pos)) = self.registry.read().expect("registry lock").requests.get(&key) {
                if *fp == fingerprint {
                    return Ok((p.clone(), *pos, true));
                }
                return Err(ConfigureError::RequestIdReused(request_id.into()));
            }
            let previous = self.registry.read().expect("registry lock").current(&programme.key());
            if let Some(p) = previous.as_ref().filter(|p| p.points_per_cash_unit != programme.points_per_cash_unit) {
                if !programme.allow_ratio_change {
                    return Err(ConfigureError::RatioChange {
                        from: p.points_per_cash_unit,
                        to: programme.points_per_cash_unit,
                    });
                }
            }
            programme.version = previous.as_ref().map(|p| p.version).unwrap_or(0) + 1;
            programme.configured_at = now.max(previous.map(|p| p.configured_at).unwrap_or(0));
            let record = ControlRecord {
                epoch: 0,
                request_id: request_id.into(),
                at: programme.configured_at,
                fingerprint,
                operator: operator.into(),
                client: client.into(),
                event: ControlEvent::Configured(programme.clone()),
            };
            let payload = crate::log::codec::encode_control_record(&record);
            let offset = self.log.append(
                0,
                &[LogRecord::new(format!("{}/{}", programme.tenant_id, programme.programme_id).into_bytes(), payload)
                    .about(crate::log::About::control(&record))],
            )?[0];
            // Wait for the follower to fold it, then see whether it counted.
            let started = Instant::now();
            loop {
                let reg = self.registry.read().expect("registry lock");
                if reg.applied > offset {
                    if let Some((_, p, pos)) = reg.requests.get(&key) {
                        if pos.offset == offset {
                            return Ok((p.clone(), *pos, false));
                        }
                    }
                    break; // void: another instance took the version (or the id); look again
                }
                drop(reg);
                if started.elapsed() > CONFIRM_TIMEOUT {
                    return Err(ConfigureError::NotConfirmed(format!(
                        "the configuration was appended at offset {offset} but not read back within {} s; \
                         retry with the same request id",
                        CONFIRM_TIMEOUT.as_secs()
                    )));
                }
                std::thread::sleep(CONFIRM_POLL);
            }
        }
        Err(ConfigureError::NotConfirmed("other instances kept configuring this programme; retry".into()))
    }
}

impl Programmes {
    /// Records that the risk desk acknowledged (or resolved) an alert:
    /// appended to the control stream and read back; a retry with the same
    /// request id answers the same. Blocking.
    pub fn act_on_alert(
        &self,
        request_id: &str,
        operator: &str,
        client: &str,
        action: AlertActioned,
        now: Millis,
    ) -> Result<(Position, bool), ConfigureError> {
        let fingerprint =
            crate::domain::fingerprint_alert_action(&action.alert_id, action.resolved, &action.note, operator);
        let tenant = action.programme.tenant_id.clone();
        let who = (operator, client);
        self.admin_act(request_id, &tenant, who, fingerprint, ControlEvent::AlertActioned(action), now)
    }

    /// Sets, changes or disables a programme's webhook: appended to the
    /// control stream and read back; a retry with the same request id
    /// answers the same. Blocking.
    pub fn configure_webhook(
        &self,
        request_id: &str,
        operator: &str,
        client: &str,
        webhook: crate::log::record::WebhookConfigured,
        now: Millis,
    ) -> Result<(Position, bool), ConfigureError> {
        let w = &webhook;
        let fields = [&*w.programme.tenant_id, &w.programme.programme_id, &w.webhook_id, &w.url, &w.secret];
        let fingerprint = crate::domain::fingerprint_webhook(fields, &w.event_types, w.disabled, operator);
        let tenant = webhook.programme.tenant_id.clone();
        let who = (operator, client);
        self.admin_act(request_id, &tenant, who, fingerprint, ControlEvent::WebhookConfigured(webhook), now)
    }

    /// Raises a programme-wide alert as an event of the control stream
    /// (request id `alert:<alert id>`: once, whoever appends first).
    /// Blocking.
    pub fn raise_programme_alert(
        &self,
        alert: crate::log::record::ProgrammeAlert,
        now: Millis,
    ) -> Result<(Position, bool), ConfigureError> {
        let request_id = format!("alert:{}", alert.alert_id);
        let fingerprint = crate::domain::fingerprint_alert_action(&alert.alert_id, false, &alert.rule, "risk");
        let tenant = alert.programme.tenant_id.clone();
        self.admin_act(&request_id, &tenant, ("risk", ""), fingerprint, ControlEvent::AlertRaised(alert), now)
    }

    /// Appends an admin act of (operator, client) to the control stream and
    /// waits until it is read back (the position, and whether it was a
    /// retry's).
    fn admin_act(
        &self,
        request_id: &str,
        tenant: &str,
        (operator, client): (&str, &str),
        fingerprint: u64,
        event: ControlEvent,
        now: Millis,
    ) -> Result<(Position, bool), ConfigureError> {
        let _guard = self.append_lock.lock().expect("control lock");
        let key = (tenant.to_string(), request_id.to_string());
        if let Some((fp, pos)) = self.registry.read().expect("registry lock").admin_requests.get(&key) {
            return if *fp == fingerprint {
                Ok((*pos, true))
            } else {
                Err(ConfigureError::RequestIdReused(request_id.into()))
            };
        }
        let record = ControlRecord {
            epoch: 0,
            request_id: request_id.into(),
            at: now,
            fingerprint,
            operator: operator.into(),
            client: client.into(),
            event,
        };
        let payload = crate::log::codec::encode_control_record(&record);
        let about = crate::log::About::control(&record);
        let offset =
            self.log.append(0, &[LogRecord::new(about.subject.clone().into_bytes(), payload).about(about)])?[0];
        let started = Instant::now();
        loop {
            if let Some((_, pos)) = self.registry.read().expect("registry lock").admin_requests.get(&key) {
                return Ok((*pos, pos.offset != offset));
            }
            if started.elapsed() > CONFIRM_TIMEOUT {
                return Err(ConfigureError::NotConfirmed(format!(
                    "an admin act was appended at offset {offset} but not read back within {} s; \
                     retry with the same request id",
                    CONFIRM_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(CONFIRM_POLL);
        }
    }

    /// Takes a share of a programme day's cap for a partition: appends it
    /// to the control stream and waits for the follower to read it back.
    /// True when it counted (false: the cap had no room for it by then).
    /// Blocking.
    pub fn take_share(&self, share: CapShare, now: Millis) -> Result<bool, ConfigureError> {
        let key = format!("{}/{}", share.programme.tenant_id, share.programme.programme_id);
        let record = ControlRecord {
            epoch: 0,
            request_id: String::new(),
            at: now,
            fingerprint: 0,
            operator: String::new(),
            client: String::new(),
            event: ControlEvent::ShareTaken(share),
        };
        let payload = crate::log::codec::encode_control_record(&record);
        let about = crate::log::About::control(&record);
        let offset = self.log.append(0, &[LogRecord::new(key.into_bytes(), payload).about(about)])?[0];
        let started = Instant::now();
        loop {
            if let Some(&counted) = self.registry.read().expect("registry lock").share_outcomes.get(&offset) {
                return Ok(counted);
            }
            if started.elapsed() > CONFIRM_TIMEOUT {
                return Err(ConfigureError::NotConfirmed(format!(
                    "a cap share was appended at offset {offset} but not read back within {} s",
                    CONFIRM_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(CONFIRM_POLL);
        }
    }
}

/// Keeps folding the control stream into the registry until `stop`.
fn follow(log: Arc<dyn EventLog>, mut reader: Box<dyn LogReader>, registry: SharedRegistry, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match reader.next_batch(CONTROL_READ_RECORDS_MAX, FOLLOW_WAIT) {
            Ok(batch) if batch.is_empty() => {}
            Ok(batch) => registry.write().expect("registry lock").fold(&batch),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the control stream; retrying");
                std::thread::sleep(FOLLOW_RETRY);
                let at = registry.read().expect("registry lock").applied;
                if let Ok(r) = log.reader(0, at) {
                    reader = r;
                }
            }
        }
    }
}
