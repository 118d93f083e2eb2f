//! The HTTP side: an accept loop of its own (tokio-rustls, then hyper's HTTP/1.1 per
//! connection, keep-alive on), so that a handler can make its connection task drop the
//! connection with no answer at all; routing of `/v1` and `/_sim`; faults; statistics;
//! a debug log line per request (method, path, status, time; never a body).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use super::config::ISSUING_CA_DN;
use super::error::{codes, ApiError};
use super::faults::{After, Before, Endpoint, Faults};
use super::state::{PendingTimer, Shared};
use super::tls::fingerprint;
use super::validate::{check_client_reference, MAX_BODY};
use super::wire::{ErrorBody, ErrorItem, Ping, ProductOut};

type Resp = Response<Full<Bytes>>;

/// How long a hung request is held before its connection is dropped.
const HANG_FOR: Duration = Duration::from_secs(600);

/// One connection's context.
struct Conn {
    /// SHA-256 of the client certificate.
    fingerprint: Option<String>,
    /// Notified to drop the connection with no answer.
    kill: Arc<Notify>,
}

/// Accepts connections until the runtime shuts down.
pub(crate) async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _peer)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(connection(tcp, acceptor.clone(), shared.clone()));
            }
            Err(e) => {
                tracing::debug!("dtrust-sim: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(tcp: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!("dtrust-sim: TLS handshake failed: {e}");
            shared.record_connection(false);
            return;
        }
        Err(_) => {
            tracing::debug!("dtrust-sim: TLS handshake timed out");
            shared.record_connection(false);
            return;
        }
    };
    shared.record_connection(true);
    let fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| fingerprint(c.as_ref()));
    let kill = Arc::new(Notify::new());
    let conn = Arc::new(Conn {
        fingerprint,
        kill: kill.clone(),
    });
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(shared, conn, req).await) }
    });
    // No header read timeout: hyper would also apply it to idle kept-alive connections
    // and close them after 30 s, which a client may race with a new request; the
    // simulator breaks connections only when a fault says so.
    let http = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service);
    tokio::select! {
        r = http => {
            if let Err(e) = r {
                tracing::debug!("dtrust-sim: connection ended: {e}");
            }
        }
        _ = kill.notified() => {
            tracing::debug!("dtrust-sim: connection dropped (fault)");
        }
    }
}

enum Route {
    V1(Endpoint, String),
    Control(Control, String),
    /// A known path with another method: the methods it has.
    Method(&'static str),
    NotFound,
}

#[derive(Debug, Clone, Copy)]
enum Control {
    Stats,
    Orders,
    Revocations,
    GetFaults,
    PutFaults,
    Approve,
    Reject,
    Seed,
    RejectClientCert,
    IssuingCa,
}

fn route(method: &Method, path: &str) -> Route {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let get = method == Method::GET;
    let post = method == Method::POST;
    let v1 = |ok: bool, e: Endpoint, param: &str, allow: &'static str| {
        if ok {
            Route::V1(e, param.to_string())
        } else {
            Route::Method(allow)
        }
    };
    let ctl = |ok: bool, c: Control, param: &str, allow: &'static str| {
        if ok {
            Route::Control(c, param.to_string())
        } else {
            Route::Method(allow)
        }
    };
    match segments.as_slice() {
        ["v1", "ping"] => v1(get, Endpoint::Ping, "", "GET"),
        ["v1", "products"] => v1(get, Endpoint::Products, "", "GET"),
        ["v1", "orders"] if post => Route::V1(Endpoint::CreateOrder, String::new()),
        ["v1", "orders"] => v1(get, Endpoint::FindOrders, "", "GET, POST"),
        ["v1", "orders", id] if !id.is_empty() => v1(get, Endpoint::GetOrder, id, "GET"),
        ["v1", "certificates", serial, "revoke"] if !serial.is_empty() => {
            v1(post, Endpoint::Revoke, serial, "POST")
        }
        ["_sim", "stats"] => ctl(get, Control::Stats, "", "GET"),
        ["_sim", "orders"] => ctl(get, Control::Orders, "", "GET"),
        ["_sim", "revocations"] => ctl(get, Control::Revocations, "", "GET"),
        ["_sim", "faults"] if get => Route::Control(Control::GetFaults, String::new()),
        ["_sim", "faults"] => ctl(method == Method::PUT, Control::PutFaults, "", "GET, PUT"),
        ["_sim", "orders", id, "approve"] => ctl(post, Control::Approve, id, "POST"),
        ["_sim", "orders", id, "reject"] => ctl(post, Control::Reject, id, "POST"),
        ["_sim", "certificates"] => ctl(post, Control::Seed, "", "POST"),
        ["_sim", "rejected-client-certs"] => ctl(post, Control::RejectClientCert, "", "POST"),
        ["_sim", "issuing-ca"] => ctl(get, Control::IssuingCa, "", "GET"),
        _ => Route::NotFound,
    }
}

