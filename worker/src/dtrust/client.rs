//! The D-Trust REST client: one `reqwest` client (connection pool, mutual TLS, proxy,
//! timeouts) per worker, built once from the bundle. It makes exactly one attempt per
//! call: retries belong to the job state machine, which knows whether a retry could
//! order twice.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use super::codes::ErrorCode;
use super::error::DTrustError;
use super::tls;
use super::wire::{ErrorBody, Order, OrderRequest, Ping, Product, RevokeRequest, RevokeResponse};
use crate::bundle::Bundle;

/// Largest response body read from D-Trust (a PKCS#12 with its chain is a few KiB).
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error(transparent)]
    Tls(#[from] tls::TlsConfigError),
    #[error("invalid proxy `{proxy}`: {detail}")]
    Proxy { proxy: String, detail: String },
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// The D-Trust REST interface of one account.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
}

impl Client {
    /// Builds the client from a checked bundle: TLS identity and trust, proxy,
    /// timeouts. The system's proxy settings are ignored unless the bundle has one.
    pub fn new(bundle: &Bundle) -> Result<Client, ClientBuildError> {
        let settings = &bundle.settings;
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls::client_config(bundle)?)
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .retry(reqwest::retry::never())
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("dtrust-worker/", env!("CARGO_PKG_VERSION")))
            .no_proxy();
        if let Some(proxy) = &settings.proxy {
            let address = format!("http://{}:{}", proxy.host, proxy.port);
            let mut p = reqwest::Proxy::https(&address).map_err(|e| ClientBuildError::Proxy {
                proxy: address.clone(),
                detail: e.to_string(),
            })?;
            if let Some(auth) = &proxy.auth {
                p = p.basic_auth(&auth.user, auth.password.expose());
            }
            builder = builder.proxy(p);
        }
        let http = builder
            .build()
            .map_err(|e| ClientBuildError::Http(error_chain(&e)))?;
        let mut base = settings.url.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Client { http, base })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `GET /v1/ping`: is the client certificate accepted?
    pub async fn ping(&self) -> Result<Ping, DTrustError> {
        self.call(Method::GET, &["v1", "ping"], &[], None::<&()>)
            .await
            .map(|(ping, _)| ping)
    }

    /// `GET /v1/products`: the account's products and their rules.
    pub async fn products(&self) -> Result<Vec<Product>, DTrustError> {
        self.call(Method::GET, &["v1", "products"], &[], None::<&()>)
            .await
            .map(|(products, _)| products)
    }

    /// `POST /v1/orders`. D-Trust does not deduplicate: call it only after a lookup by
    /// `client_reference` found nothing.
    pub async fn create_order(&self, request: &OrderRequest) -> Result<Order, DTrustError> {
        self.call(Method::POST, &["v1", "orders"], &[], Some(request))
            .await
            .map(|(order, _)| order)
    }

    /// `GET /v1/orders/{order_id}`, with the `Retry-After` D-Trust asks for while pending.
    pub async fn order(&self, order_id: &str) -> Result<(Order, Option<Duration>), DTrustError> {
        self.call(Method::GET, &["v1", "orders", order_id], &[], None::<&()>)
            .await
    }

    /// `GET /v1/orders?client_reference=R`: every order carrying the reference.
    pub async fn orders_by_reference(
        &self,
        client_reference: &str,
    ) -> Result<Vec<Order>, DTrustError> {
        self.call(
            Method::GET,
            &["v1", "orders"],
            &[("client_reference", client_reference)],
            None::<&()>,
        )
        .await
        .map(|(orders, _)| orders)
    }

    /// `POST /v1/certificates/{serial}/revoke`.
    pub async fn revoke(
        &self,
        serial: &str,
        request: &RevokeRequest,
    ) -> Result<RevokeResponse, DTrustError> {
        self.call(
            Method::POST,
            &["v1", "certificates", serial, "revoke"],
            &[],
            Some(request),
        )
        .await
        .map(|(answer, _)| answer)
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&impl serde::Serialize>,
    ) -> Result<(T, Option<Duration>), DTrustError> {
        let mut request = self.http.request(method, self.url(segments, query));
        if let Some(body) = body {
            request = request.json(body);
        }
        let mut response = request.send().await.map_err(|e| classify(&e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(DTrustError::Protocol {
                            status: status.as_u16(),
                            detail: format!("response larger than {MAX_RESPONSE_BYTES} bytes"),
                        });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(classify(&e)),
            }
        }
        if status.is_success() {
            serde_json::from_slice(&bytes)
                .map(|body| (body, retry_after))
                .map_err(|e| DTrustError::Protocol {
                    status: status.as_u16(),
                    detail: format!("body does not fit the interface: {e}"),
                })
        } else {
            Err(rejected(status, &bytes, retry_after))
        }
    }
}

/// An error answer: D-Trust's first error entry, or the status alone.
fn rejected(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> DTrustError {
    let first = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.errors.into_iter().next());
    let (code, message, field) = match first {
        Some(e) => (ErrorCode::parse(&e.code), e.message, e.field),
        None => {
            let code = match status.as_u16() {
                401 => ErrorCode::ClientCertRejected,
                404 => ErrorCode::NotFound,
                429 => ErrorCode::RateLimited,
                503 => ErrorCode::Unavailable,
                500..=599 => ErrorCode::InternalError,
                _ => {
                    return DTrustError::Protocol {
                        status: status.as_u16(),
                        detail: format!(
                            "error without an error body: {}",
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        ),
                    }
                }
            };
            (code, format!("HTTP {status}"), None)
        }
    };
    DTrustError::Rejected {
        status: status.as_u16(),
        code,
        message,
        field,
        retry_after,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by D-Trust's interface).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Sorts a transport failure into not sent, TLS, proxy, or unknown outcome.
fn classify(error: &reqwest::Error) -> DTrustError {
    let detail = error_chain(error);
    let lower = detail.to_ascii_lowercase();
    // rustls' error is not always reachable through `source()` (hyper wraps it in
    // `io::Error`s of its own), so its messages are recognised as well.
    let tls_words = [
        "invalid peer certificate",
        "received fatal alert",
        "peer is incompatible",
        "handshake",
    ];
    if has_rustls_error(error) || tls_words.iter().any(|w| lower.contains(w)) {
        return DTrustError::Tls { detail };
    }
    if lower.contains("proxy authorization required") || lower.contains("tunnel error") {
        return DTrustError::Proxy { detail };
    }
    if error.is_connect() || error.is_builder() {
        return DTrustError::NotSent { detail };
    }
    DTrustError::UnknownOutcome { detail }
}

fn has_rustls_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// An error and its sources on one line: reqwest's own message alone says little.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut current = error.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}
