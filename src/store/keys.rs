//! Key layouts: accounts, programmes, instants that sort as bytes, the
//! idempotency records, the due index, and where a reader's state stops.

use super::{Batch, Cf, Db, StoreError};
use std::sync::Arc;

use crate::domain::{AccountKey, Millis};
use crate::log::arbiter::{Arbiter, Owner};

/// `tenant \0 programme \0 member \0`: ids never contain NUL, and the
/// trailing NUL keeps one member's prefix from matching another's.
pub fn account_key(k: &AccountKey) -> Vec<u8> {
    let mut b = Vec::with_capacity(k.tenant_id.len() + k.programme_id.len() + k.member_id.len() + 3);
    for part in [&k.tenant_id, &k.programme_id, &k.member_id] {
        b.extend_from_slice(part.as_bytes());
        b.push(0);
    }
    b
}

pub fn parse_account_key(b: &[u8]) -> Option<(AccountKey, &[u8])> {
    let mut parts = Vec::with_capacity(3);
    let mut rest = b;
    for _ in 0..3 {
        let i = rest.iter().position(|&x| x == 0)?;
        parts.push(String::from_utf8(rest[..i].to_vec()).ok()?);
        rest = &rest[i + 1..];
    }
    let member = parts.pop()?;
    let programme = parts.pop()?;
    let tenant = parts.pop()?;
    Some((AccountKey { tenant_id: tenant, programme_id: programme, member_id: member }, rest))
}

/// Splits `tenant \0 programme \0` off the front of a key.
pub fn parse_programme_prefix(b: &[u8]) -> Option<(crate::domain::ProgrammeKey, &[u8])> {
    let i = b.iter().position(|&x| x == 0)?;
    let j = i + 1 + b[i + 1..].iter().position(|&x| x == 0)?;
    let tenant = String::from_utf8(b[..i].to_vec()).ok()?;
    let programme = String::from_utf8(b[i + 1..j].to_vec()).ok()?;
    Some((crate::domain::ProgrammeKey { tenant_id: tenant, programme_id: programme }, &b[j + 1..]))
}

pub fn programme_prefix(tenant: &str, programme: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(tenant.as_bytes());
    b.push(0);
    b.extend_from_slice(programme.as_bytes());
    b.push(0);
    b
}

/// An admin act of the account log in the audit column family:
/// `tenant \0 programme \0 at(millis_key) partition(be32) offset(be64)
/// index(be16)`, so a programme's acts sort by time, then by place.
pub fn audit_key(tenant: &str, programme: &str, at: Millis, place: (u32, u64, u16)) -> Vec<u8> {
    let mut k = programme_prefix(tenant, programme);
    k.extend_from_slice(&millis_key(at));
    k.extend_from_slice(&place.0.to_be_bytes());
    k.extend_from_slice(&place.1.to_be_bytes());
    k.extend_from_slice(&place.2.to_be_bytes());
    k
}

/// The instant and place an audit key ends with (after its programme
/// prefix of `prefix_len` bytes).
pub fn parse_audit_key(prefix_len: usize, k: &[u8]) -> Option<(Millis, (u32, u64, u16))> {
    let rest = k.get(prefix_len..)?;
    if rest.len() != 8 + 4 + 8 + 2 {
        return None;
    }
    let partition = u32::from_be_bytes(rest[8..12].try_into().ok()?);
    let offset = u64::from_be_bytes(rest[12..20].try_into().ok()?);
    let index = u16::from_be_bytes(rest[20..22].try_into().ok()?);
    Some((millis_from_key(rest)?, (partition, offset, index)))
}

/// Big-endian with the sign bit flipped, so instants sort as bytes.
pub fn millis_key(at: Millis) -> [u8; 8] {
    ((at as u64) ^ (1 << 63)).to_be_bytes()
}

