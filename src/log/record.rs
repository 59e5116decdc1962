//! The units the writers append: one record per accepted command, holding all
//! of its events, so a command's events become visible together or not at all;
//! where a record sits (`Position`), and the answer a record gives (`Reply`).

use crate::domain::{AccountKey, CommandContext, Event, Millis, Points, Programme, ProgrammeKey};

/// A record of an account partition.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountRecord {
    /// The epoch of the writer that appended it.
    pub epoch: u64,
    /// Empty for commands the writer issued itself.
    pub request_id: String,
    pub account: AccountKey,
    /// The programme version the command was decided under.
    pub programme_version: u64,
    /// When the command was decided.
    pub at: Millis,
    pub fingerprint: u64,
    pub system: bool,
    pub events: Vec<Event>,
    pub context: CommandContext,
    /// How the programme-wide daily cap was counted for it.
    pub cap_mode: CapMode,
}

/// How the programme-wide daily issuance cap was counted for a command
/// (ARCHITECTURE.md, "The programme-wide cap in a cluster").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CapMode {
    /// No such cap applied (not an earn, or the programme has none).
    #[default]
    None,
    /// One counter over every partition: one instance writes them all.
    Exact,
    /// The partition's share of the day's cap, taken in the control stream.
    Share,
}

/// A record of the control stream.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlRecord {
    pub epoch: u64,
    pub request_id: String,
    pub at: Millis,
    pub fingerprint: u64,
    pub operator: String,
    /// The authenticated client (empty for the service's own records).
    pub client: String,
    pub event: ControlEvent,
}

// Control records are few (a programme version or a cap share each) and
// short-lived: the size of the larger variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum ControlEvent {
    /// A new version of a programme's rules.
    Configured(Programme),
    /// A share of a programme's daily cap taken for one partition.
    ShareTaken(CapShare),
    /// An alert acknowledged or resolved by the risk desk.
    AlertActioned(AlertActioned),
    /// A programme's webhook set, changed or disabled.
    WebhookConfigured(WebhookConfigured),
    /// A programme-wide alert raised as an event.
    AlertRaised(ProgrammeAlert),
}

/// A programme-wide alert (`ListAlerts` names it by `alert_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammeAlert {
    pub programme: ProgrammeKey,
    pub alert_id: String,
    pub rule: String,
    pub detail: String,
}

/// Where a programme's events are POSTed (`ConfigureWebhook`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfigured {
    pub programme: ProgrammeKey,
    pub webhook_id: String,
    pub url: String,
    /// Event types delivered (empty: all).
    pub event_types: Vec<String>,
    pub secret: String,
    pub disabled: bool,
}

/// The risk desk acknowledged (or resolved) an alert of `programme`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertActioned {
    pub programme: ProgrammeKey,
    pub alert_id: String,
    pub resolved: bool,
    pub note: String,
}

/// Up to `points` of `programme`'s issuance cap on `day` may be granted in
/// `partition` (in addition to its earlier shares that day).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapShare {
    pub programme: ProgrammeKey,
    /// Days since 1970-01-01 in the programme's time zone.
    pub day: i64,
    pub partition: u32,
    pub points: Points,
    pub writer: String,
}

/// A claim marker: `writer` takes its partition with `epoch`. Every record
/// after it with an older epoch is void for every reader. With `release`,
/// a release marker: the writer of `epoch` gives the partition up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub epoch: u64,
    pub writer: String,
    /// Where the claiming instance serves gRPC (empty when it did not say).
    pub address: String,
    pub at: Millis,
    pub release: bool,
}

/// What an account partition holds: commands' records and claim markers.
#[derive(Clone, Debug, PartialEq)]
pub enum PartitionRecord {
    Account(AccountRecord),
    Claim(Claim),
}

/// Where a record sits in the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// An account's balance right after a command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    pub available: i64,
    pub reserved: i64,
    pub debt: i64,
    pub growth: i64,
    pub pending: i64,
}

impl Balance {
    pub fn of(a: &crate::domain::Account) -> Balance {
        Balance {
            available: a.available(),
            reserved: a.reserved(),
            debt: a.debt,
            growth: a.growth,
            pending: a.pending(),
        }
    }
}

/// The answer to an accepted command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub request_id: String,
    /// True when this repeats the answer to an earlier identical request.
    pub replayed: bool,
    pub events: Vec<Event>,
    pub balance: Balance,
    pub position: Position,
    pub granted: i64,
    pub forfeited: i64,
    pub programme_version: u64,
    pub cap_mode: CapMode,
}

impl Reply {
    /// The reply a record gives, wherever it is built (live or in recovery).
    pub fn for_record(record: &AccountRecord, position: Position, balance: Balance) -> Reply {
        let (granted, forfeited) = record
            .events
            .iter()
            .filter_map(|e| match e {
                Event::PointsEarned { granted, forfeited, .. } => Some((*granted, *forfeited)),
                // A penalty grants negative points.
                Event::PenaltyApplied { points, .. } => Some((-*points, 0)),
                _ => None,
            })
            .fold((0, 0), |(g, f), (g2, f2)| (g + g2, f + f2));
        Reply {
            request_id: record.request_id.clone(),
            replayed: false,
            events: record.events.clone(),
            balance,
            position,
            granted,
            forfeited,
            programme_version: record.programme_version,
            cap_mode: record.cap_mode,
        }
    }
}

/// The partition an account's events live in: FNV-1a of the account key with
/// a bit mixer, so it never changes between machines. (Changed on
/// 2026-11-23 from plain FNV-1a, which left partitions unused with 3, 6, ...
/// partitions; logs written before cannot be read with this version.)
pub fn partition_for(account: &AccountKey, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [&account.tenant_id, &account.programme_id, &account.member_id] {
        for &b in part.as_bytes().iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // FNV-1a alone is skewed modulo small odd counts (with 3 partitions it
    // never picked partition 2): mix its bits first (MurmurHash3's fmix64).
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(partitions.max(1))) as u32
}
