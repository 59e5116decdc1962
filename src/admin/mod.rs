//! The admin listener (`--admin-listen`, plain HTTP/1.1 on loopback by
//! default): `/metrics` in the Prometheus text format, `/healthz` (the
//! process answers) and `/readyz` (every partition this instance should
//! write takes commands), so a probe and a scrape work whatever the gRPC
//! listener's TLS; and the console (`/console`, `console/`).

pub mod console;

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::writer::Ownership;

/// What the admin listener's pages read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Metrics,
    pub ownership: Arc<Ownership>,
    pub ledger: Arc<crate::api::Ledger>,
    pub sessions: Arc<console::Sessions>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(console::routes())
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) {
    if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "the admin listener stopped");
    }
}

/// The Prometheus text exposition format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], s.metrics.render())
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ownership.serving() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "a partition this instance should write does not take commands yet\n")
    }
}
