//! Stored account state (`points.state.v1`): snapshots, the pieces of a
//! large account, and the writers' stored replies. Snapshots keep repeated
//! fields sorted, so equal states always encode to equal bytes (replays
//! compare by digest).

use prost::Message;

use crate::domain::{
    Account, EarnRecord, Extra, ExtraState, Id, Lot, ReservationRecord, ReservationStatus, SpendRecord, Totals,
};
use crate::log::codec::{event_from_wire, event_to_wire, CodecError};
use crate::log::record::{Balance, Position, Reply};
use crate::proto::state;

// ---- account snapshots ----
//
// An account is stored as a header (an `AccountSnapshot` with no lists: the
// counters, totals, flags and level) and one row per lot, earn, spend and
// reservation (see `crate::store::accounts`). The id is in the row's key, so the
// piece messages are encoded with it empty. A header written before the
// split carries the lists itself; [`decode_account`] still reads it.
//
// A small account is one row with its lists ([`encode_account_with`]).
// There a lot is named by its place among the row's lots rather than by its
// id again: an earn by the place of its own lot (same id), a spend's and a
// hold's shares by the places of the lots they drew on ([`Places`]). Any
// id that is a canonical UUID is kept as its 16 bytes. A member's history
// is mostly earns and the spends of their lots, so that is most of what a
// row held twice or three times.

/// Where each lot of an account sits in its whole row's `lots` (in id
/// order), for the row to name a lot by its place rather than its id again;
/// a piece row names lots by id ([`Places::none`]).
pub struct Places<'a>(Vec<&'a Id>);

impl<'a> Places<'a> {
    fn of(a: &'a Account) -> Places<'a> {
        Places(a.lots.keys().collect())
    }

    fn none() -> Places<'static> {
        Places(Vec::new())
    }

    /// 1 + the lot's index, or 0 when it has none.
    fn place(&self, id: &Id) -> u32 {
        self.0.binary_search(&id).map_or(0, |i| i as u32 + 1)
    }
}

/// An id kept as text, or as the 16 bytes of a canonical UUID.
fn id_from_pb(text: &str, uuid: &[u8]) -> Result<Id, CodecError> {
    if uuid.is_empty() {
        Ok(Id::of(text))
    } else {
        Id::from_uuid(uuid).ok_or(CodecError::Missing("a UUID of 16 bytes"))
    }
}

/// The id of a lot named by its place in `lots` (1 + its index), or by id
/// when `place` is 0.
fn lot_named(text: &str, uuid: &[u8], place: u32, lots: &[(Id, Lot)]) -> Result<Id, CodecError> {
    match place {
        0 => id_from_pb(text, uuid),
        n => lots.get(n as usize - 1).map(|(id, _)| id.clone()).ok_or(CodecError::Missing("the lot of a place")),
    }
}

/// The status a reservation's message gives.
fn status_of(status: i32) -> Result<ReservationStatus, CodecError> {
    match state::ReservationStatus::try_from(status) {
        Ok(state::ReservationStatus::Open) => Ok(ReservationStatus::Open),
        Ok(state::ReservationStatus::Captured) => Ok(ReservationStatus::Captured),
        Ok(state::ReservationStatus::Released) => Ok(ReservationStatus::Released),
        Ok(state::ReservationStatus::TimedOut) => Ok(ReservationStatus::TimedOut),
        Ok(state::ReservationStatus::Unspecified) | Err(_) => Err(CodecError::Enum("ReservationStatus", status)),
    }
}

/// The lot, earn, spend and reservation messages of an account snapshot (and
/// its piece rows), read straight into the account's records in one pass.
/// prost's messages would allocate every id (its text, or a UUID's bytes)
/// and every list only to drop them once turned into the account's (about
/// half of decoding a member). These read what prost reads: fields in any
/// order, a scalar given twice (the last wins), unknown fields skipped; and
/// fail where it fails (a varint or length past the end, a wrong wire type,
/// text that is not UTF-8). The tests compare the two, on mangled rows too.
/// One difference, on rows no writer makes: prost refuses groups nested
/// about 100 deep inside a list's entry, where these skip them.
mod read {
    use prost::encoding::{check_wire_type, decode_key, decode_varint, skip_field, DecodeContext, WireType};

    use super::{id_from_pb, lot_named, status_of};
    use crate::domain::{EarnRecord, Id, Lot, ReservationRecord, Share, SpendRecord};
    use crate::log::codec::{opt_at, CodecError};

    /// The next field's number and wire type, or `None` at the message's end.
    pub fn next(buf: &mut &[u8]) -> Result<Option<(u32, WireType)>, CodecError> {
        if buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(decode_key(buf)?))
    }

    /// Skips a field this reader has no use for.
    pub fn skip(tag: u32, wire: WireType, buf: &mut &[u8]) -> Result<(), CodecError> {
        Ok(skip_field(wire, tag, buf, DecodeContext::default())?)
    }

    /// A varint field (int64, uint32 and bool are all read through it).
    fn int(wire: WireType, buf: &mut &[u8]) -> Result<i64, CodecError> {
        check_wire_type(WireType::Varint, wire)?;
        Ok(decode_varint(buf)? as i64)
    }

    /// A length-delimited field's bytes.
    pub fn delimited<'a>(wire: WireType, buf: &mut &'a [u8]) -> Result<&'a [u8], CodecError> {
        check_wire_type(WireType::LengthDelimited, wire)?;
        let len = decode_varint(buf)?;
        if len > buf.len() as u64 {
            return Err(CodecError::State("a field's length past the end of its message"));
        }
        let (field, rest) = buf.split_at(len as usize);
        *buf = rest;
        Ok(field)
    }

    fn text<'a>(wire: WireType, buf: &mut &'a [u8]) -> Result<&'a str, CodecError> {
        std::str::from_utf8(delimited(wire, buf)?).map_err(|_| CodecError::State("text that is not UTF-8"))
    }

    /// A `LotState`.
    pub fn lot(mut buf: &[u8]) -> Result<(Id, Lot), CodecError> {
        let (mut id, mut uuid) = ("", &[][..]);
        let mut lot = Lot { earned: 0, remaining: 0, expires_at: None, reminded: false, pending: false };
        while let Some((tag, wire)) = next(&mut buf)? {
            match tag {
                1 => id = text(wire, &mut buf)?,
                2 => lot.earned = int(wire, &mut buf)?,
                3 => lot.remaining = int(wire, &mut buf)?,
                4 => lot.expires_at = opt_at(int(wire, &mut buf)?),
                5 => lot.reminded = int(wire, &mut buf)? != 0,
                6 => lot.pending = int(wire, &mut buf)? != 0,
                7 => uuid = delimited(wire, &mut buf)?,
                _ => skip(tag, wire, &mut buf)?,
            }
        }
        Ok((id_from_pb(id, uuid)?, lot))
    }

    /// An `EarnState`; `lots` are the row's, which its place names.
    pub fn earn(mut buf: &[u8], lots: &[(Id, Lot)]) -> Result<(Id, EarnRecord), CodecError> {
        let (mut id, mut uuid, mut place) = ("", &[][..], 0);
        let mut e = EarnRecord::default();
        while let Some((tag, wire)) = next(&mut buf)? {
            match tag {
                1 => id = text(wire, &mut buf)?,
                2 => e.points = int(wire, &mut buf)?,
                3 => e.reversed = int(wire, &mut buf)?,
                4 => e.growth = int(wire, &mut buf)?,
                5 => e.growth_reversed = int(wire, &mut buf)?,
                6 => e.day = int(wire, &mut buf)?,
                7 => e.growth_expired = int(wire, &mut buf)?,
                8 => uuid = delimited(wire, &mut buf)?,
                9 => place = int(wire, &mut buf)? as u32,
                _ => skip(tag, wire, &mut buf)?,
            }
        }
        Ok((lot_named(id, uuid, place, lots)?, e))
    }

    /// A `LotShare`.
    fn share(mut buf: &[u8], lots: &[(Id, Lot)]) -> Result<Share, CodecError> {
        let (mut id, mut uuid, mut place, mut points) = ("", &[][..], 0, 0);
        while let Some((tag, wire)) = next(&mut buf)? {
            match tag {
                1 => id = text(wire, &mut buf)?,
                2 => points = int(wire, &mut buf)?,
                3 => uuid = delimited(wire, &mut buf)?,
                4 => place = int(wire, &mut buf)? as u32,
                _ => skip(tag, wire, &mut buf)?,
            }
        }
        Ok(Share { lot: lot_named(id, uuid, place, lots)?, points })
    }

    /// A `SpendState`.
    pub fn spend(mut buf: &[u8], lots: &[(Id, Lot)]) -> Result<(Id, SpendRecord), CodecError> {
        let (mut id, mut uuid) = ("", &[][..]);
        let (mut paid, mut refunded) = (Vec::new(), Vec::new());
        while let Some((tag, wire)) = next(&mut buf)? {
            match tag {
                1 => id = text(wire, &mut buf)?,
                2 => paid.push(share(delimited(wire, &mut buf)?, lots)?),
                3 => refunded.push(share(delimited(wire, &mut buf)?, lots)?),
                4 => uuid = delimited(wire, &mut buf)?,
                _ => skip(tag, wire, &mut buf)?,
            }
        }
        let refunded = refunded.into_iter().map(|s| (s.lot, s.points)).collect();
        Ok((id_from_pb(id, uuid)?, SpendRecord { lots: paid, refunded }))
    }

    /// A `ReservationState`.
    pub fn reservation(mut buf: &[u8], lots: &[(Id, Lot)]) -> Result<(Id, ReservationRecord), CodecError> {
        let (mut id, mut uuid, mut order_ref) = ("", &[][..], "");
        let (mut held, mut expires_at, mut status, mut cash) = (Vec::new(), 0, 0, 0);
        while let Some((tag, wire)) = next(&mut buf)? {
            match tag {
                1 => id = text(wire, &mut buf)?,
                2 => order_ref = text(wire, &mut buf)?,
                3 => held.push(share(delimited(wire, &mut buf)?, lots)?),
                4 => expires_at = int(wire, &mut buf)?,
                5 => status = int(wire, &mut buf)? as i32,
                6 => cash = int(wire, &mut buf)?,
                7 => uuid = delimited(wire, &mut buf)?,
                _ => skip(tag, wire, &mut buf)?,
            }
        }
        let record = ReservationRecord {
            order_cash_minor: cash.max(0),
            lots: held,
            expires_at,
            status: status_of(status)?,
            order_ref: order_ref.to_owned(),
        };
        Ok((id_from_pb(id, uuid)?, record))
    }
}

