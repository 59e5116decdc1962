//! The views' own rows: their format marker, the records they skipped,
//! the arbitrations they noted, partitions being folded behind (all in
//! `meta`), statement page keys and the expiring-lots index.

use super::{account_key, millis_from_key, millis_key, programme_prefix, read_i64, StoreError};
use crate::domain::{AccountKey, Id, Millis};
use crate::log::arbiter::{Arbiter, Owner};

/// The layout of the views this build writes (statements in pages of
/// `STATEMENT_PAGE_ENTRIES`, each a row of the entries column family, the
/// last one added to by each batch; an account in one row up to
/// `INLINE_PIECES_MAX` = 32 pieces, naming its lots by their place in the
/// row and keeping UUID ids as bytes), kept in their `meta`. Views without it
/// were written by an older build: they are rebuilt from the log on start
/// (so `verify` compares them with a rebuild in the same layout, and the due
/// index holds what this build schedules: reminders, RFM period ends).
pub const VIEWS_FORMAT: &[u8] = b"appended-pages-32-arbiters-places";
/// The `meta` key of [`VIEWS_FORMAT`].
pub const VIEWS_FORMAT_KEY: &[u8] = b"format";

/// Meta keys `quarantined/<partition BE><offset BE>` → why (UTF-8): a
/// record of the partition that every reader skips (ARCHITECTURE.md, "A
/// record no reader can use").
const QUARANTINED_PREFIX: &[u8] = b"quarantined/";

pub fn quarantined_key(partition: u32, offset: u64) -> Vec<u8> {
    let mut k = QUARANTINED_PREFIX.to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// The offset a quarantined key names (None when it is not one).
pub fn quarantined_offset(k: &[u8]) -> Option<u64> {
    let rest = k.strip_prefix(QUARANTINED_PREFIX)?.get(4..)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// Meta keys `arbiter/<partition BE><offset BE>` → the arbitration after
/// the claim or release at that offset: epoch (u64 BE), released (a byte),
/// the claiming writer (UTF-8).
const ARBITER_PREFIX: &[u8] = b"arbiter/";

pub fn arbiter_key(partition: u32, offset: u64) -> Vec<u8> {
    let mut k = arbiter_prefix(partition);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// Every arbiter key of `partition` starts with this.
pub fn arbiter_prefix(partition: u32) -> Vec<u8> {
    let mut k = ARBITER_PREFIX.to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

pub fn arbiter_row(arbiter: &Arbiter) -> Vec<u8> {
    let mut v = arbiter.epoch.to_be_bytes().to_vec();
    v.push(u8::from(arbiter.released));
    v.extend_from_slice(arbiter.owner.as_ref().map_or("", |o| o.writer.as_str()).as_bytes());
    v
}

/// An arbiter row back (the owner's address is not kept).
pub fn decode_arbiter_row(v: &[u8]) -> Result<Arbiter, StoreError> {
    let released = *v.get(8).ok_or(StoreError::Layout("an arbitration"))?;
    let writer = String::from_utf8_lossy(v.get(9..).unwrap_or_default()).into_owned();
    Ok(Arbiter {
        epoch: super::read_u64(v, "an arbitration")?,
        released: released != 0,
        owner: Some(std::sync::Arc::new(Owner { writer, address: String::new() })),
    })
}

/// Meta keys `rebuilding/<partition BE>` (empty value): a partition whose
/// state is being folded from offset zero behind.
pub const REBUILDING_PREFIX: &[u8] = b"rebuilding/";

pub fn rebuilding_key(partition: u32) -> Vec<u8> {
    let mut k = REBUILDING_PREFIX.to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// `account, offset BE, event index BE`: a member's statement in log order
/// (a page's key is its first entry's).
pub fn entry_key(account: &AccountKey, offset: u64, index: u16) -> Vec<u8> {
    let mut k = account_key(account);
    k.extend_from_slice(&offset.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The (offset, index) an entry key ends with, after the account's prefix
/// of `prefix_len` bytes.
pub fn entry_place(prefix_len: usize, k: &[u8]) -> Option<(u64, u16)> {
    let rest = k.get(prefix_len..)?;
    if rest.len() != 10 {
        return None;
    }
    Some((u64::from_be_bytes(rest[..8].try_into().ok()?), u16::from_be_bytes(rest[8..].try_into().ok()?)))
}

/// `tenant \0 programme \0, expires_at, member \0, lot id` → the lot's
/// spendable points (i64 BE; no row once it has none).
pub fn expiring_key(account: &AccountKey, at: Millis, lot: &Id) -> Vec<u8> {
    let mut k = programme_prefix(&account.tenant_id, &account.programme_id);
    k.extend_from_slice(&millis_key(at));
    k.extend_from_slice(account.member_id.as_bytes());
    k.push(0);
    lot.with_str(|s| k.extend_from_slice(s.as_bytes()));
    k
}

/// Parses an expiring key back into (member, expires_at, lot id).
pub fn parse_expiring_key(prefix_len: usize, k: &[u8]) -> Option<(String, Millis, String)> {
    let at = millis_from_key(k.get(prefix_len..)?)?;
    let rest = k.get(prefix_len + 8..)?;
    let i = rest.iter().position(|&b| b == 0)?;
    Some((String::from_utf8(rest[..i].to_vec()).ok()?, at, String::from_utf8(rest[i + 1..].to_vec()).ok()?))
}

/// An expiring row's points.
pub fn expiring_points(v: &[u8]) -> Result<i64, StoreError> {
    read_i64(v, "expiring points")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_or_foreign_rows_are_errors_not_panics() {
        assert!(decode_arbiter_row(&[0; 8]).is_err());
        assert!(expiring_points(&[1, 2]).is_err());
        assert_eq!(quarantined_offset(b"quarantined/\0\0"), None);
        assert_eq!(quarantined_offset(&quarantined_key(3, 9)), Some(9));
        assert_eq!(entry_place(2, b"ab\0"), None);
        assert_eq!(parse_expiring_key(4, b"abcd\0\0"), None);
        let a = AccountKey::new("t", "p", "m");
        let k = expiring_key(&a, -7, &Id::of("lot"));
        assert_eq!(parse_expiring_key(4, &k), Some(("m".into(), -7, "lot".into())));
    }

    #[test]
    fn an_arbiter_row_reads_back() {
        let a = Arbiter {
            epoch: 4,
            released: true,
            owner: Some(std::sync::Arc::new(Owner { writer: "w".into(), address: String::new() })),
        };
        assert_eq!(decode_arbiter_row(&arbiter_row(&a)).unwrap(), a);
    }
}
