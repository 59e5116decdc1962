//! The source of "now" for writers. The domain never reads a clock: time is
//! an argument of `decide`, taken here once per batch.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::domain::Millis;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock tests move by hand.
#[derive(Default)]
pub struct ManualClock(pub AtomicI64);

impl ManualClock {
    pub fn new(at: Millis) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicI64::new(at)))
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, at: Millis) {
        self.0.store(at, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}