/// Everything but the lists.
fn header_to_pb(a: &Account) -> state::AccountSnapshot {
    let t = &a.totals;
    state::AccountSnapshot {
        lots: Vec::new(),
        earns: Vec::new(),
        spends: Vec::new(),
        reservations: Vec::new(),
        debt: a.debt,
        growth: a.growth,
        earning_frozen: a.earning_frozen,
        spending_frozen: a.spending_frozen,
        totals: Some(state::Totals {
            issued: t.issued,
            spent: t.spent,
            refunded: t.refunded,
            reversed: t.reversed,
            expired: t.expired,
            adjusted_up: t.adjusted_up,
            adjusted_down: t.adjusted_down,
            penalized: t.penalized,
            held: t.held,
            released: t.released,
            forfeited: t.forfeited,
        }),
        day: a.day,
        day_earned: a.day_earned,
        day_actions: a
            .day_actions
            .iter()
            .map(|(k, v)| state::DayCounter { action: k.to_string(), earned: *v })
            .collect(),
        events: a.events,
        level: a.level.clone(),
        statement_tail: Vec::new(),
        statement_tail_offset: 0,
        statement_tail_index: 0,
        written_off_open: a.extra.written_off_open,
        rules_day: a.extra.rules_day,
        level_held_until_ms: a.extra.level_held_until.unwrap_or(0),
        rule_days: a
            .extra
            .rule_days
            .iter()
            .map(|(k, d)| state::RuleDayCounter { rule_id: k.to_string(), count: d.count, points: d.points })
            .collect(),
        has_last_purchase: a.extra.last_purchase_day.is_some(),
        last_purchase_day: a.extra.last_purchase_day.unwrap_or(0),
        purchase_months: a
            .extra
            .purchase_months
            .iter()
            .map(|m| state::PurchaseMonth { month: m.month, count: m.count, amount_minor: m.amount_minor })
            .collect(),
        rfm_growth: a.extra.rfm_growth,
        rfm_evaluated: a.extra.rfm_evaluated.is_some(),
        rfm_evaluated_period_start: a.extra.rfm_evaluated.unwrap_or(0),
        reminded: a.extra.reminded_day.is_some(),
        reminded_day: a.extra.reminded_day.unwrap_or(0),
        held: a.extra.held.is_some(),
        held_rule: a.extra.held.as_ref().map(|h| h.rule.clone()).unwrap_or_default(),
        held_alert_id: a.extra.held.as_ref().map(|h| h.alert_id.clone()).unwrap_or_default(),
        pending_adjustments: a
            .extra
            .adjustments
            .iter()
            .map(|(id, p)| state::PendingAdjustment {
                approval_id: id.clone(),
                points: p.points,
                operator: p.operator.clone(),
                reason: p.reason.clone(),
                client: p.client.clone(),
            })
            .collect(),
    }
}

/// The last page of an account's statement while it has room. The page is
/// a row of the entries column family that grows at its end by the entries
/// of each batch ([`crate::store::Batch::append_vec`]), so a command does
/// not write the page's earlier entries again; the account's row keeps where
/// the page starts (its key), and the account's event count how many
/// entries it has. Its bytes are a `StatementPage`'s: the entries, each
/// behind its field tag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tail {
    /// The position of its first entry (the page's key).
    pub offset: u64,
    pub index: u16,
    /// The entries added since the page's row was last written to.
    pub bytes: Vec<u8>,
    /// Entries in the page, written or not.
    pub entries: u16,
}

impl Tail {
    /// A page starting with the entry at (`offset`, `index`).
    pub fn new(offset: u64, index: u16) -> Tail {
        Tail { offset, index, bytes: Vec::new(), entries: 0 }
    }

    /// Adds an encoded entry.
    pub fn push(&mut self, entry: &[u8]) {
        self.bytes.push(STATEMENT_PAGE_TAG);
        prost::encoding::encode_varint(entry.len() as u64, &mut self.bytes);
        self.bytes.extend_from_slice(entry);
        self.entries += 1;
    }
}

/// The header's fields with where the tail starts (while it has entries).
fn header_with(a: &Account, tail: Option<&Tail>) -> state::AccountSnapshot {
    let mut header = header_to_pb(a);
    if let Some(t) = tail.filter(|t| t.entries > 0) {
        header.statement_tail_offset = t.offset;
        header.statement_tail_index = u32::from(t.index);
    }
    header
}

/// The whole account in one message (lists included).
pub fn encode_account(a: &Account) -> Vec<u8> {
    encode_account_with(a, None)
}

