//! The writer's modes and the moves between them: catching up, writing,
//! following, releasing, fenced.

use std::time::Duration;

use tokio::sync::mpsc;

use super::mode::Mode;
use super::partition::{LogSync, PartitionWriter, FOLLOW_POLL_MS, START_UP_RETRY_MS};
use super::{Msg, Unavailable};
use crate::store;

impl PartitionWriter {
    /// The writer's life: it catches up with the log, then moves between
    /// its modes (see [`Mode`]) until its queue closes or its state cannot
    /// be read.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        if !self.initial_catch_up(&rx) {
            return;
        }
        self.ownership.set_status(self.partition, Mode::Following, None);
        while self.step(&mut rx) {}
        tracing::info!(partition = self.partition, "writer stopped");
    }

    /// One move, by mode: a batch while writing; letting the partition go
    /// once it is not wanted; taking it when it is wanted (under an
    /// assignment not tried yet, or nobody owns it); following it otherwise.
    /// False once the writer stops.
    fn step(&mut self, rx: &mut mpsc::Receiver<Msg>) -> bool {
        let wanted = self.ownership.wanted(self.partition);
        match self.ownership.status(self.partition) {
            Mode::Stopped => false,
            Mode::Writing if !wanted => {
                self.release(rx);
                true
            }
            Mode::Writing => self.write_batch(rx),
            Mode::CatchingUp | Mode::Following | Mode::Releasing | Mode::Fenced => {
                let generation = self.ownership.generation(self.partition);
                if wanted && (self.ownership.tried(self.partition) < generation || self.unowned()) {
                    self.take(generation);
                    return true;
                }
                self.follow(rx)
            }
        }
    }

    /// Writing: waits for a command, runs a batch of what is queued (up to
    /// the batch bound). False once the queue closes or the writer stops.
    fn write_batch(&mut self, rx: &mut mpsc::Receiver<Msg>) -> bool {
        let Some(first) = rx.blocking_recv() else { return false };
        let mut msgs = vec![first];
        while msgs.len() < self.config.batch_commands_max {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        self.observed.batch_commands.count(msgs.len());
        self.observed.queue_commands.set(rx.len() as u64);
        self.process_or_stop(msgs)
    }

    /// Folds the log from the stored cursor to its end, retrying while the
    /// log is unreachable. False when the writer was shut down meanwhile.
    fn initial_catch_up(&mut self, rx: &mpsc::Receiver<Msg>) -> bool {
        if !self.bulk_catch_up(rx) {
            return false;
        }
        loop {
            match self.log.end_offset(self.partition).map_err(anyhow::Error::from).and_then(|end| self.catch_up(end)) {
                Ok(folded) => {
                    tracing::info!(
                        partition = self.partition,
                        folded,
                        next = self.cursor.next,
                        "writer caught up with the log"
                    );
                    return true;
                }
                Err(e) => {
                    tracing::warn!(partition = self.partition, error = %e, "writer cannot catch up with the log yet; retrying");
                    if rx.is_closed() {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(START_UP_RETRY_MS));
                }
            }
        }
    }

    /// Takes the partition, wanted under assignment `generation`: catches
    /// up and, on a shared log, claims it. A claim lost to a newer writer is
    /// not tried again under the same assignment.
    fn take(&mut self, generation: u64) {
        match self.start_up() {
            Ok(true) => {
                // Caught up and claimed: whatever an earlier failed append left is settled.
                self.sync = LogSync::InStep;
                self.ownership.set_status(self.partition, Mode::Writing, Some(generation));
            }
            Ok(false) => {
                tracing::warn!(partition = self.partition, "another writer claimed the partition first; following it");
                self.ownership.set_status(self.partition, Mode::Fenced, Some(generation));
            }
            Err(e) => {
                tracing::warn!(partition = self.partition, error = %e, "cannot claim the partition yet; retrying");
                self.reader = None;
                std::thread::sleep(Duration::from_millis(START_UP_RETRY_MS));
            }
        }
    }

    /// Lets the partition go (it was revoked): no new commands are queued
    /// from now on, the ones queued already are decided, then the writer
    /// follows the partition.
    fn release(&mut self, rx: &mut mpsc::Receiver<Msg>) {
        self.ownership.set_status(self.partition, Mode::Releasing, None);
        let mut left = rx.len();
        while left > 0 {
            let mut msgs = Vec::with_capacity(left.min(self.config.batch_commands_max));
            while msgs.len() < self.config.batch_commands_max && left > 0 {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => left = 0,
                }
                left = left.saturating_sub(1);
            }
            if !msgs.is_empty() && !self.process_or_stop(msgs) {
                return;
            }
        }
        self.release_marker();
        // A batch fenced meanwhile left the writer fenced; else it follows.
        if self.ownership.status(self.partition) == Mode::Releasing {
            self.ownership.set_status(self.partition, Mode::Following, None);
        }
        tracing::info!(partition = self.partition, next = self.cursor.next, "released the partition");
    }

    /// Runs a batch; false when the writer must stop. A batch that fails
    /// outside its append (its state could not be read or committed, a
    /// log read it needed did not come) starts the writer over as a
    /// restart would: from its stored state, catching up with the log
    /// (which holds whatever was answered) and claiming the partition
    /// again. Its callers hear `UNAVAILABLE`, safe to retry.
    fn process_or_stop(&mut self, msgs: Vec<Msg>) -> bool {
        let Err(e) = self.process(msgs) else { return true };
        tracing::error!(partition = self.partition, error = %e, "batch failed; the writer starts over from its stored state");
        std::thread::sleep(Duration::from_millis(START_UP_RETRY_MS));
        match self.start_over() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(partition = self.partition, error = %e, "writer state cannot be read; writer stops");
                self.ownership.set_status(self.partition, Mode::Stopped, Some(u64::MAX));
                false
            }
        }
    }

    /// Forgets everything not in the store (cache, cursor, the log
    /// reader, claims seen) and lets the run loop take the partition
    /// again under its current assignment.
    fn start_over(&mut self) -> Result<(), store::StoreError> {
        self.issued = super::issuance::load(&self.store, self.partition)?;
        self.cursor = store::read_cursor(&self.store, self.partition)?;
        self.cache.clear();
        self.observed.cached(self.cache.size());
        self.reader = None;
        self.last_claim = None;
        self.own_claim = None;
        self.sync = LogSync::InStep;
        let generation = self.ownership.generation(self.partition);
        // Not tried under this assignment yet: the run loop takes it again.
        self.ownership.set_status(self.partition, Mode::Following, Some(generation.saturating_sub(1)));
        Ok(())
    }

    /// A partition another writer owns (or nobody here wants): answers what
    /// is queued with `Unavailable` and folds the other writer's records as
    /// they arrive, so this instance's views of it stay current. False once
    /// the queue is closed (shutdown).
    fn follow(&mut self, rx: &mut mpsc::Receiver<Msg>) -> bool {
        loop {
            match rx.try_recv() {
                Ok(m) => Self::refuse(vec![m], &Unavailable::PartitionMoving(self.partition)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        if let Err(e) = self.follow_step(Duration::from_millis(FOLLOW_POLL_MS)) {
            tracing::warn!(partition = self.partition, error = %e, "cannot follow the partition's log; retrying");
            self.reader = None;
            std::thread::sleep(Duration::from_millis(START_UP_RETRY_MS));
        }
        true
    }

    /// Answers every caller in `msgs` with `Unavailable(cause)`.
    pub(super) fn refuse(msgs: Vec<Msg>, cause: &Unavailable) {
        for m in msgs {
            match m {
                Msg::Submit(_, tx) => {
                    tx.send(Err(cause.clone().into()));
                }
                Msg::Preview(_, tx) => {
                    let _ = tx.send(Err(cause.clone().into()));
                }
                Msg::Tick(done) => drop(done),
                Msg::Wake => {}
            }
        }
    }
}
