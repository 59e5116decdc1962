//! `points.v1.Reconciliation`: the daily books, as the reconciliation
//! consumer folded them.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use super::convert;
use super::errors::{invalid, status};
use super::{validate, Access, Caller, Ledger};
use crate::proto as pb;

pub struct ReconciliationService(pub Arc<Ledger>);

#[tonic::async_trait]
impl pb::reconciliation_server::Reconciliation for ReconciliationService {
    async fn get_daily_book(&self, req: Request<pb::GetDailyBookRequest>) -> Result<Response<pb::DailyBook>, Status> {
        let r = req.get_ref();
        let key = validate::programme_key(&r.tenant_id, &r.programme_id)?;
        self.0.auth.check(&Caller::of(&req), &key.tenant_id, &key.programme_id, Access::Finance)?;
        let date = chrono::NaiveDate::parse_from_str(&r.date, "%Y-%m-%d")
            .map_err(|_| invalid("date", format!("'{}' is not a date YYYY-MM-DD", r.date)))?;
        let programme = self.0.programme(&key)?;
        let book = self
            .0
            .blocking(move |l| {
                crate::finance::books::book_for_date(
                    &l.books,
                    &l.programmes.registry().read().expect("registry lock"),
                    &programme,
                    l.writers.partitions(),
                    date,
                )
                .map_err(|e| status(Code::Internal, "BOOKS_UNREADABLE", e.to_string(), None))
            })
            .await?;
        Ok(Response::new(convert::book_to_pb(book)))
    }
}