async fn handle(shared: Arc<Shared>, conn: Arc<Conn>, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let resp = match route(&method, req.uri().path()) {
        Route::V1(endpoint, param) => v1(&shared, &conn, endpoint, param, req).await,
        Route::Control(c, param) => control(&shared, c, param, req).await,
        Route::Method(allow) => {
            let mut r = error(&ApiError::new(
                405,
                codes::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here (allowed: {allow})"),
            ));
            r.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
            count_other(&shared, req_is_v1(&target), &r);
            r
        }
        Route::NotFound => {
            let r = error(&ApiError::not_found(format!(
                "no endpoint {method} {target}"
            )));
            count_other(&shared, req_is_v1(&target), &r);
            r
        }
    };
    tracing::debug!(
        "dtrust-sim: {method} {target} -> {} ({} ms)",
        resp.status().as_u16(),
        started.elapsed().as_millis()
    );
    resp
}

fn req_is_v1(target: &str) -> bool {
    !target.starts_with("/_sim/")
}

fn count_other(shared: &Shared, v1: bool, r: &Resp) {
    if v1 {
        shared.record_request("other", r.status().as_str());
    }
}

/// Drops the connection: the connection task closes it; this never resolves.
async fn drop_connection(conn: &Conn) -> Resp {
    conn.kill.notify_one();
    std::future::pending().await
}

async fn v1(
    shared: &Arc<Shared>,
    conn: &Conn,
    endpoint: Endpoint,
    param: String,
    req: Request<Incoming>,
) -> Resp {
    let label = endpoint.label();
    let plan = shared.faults().plan(endpoint);
    if plan.delay_ms > 0 {
        shared.record_latency(plan.delay_ms);
        tokio::time::sleep(Duration::from_millis(plan.delay_ms)).await;
    }
    if let Some(kind) = plan.before.kind() {
        shared.record_fault(kind);
    }
    let early = match plan.before {
        Before::Proceed => None,
        Before::Drop => {
            shared.record_request(label, "dropped");
            return drop_connection(conn).await;
        }
        Before::Error(status) => {
            let code = if status == 500 {
                codes::INTERNAL_ERROR
            } else {
                codes::UNAVAILABLE
            };
            let e = ApiError::new(status, code, format!("simulated server error {status}"));
            Some(if status == 503 {
                e.retry_after(plan.retry_after_secs)
            } else {
                e
            })
        }
        Before::RateLimited => Some(
            ApiError::new(429, codes::RATE_LIMITED, "Too many requests.")
                .retry_after(plan.retry_after_secs),
        ),
    };
    let resp = match early {
        Some(e) => error(&e),
        None if shared.is_rejected(conn.fingerprint.as_deref()) => error(&ApiError::new(
            401,
            codes::CLIENT_CERT_REJECTED,
            "The client certificate is unknown or revoked.",
        )),
        None => match endpoint {
            Endpoint::Ping => json(
                200,
                &Ping {
                    account: &shared.account,
                },
            ),
            Endpoint::Products => {
                let list: Vec<ProductOut<'_>> = shared
                    .enabled_products()
                    .map(|p| {
                        let p = &p.product;
                        ProductOut {
                            id: &p.id,
                            name: &p.name,
                            request_types: &p.request_types,
                            key_sizes: &p.key_sizes,
                            required_rdns: &p.required_rdns,
                            rdn_patterns: &p.rdn_patterns,
                            revocation_password_pattern: &p.revocation_password_pattern,
                            issuer_dn: ISSUING_CA_DN,
                        }
                    })
                    .collect();
                json(200, &list)
            }
            Endpoint::CreateOrder => create_order(shared, conn, plan.after, req).await,
            Endpoint::GetOrder => match shared.get_order(&param) {
                Ok((order, retry)) => {
                    let mut r = json(200, &order);
                    if let Some(secs) = retry {
                        set_retry_after(&mut r, secs);
                    }
                    r
                }
                Err(e) => error(&e),
            },
            Endpoint::FindOrders => {
                let query = req.uri().query().unwrap_or("");
                let reference = url::form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "client_reference")
                    .map(|(_, v)| v.into_owned());
                match check_client_reference(reference.as_deref()) {
                    Ok(r) => json(200, &shared.find_orders(&r)),
                    Err(e) => error(&e),
                }
            }
            Endpoint::Revoke => match read_body(req).await {
                Ok(body) => match shared.revoke(&param, &body) {
                    Ok(out) => json(200, &out),
                    Err(e) => error(&e),
                },
                Err(e) => error(&e),
            },
        },
    };
    shared.record_request(label, resp.status().as_str());
    resp
}

