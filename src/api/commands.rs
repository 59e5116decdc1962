//! Command requests: each of the eleven validated fully (and its access
//! checked) into a domain command before anything reaches a writer. A
//! rejected request writes nothing.

use tonic::{Request, Response, Status};

use super::errors::invalid;
use super::forward::path;
use super::{validate, Access, Caller, Ledger};
use crate::domain::{self, Command, CommandBody};
use crate::proto as pb;

/// The fields every command request has.
pub(super) struct Common<'a> {
    account: &'a Option<pb::AccountKey>,
    request_id: &'a str,
    metadata: &'a std::collections::BTreeMap<String, String>,
    client_ip: &'a str,
    device_id: &'a str,
}

/// A command request: its common fields, the access it needs, its body.
pub(super) trait CommandRequest: prost::Message + Clone + Default + 'static {
    /// Its gRPC method, for forwarding.
    const PATH: &'static str;
    fn access(&self) -> Access;
    fn common(&self) -> Common<'_>;
    fn body(&self) -> Result<CommandBody, Status>;
}

macro_rules! command_request {
    ($t:ty, $path:expr, |$a:ident| $access:expr, |$r:ident| $body:expr) => {
        impl CommandRequest for $t {
            const PATH: &'static str = $path;
            fn access(&self) -> Access {
                let $a = self;
                $access
            }
            fn common(&self) -> Common<'_> {
                Common {
                    account: &self.account,
                    request_id: &self.request_id,
                    metadata: &self.metadata,
                    client_ip: &self.client_ip,
                    device_id: &self.device_id,
                }
            }
            fn body(&self) -> Result<CommandBody, Status> {
                let $r = self;
                Ok($body)
            }
        }
    };
    ($t:ty, $path:expr, $access:path, |$r:ident| $body:expr) => {
        command_request!($t, $path, |_r| $access, |$r| $body);
    };
}

command_request!(pb::EarnRequest, path::EARN, Access::Earn, |r| CommandBody::Earn {
    // Growth alone (a login): points 0 with growth > 0.
    points: if r.points == 0 && r.growth.unwrap_or(0) > 0 { 0 } else { validate::points("points", r.points)? },
    reason: validate::id("reason", &r.reason)?,
    order_ref: validate::order_ref(r.order_ref.as_ref())?,
    growth: validate::growth(r.growth)?,
    expires_at: r.expires_at.as_ref().map(|t| validate::instant("expires_at", t)).transpose()?,
});

command_request!(pb::SpendRequest, path::SPEND, Access::Spend, |r| CommandBody::Spend {
    points: validate::points("points", r.points)?,
    order_ref: validate::order_ref(r.order_ref.as_ref())?,
    order_cash_amount: r.order_cash_amount.map(validate::order_cash).transpose()?,
});

command_request!(pb::ReserveRequest, path::RESERVE, Access::Spend, |r| CommandBody::Reserve {
    points: validate::points("points", r.points)?,
    order_ref: validate::text("order_ref", &r.order_ref, validate::ORDER_REF_CHARS_MAX, true)?,
    timeout_seconds: match r.timeout_seconds {
        t if (1..=domain::RESERVATION_TIMEOUT_SECONDS_MAX).contains(&t) => t,
        _ => {
            return Err(invalid("timeout_seconds", format!("must be 1..={}", domain::RESERVATION_TIMEOUT_SECONDS_MAX)));
        }
    },
    order_cash_amount: r.order_cash_amount.map(validate::order_cash).transpose()?,
});

command_request!(pb::CaptureReservationRequest, path::CAPTURE_RESERVATION, Access::Spend, |r| CommandBody::Capture {
    reservation_id: validate::request_id(&r.reservation_id)
        .map_err(|_| invalid("reservation_id", "must be 1..128 characters"))?,
    points: r.points.map(|p| validate::points("points", p)).transpose()?,
});

command_request!(pb::ReleaseReservationRequest, path::RELEASE_RESERVATION, Access::Spend, |r| CommandBody::Release {
    reservation_id: validate::request_id(&r.reservation_id)
        .map_err(|_| invalid("reservation_id", "must be 1..128 characters"))?,
});

command_request!(pb::RefundRequest, path::REFUND, Access::Spend, |r| CommandBody::Refund {
    spend_id: validate::request_id(&r.spend_request_id)
        .map_err(|_| invalid("spend_request_id", "must be 1..128 characters"))?,
    points: validate::points("points", r.points)?,
});

command_request!(pb::ReverseEarnRequest, path::REVERSE_EARN, Access::Earn, |r| CommandBody::ReverseEarn {
    earn_id: validate::request_id(&r.earn_request_id)
        .map_err(|_| invalid("earn_request_id", "must be 1..128 characters"))?,
    points: validate::points("points", r.points)?,
    growth: validate::growth(r.growth)?,
});

