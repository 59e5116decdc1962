//! Append and confirm, then answer: one durable append of a batch's
//! records (read back on a shared log), and every caller's reply.

use super::commit::{Quarantined, Work};
use super::decide::Decided;
use super::follow::ReadBack;
use super::partition::{LogSync, PartitionWriter};
use super::Unavailable;
use crate::log::record::{AccountRecord, Balance, Position, Reply};
use crate::log::{LogError, LogRecord};

impl PartitionWriter {
    /// Append and confirm: one durable append of the batch's records and, on
    /// a shared log when another writer's records came in between, the
    /// read-back that proves they count. The offsets they
    /// got, or why the batch is void (or its outcome unknown).
    pub(super) fn append_and_confirm(
        &mut self,
        records: &mut [(AccountRecord, Vec<Balance>, Balance, Vec<u8>)],
    ) -> Result<(Vec<u64>, Quarantined), Unavailable> {
        let encoded: Vec<LogRecord> = records
            .iter_mut()
            .map(|(r, _, _, payload)| {
                LogRecord::new(r.account.to_string().into_bytes(), std::mem::take(payload))
                    .about(crate::log::About::account(r))
            })
            .collect();
        let started = std::time::Instant::now();
        let appended = self.log.append(self.partition, &encoded);
        self.observed.append_seconds.duration(started.elapsed());
        let offsets = appended.map_err(|e| match e {
            LogError::Unavailable(m) => Unavailable::Log(m),
            other => Unavailable::Log(format!("append failed: {other}")),
        })?;
        // Right after everything this writer has folded, with no gap: no
        // other record lies before or among them, so the arbiter stands at
        // this writer's epoch there and they count. A gap means another
        // writer appended (a claim, perhaps): read the partition back.
        let contiguous = offsets.first() == Some(&self.cursor.next) && offsets.windows(2).all(|w| w[1] == w[0] + 1);
        if !self.log.shared() || contiguous {
            self.cursor.next = offsets.last().expect("a batch") + 1;
            return Ok((offsets, Vec::new()));
        }
        match self.read_back(&offsets) {
            Ok(ReadBack::Confirmed(quarantined)) => Ok((offsets, quarantined)),
            Ok(ReadBack::Fenced(epoch)) => {
                self.fence();
                // Learn the new owner before answering, so the caller's retry
                // through this instance is forwarded to it.
                self.reader = None;
                if let Err(e) =
                    self.log.end_offset(self.partition).map_err(anyhow::Error::from).and_then(|end| self.catch_up(end))
                {
                    tracing::debug!(partition = self.partition, error = %e, "cannot read the new owner's claim yet");
                }
                Err(Unavailable::TakenOver { partition: self.partition, epoch: Some(epoch) })
            }
            Ok(ReadBack::Unclear(why)) => Err(Unavailable::NotConfirmed(why)),
            Err(e) => Err(Unavailable::NotConfirmed(format!("read-back failed: {e}"))),
        }
    }

    /// A batch that did not land (or may have): everyone hears
    /// `Unavailable`, its grants leave the shared issuance, and the next
    /// batch re-reads the log first (counting whatever did land then).
    pub(super) fn fail(&mut self, decided: Decided, cause: Unavailable) {
        tracing::warn!(partition = self.partition, error = %cause, "batch answered UNAVAILABLE");
        self.issuance.add(&decided.work.issued_reserved, -1);
        self.sync = LogSync::Unsure;
        self.reader = None;
        let unchanged = decided.unchanged.into_iter().map(|(tx, _)| tx);
        for tx in decided.waiting.into_iter().map(|(tx, _, _)| tx).chain(unchanged) {
            tx.send(Err(cause.clone().into()));
        }
    }

    /// Answer: the batch is durable in the log, so every caller hears its
    /// reply now; its statement entries (their positions known now) and
    /// idempotency records go into the work to commit.
    pub(super) fn answer(&self, decided: Decided, offsets: &[u64]) -> Work {
        let Decided { mut work, records, waiting, unchanged, .. } = decided;
        let mut replies = Vec::with_capacity(records.len());
        for ((r, balances, b, _), &offset) in records.iter().zip(offsets) {
            let position = Position { partition: self.partition, offset };
            let touched = work.accounts.get_mut(&r.account).expect("a decided account is touched");
            Self::add_entries(touched, r, position, balances, &mut work.pages);
            let reply = Reply::for_record(r, position, *b);
            if !r.system {
                work.requests.push(self.request(r, &reply));
            }
            replies.push(Some(reply));
        }
        // A reply goes to its last waiter as it is (a retry within the batch
        // waits on the same record and gets a copy).
        let mut waiters = vec![0u32; replies.len()];
        waiting.iter().for_each(|(_, i, _)| waiters[*i] += 1);
        for (tx, i, replayed) in waiting {
            waiters[i] -= 1;
            let mut reply = if waiters[i] == 0 {
                replies[i].take().expect("a reply for each record")
            } else {
                replies[i].clone().expect("a reply for each record")
            };
            reply.replayed = replayed;
            tx.send(Ok(reply));
        }
        let last = Position { partition: self.partition, offset: *offsets.last().expect("a batch") };
        for (tx, reply) in unchanged {
            tx.send(Ok(Reply { position: last, ..reply }));
        }
        work
    }
}
