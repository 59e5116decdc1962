//! How a writer follows its partition of the log: catching up from its
//! checkpoint before it takes commands, claiming the partition on a shared
//! log (a claim marker with the next epoch, read back), reading each batch
//! back before answering it, and re-reading after an append whose outcome is
//! unknown (ARCHITECTURE.md, "Writers arbitrated by the log").

use super::commit::{Quarantined, Work};
use super::issuance::earned_in;
use super::partition::{LogSync, PartitionWriter, ReaderKind};
use super::Mode;
use crate::log::arbiter::{Admitted, Home};
use crate::log::codec;
use crate::log::record::{Claim, Position, Reply};
use crate::log::{self as eventlog, LogError, LogReader, LogRecord};

/// Claims a writer tries before giving the partition up (another writer
/// with the same epoch landed first each time).
const CLAIM_ATTEMPTS_MAX: usize = 3;
/// Records read per step when reading a batch back, at least.
const READ_BACK_RECORDS_MIN: usize = 64;

/// `host:pid:start-ms`, to tell claim markers apart for operators.
pub(super) fn writer_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    format!(
        "{}:{}:{}",
        if host.is_empty() { "localhost" } else { &host },
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    )
}

/// How a shared-log writer's read-back of its batch ended.
pub(super) enum ReadBack {
    /// Every record of the batch is admitted; nothing else counts in
    /// between. With the records in between that every reader skips
    /// (quarantined: they change no state, so the batch's decisions stand),
    /// for the batch's commit to note as a catch-up would.
    Confirmed(Quarantined),
    /// A newer claim took the partition.
    Fenced(u64),
    /// Something unexpected (e.g. a record of an earlier, failed append).
    Unclear(String),
}

impl PartitionWriter {
    /// A reader at `cursor.next`: the kept one if it is there and of the
    /// kind wanted now (a follower's while following), else a new one.
    pub(super) fn take_reader(&mut self, kind: ReaderKind) -> Result<Box<dyn LogReader>, LogError> {
        match self.reader.take() {
            Some((r, k)) if r.position() == self.cursor.next && k == kind => Ok(r),
            _ => match kind {
                ReaderKind::Follower => self.log.follower(self.partition, self.cursor.next),
                ReaderKind::Writer => self.log.reader(self.partition, self.cursor.next),
            },
        }
    }

    /// Folds the log from the cursor up to `end` (exclusive), committing as it
    /// goes. Returns the records folded.
    pub(super) fn catch_up(&mut self, end: u64) -> anyhow::Result<u64> {
        self.catch_up_with(end, ReaderKind::Writer)
    }

    /// [`PartitionWriter::catch_up`] with a reader of the given kind.
    fn catch_up_with(&mut self, end: u64, kind: ReaderKind) -> anyhow::Result<u64> {
        let mut reader = self.take_reader(kind)?;
        let mut folded = 0;
        loop {
            let entries = eventlog::read_towards(reader.as_mut(), end, self.config.batch_commands_max)?;
            if entries.is_empty() {
                break;
            }
            let mut work = Work::default();
            for e in &entries {
                let position = Position { partition: self.partition, offset: e.offset };
                match self.cursor.arbiter.admit_bytes(&e.payload, self.home()) {
                    Admitted::Record(record) => {
                        let mut pages = Vec::new();
                        let touched = self.account(&mut work, &record.account)?;
                        if let Err(why) = crate::domain::admissible(&touched.account, &record.events) {
                            work.quarantined.push((position, format!("account {}: {why}", record.account)));
                            continue;
                        }
                        let (balances, balance) = Self::fold(touched, &record.events);
                        Self::add_entries(touched, &record, position, &balances, &mut pages);
                        work.pages.append(&mut pages);
                        earned_in(&record.account, &record.events, &mut work.issued_folded);
                        self.last_now = self.last_now.max(record.at);
                        if !record.system {
                            let reply = Reply::for_record(&record, position, balance);
                            work.requests.push(self.request(&record, &reply));
                        }
                        folded += 1;
                    }
                    Admitted::Claim(_) => {
                        self.last_claim = Some(e.offset);
                        work.arbiters.push((position, self.cursor.arbiter.clone()));
                    }
                    Admitted::Released(_) => work.arbiters.push((position, self.cursor.arbiter.clone())),
                    Admitted::Quarantined(q) => work.quarantined.push((position, q.why)),
                    Admitted::Void => {}
                }
            }
            self.cursor.next = reader.position();
            self.commit(work)?;
        }
        self.reader = Some((reader, kind));
        Ok(folded)
    }