/// The whole account in one message, with where its statement's last page
/// starts.
pub fn encode_account_with(a: &Account, tail: Option<&Tail>) -> Vec<u8> {
    let header = header_with(a, tail);
    let p = Places::of(a);
    // Room for the usual entry (a lot, an earn or a spend of one lot: 30-50
    // bytes); a longer row grows once or twice.
    let entries = a.lots.len() + a.earns.len() + a.spends.len() + a.reservations.len();
    // The lists are fields 1-4 and the header's fields follow them, which is
    // the order prost would write the whole message in.
    let mut buf = Vec::with_capacity(entries * 48 + header.encoded_len());
    fields::put_list(1, &a.lots, &p, fields::put_lot, &mut buf);
    fields::put_list(2, &a.earns, &p, fields::put_earn, &mut buf);
    fields::put_list(3, &a.spends, &p, fields::put_spend, &mut buf);
    fields::put_list(4, &a.reservations, &p, fields::put_reservation, &mut buf);
    header.encode(&mut buf).expect("a Vec grows as needed");
    buf
}

/// The lot, earn, spend and reservation messages of an account snapshot,
/// written straight from the account in one pass. Building prost's messages
/// would copy every id into them only to drop it once encoded, and working
/// out each message's length before writing it walked every entry two or
/// three times (a few per cent of a command's CPU each); these write the
/// bytes prost writes (fields in number order, default values left out; the
/// tests compare the two).
mod fields {
    use prost::encoding::{encode_key, encode_varint, WireType};

    use super::Places;
    use crate::domain::{EarnRecord, Id, Lot, ReservationRecord, ReservationStatus, SpendRecord, VecMap};

    /// A length-delimited field whose bytes `body` writes. One byte is kept
    /// for the length, which is patched in after; a message of 128 bytes or
    /// more moves up to make room for its longer varint.
    pub fn put_nested(tag: u32, buf: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
        encode_key(tag, WireType::LengthDelimited, buf);
        let at = buf.len();
        buf.push(0);
        body(buf);
        let end = buf.len();
        let len = end - at - 1;
        if len < 0x80 {
            buf[at] = len as u8;
            return;
        }
        let mut varint = [0u8; 10];
        let mut rest = &mut varint[..];
        encode_varint(len as u64, &mut rest);
        let n = 10 - rest.len();
        buf.resize(end + n - 1, 0);
        buf.copy_within(at + 1..end, at + n);
        buf[at..at + n].copy_from_slice(&varint[..n]);
    }

    /// A length-delimited field of bytes.
    fn put_bytes(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(bytes.len() as u64, buf);
        buf.extend_from_slice(bytes);
    }

    /// An id kept as text under one tag ([`put_text`], in its place among
    /// the fields) or, a canonical UUID, as its bytes under another
    /// ([`put_uuid`]).
    fn put_text(tag: u32, id: &Id, buf: &mut Vec<u8>) {
        if id.uuid().is_none() && !id.is_empty() {
            id.with_str(|s| put_bytes(tag, s.as_bytes(), buf));
        }
    }

    fn put_uuid(tag: u32, id: &Id, buf: &mut Vec<u8>) {
        if let Some(bytes) = id.uuid() {
            put_bytes(tag, bytes, buf);
        }
    }

    fn put_str(tag: u32, s: &str, buf: &mut Vec<u8>) {
        if !s.is_empty() {
            put_bytes(tag, s.as_bytes(), buf);
        }
    }

    fn put_int(tag: u32, v: i64, buf: &mut Vec<u8>) {
        if v != 0 {
            encode_key(tag, WireType::Varint, buf);
            encode_varint(v as u64, buf);
        }
    }

    /// Writes an entry's message (without its key and length).
    pub type Put<T> = fn(&Id, &T, &Places, &mut Vec<u8>);

    /// Every entry of `map` as a message field `tag`, in key order.
    pub fn put_list<T>(tag: u32, map: &VecMap<Id, T>, places: &Places, put: Put<T>, buf: &mut Vec<u8>) {
        for (id, v) in map.iter() {
            put_nested(tag, buf, |buf| put(id, v, places, buf));
        }
    }

    /// A `LotShare`: the lot by its place in the row, else by id.
    fn put_share(tag: u32, id: &Id, points: i64, places: &Places, buf: &mut Vec<u8>) {
        let place = places.place(id);
        put_nested(tag, buf, |buf| {
            if place == 0 {
                put_text(1, id, buf);
            }
            put_int(2, points, buf);
            if place == 0 {
                put_uuid(3, id, buf);
            }
            put_int(4, i64::from(place), buf);
        });
    }

    pub fn put_lot(id: &Id, l: &Lot, _: &Places, buf: &mut Vec<u8>) {
        put_text(1, id, buf);
        put_int(2, l.earned, buf);
        put_int(3, l.remaining, buf);
        put_int(4, l.expires_at.unwrap_or(0), buf);
        put_int(5, i64::from(l.reminded), buf);
        put_int(6, i64::from(l.pending), buf);
        put_uuid(7, id, buf);
    }

    /// An earn is named by the place of its lot (same id) when it has one.
    pub fn put_earn(id: &Id, e: &EarnRecord, places: &Places, buf: &mut Vec<u8>) {
        let place = places.place(id);
        if place == 0 {
            put_text(1, id, buf);
        }
        put_int(2, e.points, buf);
        put_int(3, e.reversed, buf);
        put_int(4, e.growth, buf);
        put_int(5, e.growth_reversed, buf);
        put_int(6, e.day, buf);
        put_int(7, e.growth_expired, buf);
        if place == 0 {
            put_uuid(8, id, buf);
        }
        put_int(9, i64::from(place), buf);
    }

    pub fn put_spend(id: &Id, x: &SpendRecord, places: &Places, buf: &mut Vec<u8>) {
        put_text(1, id, buf);
        x.lots.iter().for_each(|l| put_share(2, &l.lot, l.points, places, buf));
        x.refunded.iter().for_each(|(id, p)| put_share(3, id, *p, places, buf));
        put_uuid(4, id, buf);
    }

    fn status(r: &ReservationRecord) -> i64 {
        match r.status {
            ReservationStatus::Open => 1,
            ReservationStatus::Captured => 2,
            ReservationStatus::Released => 3,
            ReservationStatus::TimedOut => 4,
        }
    }

    pub fn put_reservation(id: &Id, r: &ReservationRecord, places: &Places, buf: &mut Vec<u8>) {
        put_text(1, id, buf);
        put_str(2, &r.order_ref, buf);
        r.lots.iter().for_each(|l| put_share(3, &l.lot, l.points, places, buf));
        put_int(4, r.expires_at, buf);
        put_int(5, status(r), buf);
        put_int(6, r.order_cash_minor, buf);
        put_uuid(7, id, buf);
    }
}

/// The header row: the account without its lists.
pub fn encode_account_header(a: &Account) -> Vec<u8> {
    encode_account_header_with(a, None)
}

/// The header row with where the statement's last page starts.
pub fn encode_account_header_with(a: &Account, tail: Option<&Tail>) -> Vec<u8> {
    header_with(a, tail).encode_to_vec()
}

/// An account from a header (with whatever lists it carries) or a whole
/// snapshot; the pieces stored in rows of their own are added with
/// [`decode_piece_into`].
pub fn decode_account(bytes: &[u8]) -> Result<Account, CodecError> {
    decode_account_with_tail(bytes).map(|(a, _)| a)
}

