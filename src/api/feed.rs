//! `points.v1.Feed`: a programme's events as a stream, resumable from a
//! position (the reading itself is `crate::feed`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status};

use super::errors::{invalid, status};
use super::{validate, Access, Caller, Ledger};
use crate::feed::{self, Ended, Filter, Source};
use crate::proto as pb;

/// Subscriptions one instance serves at once (each reads the log itself).
pub const FEED_SUBSCRIBERS_MAX: usize = 64;

#[derive(Clone)]
pub struct FeedService(pub Arc<Ledger>, pub Arc<AtomicUsize>);

impl FeedService {
    pub fn new(ledger: Arc<Ledger>) -> FeedService {
        FeedService(ledger, Arc::new(AtomicUsize::new(0)))
    }
}

type ItemStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::FeedItem, Status>> + Send>>;

/// Each partition's next offset: `from`'s position where it names the
/// partition (that record again: a stream may have ended amid its items),
/// 0 elsewhere, or the views' end with `from_now`.
fn starts(r: &pb::SubscribeRequest, ends: &[u64]) -> Result<Vec<u64>, Status> {
    if r.from_now {
        return Ok(ends.to_vec());
    }
    let mut starts = vec![0u64; ends.len()];
    let mut named = BTreeSet::new();
    for p in &r.from {
        let i = p.partition as usize;
        if i >= ends.len() || !named.insert(p.partition) {
            return Err(invalid("from.partition", format!("partitions are 0..{} and named once", ends.len())));
        }
        if p.offset >= ends[i] {
            let why = format!("offset {} of partition {} is not committed yet", p.offset, p.partition);
            return Err(status(Code::OutOfRange, "POSITION_PAST_END", why, Some("from.offset")));
        }
        starts[i] = p.offset;
    }
    Ok(starts)
}

fn filter(r: &pb::SubscribeRequest) -> Result<Filter, Status> {
    let known = feed::event_types();
    let mut types = BTreeSet::new();
    for t in &r.event_types {
        if !known.contains(t.as_str()) {
            return Err(invalid("event_types", format!("{t:?} is not an event type")));
        }
        types.insert(t.clone());
    }
    Ok(Filter { tenant_id: r.tenant_id.clone(), programme_id: r.programme_id.clone(), types })
}

/// Takes one of the instance's subscription places until dropped.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl pb::feed_server::Feed for FeedService {
    type SubscribeStream = ItemStream;

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Result<Response<ItemStream>, Status> {
        let ledger = &self.0;
        let r = req.get_ref();
        let key = validate::programme_key(&r.tenant_id, &r.programme_id)?;
        ledger.auth.check(&Caller::of(&req), &key.tenant_id, &key.programme_id, Access::Read)?;
        ledger.programme(&key)?;
        let filter = filter(r)?;
        let source = Source {
            events: ledger.events.clone(),
            views: ledger.views.clone(),
            positions: ledger.positions.clone(),
            stopping: ledger.stopping.clone(),
            control: ledger.control.clone(),
            registry: ledger.programmes.registry(),
        };
        let ends: Vec<u64> = (0..source.lanes()).map(|p| source.end_of(p)).collect();
        let starts = starts(r, &ends)?;
        if self.1.fetch_add(1, Ordering::SeqCst) >= FEED_SUBSCRIBERS_MAX {
            self.1.fetch_sub(1, Ordering::SeqCst);
            let why = format!("this instance serves {FEED_SUBSCRIBERS_MAX} subscriptions at most");
            return Err(status(Code::ResourceExhausted, "TOO_MANY_SUBSCRIBERS", why, None));
        }
        let place = Place(self.1.clone());
        let (tx, rx) = mpsc::channel(feed::FEED_BUFFER_ITEMS);
        let ending: Arc<Mutex<Option<Status>>> = Arc::default();
        let (end, stall) = (ending.clone(), ledger.feed_stall);
        tokio::task::spawn_blocking(move || {
            let _place = place;
            let why = match feed::run(&source, &filter, &starts, &tx, stall) {
                Ended::Gone => return,
                Ended::TooSlow => status(
                    Code::ResourceExhausted,
                    feed::SUBSCRIBER_TOO_SLOW,
                    format!(
                        "the subscriber took no item for {} ms: resume from the last position seen",
                        stall.as_millis()
                    ),
                    None,
                ),
                Ended::Failed(e) => status(Code::Unavailable, "FEED_UNAVAILABLE", e, None),
                Ended::Stopping => status(
                    Code::Unavailable,
                    "SERVICE_STOPPING",
                    "the service is stopping: resume from the last position seen",
                    None,
                ),
            };
            *end.lock().expect("feed end lock") = Some(why);
        });
        // The buffered items first, then how the subscription ended.
        let tail =
            tokio_stream::iter(std::iter::once_with(move || ending.lock().expect("feed end lock").take()).flatten());
        let stream = ReceiverStream::new(rx).map(Ok).chain(tail.map(Err));
        Ok(Response::new(Box::pin(stream)))
    }
}
