//! Rows only the writers keep beside the accounts: each partition's
//! issuance per programme day (the `issuance` column family), and in the
//! `due` column family the due index (see [`super::due_key`]) and how far a
//! level re-evaluation walked each programme.

use super::{millis_from_key, millis_key, parse_programme_prefix, programme_prefix, read_u32, StoreError};
use crate::domain::{AccountKey, Millis, ProgrammeKey};

/// `issued/<partition BE><tenant \0 programme \0><day>` → points (i64 BE):
/// a partition's persisted issuance per programme day.
pub fn issued_key(partition: u32, p: &ProgrammeKey, day: i64) -> Vec<u8> {
    let mut k = issued_prefix(partition);
    k.extend_from_slice(&programme_prefix(&p.tenant_id, &p.programme_id));
    k.extend_from_slice(&millis_key(day));
    k
}

pub fn issued_prefix(partition: u32) -> Vec<u8> {
    let mut k = b"issued/".to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// The programme and day an issuance key of `partition` names.
pub fn parse_issued_key(partition: u32, k: &[u8]) -> Result<(ProgrammeKey, i64), StoreError> {
    let rest = k.strip_prefix(issued_prefix(partition).as_slice()).ok_or(StoreError::Layout("an issuance key"))?;
    let (p, day) = parse_programme_prefix(rest).ok_or(StoreError::Layout("an issuance key"))?;
    Ok((p, millis_from_key(day).ok_or(StoreError::Layout("an issuance day"))?))
}

/// Every due row of `partition` starts with this (`partition BE`).
pub fn due_prefix(partition: u32) -> [u8; 4] {
    partition.to_be_bytes()
}

/// The instant a due key (or a level walk's progress row, whose instant
/// bytes are all 0xff: after every due instant) sorts at.
pub fn due_instant(k: &[u8]) -> Option<Millis> {
    read_u32(k)?;
    millis_from_key(k.get(4..)?)
}

/// The instant and account a due key names.
pub fn parse_due_key(k: &[u8]) -> Option<(Millis, AccountKey)> {
    let at = due_instant(k)?;
    let (account, _) = super::parse_account_key(k.get(12..)?)?;
    Some((at, account))
}

/// The progress row of `programme`'s level walk in `partition`: after
/// every instant of the partition's due rows.
pub fn levels_progress_key(partition: u32, programme: &ProgrammeKey) -> Vec<u8> {
    let mut k = partition.to_be_bytes().to_vec();
    k.extend_from_slice(&[0xff; 8]);
    k.extend_from_slice(b"levels\0");
    k.extend_from_slice(&programme_prefix(&programme.tenant_id, &programme.programme_id));
    k
}

/// How far a partition walked a programme: the version, and the key to go
/// on from (`None`: done). Stored as the version (u64 BE), then, while it
/// goes on, 1 and the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelsProgress {
    pub version: u64,
    pub next: Option<Vec<u8>>,
}

impl LevelsProgress {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.version.to_be_bytes().to_vec();
        if let Some(next) = &self.next {
            v.push(1);
            v.extend_from_slice(next);
        }
        v
    }

    pub fn decode(b: &[u8]) -> Result<LevelsProgress, StoreError> {
        let version = super::read_u64(b, "a level walk's version")?;
        let next = b.get(9..).filter(|_| b.len() > 8).map(<[u8]>::to_vec);
        Ok(LevelsProgress { version, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_rows_read_back_and_short_ones_are_errors() {
        let p = ProgrammeKey { tenant_id: "t".into(), programme_id: "p".into() };
        assert_eq!(parse_issued_key(2, &issued_key(2, &p, 19_000)).unwrap(), (p.clone(), 19_000));
        assert!(parse_issued_key(2, &issued_key(3, &p, 1)).is_err());
        assert!(parse_issued_key(2, &issued_prefix(2)).is_err());
        let a = AccountKey::new("t", "p", "m");
        assert_eq!(parse_due_key(&super::super::due_key(1, -4, &a)), Some((-4, a)));
        assert_eq!(parse_due_key(&[0, 0, 0, 1, 9]), None);
        assert_eq!(due_instant(&levels_progress_key(1, &p)), Some(i64::MAX));
        let walk = LevelsProgress { version: 3, next: Some(b"k".to_vec()) };
        assert_eq!(LevelsProgress::decode(&walk.encode()).unwrap(), walk);
        let done = LevelsProgress { version: 3, next: None };
        assert_eq!(LevelsProgress::decode(&done.encode()).unwrap(), done);
        assert!(LevelsProgress::decode(&[1]).is_err());
    }
}
