//! The log's own arbitration of writers (ARCHITECTURE.md, "Writers
//! arbitrated by the log"): no lock or transaction says who writes a
//! partition, the log does, the same way for every reader.

use std::sync::Arc;

use super::record::{partition_for, AccountRecord, Claim, PartitionRecord, Position};

/// The log's own arbitration of writers, applied identically by every
/// reader (writers, followers, replay, audit, reconciliation): a claim with
/// a higher epoch than any before it takes the partition; a record counts
/// only when it carries the epoch of the latest such claim (0 before any).
/// A release marker of the latest claim's writer ends its epoch: nothing
/// counts until the next claim. Everything else is void. The state is the
/// epoch, who claimed it and whether it was released, stored with a
/// reader's position so it resumes exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Arbiter {
    pub epoch: u64,
    /// Who took the partition with `epoch` (None before any claim, and in
    /// stores written before claims named their owner).
    pub owner: Option<Arc<Owner>>,
    /// The writer of `epoch` gave the partition up.
    pub released: bool,
}

/// The writer of a partition as its latest counted claim names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The claiming process (host, pid, start time).
    pub writer: String,
    /// Where it serves gRPC (empty when it did not say).
    pub address: String,
}

/// A record as the arbiter sees it.
#[derive(Debug)]
pub enum Admitted {
    Record(AccountRecord),
    /// A claim that took the partition.
    Claim(Claim),
    /// The latest claim's writer gave the partition up.
    Released(Claim),
    /// A record of a superseded writer, or a claim that came too late.
    Void,
    /// A record no reader can use (it does not decode, or it names an
    /// account of another partition): void for every reader like
    /// [`Admitted::Void`], but named, counted and raised as an alert, since
    /// no writer of this log wrote it so (ARCHITECTURE.md, "A record no
    /// reader can use"). The arbiter's state does not change.
    Quarantined(Quarantine),
}

/// Why a record is void for every reader although no claim voids it.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantine {
    pub why: String,
    /// The record as it decoded, when it did (its account and time name
    /// the programme and day the books count it in).
    pub record: Option<Box<AccountRecord>>,
}

/// Where a payload was read: its partition, of how many the log has (an
/// account record belongs where its account hashes to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Home {
    pub partition: u32,
    pub partitions: u32,
}

/// When a payload's record (or claim) was decided, for replays that stop
/// at an instant; None for a payload that does not decode (it is skipped,
/// never where a replay stops).
pub fn decided_at(payload: &[u8]) -> Option<crate::domain::Millis> {
    match super::codec::decode_partition_record(payload).ok()? {
        PartitionRecord::Account(r) => Some(r.at),
        PartitionRecord::Claim(c) => Some(c.at),
    }
}

/// Names a record every reader skips, at error level, with where it is and
/// why (each reader says so once as it reads it: writers, followers, the
/// books, the tools).
pub fn report(reader: &'static str, at: Position, why: &str) {
    tracing::error!(
        reader,
        partition = at.partition,
        offset = at.offset,
        why,
        "log record quarantined: void for every reader"
    );
}

impl Arbiter {
    pub fn admit(&mut self, record: PartitionRecord) -> Admitted {
        match record {
            PartitionRecord::Claim(c) if c.release => {
                let by_owner = self.owner.as_ref().is_none_or(|o| o.writer == c.writer);
                if c.epoch == self.epoch && self.epoch > 0 && !self.released && by_owner {
                    self.released = true;
                    return Admitted::Released(c);
                }
                Admitted::Void
            }
            PartitionRecord::Claim(c) if c.epoch > self.epoch => {
                self.epoch = c.epoch;
                self.owner = Some(Arc::new(Owner { writer: c.writer.clone(), address: c.address.clone() }));
                self.released = false;
                Admitted::Claim(c)
            }
            PartitionRecord::Account(r) if r.epoch == self.epoch && !self.released => Admitted::Record(r),
            _ => Admitted::Void,
        }
    }

    /// Who writes the partition now: the latest claim's owner, unless it
    /// released the partition.
    pub fn writer(&self) -> Option<&Arc<Owner>> {
        self.owner.as_ref().filter(|_| !self.released)
    }

    /// Decodes and admits one payload of partition `home`. Never fails:
    /// a payload that does not decode, or a record that would count but
    /// names an account of another partition, is [`Admitted::Quarantined`]
    /// (a record of a superseded writer stays merely void, wherever it
    /// points), and the arbiter's state is left as it was.
    pub fn admit_bytes(&mut self, payload: &[u8], home: Home) -> Admitted {
        let record = match super::codec::decode_partition_record(payload) {
            Ok(record) => record,
            Err(e) => return Admitted::Quarantined(Quarantine { why: e.to_string(), record: None }),
        };
        match self.admit(record) {
            Admitted::Record(r) if partition_for(&r.account, home.partitions) != home.partition => {
                let why = format!(
                    "account {} belongs to partition {}, not {}",
                    r.account,
                    partition_for(&r.account, home.partitions),
                    home.partition
                );
                Admitted::Quarantined(Quarantine { why, record: Some(Box::new(r)) })
            }
            admitted => admitted,
        }
    }
}
