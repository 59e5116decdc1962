//! Every way a call can fail, mapped to a gRPC status in one place. Each
//! status carries a `google.rpc.ErrorInfo` with a stable reason, and
//! INVALID_ARGUMENT also a `BadRequest` naming the field.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::validate::FieldError;
use crate::domain::{ProgrammeKey, Reason, Rejection};
use crate::programmes::ConfigureError;
use crate::writer::{Unavailable, WriteError};

pub const ERROR_DOMAIN: &str = "points-ledger";

pub fn status(code: Code, reason: &str, message: impl Into<String>, field: Option<&str>) -> Status {
    let message = message.into();
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    if let Some(field) = field {
        details.add_bad_request_violation(field, message.clone());
    }
    Status::with_error_details(code, message, details)
}

pub fn invalid(field: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    status(Code::InvalidArgument, "INVALID_ARGUMENT", format!("{field}: {message}"), Some(field))
}

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Status {
        invalid(&e.field, e.message)
    }
}

/// The one map from domain reasons to status codes: no catch-all arm, so a
/// new reason does not compile until it has a code.
pub fn code_of(reason: Reason) -> Code {
    match reason {
        Reason::InvalidAmount
        | Reason::Overflow
        | Reason::InvalidExpiry
        | Reason::InvalidTimeout
        | Reason::MissingField
        | Reason::OrderCashAmountRequired => Code::InvalidArgument,
        Reason::ProgrammeNotFound
        | Reason::EarningRuleNotFound
        | Reason::SpendNotFound
        | Reason::EarnNotFound
        | Reason::ReservationNotFound
        | Reason::LevelNotFound
        | Reason::AdjustmentNotFound => Code::NotFound,
        Reason::InsufficientPoints
        | Reason::EarnPending
        | Reason::NothingPending
        | Reason::ApproverIsMaker
        | Reason::AccountFrozen
        | Reason::ReservationSettled
        | Reason::CaptureExceedsReservation
        | Reason::RefundExceedsSpend
        | Reason::ReversalExceedsEarn
        | Reason::GrowthReversalExceedsEarn
        | Reason::OrderShareExceeded
        | Reason::EarningRuleNotActive => Code::FailedPrecondition,
        // Safe to retry with the same request id once the scheduler has settled it.
        Reason::SettlingDue => Code::Unavailable,
        Reason::TooManyLots
        | Reason::TooManyPendingAdjustments
        | Reason::DailyEarnCapReached
        | Reason::ActionDailyCapReached
        | Reason::ProgrammeDailyCapReached => Code::ResourceExhausted,
    }
}

impl From<Rejection> for Status {
    fn from(r: Rejection) -> Status {
        status(code_of(r.reason), r.reason.as_str(), r.message, r.field)
    }
}

impl From<WriteError> for Status {
    fn from(e: WriteError) -> Status {
        match e {
            WriteError::Rejected(r) => r.into(),
            WriteError::RequestIdReused(id) => status(
                Code::AlreadyExists,
                "REQUEST_ID_REUSED",
                format!("request_id {id} was already used with different content"),
                Some("request_id"),
            ),
            e @ WriteError::RecordTooLarge { .. } => status(
                Code::ResourceExhausted,
                "RECORD_TOO_LARGE",
                format!("{e}: ask for fewer points at once (a spend or refund lists every lot it touches)"),
                None,
            ),
            WriteError::Unavailable(cause) => {
                let reason = match cause {
                    Unavailable::PartitionMoving(_) | Unavailable::TakenOver { .. } => "PARTITION_MOVING",
                    _ => "UNAVAILABLE",
                };
                status(Code::Unavailable, reason, format!("{cause} (safe to retry with the same request_id)"), None)
            }
        }
    }
}

impl From<ConfigureError> for Status {
    fn from(e: ConfigureError) -> Status {
        match e {
            ConfigureError::RequestIdReused(id) => status(
                Code::AlreadyExists,
                "REQUEST_ID_REUSED",
                format!("request_id {id} was already used for another configuration"),
                Some("request_id"),
            ),
            ConfigureError::Unavailable(e) => {
                status(Code::Unavailable, "UNAVAILABLE", format!("control log: {e}"), None)
            }
            ConfigureError::NotConfirmed(m) => status(Code::Unavailable, "UNAVAILABLE", m, None),
            e @ ConfigureError::RatioChange { .. } => status(
                Code::FailedPrecondition,
                "RATIO_CHANGE_NOT_ALLOWED",
                e.to_string(),
                Some("programme.points_per_cash_unit"),
            ),
        }
    }
}

/// A programme (or one version of it) that is not configured.
pub fn programme_not_found(key: &ProgrammeKey, version: Option<u64>) -> Status {
    let message = match version {
        Some(v) if v > 0 => format!("programme {}/{} has no version {v}", key.tenant_id, key.programme_id),
        _ => format!("programme {}/{} is not configured", key.tenant_id, key.programme_id),
    };
    status(code_of(Reason::ProgrammeNotFound), Reason::ProgrammeNotFound.as_str(), message, Some("programme_id"))
}

pub fn internal(e: impl std::fmt::Display) -> Status {
    status(Code::Internal, "INTERNAL", e.to_string(), None)
}
