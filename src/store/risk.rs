//! The risk view's rows (the books' `risk`, `alerts` and the raise rows of
//! `outbox`). In `risk` a tag byte comes first: `a` a member's counters
//! (a `RiskState`), `i`/`r` a partition's issuance/redemption of a
//! programme day (i64 BE), `s`/`p` a member's first earn/spend of a day
//! from an address (when and where: [`Seen`]).

use super::{account_key, millis_from_key, millis_key, programme_prefix, read_i64, read_u32, read_u64, StoreError};
use crate::domain::{AccountKey, Millis, ProgrammeKey};

/// The tag of a programme day's issuance rows.
pub const ISSUANCE: u8 = b'i';
/// The tag of a programme day's redemption rows.
pub const REDEMPTION: u8 = b'r';
/// The tag of first earns of a day from an address.
pub const SHARED_EARN: u8 = b's';
/// The tag of first spends of a day from an address.
pub const SHARED_SPEND: u8 = b'p';

/// A member's counters.
pub fn account_row(a: &AccountKey) -> Vec<u8> {
    let mut k = b"a".to_vec();
    k.extend_from_slice(&account_key(a));
    k
}

/// Every row of `tag` of a programme day starts with this.
pub fn day_prefix(tag: u8, p: &ProgrammeKey, day: i64) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(&programme_prefix(&p.tenant_id, &p.programme_id));
    k.extend_from_slice(&millis_key(day));
    k
}

/// A partition's sum of `tag` (issuance, redemption) on a programme day.
pub fn day_sum_row(tag: u8, p: &ProgrammeKey, day: i64, partition: u32) -> Vec<u8> {
    let mut k = day_prefix(tag, p, day);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// A day sum's points.
pub fn day_sum(v: &[u8]) -> Result<i64, StoreError> {
    read_i64(v, "a day's sum")
}

/// A member's first earn (tag `s`) or spend (tag `p`) of a day from an
/// address.
pub fn shared_row(tag: u8, p: &ProgrammeKey, day: i64, address: &str, member: &str) -> Vec<u8> {
    let mut k = day_prefix(tag, p, day);
    k.extend_from_slice(address.as_bytes());
    k.push(0);
    k.extend_from_slice(member.as_bytes());
    k
}

/// The (address, member) a shared row names, after its day prefix of
/// `prefix_len` bytes.
pub fn parse_shared_row(prefix_len: usize, k: &[u8]) -> Option<(String, String)> {
    let rest = k.get(prefix_len..)?;
    let i = rest.iter().position(|b| *b == 0)?;
    Some((String::from_utf8_lossy(&rest[..i]).into_owned(), String::from_utf8_lossy(&rest[i + 1..]).into_owned()))
}

/// When and where a shared row's command was decided: its time (i64 BE),
/// partition (u32 BE) and offset (u64 BE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub at: Millis,
    pub partition: u32,
    pub offset: u64,
}

impl Seen {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.at.to_be_bytes().to_vec();
        v.extend_from_slice(&self.partition.to_be_bytes());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v
    }

    pub fn decode(v: &[u8]) -> Result<Seen, StoreError> {
        let short = StoreError::Layout("a shared address's first use");
        Ok(Seen {
            at: read_i64(v, "a shared address's first use")?,
            partition: v.get(8..).and_then(read_u32).ok_or(short)?,
            offset: read_u64(v.get(12..).unwrap_or_default(), "a shared address's first use")?,
        })
    }
}

/// Alerts (`alerts`): programme, decision time, partition, offset, rule.
pub fn alert_row(p: &ProgrammeKey, at: Millis, partition: u32, offset: u64, rule: &str) -> Vec<u8> {
    let mut k = programme_prefix(&p.tenant_id, &p.programme_id);
    k.extend_from_slice(&millis_key(at));
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&offset.to_be_bytes());
    k.extend_from_slice(rule.as_bytes());
    k
}

/// The decision time of an alert row, after its programme prefix of
/// `prefix_len` bytes.
pub fn alert_time(prefix_len: usize, k: &[u8]) -> Result<Millis, StoreError> {
    k.get(prefix_len..).and_then(millis_from_key).ok_or(StoreError::Layout("an alert's time"))
}

/// The outbox rows of alerts to raise.
pub const RAISE_PREFIX: &[u8] = b"raise/";

/// Every raise row of `partition` starts with this.
pub fn raise_prefix(partition: u32) -> Vec<u8> {
    let mut k = RAISE_PREFIX.to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// A member's alert to raise in their partition (`outbox`): partition,
/// account, alert id (the value: the `Alert`).
pub fn raise_row(partition: u32, a: &AccountKey, alert_id: &str) -> Vec<u8> {
    let mut k = raise_prefix(partition);
    k.extend_from_slice(&account_key(a));
    k.extend_from_slice(alert_id.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_rows_read_back_and_short_ones_are_errors() {
        let seen = Seen { at: -3, partition: 7, offset: 11 };
        assert_eq!(Seen::decode(&seen.encode()).unwrap(), seen);
        assert!(Seen::decode(&seen.encode()[..12]).is_err());
        assert!(Seen::decode(&[0; 9]).is_err());
        assert!(day_sum(&[0; 7]).is_err());
        let p = ProgrammeKey { tenant_id: "t".into(), programme_id: "p".into() };
        let k = shared_row(SHARED_EARN, &p, 5, "10.0.0.1", "m");
        assert_eq!(parse_shared_row(day_prefix(SHARED_EARN, &p, 5).len(), &k), Some(("10.0.0.1".into(), "m".into())));
        let prefix = programme_prefix("t", "p").len();
        assert_eq!(alert_time(prefix, &alert_row(&p, 42, 0, 0, "spike")).unwrap(), 42);
        assert!(alert_time(prefix, b"t\0p\0\x01").is_err());
    }
}