    /// On a shared log, at each tick: whether another writer claimed the
    /// partition since (its records are folded, as a follower would); then
    /// this writer is fenced. Without this an idle writer would learn of a
    /// takeover only when it next appends.
    pub(super) fn taken_over(&mut self) -> anyhow::Result<bool> {
        let end = self.log.end_offset(self.partition)?;
        if end <= self.cursor.next {
            return Ok(false);
        }
        self.catch_up(end)?;
        if self.own_claim.is_some() && self.last_claim != self.own_claim {
            self.fence();
            return Ok(true);
        }
        Ok(false)
    }

    /// One step of following a partition another writer took over: fold
    /// what it appended since (its views stay current), or wait a moment.
    /// Readers made meanwhile are followers' ([`crate::log::EventLog::follower`]).
    pub(super) fn follow_step(&mut self, wait: std::time::Duration) -> anyhow::Result<()> {
        let end = self.log.end_offset(self.partition)?;
        if end > self.cursor.next {
            self.catch_up_with(end, ReaderKind::Follower)?;
        } else {
            std::thread::sleep(wait);
        }
        Ok(())
    }

    /// Catches up with the log's end and, on a shared log, claims the
    /// partition. Ok(false) when another writer has taken it meanwhile.
    pub(super) fn start_up(&mut self) -> anyhow::Result<bool> {
        let end = self.log.end_offset(self.partition)?;
        self.catch_up(end)?;
        // A new assignment: whoever claimed since our last claim does not
        // stop this one (the newer claim wins, as always).
        self.own_claim = None;
        if self.log.shared() {
            return self.claim();
        }
        Ok(true)
    }

    /// Appends a claim marker with the next epoch and reads back past it.
    /// Ok(true) when it took the partition.
    pub(super) fn claim(&mut self) -> anyhow::Result<bool> {
        for _attempt in 0..CLAIM_ATTEMPTS_MAX {
            let end = self.log.end_offset(self.partition)?;
            self.catch_up(end)?;
            if self.own_claim.is_some() && self.last_claim != self.own_claim {
                // Someone claimed after us: they own it now; do not fight back.
                return Ok(false);
            }
            let claim = Claim {
                epoch: self.cursor.arbiter.epoch + 1,
                writer: self.writer_id.to_string(),
                address: self.config.advertise.clone(),
                at: self.clock.now().max(self.last_now),
                release: false,
            };
            let record = LogRecord::new(b"claim".to_vec(), codec::encode_claim(&claim))
                .about(eventlog::About::claim(&claim, self.partition));
            let offsets = self.log.append(self.partition, &[record])?;
            self.catch_up(offsets[0] + 1)?;
            if self.last_claim == Some(offsets[0]) {
                self.own_claim = self.last_claim;
                tracing::info!(
                    partition = self.partition,
                    epoch = claim.epoch,
                    offset = offsets[0],
                    "claimed partition"
                );
                return Ok(true);
            }
            // A claim with the same epoch landed first: try the next epoch.
        }
        Ok(false)
    }

