//! The books' rows: each partition's daily partial of a programme (`books`,
//! a `DailyBook`), the books' format marker and the webhook lanes' cursors
//! (both in `outbox`). The audit rows' keys are [`super::audit_key`]; the
//! risk view's rows are in [`super::risk`].

use super::{millis_from_key, millis_key, parse_programme_prefix, programme_prefix, read_u32, read_u64, StoreError};
use crate::domain::ProgrammeKey;

/// The books' layout; books without it (an older build's) are folded again
/// from the log on start. Kept in `outbox`, which `verify` leaves out (a
/// rebuild for the tools has no marker to compare).
pub const BOOKS_FORMAT: &[u8] = b"books-33-orders";
/// The `outbox` key of [`BOOKS_FORMAT`].
pub const BOOKS_FORMAT_KEY: &[u8] = b"books-format";

/// `tenant \0 programme \0 partition(be32)`: one partition's partials.
pub fn book_partition_prefix(tenant: &str, programme: &str, partition: u32) -> Vec<u8> {
    let mut k = programme_prefix(tenant, programme);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Partial book key: partition prefix, then the day (sign-flipped be64).
pub fn book_key(tenant: &str, programme: &str, partition: u32, day: i64) -> Vec<u8> {
    let mut k = book_partition_prefix(tenant, programme, partition);
    k.extend_from_slice(&millis_key(day));
    k
}

/// The programme, partition and day a partial book's key names.
pub fn parse_book_key(k: &[u8]) -> Result<(ProgrammeKey, u32, i64), StoreError> {
    let bad = || StoreError::Layout("a daily book's key");
    let (programme, rest) = parse_programme_prefix(k).ok_or_else(bad)?;
    if rest.len() != 12 {
        return Err(bad());
    }
    let partition = read_u32(rest).ok_or_else(bad)?;
    let day = rest.get(4..).and_then(millis_from_key).ok_or_else(bad)?;
    Ok((programme, partition, day))
}

/// A webhook lane's cursor (`outbox`): `webhook/<tenant>/<programme>/<id>/`
/// then the partition (u32 BE) → the next offset to deliver (u64 BE).
pub fn webhook_cursor_key(programme: &ProgrammeKey, webhook_id: &str, partition: u32) -> Vec<u8> {
    let mut k = format!("webhook/{}/{}/{webhook_id}/", programme.tenant_id, programme.programme_id).into_bytes();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

pub fn webhook_cursor_row(next: u64) -> [u8; 8] {
    next.to_be_bytes()
}

/// A webhook lane's stored next offset.
pub fn webhook_cursor(v: &[u8]) -> Result<u64, StoreError> {
    read_u64(v, "a webhook lane's cursor")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_book_key_reads_back_and_a_short_one_is_an_error() {
        let p = ProgrammeKey { tenant_id: "t".into(), programme_id: "p".into() };
        assert_eq!(parse_book_key(&book_key("t", "p", 3, -2)).unwrap(), (p, 3, -2));
        assert!(parse_book_key(&book_partition_prefix("t", "p", 3)).is_err());
        assert!(parse_book_key(b"t\0p\0\0\0").is_err());
        assert!(parse_book_key(&[book_key("t", "p", 3, -2), vec![0]].concat()).is_err());
        assert!(webhook_cursor(&[1]).is_err());
    }
}
