//! The log's own arbitration of writers (ARCHITECTURE.md, "Writers
//! arbitrated by the log"): no lock or transaction says who writes a
//! partition, the log does, the same way for every reader.

use std::sync::Arc;

use super::record::{AccountRecord, Claim, PartitionRecord};

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

    /// Decodes and admits one payload of an account partition.
    pub fn admit_bytes(&mut self, payload: &[u8]) -> Result<Admitted, super::codec::CodecError> {
        Ok(self.admit(super::codec::decode_partition_record(payload)?))
    }
}