    /// Gives the partition up on a shared log (it was revoked here): a
    /// release marker of this writer's epoch, so any instance assigned the
    /// partition may claim it at once. Best effort: without it, the next
    /// assignment's claim takes the partition all the same.
    pub(super) fn release_marker(&mut self) {
        if !self.log.shared() || self.own_claim.is_none() || self.own_claim != self.last_claim {
            return;
        }
        let marker = Claim {
            epoch: self.cursor.arbiter.epoch,
            writer: self.writer_id.to_string(),
            address: self.config.advertise.clone(),
            at: self.clock.now().max(self.last_now),
            release: true,
        };
        let appended = self
            .log
            .append(
                self.partition,
                &[LogRecord::new(b"release".to_vec(), codec::encode_claim(&marker))
                    .about(eventlog::About::claim(&marker, self.partition))],
            )
            .map_err(anyhow::Error::from)
            .and_then(|offsets| self.catch_up(offsets[0] + 1));
        if let Err(e) = appended {
            tracing::warn!(partition = self.partition, error = %e, "could not mark the partition released");
            self.reader = None;
        }
    }

    /// Where this writer reads: its partition, of the log's.
    pub(super) fn home(&self) -> Home {
        Home { partition: self.partition, partitions: self.log.partitions() }
    }

    /// Whether the partition's latest claim was released (or none was ever
    /// made): an instance assigned it claims it without a new assignment.
    pub(super) fn unowned(&self) -> bool {
        self.cursor.arbiter.released
    }

    /// Reads the partition back past a just-appended batch (shared logs).
    pub(super) fn read_back(&mut self, offsets: &[u64]) -> Result<ReadBack, LogError> {
        let end = offsets.last().expect("a batch") + 1;
        let mut reader = self.take_reader(ReaderKind::Writer)?;
        let mut arbiter = self.cursor.arbiter.clone();
        let mut quarantined = Vec::new();
        loop {
            let entries = eventlog::read_towards(
                reader.as_mut(),
                end,
                self.config.batch_commands_max.max(READ_BACK_RECORDS_MIN),
            )?;
            if entries.is_empty() {
                break;
            }
            for e in &entries {
                let ours = offsets.binary_search(&e.offset).is_ok();
                match (ours, arbiter.admit_bytes(&e.payload, self.home())) {
                    (true, Admitted::Record(_)) | (false, Admitted::Void) => {}
                    (false, Admitted::Quarantined(q)) => {
                        quarantined.push((Position { partition: self.partition, offset: e.offset }, q.why))
                    }
                    (_, Admitted::Claim(c)) => return Ok(ReadBack::Fenced(c.epoch)),
                    (_, Admitted::Released(_)) => {
                        return Ok(ReadBack::Unclear(format!("the partition was released at offset {}", e.offset)))
                    }
                    (true, _) => return Ok(ReadBack::Unclear(format!("record at offset {} is void", e.offset))),
                    (false, Admitted::Record(_)) => {
                        return Ok(ReadBack::Unclear(format!("unexpected record at offset {}", e.offset)))
                    }
                }
            }
        }
        self.reader = Some((reader, ReaderKind::Writer));
        self.cursor.next = end;
        Ok(ReadBack::Confirmed(quarantined))
    }

    /// Before deciding after an unknown outcome: re-read the log, and on a
    /// shared log take a new epoch so anything of ours still in flight is void.
    pub(super) fn resync(&mut self) -> anyhow::Result<()> {
        self.reader = None;
        if self.log.shared() {
            if !self.claim()? {
                self.fence();
                anyhow::bail!("partition {} was taken over by a newer writer", self.partition);
            }
        } else {
            let end = self.log.end_offset(self.partition)?;
            self.catch_up(end)?;
        }
        self.sync = LogSync::InStep;
        Ok(())
    }

    /// A newer claim took the partition: this writer follows it from now
    /// on, and claims again only under a newer assignment.
    pub(super) fn fence(&mut self) {
        tracing::warn!(
            partition = self.partition,
            "a newer writer claimed the partition; this writer stops writing it"
        );
        let generation = self.ownership.generation(self.partition);
        self.ownership.set_status(self.partition, Mode::Fenced, Some(generation));
    }
}