/// [`decode_account`], and the statement's last page while it has room
/// (where it starts and its count of entries; none of them to write).
pub fn decode_account_with_tail(bytes: &[u8]) -> Result<(Account, Option<Tail>), CodecError> {
    // The lists are read straight into the account's records ([`read`]):
    // the lots first (the other lists name lots by their place), then the
    // rest. The header's fields, usually one run after the lists, go to prost.
    let (mut lots, mut header) = (Vec::new(), Header::None);
    let mut rest = bytes;
    loop {
        let at = bytes.len() - rest.len();
        let Some((tag, wire)) = read::next(&mut rest)? else { break };
        match tag {
            1 => lots.push(read::lot(read::delimited(wire, &mut rest)?)?),
            2..=4 => _ = read::delimited(wire, &mut rest)?,
            _ => {
                read::skip(tag, wire, &mut rest)?;
                header.add(bytes, at..bytes.len() - rest.len());
            }
        }
    }
    let (mut earns, mut spends, mut reservations) = (Vec::new(), Vec::new(), Vec::new());
    let mut rest = bytes;
    while let Some((tag, wire)) = read::next(&mut rest)? {
        match tag {
            2 => earns.push(read::earn(read::delimited(wire, &mut rest)?, &lots)?),
            3 => spends.push(read::spend(read::delimited(wire, &mut rest)?, &lots)?),
            4 => reservations.push(read::reservation(read::delimited(wire, &mut rest)?, &lots)?),
            _ => read::skip(tag, wire, &mut rest)?,
        }
    }
    let mut s = state::AccountSnapshot::decode(header.bytes(bytes))?;
    let (offset, index) = (s.statement_tail_offset, s.statement_tail_index as u16);
    let t = s.totals.unwrap_or_default();
    let mut a = Account::default();
    a.extra = Extra::of(extra_from_pb(&mut s));
    a.earns = earns.into_iter().collect();
    a.spends = spends.into_iter().collect();
    a.reservations = reservations.into_iter().collect();
    a.lots = lots.into_iter().collect();
    a.debt = s.debt;
    a.growth = s.growth;
    a.earning_frozen = s.earning_frozen;
    a.spending_frozen = s.spending_frozen;
    a.totals = Totals {
        issued: t.issued,
        spent: t.spent,
        refunded: t.refunded,
        reversed: t.reversed,
        expired: t.expired,
        adjusted_up: t.adjusted_up,
        adjusted_down: t.adjusted_down,
        penalized: t.penalized,
        held: t.held,
        released: t.released,
        forfeited: t.forfeited,
    };
    a.day = s.day;
    a.day_earned = s.day_earned;
    a.day_actions = s.day_actions.into_iter().map(|d| (Id::of(&d.action), d.earned)).collect();
    a.events = s.events;
    a.level = s.level;
    a.recount();
    // An account's statement has an entry per event folded and every page
    // but the last is full: whether there is a last page with room, and its
    // count of entries, follow.
    let entries = (a.events % STATEMENT_PAGE_ENTRIES as u64) as u16;
    Ok((a, (entries > 0).then_some(Tail { offset, index, bytes: Vec::new(), entries })))
}

/// Where an account row's fields other than its lists are: one run of
/// bytes (as written: after the lists), or copied together when they are
/// spread among the lists.
enum Header {
    None,
    Run(std::ops::Range<usize>),
    Copied(Vec<u8>),
}

impl Header {
    fn add(&mut self, bytes: &[u8], field: std::ops::Range<usize>) {
        *self = match std::mem::replace(self, Header::None) {
            Header::None => Header::Run(field),
            Header::Run(run) if run.end == field.start => Header::Run(run.start..field.end),
            Header::Run(run) => Header::Copied([&bytes[run], &bytes[field]].concat()),
            Header::Copied(mut copied) => {
                copied.extend_from_slice(&bytes[field]);
                Header::Copied(copied)
            }
        }
    }

    fn bytes<'a>(&'a self, bytes: &'a [u8]) -> &'a [u8] {
        match self {
            Header::None => &[],
            Header::Run(run) => &bytes[run.clone()],
            Header::Copied(copied) => copied,
        }
    }
}

/// The header's fields that make an account's [`ExtraState`].
fn extra_from_pb(s: &mut state::AccountSnapshot) -> ExtraState {
    use std::mem::take;
    let adjustment = |p: state::PendingAdjustment| {
        let pending = crate::domain::PendingAdjustment {
            points: p.points,
            operator: p.operator,
            reason: p.reason,
            client: p.client,
        };
        (p.approval_id, pending)
    };
    ExtraState {
        written_off_open: s.written_off_open,
        level_held_until: (s.level_held_until_ms != 0).then_some(s.level_held_until_ms),
        rules_day: s.rules_day,
        rule_days: take(&mut s.rule_days)
            .into_iter()
            .map(|d| (Id::of(&d.rule_id), crate::domain::RuleDay { count: d.count, points: d.points }))
            .collect(),
        last_purchase_day: s.has_last_purchase.then_some(s.last_purchase_day),
        purchase_months: take(&mut s.purchase_months)
            .into_iter()
            .map(|m| crate::domain::PurchaseMonth { month: m.month, count: m.count, amount_minor: m.amount_minor })
            .collect(),
        reminded_day: s.reminded.then_some(s.reminded_day),
        held: s.held.then(|| crate::domain::EarningsHold {
            rule: take(&mut s.held_rule),
            alert_id: take(&mut s.held_alert_id),
        }),
        adjustments: take(&mut s.pending_adjustments).into_iter().map(adjustment).collect(),
        rfm_growth: s.rfm_growth,
        rfm_evaluated: s.rfm_evaluated.then_some(s.rfm_evaluated_period_start),
    }
}

/// Statement entries one page holds: a member's statement is a row per
/// this many events, not a row per event. The pages fall where the entries'
/// count says (every page but the last is full), so a rebuild writes the
/// same rows as the writers, whenever each wrote them.
pub const STATEMENT_PAGE_ENTRIES: usize = 16;

/// Whether a header carries lists (written before accounts were split).
pub fn header_has_lists(a: &Account) -> bool {
    !(a.lots.is_empty() && a.earns.is_empty() && a.spends.is_empty() && a.reservations.is_empty())
}

/// What a piece row holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Piece {
    Lot,
    Earn,
    Spend,
    Reservation,
}

impl Piece {
    pub const ALL: [Piece; 4] = [Piece::Lot, Piece::Earn, Piece::Spend, Piece::Reservation];

    /// The byte after the account key that starts a piece row's key.
    pub fn tag(self) -> u8 {
        match self {
            Piece::Lot => b'l',
            Piece::Earn => b'e',
            Piece::Spend => b's',
            Piece::Reservation => b'r',
        }
    }

    pub fn from_tag(tag: u8) -> Option<Piece> {
        Piece::ALL.into_iter().find(|p| p.tag() == tag)
    }
}

/// One piece of `a`, or `None` when it has no such lot, earn, spend or reservation.
pub fn encode_piece(a: &Account, piece: Piece, id: &Id) -> Option<Vec<u8>> {
    Some(match piece {
        Piece::Lot => lot_piece(a.lots.get(id)?),
        Piece::Earn => earn_piece(a.earns.get(id)?),
        Piece::Spend => spend_piece(a.spends.get(id)?),
        Piece::Reservation => reservation_piece(a.reservations.get(id)?),
    })
}