/// The instant [`millis_key`] put at the start of `b` (None when `b` is
/// shorter).
pub fn millis_from_key(b: &[u8]) -> Option<Millis> {
    Some((u64::from_be_bytes(b.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64)
}

/// A number of points (or any i64) as stored: 8 bytes, big-endian.
pub fn points_row(points: i64) -> [u8; 8] {
    points.to_be_bytes()
}

/// The i64 at the start of a stored row (`what` names it in the error).
pub fn read_i64(v: &[u8], what: &'static str) -> Result<i64, StoreError> {
    Ok(i64::from_be_bytes(v.get(..8).and_then(|b| b.try_into().ok()).ok_or(StoreError::Layout(what))?))
}

/// The u64 at the start of a stored row (`what` names it in the error).
pub fn read_u64(v: &[u8], what: &'static str) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(v.get(..8).and_then(|b| b.try_into().ok()).ok_or(StoreError::Layout(what))?))
}

/// The u32 at the start of `b`, if it holds one.
pub fn read_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Idempotency records: the account's key, then the request id. A request
/// id is unique per account (where a retry always goes, and what one
/// partition's writer decides alone): the same id on another account is
/// another command.
pub fn request_key(account: &AccountKey, request_id: &str) -> Vec<u8> {
    let mut b = account_key(account);
    b.extend_from_slice(request_id.as_bytes());
    b
}

/// The writer's due index: `partition BE, due_at, account`.
pub fn due_key(partition: u32, at: Millis, account: &AccountKey) -> Vec<u8> {
    let mut b = partition.to_be_bytes().to_vec();
    b.extend_from_slice(&millis_key(at));
    b.extend_from_slice(&account_key(account));
    b
}

/// Where a reader's state stops: `position/<partition>` → next offset (u64
/// BE), the arbiter's epoch there (u64 BE; absent in old stores = 0) and,
/// once a claim named it, the owner: 1 (or 2 when it released the
/// partition), its writer's length (u16 BE), writer and address (UTF-8).
pub fn position_key(partition: u32) -> Vec<u8> {
    format!("position/{partition:05}").into_bytes()
}

/// A reader's place in one partition: the next offset to fold and the
/// arbiter as of just before it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub next: u64,
    pub arbiter: Arbiter,
}

pub fn read_cursor(db: &Db, partition: u32) -> Result<Cursor, StoreError> {
    Ok(match db.get(Cf::Meta, &position_key(partition))? {
        None => Cursor::default(),
        Some(v) => Cursor {
            next: read_u64(&v, "a position")?,
            arbiter: Arbiter {
                epoch: v.get(8..16).map(|e| read_u64(e, "an epoch")).transpose()?.unwrap_or(0),
                owner: v.get(17..).and_then(decode_owner).map(Arc::new),
                released: v.get(16) == Some(&2),
            },
        },
    })
}

fn decode_owner(b: &[u8]) -> Option<Owner> {
    let n = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
    let writer = String::from_utf8(b.get(2..2 + n)?.to_vec()).ok()?;
    let address = String::from_utf8(b.get(2 + n..)?.to_vec()).ok()?;
    Some(Owner { writer, address })
}

pub fn read_position(db: &Db, partition: u32) -> Result<u64, StoreError> {
    Ok(read_cursor(db, partition)?.next)
}

pub fn put_cursor(batch: &mut Batch, partition: u32, cursor: &Cursor) {
    let mut v = cursor.next.to_be_bytes().to_vec();
    v.extend_from_slice(&cursor.arbiter.epoch.to_be_bytes());
    if let Some(o) = &cursor.arbiter.owner {
        v.push(if cursor.arbiter.released { 2 } else { 1 });
        let writer = &o.writer.as_bytes()[..o.writer.len().min(u16::MAX as usize)];
        v.extend_from_slice(&(writer.len() as u16).to_be_bytes());
        v.extend_from_slice(writer);
        v.extend_from_slice(o.address.as_bytes());
    }
    batch.put(Cf::Meta, &position_key(partition), &v);
}
