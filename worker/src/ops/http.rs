//! The worker's own small HTTP endpoint (`--metrics-addr`): `/metrics` (Prometheus),
//! `/healthz` (the process is up) and `/readyz` (connected to the broker, not blocked
//! by an alarm, bundle valid: a worker that answers 200 takes jobs).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::metrics::Metrics;
use crate::transport::BrokerStatus;

/// Serves until `shutdown`; an address that cannot be bound is an error at start-up.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    broker: watch::Receiver<BrokerStatus>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "metrics, health and readiness at /metrics, /healthz, /readyz");
    Ok(tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "metrics endpoint: accept failed");
                        continue;
                    }
                },
            };
            let metrics = metrics.clone();
            let broker = broker.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let answer = answer(request.uri().path(), &metrics, &broker.borrow());
                    async move { Ok::<_, Infallible>(answer) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

fn answer(path: &str, metrics: &Metrics, broker: &BrokerStatus) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if broker.is_ready() => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/readyz" => {
            let why = match (&broker.blocked, &broker.last_error) {
                (Some(reason), _) => format!("broker blocked the connection: {reason}"),
                (None, Some(error)) => format!("not connected to the broker: {error}"),
                (None, None) => "not connected to the broker".to_string(),
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /healthz, /readyz\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
