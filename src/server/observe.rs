//! Counts every gRPC call by method and status code, and times it: a tower
//! layer outside every other, so calls shed for load and calls refused by
//! access control count too. The code is read where gRPC puts it: the
//! response headers (an error answered at once) or the trailers at the end
//! of the body; a body dropped before its end counts as `CANCELLED`.
//! The method label only ever names a method this service serves (else
//! `unknown`), so a caller cannot grow the metrics by inventing paths.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use tonic::Code;
use tracing::field::Empty;
use tracing::Instrument;

use crate::metrics::Metrics;

/// The methods served, by path (`/points.v1.PointsLedger/Earn` → `Earn`).
#[derive(Clone, Default)]
pub struct Methods(Arc<HashMap<String, &'static str>>);

impl Methods {
    /// The methods of the services in these encoded descriptor sets.
    pub fn of(descriptor_sets: &[&[u8]]) -> Methods {
        let paths = crate::proto::methods_served(descriptor_sets)
            .into_iter()
            // Leaked once per method served, at start: labels are `&'static str`.
            .map(|(path, name)| (path, &*Box::leak(name.into_boxed_str())))
            .collect();
        Methods(Arc::new(paths))
    }

    fn name(&self, path: &str) -> &'static str {
        self.0.get(path).copied().unwrap_or("unknown")
    }
}

#[derive(Clone)]
pub struct ObserveLayer {
    pub metrics: Metrics,
    pub methods: Methods,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, metrics: self.metrics.clone(), methods: self.methods.clone() }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Metrics,
    methods: Methods,
}

/// A call under way: counted once, when its code is known or its body dropped.
struct Pending {
    metrics: Metrics,
    rpc: &'static str,
    started: Instant,
}

impl Pending {
    fn done(self, code: Code) {
        self.metrics.call(self.rpc, code_name(code), self.started.elapsed());
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Observe<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<Observed<ResBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let rpc = self.methods.name(req.uri().path());
        let pending = Pending { metrics: self.metrics.clone(), rpc, started: Instant::now() };
        // The call's span: a trace's root (the handlers record the request id).
        let span = tracing::debug_span!("grpc", otel.name = rpc, otel.kind = "server", rpc, request_id = Empty);
        let future = span.in_scope(|| self.inner.call(req));
        let observed = async move {
            match future.await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let pending = match code_in(&parts.headers) {
                        Some(code) => {
                            pending.done(code);
                            None
                        }
                        None => Some(pending),
                    };
                    Ok(http::Response::from_parts(parts, Observed { body, pending }))
                }
                Err(e) => {
                    let e: BoxError = e.into();
                    pending.done(code_of_error(&*e));
                    Err(e)
                }
            }
        };
        Box::pin(observed.instrument(span))
    }
}

/// The `grpc-status` of these headers (or trailers), if any.
fn code_in(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    Some(Code::from_bytes(value.as_bytes()))
}

/// The code tonic answers an error of the layers inside with.
fn code_of_error(e: &(dyn std::error::Error + 'static)) -> Code {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        return status.code();
    }
    if e.is::<tower::load_shed::error::Overloaded>() {
        return Code::ResourceExhausted;
    }
    Code::Unknown
}

/// A response body that counts its call when the trailers pass by (or when
/// it is dropped first).
pub struct Observed<B> {
    body: B,
    pending: Option<Pending>,
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.done(Code::Cancelled);
        }
    }
}

impl<B> Body for Observed<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(code_in) {
                    if let Some(p) = self.pending.take() {
                        p.done(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(p) = self.pending.take() {
                    p.done(Code::Internal);
                }
            }
            // The end without trailers: gRPC would have said otherwise.
            Poll::Ready(None) => {
                if let Some(p) = self.pending.take() {
                    p.done(Code::Ok);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A gRPC code's name as grpc-prometheus spells it (`OK`, `NOT_FOUND`, ...).
fn code_name(code: Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
