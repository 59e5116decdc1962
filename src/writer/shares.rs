//! The programme-wide daily cap in a cluster (ARCHITECTURE.md, "The
//! programme-wide cap in a cluster"). With partitions on several instances
//! no instance sees every grant as it happens, so the cap is split into
//! shares, one account partition at a time, recorded in the control stream
//! (`programmes`). A partition's writer grants, per programme day, at most
//! the partition's shares minus what the partition has granted; when that
//! runs short it takes another share from the part of the cap nobody has
//! taken. The control stream counts a share only while all shares stay
//! within the cap, so the cap holds whoever takes shares, in whatever order.
//!
//! Shares belong to partitions, not instances: after a failover the new
//! owner goes on with the partition's shares and its grants (both folded
//! from the log), so a dead instance strands nothing. What a share strands
//! is what its partition does not grant before the day ends; each share is
//! at most a 1/(2N) slice of what is left (N partitions), so that is small
//! next to the cap.

use std::sync::Arc;

use super::commit::Work;
use super::issuance::{earned_in, Granted};
use super::partition::PartitionWriter;
use super::{Unavailable, WriteError};
use crate::domain::{self, Command, Millis, Points, ProgrammeKey};
use crate::log::record::{CapMode, CapShare};
use crate::programmes::Programmes;
use crate::store;

/// Shares a writer tries to take for one command at most (another
/// partition may take the last of the cap first).
const TAKE_ATTEMPTS_MAX: usize = 3;

/// A decision under a share: its events and grants, or why there is none.
pub(super) type ShareDecision = Result<(Vec<domain::Event>, Granted, CapMode), WriteError>;

impl PartitionWriter {
    /// Decides an earn under a programme-wide cap on `day` against this
    /// partition's share, taking more of the cap first when the share left
    /// would not cover the points asked for.
    pub(super) fn decide_under_share(
        &mut self,
        work: &mut Work,
        cmd: &Command,
        programme: &domain::Programme,
        now: Millis,
        day: i64,
        programmes: &Arc<Programmes>,
    ) -> Result<ShareDecision, store::StoreError> {
        let key = cmd.account.programme();
        // The share is sized by what the earn would grant with the whole cap
        // left (every other rule applied), never by what it asks: an earn
        // that is refused, or asks for far more than it could get, takes no
        // share from the other partitions.
        let touched = self.account(work, &cmd.account)?;
        let whole_cap = domain::Limits { programme_issued_today: 0 };
        let asked = match domain::decide_with(Some(programme), &touched.account, cmd, now, &whole_cap) {
            Err(rejection) => return Ok(Err(WriteError::Rejected(rejection))),
            Ok(events) => {
                let mut granted = Granted::new();
                earned_in(&cmd.account, &events, &mut granted);
                granted.values().copied().sum::<Points>()
            }
        };
        let used =
            self.issued_in_partition(&key, day) + work.issued_reserved.get(&(key.clone(), day)).copied().unwrap_or(0);
        if let Err(e) = self.cover(&key, day, used, asked, programmes, now) {
            return Ok(Err(e));
        }
        let room = (self.registry.read().expect("registry lock").share(&key, day, self.partition) - used).max(0);
        let limits = domain::Limits { programme_issued_today: programme.programme_daily_issuance_cap - room };
        let touched = self.account(work, &cmd.account)?;
        Ok(match domain::decide_with(Some(programme), &touched.account, cmd, now, &limits) {
            Err(rejection) => Err(WriteError::Rejected(rejection)),
            Ok(events) => {
                let mut granted = Granted::new();
                earned_in(&cmd.account, &events, &mut granted);
                self.issuance.add(&granted, 1);
                Ok((events, granted, CapMode::Share))
            }
        })
    }

    /// Takes shares until the partition's room covers `asked` (beyond `used`)
    /// or the cap has nothing left to share.
    fn cover(
        &mut self,
        key: &ProgrammeKey,
        day: i64,
        used: Points,
        asked: Points,
        programmes: &Arc<Programmes>,
        now: Millis,
    ) -> Result<(), WriteError> {
        for _attempt in 0..TAKE_ATTEMPTS_MAX {
            let (share, unshared) = {
                let r = self.registry.read().expect("registry lock");
                (r.share(key, day, self.partition), r.unshared(key, day))
            };
            let short = asked - (share - used).max(0);
            if short <= 0 || unshared <= 0 {
                return Ok(());
            }
            let slices = 2 * Points::from(self.log.partitions().max(1));
            let slice = (unshared + slices - 1) / slices;
            let points = short.max(slice).min(unshared);
            let share = CapShare {
                programme: key.clone(),
                day,
                partition: self.partition,
                points,
                writer: self.writer_id.to_string(),
            };
            match programmes.take_share(share, now) {
                Ok(true) => {
                    tracing::debug!(partition = self.partition, programme = ?key, day, points, "took a share of the daily cap");
                }
                // Someone took the room first: look again.
                Ok(false) => {}
                Err(e) => return Err(Unavailable::Log(format!("cannot take a share of the daily cap: {e}")).into()),
            }
        }
        Ok(())
    }
}
