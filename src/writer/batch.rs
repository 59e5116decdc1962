//! One batch (group commit): its phases in order.

use tokio::sync::oneshot;

use super::partition::{LogSync, PartitionWriter};
use super::{Msg, PreviewTx, ReplyTx, Unavailable};
use crate::domain::{AccountKey, Command, CommandBody, Millis};
use crate::log::record::{Position, Reply};
use crate::store::{self};

/// The writer's spans of a batch's commands, each a child of its call's
/// span (none when tracing is off: a disabled callsite's check each).
struct BatchSpans(Vec<tracing::Span>);

impl BatchSpans {
    fn of(partition: u32, msgs: &[Msg]) -> BatchSpans {
        let commands = msgs.len();
        let spans = msgs.iter().filter_map(|m| match m {
            Msg::Submit(_, tx) if !tx.span.is_disabled() => {
                Some(tracing::debug_span!(parent: &tx.span, "writer.batch", partition, commands))
            }
            _ => None,
        });
        BatchSpans(spans.collect())
    }

    /// The append's span under each command's, while it lasts.
    fn appending(&self, records: usize) -> Vec<tracing::Span> {
        self.0.iter().map(|s| tracing::debug_span!(parent: s, "log.append", records)).collect()
    }
}

/// The commands of one batch, gathered from the queue.
struct Gathered {
    /// Callers' commands with their answer's sender; the writer's own
    /// (ticks) without one.
    commands: Vec<(Command, Option<ReplyTx>)>,
    /// Senders of `Msg::Tick` waiting for the batch: they hear when it is
    /// done (appended, or failed), as these are dropped.
    tick_waiters: Vec<oneshot::Sender<()>>,
    /// Due-index rows the tick took up.
    ticked: Vec<(Vec<u8>, AccountKey)>,
    /// Commands to decide without writing, answered before the batch.
    previews: Vec<(Command, PreviewTx)>,
    /// How far the level re-evaluation walked, written with the batch.
    levels_progress: super::reevaluate::Rows,
    /// The accounts it ticked.
    evaluated: Vec<AccountKey>,
}

impl PartitionWriter {
    /// One batch: gather, decide, append and confirm, answer, commit.
    pub(super) fn process(&mut self, msgs: Vec<Msg>) -> anyhow::Result<()> {
        if !self.ownership.status(self.partition).appends() {
            Self::refuse(msgs, &Unavailable::PartitionMoving(self.partition));
            return Ok(());
        }
        if self.sync == LogSync::Unsure {
            if let Err(e) = self.resync() {
                tracing::warn!(partition = self.partition, error = %e, "writer cannot re-read the log yet");
                Self::refuse(msgs, &Unavailable::Log(e.to_string()));
                return Ok(());
            }
        }
        if self.log.shared() && msgs.iter().any(|m| matches!(m, Msg::Tick(_))) {
            match self.taken_over() {
                Ok(false) => {}
                Ok(true) => {
                    Self::refuse(msgs, &Unavailable::TakenOver { partition: self.partition, epoch: None });
                    return Ok(());
                }
                // The log is unreachable: the batch finds out (and answers
                // UNAVAILABLE) when it appends.
                Err(e) => {
                    tracing::debug!(partition = self.partition, error = %e, "cannot look for newer claims now");
                    self.reader = None;
                }
            }
        }
        let now = self.clock.now().max(self.last_now);
        self.last_now = now;
        let spans = BatchSpans::of(self.partition, &msgs);
        let mut gathered = self.gather(msgs, now)?;
        self.preview(std::mem::take(&mut gathered.previews), now)?;
        let mut decided = self.decide(gathered.commands, gathered.ticked, now)?;
        decided.work.levels_progress = std::mem::take(&mut gathered.levels_progress);
        decided.work.evaluated = std::mem::take(&mut gathered.evaluated);
        self.set_aside(&mut decided, now)?;
        if decided.records.is_empty() {
            self.write_levels_progress(&mut decided.work)?;
            let at = self.cursor.next.saturating_sub(1);
            for (tx, reply) in decided.unchanged.drain(..) {
                tx.send(Ok(Reply { position: Position { partition: self.partition, offset: at }, ..reply }));
            }
            return Ok(());
        }
        let appending = spans.appending(decided.records.len());
        let appended = self.append_and_confirm(&mut decided.records);
        drop(appending);
        let (offsets, quarantined) = match appended {
            Ok(confirmed) => confirmed,
            Err(cause) => {
                self.fail(decided, cause);
                return Ok(());
            }
        };
        let mut work = self.answer(decided, &offsets);
        work.quarantined = quarantined;
        self.commit(work)?;
        drop(gathered.tick_waiters);
        Ok(())
    }

    /// Gather: the queued commands, and on the batch's first tick one `Tick`
    /// command per account due by `now` (from the due index).
    fn gather(&self, msgs: Vec<Msg>, now: Millis) -> Result<Gathered, store::StoreError> {
        let mut g = Gathered {
            commands: Vec::with_capacity(msgs.len()),
            previews: Vec::new(),
            levels_progress: Vec::new(),
            evaluated: Vec::new(),
            tick_waiters: Vec::new(),
            ticked: Vec::new(),
        };
        let mut ticked = false;
        for m in msgs {
            match m {
                Msg::Submit(c, tx) => g.commands.push((*c, Some(tx))),
                Msg::Preview(c, tx) => g.previews.push((*c, tx)),
                Msg::Wake => {}
                Msg::Tick(done) => {
                    g.tick_waiters.extend(done);
                    if ticked {
                        continue;
                    }
                    ticked = true;
                    let due = super::scheduler::due_accounts(
                        &self.store,
                        self.partition,
                        now,
                        self.config.tick_accounts_max,
                    )?;
                    let room = self.config.tick_accounts_max.saturating_sub(due.len());
                    let mut tick = Vec::with_capacity(due.len());
                    for (row, account) in due {
                        g.ticked.push((row, account.clone()));
                        tick.push(account);
                    }
                    let (evaluate, progress) = {
                        let registry = self.registry.read().expect("registry lock");
                        let partitions = self.log.partitions();
                        super::reevaluate::accounts_to_evaluate(
                            &self.store,
                            &registry,
                            self.partition,
                            partitions,
                            room,
                        )?
                    };
                    g.levels_progress = progress;
                    g.evaluated = evaluate.clone();
                    for account in tick.into_iter().chain(evaluate) {
                        let body = CommandBody::Tick;
                        g.commands.push((
                            Command { request_id: String::new(), account, body, context: Default::default() },
                            None,
                        ));
                    }
                }
            }
        }
        Ok(g)
    }
}
