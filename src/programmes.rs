//! Programme rules: the control stream and the registry every writer reads.
//!
//! `ConfigureProgramme` appends a `ControlRecord` with the next version to the
//! control log (one partition) and, once it is durable, publishes it in the
//! registry. Every version is kept: account records name the version they were
//! decided under, so a reader can always find the rules in force. On start the
//! registry is rebuilt by reading the control log from zero (it is small).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::domain::{Millis, Programme, ProgrammeKey};
use crate::log::{EventLog, LogError};
use crate::record::{ControlRecord, Position};

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("request id {0} was used for another configuration")]
    RequestIdReused(String),
    #[error("control log unavailable: {0}")]
    Unavailable(#[from] LogError),
}

/// All versions of all programmes, and the configure requests seen.
#[derive(Default)]
pub struct Registry {
    versions: HashMap<ProgrammeKey, Vec<Arc<Programme>>>,
    /// (tenant, request id) → (fingerprint, programme, position): configure idempotency.
    requests: HashMap<(String, String), (u64, Arc<Programme>, Position)>,
}

impl Registry {
    pub fn current(&self, key: &ProgrammeKey) -> Option<Arc<Programme>> {
        self.versions.get(key).and_then(|v| v.last().cloned())
    }

    pub fn version(&self, key: &ProgrammeKey, version: u64) -> Option<Arc<Programme>> {
        let v = self.versions.get(key)?;
        v.get(usize::try_from(version).ok()?.checked_sub(1)?).cloned()
    }

    pub fn all_current(&self) -> Vec<Arc<Programme>> {
        let mut v: Vec<_> = self.versions.values().filter_map(|v| v.last().cloned()).collect();
        v.sort_by_key(|p| p.key());
        v
    }

    fn add(&mut self, record: &ControlRecord, position: Position) {
        let p = Arc::new(record.programme.clone());
        let versions = self.versions.entry(p.key()).or_default();
        assert_eq!(p.version as usize, versions.len() + 1, "programme versions follow each other");
        versions.push(p.clone());
        self.requests.insert((p.tenant_id.clone(), record.request_id.clone()), (record.fingerprint, p, position));
    }
}

pub type SharedRegistry = Arc<RwLock<Registry>>;

/// Appends programme configurations to the control log, one at a time.
pub struct Programmes {
    log: Arc<dyn EventLog>,
    registry: SharedRegistry,
    /// Serialises configuration: versions are assigned under this lock.
    append_lock: Mutex<()>,
}

/// Longest wait for new control records while catching up.
const CATCH_UP_WAIT: Duration = Duration::from_millis(0);

impl Programmes {
    /// Opens the control stream and rebuilds the registry from it.
    pub fn open(log: Arc<dyn EventLog>) -> anyhow::Result<Programmes> {
        let registry = SharedRegistry::default();
        let mut reader = log.reader(0, 0)?;
        loop {
            let batch = reader.next_batch(1024, CATCH_UP_WAIT)?;
            if batch.is_empty() {
                break;
            }
            let mut reg = registry.write().expect("registry lock");
            for e in batch {
                let r = crate::codec::decode_control_record(&e.payload)?;
                reg.add(&r, Position { partition: 0, offset: e.offset });
            }
        }
        Ok(Programmes { log, registry, append_lock: Mutex::new(()) })
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
        mut programme: Programme,
        fingerprint: u64,
        now: Millis,
    ) -> Result<(Arc<Programme>, Position, bool), ConfigureError> {
        let _guard = self.append_lock.lock().expect("control lock");
        let key = (programme.tenant_id.clone(), request_id.to_string());
        if let Some((fp, p, pos)) = self.registry.read().expect("registry lock").requests.get(&key) {
            if *fp == fingerprint {
                return Ok((p.clone(), *pos, true));
            }
            return Err(ConfigureError::RequestIdReused(request_id.into()));
        }
        let previous = self.registry.read().expect("registry lock").current(&programme.key());
        programme.version = previous.as_ref().map(|p| p.version).unwrap_or(0) + 1;
        programme.configured_at = now.max(previous.map(|p| p.configured_at).unwrap_or(0));
        let record = ControlRecord {
            epoch: 0,
            request_id: request_id.into(),
            at: programme.configured_at,
            fingerprint,
            operator: operator.into(),
            programme,
        };
        let offset = self.log.append(0, &[crate::codec::encode_control_record(&record)])?;
        let position = Position { partition: 0, offset };
        let mut reg = self.registry.write().expect("registry lock");
        reg.add(&record, position);
        Ok((reg.current(&record.programme.key()).expect("just added"), position, false))
    }
}