/// Every piece of `a` with its id, encoded, walking the maps rather than
/// looking each id up (an account written whole: a rebuild, an old header).
pub fn encode_every_piece(a: &Account, mut out: impl FnMut(Piece, &Id, Vec<u8>)) {
    a.lots.iter().for_each(|(id, l)| out(Piece::Lot, id, lot_piece(l)));
    a.earns.iter().for_each(|(id, e)| out(Piece::Earn, id, earn_piece(e)));
    a.spends.iter().for_each(|(id, x)| out(Piece::Spend, id, spend_piece(x)));
    a.reservations.iter().for_each(|(id, r)| out(Piece::Reservation, id, reservation_piece(r)));
}

// A piece row's message, with its id left empty (the id is in the row's key).

fn piece<T>(v: &T, put: fields::Put<T>) -> Vec<u8> {
    let (none, places) = (Id::of(""), Places::none());
    let mut buf = Vec::with_capacity(48);
    put(&none, v, &places, &mut buf);
    buf
}

fn lot_piece(l: &Lot) -> Vec<u8> {
    piece(l, fields::put_lot)
}

fn earn_piece(e: &EarnRecord) -> Vec<u8> {
    piece(e, fields::put_earn)
}

fn spend_piece(x: &SpendRecord) -> Vec<u8> {
    piece(x, fields::put_spend)
}

fn reservation_piece(r: &ReservationRecord) -> Vec<u8> {
    piece(r, fields::put_reservation)
}

/// Puts one piece row's contents into `a` (replacing what it had under `id`);
/// the caller calls [`Account::recount`] once all are in.
pub fn decode_piece_into(a: &mut Account, piece: Piece, id: Id, bytes: &[u8]) -> Result<(), CodecError> {
    match piece {
        Piece::Lot => {
            let (_, lot) = read::lot(bytes)?;
            a.lots.insert(id, lot);
        }
        Piece::Earn => {
            let (_, earn) = read::earn(bytes, &[])?;
            a.earns.insert(id, earn);
        }
        Piece::Spend => {
            let (_, spend) = read::spend(bytes, &[])?;
            a.spends.insert(id, spend);
        }
        Piece::Reservation => {
            let (_, r) = read::reservation(bytes, &[])?;
            a.reservations.insert(id, r);
        }
    }
    Ok(())
}

// ---- statement rows ----

/// One statement entry: the `index`-th event of a record, with the balance
/// after it.
pub fn encode_statement_entry(
    position: Position,
    index: u16,
    request_id: &str,
    at: crate::domain::Millis,
    event: crate::domain::Event,
    delta: crate::domain::Points,
    balance: &Balance,
) -> Vec<u8> {
    state::StatementEntry {
        index: u32::from(index),
        position: Some(state::Position { partition: position.partition, offset: position.offset }),
        request_id: request_id.to_string(),
        at: Some(crate::log::codec::instant(at)),
        event: Some(event_to_wire(event)),
        delta,
        balance: Some(balance_to_state(balance)),
    }
    .encode_to_vec()
}

/// The tag byte a statement page row starts with (field 7, length-delimited).
const STATEMENT_PAGE_TAG: u8 = (7 << 3) | 2;

/// A statement page row of encoded entries (`StatementPage`).
pub fn encode_statement_page(entries: &[Vec<u8>]) -> Vec<u8> {
    use prost::encoding::{encode_varint, encoded_len_varint};
    let len: usize = entries.iter().map(|e| 1 + encoded_len_varint(e.len() as u64) + e.len()).sum();
    let mut buf = Vec::with_capacity(len);
    for e in entries {
        buf.push(STATEMENT_PAGE_TAG);
        encode_varint(e.len() as u64, &mut buf);
        buf.extend_from_slice(e);
    }
    buf
}

/// The entries of a statement row: a page, or a single entry (rows written
/// before statements were paged).
pub fn decode_statement_row(bytes: &[u8]) -> Result<Vec<state::StatementEntry>, CodecError> {
    if bytes.first() == Some(&STATEMENT_PAGE_TAG) {
        return Ok(state::StatementPage::decode(bytes)?.entries);
    }
    Ok(vec![state::StatementEntry::decode(bytes)?])
}

/// The encoded entries of a statement page row (to append to it).
pub fn split_statement_page(bytes: &[u8]) -> Result<Vec<Vec<u8>>, CodecError> {
    use prost::encoding::decode_varint;
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some((&tag, after)) = rest.split_first() {
        if tag != STATEMENT_PAGE_TAG {
            return Err(CodecError::Missing("statement page entry"));
        }
        let mut after = after;
        let len = decode_varint(&mut after)? as usize;
        let entry = after.get(..len).ok_or(CodecError::Missing("statement page entry bytes"))?;
        out.push(entry.to_vec());
        rest = &after[len..];
    }
    Ok(out)
}

// ---- idempotency records ----

/// A request id's row, as the writer reads it back.
pub enum StoredRequest {
    /// Written before 2026-12-01: the whole reply.
    Reply(u64, Reply),
    /// The fingerprint, the record's offset and the balance after it.
    At { fingerprint: u64, offset: u64, balance: Balance },
}

fn balance_to_state(b: &Balance) -> state::Balance {
    state::Balance { available: b.available, reserved: b.reserved, debt: b.debt, growth: b.growth, pending: b.pending }
}

pub fn encode_request(fingerprint: u64, offset: u64, balance: &Balance) -> Vec<u8> {
    state::StoredReply { fingerprint, reply: None, offset, balance: Some(balance_to_state(balance)) }.encode_to_vec()
}

pub fn decode_request(bytes: &[u8]) -> Result<StoredRequest, CodecError> {
    let s = state::StoredReply::decode(bytes)?;
    let Some(r) = s.reply else {
        let b = s.balance.unwrap_or_default();
        let balance = Balance {
            available: b.available,
            reserved: b.reserved,
            debt: b.debt,
            growth: b.growth,
            pending: b.pending,
        };
        return Ok(StoredRequest::At { fingerprint: s.fingerprint, offset: s.offset, balance });
    };
    let b = r.balance.unwrap_or_default();
    let p = r.position.unwrap_or_default();
    let reply = Reply {
        request_id: r.request_id,
        replayed: r.replayed,
        events: r.events.into_iter().map(event_from_wire).collect::<Result<_, _>>()?,
        balance: Balance {
            available: b.available,
            reserved: b.reserved,
            debt: b.debt,
            growth: b.growth,
            pending: b.pending,
        },
        position: Position { partition: p.partition, offset: p.offset },
        granted: r.granted_points,
        forfeited: r.forfeited_points,
        programme_version: r.programme_version,
        cap_mode: crate::log::codec::cap_mode_from_wire(r.cap_mode),
    };
    Ok(StoredRequest::Reply(s.fingerprint, reply))
}

