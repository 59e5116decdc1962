//! Consumer-group membership: how instances on one topic share its
//! partitions (ARCHITECTURE.md, "A cluster on Kafka"). Each instance joins
//! the group `points-ledger.<topic>` with the cooperative-sticky assignor,
//! so a rebalance moves only the partitions that must move; Kafka's group
//! coordinator says which member *should* own a partition, and the log's
//! claims (`arbiter`) say which writer *may* write it.
//!
//! The member reads no records through the group: it pauses every
//! partition it is assigned (the writers have their own readers, at
//! positions they store themselves) and only polls, for heartbeats and the
//! rebalance callbacks. librdkafka calls those on the polling thread:
//! `pre_rebalance` with a revocation (before it is acknowledged to the
//! group) and `post_rebalance` with an assignment (after it is taken).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

use super::{unavailable, KafkaConfig};
use crate::log::LogError;

/// What a member is told about its share of the partitions.
pub trait Assignments: Send + Sync + 'static {
    /// Partitions newly assigned to this member (incrementally: the ones it
    /// holds already are not repeated). Called with none when the member
    /// joined and got nothing.
    fn assigned(&self, partitions: &[u32]);
    /// Partitions taken away (or lost, when the group gave up on this
    /// member). Returns once they take no more commands: the revocation is
    /// acknowledged to the group only after that.
    fn revoked(&self, partitions: &[u32]);
}

/// How often the member polls (heartbeats and callbacks are served then).
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often a persisting group error is logged at most.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How a member joins: its group, its name, and the group's timing.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub group: String,
    /// Shown to operators (`kafka-consumer-groups --describe`): the
    /// instance's advertised address.
    pub member: String,
    /// How long the coordinator waits for a member's heartbeat before it
    /// gives the member's partitions to the others (`session.timeout.ms`).
    pub session_timeout: Duration,
}

impl GroupConfig {
    /// The group of the instances on `topic`.
    pub fn default_group(topic: &str) -> String {
        format!("points-ledger.{topic}")
    }
}

struct Rebalancer {
    topic: String,
    handler: Arc<dyn Assignments>,
}

impl Rebalancer {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<u32> {
        let mut ps: Vec<u32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic && e.partition() >= 0)
            .map(|e| e.partition() as u32)
            .collect();
        ps.sort_unstable();
        ps
    }
}

impl ClientContext for Rebalancer {}

impl ConsumerContext for Rebalancer {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let ps = self.partitions(tpl);
            let lost = consumer.assignment_lost();
            tracing::info!(partitions = ?ps, lost, "group revokes partitions");
            self.handler.revoked(&ps);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Membership only: the writers read the log themselves.
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!(error = %e, "cannot pause the group's partitions");
                }
                let ps = self.partitions(tpl);
                tracing::info!(partitions = ?ps, "group assigns partitions");
                self.handler.assigned(&ps);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "group rebalance failed"),
        }
    }
}

/// This instance's membership in its group, polled on a thread of its own
/// until [`GroupMember::leave`].
pub struct GroupMember {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GroupMember {
    /// Subscribes to the account topic in `group`; assignments arrive through
    /// `handler` from the member's thread.
    pub fn join(
        config: &KafkaConfig,
        group: &GroupConfig,
        handler: Arc<dyn Assignments>,
    ) -> Result<GroupMember, LogError> {
        let session = group.session_timeout.as_millis().max(1000) as u64;
        let consumer: BaseConsumer<Rebalancer> = config
            .build(&[
                ("group.id", group.group.clone()),
                ("client.id", format!("points-ledger {}", group.member)),
                ("partition.assignment.strategy", "cooperative-sticky".into()),
                ("session.timeout.ms", session.to_string()),
                ("heartbeat.interval.ms", (session / 5).max(300).to_string()),
                ("enable.auto.commit", "false".into()),
                ("enable.auto.offset.store", "false".into()),
                ("auto.offset.reset", "latest".into()),
                ("allow.auto.create.topics", "false".into()),
            ])
            .create_with_context(Rebalancer { topic: config.topic.clone(), handler })
            .map_err(|e| unavailable("group member", e))?;
        consumer.subscribe(&[&config.topic]).map_err(|e| unavailable("subscribe", e))?;
        tracing::info!(group = %group.group, member = %group.member, session_timeout_ms = session, "joining the group");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("group-member".into())
                .spawn(move || poll_until(consumer, &stop))
                .map_err(LogError::Io)?
        };
        Ok(GroupMember { stop, thread: Some(thread) })
    }

    /// Leaves the group: the member's partitions are revoked (the handler
    /// hears it and returns once they take no more commands), the group is
    /// told at once (no session timeout to wait for), and the thread ends.
    pub fn leave(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Polls until `stop`, then closes the consumer (which revokes and sends
/// LeaveGroup; dropping a group consumer polls until it is closed).
fn poll_until(consumer: BaseConsumer<Rebalancer>, stop: &AtomicBool) {
    let mut last_error: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(POLL_INTERVAL) {
            Some(Err(e)) if last_error.is_none_or(|t| t.elapsed() > ERROR_LOG_INTERVAL) => {
                tracing::warn!(error = %e, "group member");
                last_error = Some(Instant::now());
            }
            // Records before the pause took hold: the member reads none.
            _ => {}
        }
    }
    consumer.unsubscribe();
    let started = Instant::now();
    // Serve the revocation callback of the unsubscribe before closing.
    while !consumer.assignment().map(|a| a.count() == 0).unwrap_or(true) && started.elapsed() < Duration::from_secs(10)
    {
        let _ = consumer.poll(POLL_INTERVAL);
    }
    drop(consumer);
    tracing::info!("left the group");
}