// Expiring due lots is a business call; recycling every point of an
// account (a blacklisted member) is a back-office act: admin and operator.
command_request!(pb::ExpireRequest, path::EXPIRE, |r| if r.all_points { Access::Admin } else { Access::Earn }, |r| {
    CommandBody::Expire {
        all_points: r.all_points,
        reason: validate::text("reason", &r.reason, validate::REASON_CHARS_MAX, r.all_points)?,
        operator: validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, r.all_points)?,
    }
});

command_request!(pb::AdjustRequest, path::ADJUST, Access::Admin, |r| CommandBody::Adjust {
    points: validate::adjustment(r.points)?,
    operator: validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, true)?,
    reason: validate::text("reason", &r.reason, validate::REASON_CHARS_MAX, true)?,
});

command_request!(pb::RecordActivityRequest, path::RECORD_ACTIVITY, Access::Earn, |r| {
    CommandBody::RecordActivity(validate::activity(r)?)
});

command_request!(pb::AdjustGrowthRequest, path::ADJUST_GROWTH, Access::Admin, |r| CommandBody::AdjustGrowth {
    growth: validate::growth_adjustment(r.growth)?,
    operator: validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, true)?,
    reason: validate::text("reason", &r.reason, validate::REASON_CHARS_MAX, true)?,
});

// What the risk desk does with a held member's points.
command_request!(pb::ReleasePendingPointsRequest, path::RELEASE_PENDING_POINTS, Access::Admin, |r| {
    CommandBody::ReleasePending {
        operator: validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, true)?,
        reason: validate::text("reason", &r.reason, validate::REASON_CHARS_MAX, true)?,
    }
});

command_request!(pb::ForfeitPendingPointsRequest, path::FORFEIT_PENDING_POINTS, Access::Admin, |r| {
    CommandBody::ForfeitPending {
        operator: validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, true)?,
        reason: validate::text("reason", &r.reason, validate::REASON_CHARS_MAX, true)?,
    }
});

command_request!(pb::UnholdAccountRequest, path::UNHOLD_ACCOUNT, Access::Admin, |r| CommandBody::Unhold {
    operator: validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, true)?,
    reason: validate::text("reason", &r.reason, validate::REASON_CHARS_MAX, true)?,
});

impl Ledger {
    /// Validates a command request fully (and checks access) into a command.
    pub(super) fn build<R: CommandRequest>(&self, caller: &Caller<'_>, r: &R) -> Result<Command, Status> {
        let c = r.common();
        let account = validate::account(c.account)?;
        let client = self.auth.check(caller, &account.tenant_id, &account.programme_id, r.access())?;
        let request_id = validate::request_id(c.request_id)?;
        tracing::Span::current().record("request_id", request_id.as_str());
        let mut context = validate::context(c.metadata, c.client_ip, c.device_id)?;
        context.client = client.name.to_string();
        let body = r.body()?;
        Ok(Command { request_id, account, body, context })
    }

    pub(super) async fn unary<R: CommandRequest>(&self, req: Request<R>) -> Result<Response<pb::CommandReply>, Status> {
        let command = self.build(&Caller::of(&req), req.get_ref())?;
        self.route(req.metadata(), R::PATH, req.get_ref(), command).await
    }

    pub(super) fn build_batched(&self, caller: &Caller<'_>, c: &pb::BatchCommand) -> Result<Command, Status> {
        use pb::batch_command::Command as C;
        match c.command.as_ref().ok_or_else(|| invalid("command", "is required"))? {
            C::Earn(r) => self.build(caller, r),
            C::Spend(r) => self.build(caller, r),
            C::Reserve(r) => self.build(caller, r),
            C::CaptureReservation(r) => self.build(caller, r),
            C::ReleaseReservation(r) => self.build(caller, r),
            C::Refund(r) => self.build(caller, r),
            C::ReverseEarn(r) => self.build(caller, r),
            C::Expire(r) => self.build(caller, r),
            C::Adjust(r) => self.build(caller, r),
            C::Activity(r) => self.build(caller, r),
            C::AdjustGrowth(r) => self.build(caller, r),
        }
    }
}

pub(super) fn command_error(s: Status) -> pb::CommandError {
    use tonic_types::StatusExt;
    let details = s.get_error_details();
    pb::CommandError {
        code: s.code() as i32,
        message: s.message().to_string(),
        reason: details.error_info().map(|i| i.reason.clone()).unwrap_or_default(),
        field: details
            .bad_request()
            .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
            .unwrap_or_default(),
    }
}