/// A request id's row with the whole reply (a shared log's writers; the
/// only form before 2026-12-01).
pub fn encode_stored_reply(fingerprint: u64, r: &Reply) -> Vec<u8> {
    let reply = state::StoredCommandReply {
        request_id: r.request_id.clone(),
        replayed: r.replayed,
        events: r.events.iter().cloned().map(event_to_wire).collect(),
        balance: Some(balance_to_state(&r.balance)),
        position: Some(state::Position { partition: r.position.partition, offset: r.position.offset }),
        granted_points: r.granted,
        forfeited_points: r.forfeited,
        programme_version: r.programme_version,
        cap_mode: crate::log::codec::cap_mode_to_wire(r.cap_mode) as i32,
    };
    state::StoredReply { fingerprint, reply: Some(reply), offset: 0, balance: None }.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LotAmount, Millis, Points, Share, VecMap};
    use crate::log::codec::opt_at;

    const UUID: &str = "6f1c2a4e-9b3d-4e5f-8a7b-0c1d2e3f4a5b";
    const OTHER_UUID: &str = "00000000-0000-4000-8000-00000000000a";

    // prost's own messages, as the account snapshots were encoded before
    // they were written straight from the account. They name every field
    // (no `..Default::default()`), so a field added to the messages stops
    // them compiling until it is written here and in `mod fields` too.

    /// An id's text and bytes fields: a canonical UUID as its bytes.
    fn named(id: &Id) -> (String, Vec<u8>) {
        match id.uuid() {
            Some(bytes) => (String::new(), bytes.to_vec()),
            None => (id.to_string(), Vec::new()),
        }
    }

    /// The lots of the whole row, in order (none for a piece row).
    type Order<'a> = Option<Vec<&'a Id>>;

    fn place(order: &Order, id: &Id) -> u32 {
        order.as_ref().and_then(|o| o.iter().position(|l| *l == id)).map_or(0, |i| i as u32 + 1)
    }

    fn share(id: &Id, points: Points, order: &Order) -> state::LotShare {
        let lot = place(order, id);
        let (lot_id, uuid) = if lot == 0 { named(id) } else { Default::default() };
        state::LotShare { lot_id, points, uuid, lot }
    }

    fn lot_to_pb(id: &Id, l: &Lot) -> state::LotState {
        let (lot_id, uuid) = named(id);
        state::LotState {
            lot_id,
            earned_points: l.earned,
            remaining: l.remaining,
            expires_at_ms: l.expires_at.unwrap_or(0),
            reminded: l.reminded,
            pending: l.pending,
            uuid,
        }
    }

    fn earn_to_pb(id: &Id, e: &EarnRecord, order: &Order) -> state::EarnState {
        let lot = place(order, id);
        let (earn_id, uuid) = if lot == 0 { named(id) } else { Default::default() };
        state::EarnState {
            earn_id,
            points: e.points,
            reversed: e.reversed,
            growth: e.growth,
            growth_reversed: e.growth_reversed,
            day: e.day,
            growth_expired: e.growth_expired,
            uuid,
            lot,
        }
    }

    fn spend_to_pb(id: &Id, s: &SpendRecord, order: &Order) -> state::SpendState {
        let (spend_id, uuid) = named(id);
        state::SpendState {
            spend_id,
            lots: s.lots.iter().map(|l| share(&l.lot, l.points, order)).collect(),
            refunded: s.refunded.iter().map(|(id, p)| share(id, *p, order)).collect(),
            uuid,
        }
    }

    fn reservation_to_pb(id: &Id, r: &ReservationRecord, order: &Order) -> state::ReservationState {
        let (reservation_id, uuid) = named(id);
        state::ReservationState {
            reservation_id,
            order_ref: r.order_ref.clone(),
            order_cash_minor: r.order_cash_minor,
            lots: r.lots.iter().map(|l| share(&l.lot, l.points, order)).collect(),
            expires_at_ms: r.expires_at,
            status: match r.status {
                ReservationStatus::Open => state::ReservationStatus::Open,
                ReservationStatus::Captured => state::ReservationStatus::Captured,
                ReservationStatus::Released => state::ReservationStatus::Released,
                ReservationStatus::TimedOut => state::ReservationStatus::TimedOut,
            } as i32,
            uuid,
        }
    }

    // prost's reading of the lists, as rows were read before `mod read`
    // read them straight: the reference it is compared with.

    fn lot_from_pb(l: state::LotState) -> Result<(Id, Lot), CodecError> {
        let lot = Lot {
            earned: l.earned_points,
            remaining: l.remaining,
            expires_at: opt_at(l.expires_at_ms),
            reminded: l.reminded,
            pending: l.pending,
        };
        Ok((id_from_pb(&l.lot_id, &l.uuid)?, lot))
    }

    fn earn_from_pb(e: state::EarnState, lots: &[(Id, Lot)]) -> Result<(Id, EarnRecord), CodecError> {
        let record = EarnRecord {
            points: e.points,
            reversed: e.reversed,
            growth: e.growth,
            growth_reversed: e.growth_reversed,
            day: e.day,
            growth_expired: e.growth_expired,
        };
        Ok((lot_named(&e.earn_id, &e.uuid, e.lot, lots)?, record))
    }

    fn shares_from_pb(shares: &[state::LotShare], lots: &[(Id, Lot)]) -> Result<Vec<Share>, CodecError> {
        shares
            .iter()
            .map(|l| Ok(Share { lot: lot_named(&l.lot_id, &l.uuid, l.lot, lots)?, points: l.points }))
            .collect()
    }

    fn spend_from_pb(s: state::SpendState, lots: &[(Id, Lot)]) -> Result<(Id, SpendRecord), CodecError> {
        let refunded = shares_from_pb(&s.refunded, lots)?.into_iter().map(|l| (l.lot, l.points)).collect();
        let record = SpendRecord { lots: shares_from_pb(&s.lots, lots)?, refunded };
        Ok((id_from_pb(&s.spend_id, &s.uuid)?, record))
    }

    fn reservation_from_pb(
        r: state::ReservationState,
        lots: &[(Id, Lot)],
    ) -> Result<(Id, ReservationRecord), CodecError> {
        let status = status_of(r.status)?;
        let record = ReservationRecord {
            order_cash_minor: r.order_cash_minor.max(0),
            lots: shares_from_pb(&r.lots, lots)?,
            expires_at: r.expires_at_ms,
            status,
            order_ref: r.order_ref,
        };
        Ok((id_from_pb(&r.reservation_id, &r.uuid)?, record))
    }

    /// An account row as prost reads it.
    fn decode_by_prost(bytes: &[u8]) -> Result<Account, CodecError> {
        let mut s = state::AccountSnapshot::decode(bytes)?;
        let lots: Vec<(Id, Lot)> =
            std::mem::take(&mut s.lots).into_iter().map(lot_from_pb).collect::<Result<_, _>>()?;
        let earns: Vec<_> =
            std::mem::take(&mut s.earns).into_iter().map(|e| earn_from_pb(e, &lots)).collect::<Result<_, _>>()?;
        let spends: Vec<_> =
            std::mem::take(&mut s.spends).into_iter().map(|x| spend_from_pb(x, &lots)).collect::<Result<_, _>>()?;
        let reservations: Vec<_> = std::mem::take(&mut s.reservations)
            .into_iter()
            .map(|r| reservation_from_pb(r, &lots))
            .collect::<Result<_, _>>()?;
        // The rest (no lists left to read) as the reader under test reads it.
        let mut a = decode_account(&s.encode_to_vec())?;
        a.lots = lots.into_iter().collect();
        a.earns = earns.into_iter().collect();
        a.spends = spends.into_iter().collect();
        a.reservations = reservations.into_iter().collect();
        a.recount();
        Ok(a)
    }

    /// A piece row as prost reads it.
    fn piece_by_prost(piece: Piece, bytes: &[u8]) -> Result<Account, CodecError> {
        let (mut a, id) = (Account::default(), Id::of("p"));
        match piece {
            Piece::Lot => _ = a.lots.insert(id, lot_from_pb(state::LotState::decode(bytes)?)?.1),
            Piece::Earn => _ = a.earns.insert(id, earn_from_pb(state::EarnState::decode(bytes)?, &[])?.1),
            Piece::Spend => _ = a.spends.insert(id, spend_from_pb(state::SpendState::decode(bytes)?, &[])?.1),
            Piece::Reservation => {
                _ = a.reservations.insert(id, reservation_from_pb(state::ReservationState::decode(bytes)?, &[])?.1)
            }
        }
        Ok(a)
    }

    fn piece_read(piece: Piece, bytes: &[u8]) -> Result<Account, CodecError> {
        let mut a = Account::default();
        decode_piece_into(&mut a, piece, Id::of("p"), bytes)?;
        Ok(a)
    }

    /// A row's top-level fields, each as (number, its bytes with its key).
    fn fields_of(row: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let (mut rest, mut out) = (row, Vec::new());
        loop {
            let at = row.len() - rest.len();
            let Some((tag, wire)) = read::next(&mut rest).unwrap() else { return out };
            read::skip(tag, wire, &mut rest).unwrap();
            out.push((tag, row[at..row.len() - rest.len()].to_vec()));
        }
    }

    fn whole_by_prost(a: &Account) -> Vec<u8> {
        let order = Some(a.lots.keys().collect());
        let mut s = header_to_pb(a);
        s.lots = a.lots.iter().map(|(id, l)| lot_to_pb(id, l)).collect();
        s.earns = a.earns.iter().map(|(id, e)| earn_to_pb(id, e, &order)).collect();
        s.spends = a.spends.iter().map(|(id, sp)| spend_to_pb(id, sp, &order)).collect();
        s.reservations = a.reservations.iter().map(|(id, r)| reservation_to_pb(id, r, &order)).collect();
        s.encode_to_vec()
    }

    fn amount(id: &str, points: Points) -> Share {
        Share { lot: Id::of(id), points }
    }

    /// An account with every kind of piece, default values among them
    /// (prost leaves those out), long ids, negative numbers and big ones.
    fn varied() -> Account {
        let mut a = Account::default();
        let long = "r".repeat(300);
        let lot =
            |earned, remaining, expires_at, reminded| Lot { earned, remaining, expires_at, reminded, pending: false };
        a.lots.insert(Id::of("e1"), lot(100, 40, Some(1_773_100_800_000), true));
        a.lots.insert(Id::of("e2"), lot(5, 0, None, false));
        a.lots.insert(Id::of(&long), lot(i64::MAX, 1, Some(-1), false));
        a.lots.insert(Id::of(""), lot(0, 0, None, true));
        a.lots.insert(Id::of(UUID), lot(9, 9, None, false));
        a.earns.insert(Id::of("e1"), EarnRecord { points: 100, growth: 7, day: 20_000, ..Default::default() });
        a.earns.insert(Id::of(UUID), EarnRecord { points: 9, ..Default::default() });
        a.earns.insert(
            Id::of(&long),
            EarnRecord { points: 3, reversed: 3, growth: -2, growth_reversed: 1, day: -5, growth_expired: 9 },
        );
        a.earns.insert(Id::of("e0"), EarnRecord::default());
        let mut refunded = VecMap::new();
        refunded.insert(Id::of("e1"), 10);
        refunded.insert(Id::of("e2"), 0);
        refunded.insert(Id::of(UUID), 2);
        a.spends.insert(
            Id::of("s1"),
            SpendRecord { lots: vec![amount("e1", 50), amount("e2", 5), amount("", 0), amount(UUID, 3)], refunded },
        );
        a.spends.insert(Id::of("s2"), SpendRecord::default());
        for (i, status) in [
            ReservationStatus::Open,
            ReservationStatus::Captured,
            ReservationStatus::Released,
            ReservationStatus::TimedOut,
        ]
        .into_iter()
        .enumerate()
        {
            let lots = if i == 1 { Vec::new() } else { vec![amount("e1", i as Points + 1)] };
            let order_ref = if i == 2 { String::new() } else { format!("order-{i}") };
            a.reservations.insert(
                Id::of(&format!("h{i}")),
                ReservationRecord {
                    order_ref,
                    order_cash_minor: i as i64 * 100,
                    lots,
                    expires_at: i as Millis * 1000,
                    status,
                },
            );
        }
        a.debt = 12;
        a.growth = -3;
        a.spending_frozen = true;
        a.totals.issued = 108;
        a.day_actions.insert(Id::of("checkin"), 5);
        a.extra.rules_day = 3;
        a.extra.rule_days.insert(Id::of("login"), crate::domain::RuleDay { count: 2, points: 2 });
        a.extra.level_held_until = Some(9_000);
        a.totals.penalized = 7;
        a.events = 17;
        a.level = "gold".into();
        // RFM: a purchase on day 0 (a value the flags must tell from none).
        a.extra.last_purchase_day = Some(0);
        a.extra.purchase_months = vec![
            crate::domain::PurchaseMonth { month: 24_311, count: 2, amount_minor: 30_000 },
            crate::domain::PurchaseMonth { month: 24_312, count: 1, amount_minor: 0 },
        ];
        a.extra.rfm_growth = 9;
        a.extra.rfm_evaluated = Some(0);
        a.extra.reminded_day = Some(20_597);
        a.extra.held = Some(crate::domain::EarningsHold { rule: "dense_spend".into(), alert_id: "a-1".into() });
        with_uuid_pieces(&mut a);
        a.recount();
        a
    }

    /// A spend and a hold of UUID ids, naming a lot that is not there.
    fn with_uuid_pieces(a: &mut Account) {
        let other = SpendRecord { lots: vec![amount(UUID, 1), amount("e9", 2)], refunded: VecMap::new() };
        a.spends.insert(Id::of(OTHER_UUID), other);
        let hold = ReservationRecord {
            order_ref: String::new(),
            order_cash_minor: 0,
            lots: vec![amount("e9", 1)],
            expires_at: 5,
            status: ReservationStatus::Released,
        };
        a.reservations.insert(Id::of(OTHER_UUID), hold);
    }

    /// The row as written before 2026-12-07: every id as text, no places.
    fn with_ids_as_text(row: &[u8]) -> Vec<u8> {
        let mut s = state::AccountSnapshot::decode(row).unwrap();
        let text = |uuid: &mut Vec<u8>, id: &mut String| {
            if !uuid.is_empty() {
                *id = Id::from_uuid(uuid).unwrap().to_string();
                uuid.clear();
            }
        };
        let lots: Vec<String> = s
            .lots
            .iter_mut()
            .map(|l| {
                text(&mut l.uuid, &mut l.lot_id);
                l.lot_id.clone()
            })
            .collect();
        let by_place = |lot: &mut u32, id: &mut String| {
            if *lot > 0 {
                *id = lots[*lot as usize - 1].clone();
                *lot = 0;
            }
        };
        let shares = |shares: &mut Vec<state::LotShare>| {
            for l in shares {
                text(&mut l.uuid, &mut l.lot_id);
                by_place(&mut l.lot, &mut l.lot_id);
            }
        };
        for e in &mut s.earns {
            text(&mut e.uuid, &mut e.earn_id);
            by_place(&mut e.lot, &mut e.earn_id);
        }
        for x in &mut s.spends {
            text(&mut x.uuid, &mut x.spend_id);
            shares(&mut x.lots);
            shares(&mut x.refunded);
        }
        for r in &mut s.reservations {
            text(&mut r.uuid, &mut r.reservation_id);
            shares(&mut r.lots);
        }
        s.encode_to_vec()
    }

    #[test]
    fn a_row_with_every_id_as_text_reads_as_the_same_account_and_takes_more_bytes() {
        let a = varied();
        let (row, old) = (encode_account(&a), with_ids_as_text(&encode_account(&a)));
        assert_eq!(decode_account(&old).unwrap(), a);
        assert!(row.len() + 4 * 20 < old.len(), "{} vs {}", row.len(), old.len());
    }

    #[test]
    fn a_place_past_the_rows_lots_or_a_uuid_not_of_16_bytes_is_an_error() {
        let mut s = state::AccountSnapshot::decode(&*encode_account(&varied())).unwrap();
        s.earns[0].lot = s.lots.len() as u32 + 1;
        assert!(decode_account(&s.encode_to_vec()).is_err());
        let mut s = state::AccountSnapshot::decode(&*encode_account(&varied())).unwrap();
        s.lots[0].uuid = vec![1; 15];
        assert!(decode_account(&s.encode_to_vec()).is_err());
    }

    #[test]
    fn a_whole_reply_row_answers_with_its_cap_mode_and_an_offset_row_with_its_place() {
        use crate::log::record::{CapMode, Position, Reply};
        let reply = Reply {
            request_id: "r1".into(),
            events: vec![crate::domain::Event::PointsSpent {
                spend_id: "r1".into(),
                order_ref: Some("o-1".into()),
                points: 5,
                lots: vec![LotAmount::new("e1", 5)],
                order_cash_minor: 0,
            }],
            balance: Balance { available: 5, ..Default::default() },
            position: Position { partition: 3, offset: 41 },
            granted: 5,
            programme_version: 2,
            cap_mode: CapMode::Share,
            ..Default::default()
        };
        match decode_request(&encode_stored_reply(7, &reply)).unwrap() {
            StoredRequest::Reply(fp, back) => assert_eq!((fp, back), (7, reply.clone())),
            StoredRequest::At { .. } => panic!("the whole reply was written"),
        }
        match decode_request(&encode_request(7, 41, &reply.balance)).unwrap() {
            StoredRequest::At { fingerprint, offset, balance } => {
                assert_eq!((fingerprint, offset, balance), (7, 41, reply.balance))
            }
            StoredRequest::Reply(..) => panic!("only the offset was written"),
        }
    }

    #[test]
    fn where_the_statement_tail_starts_is_written_as_prost_writes_it_and_read_back() {
        let mut a = varied();
        a.events = 19; // three entries past a full page
        let mut tail = Tail::new(300, 1);
        for e in [&b"one"[..], b"two", b"three"] {
            tail.push(e);
        }
        let mut by_prost = header_to_pb(&a);
        by_prost.statement_tail_offset = 300;
        by_prost.statement_tail_index = 1;
        assert_eq!(encode_account_header_with(&a, Some(&tail)), by_prost.encode_to_vec());
        let whole = encode_account_with(&a, Some(&tail));
        let (back, read) = decode_account_with_tail(&whole).unwrap();
        // The entries are the page's row's, not the account's.
        assert_eq!((back, read), (a.clone(), Some(Tail { bytes: Vec::new(), ..tail })));
        a.events = 32;
        assert_eq!(decode_account_with_tail(&encode_account(&a)).unwrap().1, None, "the last page is full");
    }

    /// A spend of 120 KB: shares of 128 bytes and more inside it (their
    /// lots named by long ids, not in the row), and its own length three
    /// bytes long.
    fn long_spend() -> Account {
        let mut a = varied();
        let lots = (0..600).map(|i| amount(&format!("{i:0>190}"), i64::from(i) << 40)).collect();
        let mut refunded = VecMap::new();
        refunded.insert(Id::of(&"x".repeat(20_000)), 1);
        a.spends.insert(Id::of(&"s".repeat(130)), SpendRecord { lots, refunded });
        a
    }

    #[test]
    fn snapshots_written_straight_are_the_bytes_prost_writes() {
        for a in [Account::default(), varied(), long_spend()] {
            let whole = encode_account(&a);
            assert_eq!(whole, whole_by_prost(&a));
            assert_eq!(decode_account(&whole).unwrap(), a);
            let mut pieces = Vec::new();
            encode_every_piece(&a, |p, id, v| pieces.push((p, id.to_string(), v)));
            assert_eq!(pieces.len(), a.lots.len() + a.earns.len() + a.spends.len() + a.reservations.len());
            let none = Id::of("");
            for (piece, id, bytes) in pieces {
                let by_prost = match piece {
                    Piece::Lot => lot_to_pb(&none, a.lots.get(&Id::of(&id)).unwrap()).encode_to_vec(),
                    Piece::Earn => earn_to_pb(&none, a.earns.get(&Id::of(&id)).unwrap(), &None).encode_to_vec(),
                    Piece::Spend => spend_to_pb(&none, a.spends.get(&Id::of(&id)).unwrap(), &None).encode_to_vec(),
                    Piece::Reservation => {
                        reservation_to_pb(&none, a.reservations.get(&Id::of(&id)).unwrap(), &None).encode_to_vec()
                    }
                };
                assert_eq!(bytes, by_prost, "{piece:?} {id:?}");
                assert_eq!(encode_piece(&a, piece, &Id::of(&id)), Some(bytes));
            }
        }
    }

    /// Every row and piece of the accounts above, and the rows as written
    /// before 2026-12-07 (every id as text).
    fn rows() -> Vec<Vec<u8>> {
        let mut rows = Vec::new();
        for a in [Account::default(), varied(), long_spend()] {
            rows.push(with_ids_as_text(&encode_account(&a)));
            rows.push(encode_account(&a));
        }
        rows
    }

    #[test]
    fn rows_read_straight_are_the_accounts_prost_reads() {
        for row in rows() {
            assert_eq!(decode_account(&row).unwrap(), decode_by_prost(&row).unwrap());
        }
        for a in [varied(), long_spend()] {
            encode_every_piece(&a, |piece, _, bytes| {
                assert_eq!(piece_read(piece, &bytes).unwrap(), piece_by_prost(piece, &bytes).unwrap(), "{piece:?}");
            });
        }
    }

    #[test]
    fn a_row_with_its_lists_among_its_other_fields_reads_as_written() {
        let a = varied();
        let mut fields = fields_of(&encode_account(&a));
        assert!(fields.len() > 20);
        // Lists after some of the header's fields and among others, each
        // list's entries in their order (the lots' places count by it).
        fields.sort_by_key(|(tag, _)| (tag * 7) % 5);
        let row = fields.concat_bytes();
        assert_ne!(row, encode_account(&a));
        assert_eq!(decode_account(&row).unwrap(), a);
        // And the header's fields in one run before the lists.
        let mut fields = fields_of(&encode_account(&a));
        fields.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag > 4));
        assert_eq!(decode_account(&fields.concat_bytes()).unwrap(), a);
    }

    trait ConcatBytes {
        fn concat_bytes(&self) -> Vec<u8>;
    }

    impl ConcatBytes for Vec<(u32, Vec<u8>)> {
        fn concat_bytes(&self) -> Vec<u8> {
            self.iter().flat_map(|(_, f)| f.iter().copied()).collect()
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// A mangled row (bytes changed, cut short or let in) reads as
        /// prost reads it: the same account, or an error from both.
        #[test]
        fn a_mangled_row_reads_as_prost_reads_it(
            which in 0usize..6,
            edits in proptest::collection::vec((0u8..3, proptest::prelude::any::<u16>(), proptest::prelude::any::<u8>()), 1..4),
        ) {
            static ROWS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
            let mut row = ROWS.get_or_init(rows)[which].clone();
            for (kind, at, byte) in edits {
                let at = usize::from(at) % (row.len() + 1);
                match kind {
                    0 if at < row.len() => row[at] = byte,
                    1 => row.truncate(at),
                    _ => row.insert(at, byte),
                }
            }
            proptest::prop_assert_eq!(decode_account(&row).ok(), decode_by_prost(&row).ok());
            for piece in Piece::ALL {
                proptest::prop_assert_eq!(piece_read(piece, &row).ok(), piece_by_prost(piece, &row).ok());
            }
        }
    }
}
