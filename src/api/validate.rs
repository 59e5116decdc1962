//! Request validation: every limit of the API contract, checked before a
//! command reaches a writer. Produces domain commands.

use std::collections::BTreeMap;

use tonic::Status;

use super::errors::invalid;
use crate::codec::{self, valid_id};
use crate::domain::{AccountKey, CommandContext, Millis};
use crate::proto as pb;

pub const REQUEST_ID_CHARS_MAX: usize = 128;
pub const METADATA_ENTRIES_MAX: usize = 16;
pub const METADATA_KEY_CHARS_MAX: usize = 64;
pub const METADATA_VALUE_CHARS_MAX: usize = 256;
pub const CLIENT_FIELD_CHARS_MAX: usize = 64;
pub const ORDER_REF_CHARS_MAX: usize = 128;
pub const OPERATOR_CHARS_MAX: usize = 64;
pub const REASON_CHARS_MAX: usize = 256;
pub const GROWTH_MAX: i64 = 1 << 50;

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn no_control(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

pub fn request_id(s: &str) -> Result<String, Status> {
    if s.is_empty() || chars(s) > REQUEST_ID_CHARS_MAX || !no_control(s) {
        return Err(invalid("request_id", "must be 1..128 characters without control characters"));
    }
    Ok(s.to_string())
}

pub fn id(field: &str, s: &str) -> Result<String, Status> {
    if !valid_id(s) {
        return Err(invalid(field, "must be 1..64 characters of [A-Za-z0-9_.:-]"));
    }
    Ok(s.to_string())
}

pub fn account(a: &Option<pb::AccountKey>) -> Result<AccountKey, Status> {
    let a = a.as_ref().ok_or_else(|| invalid("account", "is required"))?;
    Ok(AccountKey {
        tenant_id: id("account.tenant_id", &a.tenant_id)?,
        programme_id: id("account.programme_id", &a.programme_id)?,
        member_id: id("account.member_id", &a.member_id)?,
    })
}

pub fn context(
    metadata: &BTreeMap<String, String>,
    client_ip: &str,
    device_id: &str,
) -> Result<CommandContext, Status> {
    if metadata.len() > METADATA_ENTRIES_MAX {
        return Err(invalid("metadata", format!("at most {METADATA_ENTRIES_MAX} entries")));
    }
    for (k, v) in metadata {
        if k.is_empty() || chars(k) > METADATA_KEY_CHARS_MAX || !no_control(k) {
            return Err(invalid("metadata", format!("keys must be 1..{METADATA_KEY_CHARS_MAX} characters")));
        }
        if chars(v) > METADATA_VALUE_CHARS_MAX {
            return Err(invalid(
                &format!("metadata[{k}]"),
                format!("values must be at most {METADATA_VALUE_CHARS_MAX} characters"),
            ));
        }
    }
    for (field, v) in [("client_ip", client_ip), ("device_id", device_id)] {
        if chars(v) > CLIENT_FIELD_CHARS_MAX || !no_control(v) {
            return Err(invalid(field, format!("at most {CLIENT_FIELD_CHARS_MAX} characters")));
        }
    }
    Ok(CommandContext {
        client_ip: client_ip.into(),
        device_id: device_id.into(),
        metadata: metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<BTreeMap<_, _>>(),
    })
}

pub fn positive(field: &str, points: i64) -> Result<i64, Status> {
    if points <= 0 {
        return Err(invalid(field, format!("must be > 0, got {points}")));
    }
    Ok(points)
}

pub fn growth(g: Option<i64>) -> Result<i64, Status> {
    match g {
        None => Ok(0),
        Some(g) if (0..=GROWTH_MAX).contains(&g) => Ok(g),
        Some(_) => Err(invalid("growth", format!("must be 0..={GROWTH_MAX}"))),
    }
}

/// Free text with a length limit; `required` refuses empty.
pub fn text(field: &str, s: &str, max: usize, required: bool) -> Result<String, Status> {
    if (required && s.trim().is_empty()) || chars(s) > max || !no_control(s) {
        let need = if required { "1" } else { "0" };
        return Err(invalid(field, format!("must be {need}..{max} characters without control characters")));
    }
    Ok(s.to_string())
}

pub fn order_ref(s: Option<&String>) -> Result<Option<String>, Status> {
    match s {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => text("order_ref", s, ORDER_REF_CHARS_MAX, true).map(Some),
    }
}

pub fn instant(field: &str, t: &prost_types::Timestamp) -> Result<Millis, Status> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(field, "nanos must be 0..1e9"));
    }
    // Years 1970..=9999 keep every instant representable.
    if !(0..=253_402_300_799).contains(&t.seconds) {
        return Err(invalid(field, "must lie between 1970 and 9999"));
    }
    codec::millis(t).ok_or_else(|| invalid(field, "out of range"))
}
