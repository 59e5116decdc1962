//! Which partitions this instance writes (ARCHITECTURE.md, "A cluster on
//! Kafka"). Alone (the embedded log, or Kafka without a group) it wants
//! every partition; in a cluster it wants those the consumer group assigns
//! it. Wanting is not owning: a writer owns its partition only once its
//! claim is read back as the latest, and a writer fenced by a newer claim
//! claims again only under a newer assignment, so a zombie that still
//! believes in its old assignment never fights the owner that fenced it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::{Mode, Msg};
use crate::log::kafka::group::Assignments;

/// How long a revocation waits for a partition's writer to finish its
/// batch and stop taking commands (then the group moves it anyway; the
/// new owner's claim fences whatever the old writer still appends).
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// How often a revocation looks whether the writers have let go.
const RELEASE_POLL: Duration = Duration::from_millis(2);

pub struct Ownership {
    /// True in a cluster: only assigned partitions are wanted.
    assigned_only: bool,
    wanted: Vec<AtomicBool>,
    /// Bumped on every assignment of a partition.
    generation: Vec<AtomicU64>,
    /// The generation under which the writer last tried to claim (owning
    /// or fenced): it tries again only under a newer one.
    tried: Vec<AtomicU64>,
    /// Whether the group has assigned this member anything (even nothing) yet.
    joined: AtomicBool,
    pub(super) status: Arc<Vec<AtomicU8>>,
    /// The writers' queues, to wake an idle writer when its assignment changes.
    wake: OnceLock<Vec<mpsc::WeakSender<Msg>>>,
    /// Bumped on every change of status or assignment.
    changes: watch::Sender<u64>,
}

impl Ownership {
    pub(super) fn new(partitions: u32, assigned_only: bool) -> Ownership {
        let n = partitions as usize;
        Ownership {
            assigned_only,
            wanted: (0..n).map(|_| AtomicBool::new(!assigned_only)).collect(),
            generation: (0..n).map(|_| AtomicU64::new(u64::from(!assigned_only))).collect(),
            tried: (0..n).map(|_| AtomicU64::new(0)).collect(),
            joined: AtomicBool::new(!assigned_only),
            status: Arc::new((0..n).map(|_| AtomicU8::new(Mode::CatchingUp as u8)).collect()),
            wake: OnceLock::new(),
            changes: watch::channel(0).0,
        }
    }

    /// Weak: the queues close when the writers' handle goes.
    pub(super) fn set_wakers(&self, senders: &[mpsc::Sender<Msg>]) {
        let _ = self.wake.set(senders.iter().map(|s| s.downgrade()).collect());
    }

    pub fn assigned_only(&self) -> bool {
        self.assigned_only
    }

    pub(super) fn wanted(&self, p: u32) -> bool {
        self.wanted[p as usize].load(Ordering::Acquire)
    }

    pub(super) fn generation(&self, p: u32) -> u64 {
        self.generation[p as usize].load(Ordering::Acquire)
    }

    /// The generation of the writer's last claim attempt.
    pub(super) fn tried(&self, p: u32) -> u64 {
        self.tried[p as usize].load(Ordering::Acquire)
    }

    pub fn status(&self, p: u32) -> Mode {
        Mode::from_byte(self.status[p as usize].load(Ordering::Acquire))
    }

    /// A writer's new status (and, after a claim attempt, the generation
    /// it was made under).
    pub(super) fn set_status(&self, p: u32, status: Mode, tried: Option<u64>) {
        self.status[p as usize].store(status as u8, Ordering::Release);
        if let Some(g) = tried {
            self.tried[p as usize].store(g, Ordering::Release);
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// The partitions this instance writes now.
    pub fn owned(&self) -> Vec<u32> {
        (0..self.status.len() as u32).filter(|&p| self.status(p) == Mode::Writing).collect()
    }

    /// The partitions the group assigned this instance.
    pub fn assignment(&self) -> Vec<u32> {
        (0..self.wanted.len() as u32).filter(|&p| self.wanted(p)).collect()
    }

    /// Whether this instance can take commands: every partition has caught
    /// up with the log once, the group has answered (in a cluster), and
    /// every wanted partition has been claimed (or the claim lost to a newer
    /// writer).
    pub fn serving(&self) -> bool {
        self.joined.load(Ordering::Acquire)
            && (0..self.status.len() as u32).all(|p| {
                let s = self.status(p);
                s != Mode::CatchingUp
                    && (!self.wanted(p)
                        || s == Mode::Writing
                        || self.tried[p as usize].load(Ordering::Acquire) == self.generation(p))
            })
    }

    /// Waits until [`Ownership::serving`].
    pub async fn until_serving(&self) {
        self.until_serving_is(true).await
    }

    /// Waits until [`Ownership::serving`] says `serving`.
    pub async fn until_serving_is(&self, serving: bool) {
        let mut rx = self.changes.subscribe();
        let _ = rx.wait_for(|_| self.serving() == serving).await;
    }

    fn wake(&self, p: u32) {
        if let Some(senders) = self.wake.get() {
            // A full queue means a busy writer: it looks before its next batch.
            if let Some(s) = senders[p as usize].upgrade() {
                let _ = s.try_send(Msg::Wake);
            }
        }
    }
}

impl Assignments for Ownership {
    fn assigned(&self, partitions: &[u32]) {
        for &p in partitions.iter().filter(|&&p| (p as usize) < self.wanted.len()) {
            self.generation[p as usize].fetch_add(1, Ordering::AcqRel);
            self.wanted[p as usize].store(true, Ordering::Release);
            self.wake(p);
        }
        self.joined.store(true, Ordering::Release);
        self.changes.send_modify(|n| *n += 1);
    }

    fn revoked(&self, partitions: &[u32]) {
        let partitions: Vec<u32> = partitions.iter().copied().filter(|&p| (p as usize) < self.wanted.len()).collect();
        for &p in &partitions {
            self.wanted[p as usize].store(false, Ordering::Release);
            self.wake(p);
        }
        self.changes.send_modify(|n| *n += 1);
        let started = Instant::now();
        while partitions.iter().any(|&p| self.status(p).appends()) {
            if started.elapsed() > RELEASE_WAIT {
                tracing::warn!(?partitions, "writers did not let go of revoked partitions in time");
                return;
            }
            std::thread::sleep(RELEASE_POLL);
        }
    }
}
