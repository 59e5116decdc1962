//! The audit log: every admin act, with the operator it names and the
//! authenticated client that sent it. The account log's acts (adjustments,
//! recycling, freezes, growth and levels set by hand, held points released
//! or forfeited) are folded into the books' `audit` column family with the
//! rest of the books, so a rebuild writes the same rows; the control
//! stream's (programme changes, alert actions, webhooks) are kept by the
//! registry as it reads the stream. `list` merges the two by time.

use crate::domain::{Millis, ProgrammeKey};
use crate::log::record::AccountRecord;
use crate::proto::state;
use crate::store::{self, Batch, Cf, Db, StoreError};

/// One admin act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: Millis,
    pub client: String,
    pub operator: String,
    pub action: String,
    pub reason: String,
    /// Empty for an act on the programme (control stream).
    pub member_id: String,
    pub request_id: String,
    /// (partition, offset, index in the record); the control stream's acts
    /// have partition `CONTROL`.
    pub place: (u32, u64, u16),
    /// The points (or growth) it moved, signed; 0 for the others.
    pub amount: i64,
}

/// The partition number standing for the control stream in an entry's place.
pub const CONTROL: u32 = u32::MAX;

/// Where a page ends: the last entry's time and place.
pub type After = (Millis, (u32, u64, u16));

impl AuditEntry {
    pub fn order(&self) -> After {
        (self.at, self.place)
    }
}

/// Puts the admin acts of `record` (at `partition`, `offset`) in `batch`.
pub fn put_acts(batch: &mut Batch, record: &AccountRecord, partition: u32, offset: u64) {
    for (i, act) in record.events.iter().enumerate().filter_map(|(i, e)| e.admin_act().map(|a| (i, a))) {
        let a = &record.account;
        let place = (partition, offset, u16::try_from(i).unwrap_or(u16::MAX));
        let row = state::AuditRow {
            client: record.context.client.clone(),
            operator: act.operator.to_string(),
            action: act.action.to_string(),
            reason: act.reason.to_string(),
            member_id: a.member_id.clone(),
            request_id: record.request_id.clone(),
            amount: act.amount,
        };
        batch.put(
            Cf::Audit,
            &store::audit_key(&a.tenant_id, &a.programme_id, record.at, place),
            &store::encode_row(&row),
        );
    }
}

/// Acts folded into the books in `[from, to)` after `after`, at most `max`.
fn folded(
    books: &Db,
    key: &ProgrammeKey,
    (from, to): (Millis, Millis),
    after: Option<After>,
    max: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let prefix = store::programme_prefix(&key.tenant_id, &key.programme_id);
    let start = match after {
        Some((at, place)) => {
            let mut k = store::audit_key(&key.tenant_id, &key.programme_id, at, place);
            k.push(0);
            k
        }
        None => store::audit_key(&key.tenant_id, &key.programme_id, from, (0, 0, 0)),
    };
    let mut out = Vec::new();
    for (k, v) in books.scan(Cf::Audit, &prefix, &start, max)? {
        // A row this build cannot read is left out of the list, not fatal.
        let Some((at, place)) = store::parse_audit_key(prefix.len(), &k) else { continue };
        if at >= to {
            break;
        }
        let Ok(row) = store::decode_row::<state::AuditRow>(&v) else { continue };
        out.push(AuditEntry {
            at,
            client: row.client,
            operator: row.operator,
            action: row.action,
            reason: row.reason,
            member_id: row.member_id,
            request_id: row.request_id,
            place,
            amount: row.amount,
        });
    }
    Ok(out)
}

/// A page of a programme's audit log in `[from, to)`, oldest first, after
/// `after`: the account log's acts and `control` (the control stream's,
/// in order) merged by time. The last entry's order is the next page's
/// `after` when the page is full.
pub fn list(
    books: &Db,
    control: &[AuditEntry],
    key: &ProgrammeKey,
    range: (Millis, Millis),
    after: Option<After>,
    page_size: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let mut page = folded(books, key, range, after, page_size)?;
    let (from, to) = range;
    let start = after.unwrap_or((from, (0, 0, 0)));
    page.extend(
        control
            .iter()
            .filter(|e| e.at >= from && e.at < to && (after.is_none() && e.order() >= start || e.order() > start))
            .cloned(),
    );
    page.sort_by_key(AuditEntry::order);
    page.truncate(page_size);
    Ok(page)
}