/// `POST /v1/orders` with its after-store fault. When the connection is dropped or the
/// request hangs (counted here), this never resolves.
async fn create_order(
    shared: &Arc<Shared>,
    conn: &Conn,
    after: After,
    req: Request<Incoming>,
) -> Resp {
    let label = Endpoint::CreateOrder.label();
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    shared.record_order_received();
    let s = shared.clone();
    let processing = Duration::from_millis(shared.faults().faults().order_processing_ms);
    // Its own task: the order is taken whether or not the client still waits.
    let result = tokio::spawn(async move {
        tokio::time::sleep(processing).await;
        tokio::task::spawn_blocking(move || s.create_order(&body)).await
    })
    .await;
    let (order, timer) = match result {
        Ok(Ok(Ok(ok))) => ok,
        Ok(Ok(Err(e))) => return error(&e),
        Ok(Err(e)) | Err(e) => return error(&ApiError::internal(format!("order failed: {e}"))),
    };
    if let Some(timer) = timer {
        spawn_approval(shared.clone(), timer);
    }
    let after = match after.kind() {
        Some(kind) if shared.faults().take_after() => {
            shared.record_fault(kind);
            after
        }
        _ => After::Answer,
    };
    match after {
        After::Answer => json(201, &order),
        After::Timeout => error(&ApiError::new(
            504,
            codes::UNAVAILABLE,
            "simulated gateway timeout (the order may have been taken)",
        )),
        After::Drop => {
            shared.record_request(label, "dropped");
            drop_connection(conn).await
        }
        After::Hang => {
            shared.record_request(label, "hung");
            tokio::time::sleep(HANG_FOR).await;
            drop_connection(conn).await
        }
    }
}

/// Issues a pending order when its approval time has come (or it was approved).
fn spawn_approval(shared: Arc<Shared>, timer: PendingTimer) {
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(timer.delay) => {}
            _ = timer.approve.notified() => {}
        }
        if let Some(valid) = shared.take_pending(&timer.order_id) {
            let id = timer.order_id.clone();
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || s.finish_pending(&id, valid)).await;
        }
    });
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            ApiError::invalid(format!(
                "cannot read the body (at most {MAX_BODY} bytes): {e}"
            ))
        })
}

/// Body of `POST /_sim/orders/{id}/reject` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectBody {
    code: Option<String>,
    message: Option<String>,
}

/// Body of `POST /_sim/certificates`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedBody {
    serial: String,
    revocation_password: String,
}

/// Body of `POST /_sim/rejected-client-certs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FingerprintBody {
    fingerprint: String,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("bad body: {e}")))
}

async fn control(shared: &Arc<Shared>, c: Control, param: String, req: Request<Incoming>) -> Resp {
    let result: Result<Resp, ApiError> = async {
        Ok(match c {
            Control::Stats => json(200, &shared.stats()),
            Control::Orders => json(200, &shared.order_records()),
            Control::Revocations => json(200, &shared.revocation_records()),
            Control::GetFaults => json(200, shared.faults().faults()),
            Control::PutFaults => {
                let faults: Faults = parse(&read_body(req).await?)?;
                shared
                    .set_faults(faults.clone())
                    .map_err(ApiError::invalid)?;
                json(200, &faults)
            }
            Control::Approve => {
                let s = shared.clone();
                let record = tokio::task::spawn_blocking(move || s.approve(&param))
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))??;
                json(200, &record)
            }
            Control::Reject => {
                let body = read_body(req).await?;
                let b: RejectBody = if body.iter().all(u8::is_ascii_whitespace) {
                    RejectBody::default()
                } else {
                    parse(&body)?
                };
                let item = ErrorItem {
                    code: b.code.unwrap_or_else(|| codes::ORDER_REJECTED.into()),
                    message: b
                        .message
                        .unwrap_or_else(|| "rejected in the Certificate Service Manager".into()),
                    field: None,
                };
                json(200, &shared.reject(&param, item)?)
            }
            Control::Seed => {
                let b: SeedBody = parse(&read_body(req).await?)?;
                shared
                    .seed_certificate(&b.serial, &b.revocation_password)
                    .map_err(ApiError::invalid)?;
                json(201, &serde_json::json!({ "serial": b.serial }))
            }
            Control::RejectClientCert => {
                let b: FingerprintBody = parse(&read_body(req).await?)?;
                shared.reject_client_cert(&b.fingerprint);
                json(200, &serde_json::json!({ "fingerprint": b.fingerprint }))
            }
            Control::IssuingCa => {
                let mut r = Response::new(Full::new(Bytes::from(shared.ca.cert_pem.clone())));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-pem-file"),
                );
                r
            }
        })
    }
    .await;
    result.unwrap_or_else(|e| error(&e))
}

fn json(status: u16, body: &impl Serialize) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn set_retry_after(r: &mut Resp, secs: u64) {
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
}

fn error(e: &ApiError) -> Resp {
    let mut r = json(e.status, &ErrorBody { errors: [&e.item] });
    if let Some(secs) = e.retry_after {
        set_retry_after(&mut r, secs);
    }
    r
}
