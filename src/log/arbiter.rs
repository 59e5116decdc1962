//! The log's own arbitration of writers (ARCHITECTURE.md, "Writers
//! arbitrated by the log"): no lock or transaction says who writes a
//! partition, the log does, the same way for every reader.

use super::record::{AccountRecord, Claim, PartitionRecord};

/// The log's own arbitration of writers, applied identically by every
/// reader (writers, followers, replay, audit, reconciliation): a claim with
/// a higher epoch than any before it takes the partition; a record counts
/// only when it carries the epoch of the latest such claim (0 before any).
/// Everything else is void. The state is one number, stored with a reader's
/// position so it resumes exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Arbiter {
    pub epoch: u64,
}

/// A record as the arbiter sees it.
#[derive(Debug)]
pub enum Admitted {
    Record(AccountRecord),
    /// A claim that took the partition.
    Claim(Claim),
    /// A record of a superseded writer, or a claim that came too late.
    Void,
}

impl Arbiter {
    pub fn admit(&mut self, record: PartitionRecord) -> Admitted {
        match record {
            PartitionRecord::Claim(c) if c.epoch > self.epoch => {
                self.epoch = c.epoch;
                Admitted::Claim(c)
            }
            PartitionRecord::Account(r) if r.epoch == self.epoch => Admitted::Record(r),
            _ => Admitted::Void,
        }
    }

    /// Decodes and admits one payload of an account partition.
    pub fn admit_bytes(&mut self, payload: &[u8]) -> Result<Admitted, super::codec::CodecError> {
        Ok(self.admit(super::codec::decode_partition_record(payload)?))
    }
}
