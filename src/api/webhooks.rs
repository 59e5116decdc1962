//! `ProgrammeAdmin/ConfigureWebhook` and `ListWebhookDeliveries` (the
//! delivery itself is `crate::webhook`).

use tonic::{Response, Status};

use super::errors::{internal, invalid};
use super::{convert, page_size, unhex, validate, Access, Caller, Ledger};
use crate::log::record::WebhookConfigured;
use crate::proto as pb;
use crate::webhook::worker::LaneState;

/// Webhooks one programme has at most.
pub const WEBHOOKS_PER_PROGRAMME_MAX: usize = 10;
pub const WEBHOOK_SECRET_CHARS: std::ops::RangeInclusive<usize> = 16..=256;
pub const WEBHOOK_DELIVERIES_PAGE_SIZE_MAX: u32 = 1000;

impl Ledger {
    pub(super) async fn configure_webhook(
        &self,
        caller: &Caller<'_>,
        r: &pb::ConfigureWebhookRequest,
    ) -> Result<Response<pb::ConfigureWebhookReply>, Status> {
        let key = validate::programme_key(&r.tenant_id, &r.programme_id)?;
        let client = self.auth.check(caller, &key.tenant_id, &key.programme_id, Access::Admin)?;
        self.programme(&key)?;
        let request_id = validate::request_id(&r.request_id)?;
        let operator = validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, true)?;
        let webhook_id = validate::id("webhook_id", &r.webhook_id)?;
        crate::webhook::validate_url(&r.url).map_err(|why| invalid("url", why))?;
        if !WEBHOOK_SECRET_CHARS.contains(&r.secret.chars().count()) {
            return Err(invalid("secret", "must be 16..=256 characters"));
        }
        let known = crate::feed::event_types();
        if let Some(t) = r.event_types.iter().find(|t| !known.contains(t.as_str())) {
            return Err(invalid("event_types", format!("{t:?} is not an event type")));
        }
        let others = self.programmes.registry().read().expect("registry lock").webhooks_of(&key);
        if others.iter().filter(|w| w.config.webhook_id != webhook_id).count() >= WEBHOOKS_PER_PROGRAMME_MAX {
            return Err(invalid(
                "webhook_id",
                format!("a programme has at most {WEBHOOKS_PER_PROGRAMME_MAX} webhooks"),
            ));
        }
        let mut event_types = r.event_types.clone();
        event_types.sort();
        event_types.dedup();
        let webhook = WebhookConfigured {
            programme: key,
            webhook_id,
            url: r.url.clone(),
            event_types,
            secret: r.secret.clone(),
            disabled: r.disabled,
        };
        let (programmes, now, id) = (self.programmes.clone(), self.clock.now(), request_id.clone());
        let (position, replayed) = tokio::task::spawn_blocking(move || {
            programmes.configure_webhook(&id, &operator, &client.name, webhook, now)
        })
        .await
        .map_err(internal)??;
        let position = Some(convert::position_to_pb(position));
        Ok(Response::new(pb::ConfigureWebhookReply { request_id, replayed, position }))
    }

    pub(super) async fn list_webhook_deliveries(
        &self,
        caller: &Caller<'_>,
        r: &pb::ListWebhookDeliveriesRequest,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let key = validate::programme_key(&r.tenant_id, &r.programme_id)?;
        self.auth.check(caller, &key.tenant_id, &key.programme_id, Access::Admin)?;
        self.programme(&key)?;
        let size = page_size(r.page_size, WEBHOOK_DELIVERIES_PAGE_SIZE_MAX)?;
        let skip = match r.page_token.as_str() {
            "" => 0,
            t => {
                let b = unhex("page_token", t)?;
                u64::from_be_bytes(b.try_into().map_err(|_| invalid("page_token", "not a token this service issued"))?)
                    as usize
            }
        };
        let lanes = self.deliveries.lock().expect("deliveries lock").clone();
        let mine: Vec<_> = lanes
            .into_iter()
            .filter(|((p, w, _), _)| *p == key && (r.webhook_id.is_empty() || *w == r.webhook_id))
            .collect();
        let deliveries = mine.iter().skip(skip).take(size).map(|((_, w, p), s)| delivery(w, *p, s)).collect();
        let next = skip + size;
        let next_page_token = if next < mine.len() { crate::hex(&(next as u64).to_be_bytes()) } else { String::new() };
        Ok(Response::new(pb::ListWebhookDeliveriesResponse { deliveries, next_page_token }))
    }
}

fn delivery(webhook_id: &str, partition: u32, s: &LaneState) -> pb::WebhookDelivery {
    let state = match (&s.next, s.attempts) {
        (Some(_), 0) => pb::WebhookDeliveryState::Pending,
        (Some(_), _) => pb::WebhookDeliveryState::Failed,
        (None, _) if s.read_to < s.end => pb::WebhookDeliveryState::Pending,
        (None, _) => pb::WebhookDeliveryState::Idle,
    };
    pb::WebhookDelivery {
        webhook_id: webhook_id.to_string(),
        partition,
        state: state as i32,
        delivery_id: s.next.as_ref().map(|(id, _)| id.clone()).unwrap_or_default(),
        position: s.next.as_ref().map(|(_, p)| convert::position_to_pb(*p)),
        attempts: s.attempts,
        last_error: s.last_error.clone(),
        next_attempt_at: s.next_attempt_at.map(convert::timestamp),
        delivered: s.delivered,
        last_delivered_at: s.last_delivered_at.map(convert::timestamp),
        lag_records: s.end.saturating_sub(s.read_to),
    }
}
