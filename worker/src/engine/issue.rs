//! The steps of an issuance: look the order up when an earlier request may have
//! reached D-Trust, check the order against the product's rules, store the record as
//! in flight, order, then follow the order until it is issued or rejected.

use base64::Engine as _;
use tracing::{debug, info};
use x509_parser::pem::Pem;

use super::outcome::{self, now_ms};
use super::{archive, finish, Engine};
use crate::dtrust::wire::{Order, OrderRequest, OrderStatus, RequestType, San, Subject};
use crate::dtrust::{DTrustError, ErrorCode, Outcome};
use crate::job::model::{IssueJob, Job, JobRequestType};
use crate::job::record::{Record, State};
use crate::secret::Secret;
use crate::store::StoreError;

/// One step; returns the record as stored now and the next record to store.
pub(super) async fn step(engine: &Engine, record: Record) -> Result<(Record, Record), StoreError> {
    let Job::Issue(job) = record.job.clone() else {
        let next = fail(
            &record,
            "INVALID_JOB",
            "an issue step for a job that is not an issuance".into(),
            "",
            false,
        );
        return Ok((record, next));
    };
    if record.state == State::Pending {
        let next = poll(engine, record.clone()).await;
        return Ok((record, next));
    }
    let mut record = record;
    if job.key_archive {
        if record.archive.is_none() && record.state == State::Ready {
            if let Some(failed) = archive::check(engine, &record, &job) {
                return Ok((record, failed));
            }
            // Another worker may have done this job already: look before the
            // Certificate Manager generates a second key pair.
            if needs_lookup(engine, &record) {
                match lookup(engine, record, &job).await {
                    Looked::Decided(step) => return Ok(*step),
                    Looked::NotFound(unfound) => record = *unfound,
                }
            }
        }
        if let Some(step) = archive::step(engine, &record, &job).await {
            return step;
        }
    }
    if needs_lookup(engine, &record) {
        match lookup(engine, record, &job).await {
            Looked::Decided(step) => return Ok(*step),
            Looked::NotFound(unfound) => record = *unfound,
        }
    }
    order(engine, record, &job).await
}

/// Whether the job's reference is looked up before ordering: when an earlier request
/// may have reached D-Trust, and always when other workers may have had the job.
fn needs_lookup(engine: &Engine, record: &Record) -> bool {
    record.state == State::InFlight || record.lookup_first || !engine.config.single_worker
}

/// What a lookup by `client_reference` found.
enum Looked {
    /// An order (taken as this job's), or a failure: the step's outcome.
    Decided(Box<(Record, Record)>),
    /// No order: go on and place one (the record counts the lookup).
    NotFound(Box<Record>),
}

/// Looks the job's orders up; an order found is this job's, whoever placed it.
async fn lookup(engine: &Engine, mut record: Record, job: &IssueJob) -> Looked {
    record.attempts += 1;
    let found = engine
        .dtrust(
            "orders_by_reference",
            engine.dtrust.orders_by_reference(&record.client_reference),
        )
        .await;
    let stored = record.clone();
    match found {
        Ok(orders) => {
            let Some(order) = pick(orders) else {
                record.lookup_first = false;
                return Looked::NotFound(Box::new(record));
            };
            info!(order_id = %order.order_id, "found the job's order at D-Trust: not ordering again");
            if order.product.as_deref().is_some_and(|p| p != job.product) {
                let next = fail(
                    &record,
                    "CLIENT_REFERENCE_CONFLICT",
                    format!("D-Trust has an order for reference `{}` of another product", record.client_reference),
                    "Another order at D-Trust carries this job's reference: check that job ids are unique and that no other deployment uses the same amqp.prefix on this D-Trust account.",
                    false,
                );
                return Looked::Decided(Box::new((stored, next)));
            }
            record.lookup_first = false;
            let mut warning = None;
            if job.revocation_password.is_none() && record.generated_password.is_none() {
                // The order was placed by another worker (this one would have stored
                // the password it sent): the same derivation gives the same password;
                // a random one is known only to that worker.
                match engine.derived_password(&record.job_id, &job.product).await {
                    Some(derived) => record.generated_password = Some(derived),
                    None => warning = Some(NO_PASSWORD_FROM_OTHER_WORKER),
                }
            }
            let mut next = adopt(record, order);
            if let Some(warning) = warning {
                // On the result, or on the issued result a key-archive job keeps
                // until the Certificate Manager imported the certificate.
                let succeeded = next
                    .result
                    .as_mut()
                    .filter(|r| r.status == crate::job::model::Status::Succeeded);
                if let Some(result) = succeeded {
                    result.warnings.push(warning.into());
                }
                if let Some(issued) = next.archive.as_mut().and_then(|a| a.issued.as_mut()) {
                    issued.warnings.push(warning.into());
                }
            }
            Looked::Decided(Box::new((stored, next)))
        }
        Err(e) => {
            let next = if e.retryable() {
                engine.retry_or_fail(record, &e)
            } else {
                outcome_failed(record, &e)
            };
            Looked::Decided(Box::new((stored, next)))
        }
    }
}

/// The warning of a result built from another worker's order without a shared secret.
const NO_PASSWORD_FROM_OTHER_WORKER: &str = "the revocation password was generated by the worker that placed this order and cannot be returned by this one; set revocationPasswordSecret (the same on every worker) so that every worker can return it";

/// Checks and places the order.
async fn order(
    engine: &Engine,
    record: Record,
    job: &IssueJob,
) -> Result<(Record, Record), StoreError> {
    let done = |next: Record| Ok((record.clone(), next));
    if !engine.config.templates.iter().any(|t| t == &job.product) {
        return done(fail(
            &record,
            "UNKNOWN_PRODUCT",
            format!("product `{}` is not one of the connector's certificateTemplates ({})", job.product, engine.config.templates.join(", ")),
            "Use a product of certificateTemplates in the job, or add the product to certificateTemplates in dtrust.properties.",
            false,
        ));
    }
    let rules = match engine.rules(&job.product).await {
        Ok(Some(rules)) => rules,
        Ok(None) => {
            let code = ErrorCode::ProductNotAllowed;
            return done(fail(
                &record,
                code.as_str(),
                format!(
                    "product `{}` is not among the D-Trust account's products",
                    job.product
                ),
                code.hint(),
                false,
            ));
        }
        Err(e) if e.retryable() => return done(engine.retry_or_fail(record.clone(), &e)),
        Err(e) => return done(outcome_failed(record.clone(), &e)),
    };
    let archived_csr = record.archive.as_ref().and_then(|a| a.csr_pem.as_ref());
    let pkcs10 = match (&job.request_type, job.csr_pem.as_ref().or(archived_csr)) {
        (JobRequestType::Pkcs10, Some(pem)) => match csr_der(pem) {
            Ok(der) => Some(base64::engine::general_purpose::STANDARD.encode(der)),
            Err(message) => {
                let code = ErrorCode::InvalidCsr;
                return done(fail(&record, code.as_str(), message, code.hint(), false));
            }
        },
        _ => None,
    };
    let mut next = record.clone();
    let password =
        match (&job.revocation_password, &record.generated_password) {
            (Some(given), _) => given.clone(),
            (None, Some(generated)) => generated.clone(),
            (None, None) => match engine.new_password(&record.job_id, &rules) {
                Some(generated) => {
                    next.generated_password = Some(generated.clone());
                    generated
                }
                None => {
                    let code = ErrorCode::GenericPasswordRegexError;
                    return done(fail(
                        &record,
                        code.as_str(),
                        format!(
                        "no revocation password can be generated for the product's pattern `{}`",
                        rules.product.revocation_password_pattern.as_deref().unwrap_or_default()
                    ),
                        code.hint(),
                        false,
                    ));
                }
            },
        };
    let request = order_request(job, &record.client_reference, pkcs10, password);
    if let Err(e) = rules.check(&request) {
        return done(outcome_failed(record.clone(), &e));
    }

    // Without the lease (the broker connection went while this step ran), another
    // worker may be at this job now: no order until the lease is held again.
    if !engine.leases.holds(&record.job_id) {
        return done(engine.put_off(
            &record,
            "the job's lease was lost with the broker connection",
        ));
    }
    // From here on D-Trust may take the order: whoever resumes this record must look
    // it up first.
    let looked_up_before = next.lookup_first;
    next.state = State::InFlight;
    next.lookup_first = true;
    next.attempts += 1;
    next.next_at = Some(now_ms() + engine.config.request_timeout.as_millis() as i64 + 10_000);
    let stored = engine.save(&record, next).await?;
    debug!(product = %job.product, "ordering at D-Trust");
    let answer = engine
        .dtrust("create_order", engine.dtrust.create_order(&request))
        .await;
    let mut next = stored.clone();
    let next = match answer {
        Ok(order) => {
            next.lookup_first = false;
            adopt(next, order)
        }
        Err(e) => {
            next.lookup_first = match (&e, e.outcome()) {
                (_, Outcome::Unknown) => true,
                (DTrustError::Rejected { status, .. }, _) if *status >= 500 => true,
                _ => looked_up_before,
            };
            let unknown = e.outcome() == Outcome::Unknown;
            let mut next = if e.retryable() {
                engine.retry_or_fail(next, &e)
            } else {
                outcome_failed(next, &e)
            };
            if unknown && next.state == State::Ready {
                // Sent, no answer: D-Trust may still be working on it. The lookup that
                // decides whether to order again waits until the request has timed
                // out since it was sent, so that an order still being placed is found.
                let timed_out =
                    stored.updated_at + engine.config.request_timeout.as_millis() as i64;
                next.next_at = next.next_at.map(|at| at.max(timed_out));
            }
            next
        }
    };
    Ok((stored, next))
}

/// Polls a pending order.
async fn poll(engine: &Engine, mut record: Record) -> Record {
    let Some(order_id) = record.order_id.clone() else {
        record.state = State::Ready;
        record.lookup_first = true;
        return record;
    };
    record.attempts += 1;
    match engine.dtrust("order", engine.dtrust.order(&order_id)).await {
        Ok((order, retry_after)) => {
            if matches!(order.status, OrderStatus::Pending | OrderStatus::Unknown) {
                let wait = engine
                    .config
                    .poll_interval
                    .max(retry_after.unwrap_or_default());
                record.next_at = Some(now_ms() + wait.as_millis() as i64);
                record
            } else {
                adopt(record, order)
            }
        }
        Err(e) if e.retryable() => engine.retry_or_fail(record, &e),
        Err(e) => outcome_failed(record, &e),
    }
}

/// Takes D-Trust's order as this job's: issued, pending or rejected.
fn adopt(mut record: Record, order: Order) -> Record {
    record.order_id = Some(order.order_id.clone());
    match order.status {
        OrderStatus::Issued => match outcome::issued(&record, &order) {
            Ok(result) => {
                debug!(order_id = %order.order_id, serial = result.serial.as_deref().unwrap_or(""), "certificate issued");
                if record.archive.is_some() {
                    archive::issued(record, result)
                } else {
                    finish(record, result)
                }
            }
            Err(message) => fail(
                &record,
                "DTRUST_PROTOCOL_ERROR",
                message,
                "D-Trust's answer did not carry a usable certificate; check the order in D-Trust's portal.",
                false,
            ),
        },
        OrderStatus::Pending | OrderStatus::Unknown => {
            info!(order_id = %order.order_id, "order pending at D-Trust");
            record.state = State::Pending;
            record.next_at = Some(now_ms());
            record
        }
        OrderStatus::Rejected => {
            let (code, message) = match &order.error {
                Some(e) => (ErrorCode::parse(&e.code), e.message.clone()),
                None => (ErrorCode::Other("ORDER_REJECTED".into()), "D-Trust rejected the order".into()),
            };
            fail(&record, code.as_str(), message, code.hint(), false)
        }
    }
}

/// Of the orders found for a reference, the one to take: issued, then pending, then
/// rejected.
fn pick(orders: Vec<Order>) -> Option<Order> {
    let rank = |o: &Order| match o.status {
        OrderStatus::Issued => 0,
        OrderStatus::Pending | OrderStatus::Unknown => 1,
        OrderStatus::Rejected => 2,
    };
    orders.into_iter().min_by_key(rank)
}

fn fail(record: &Record, code: &str, message: String, hint: &str, retryable: bool) -> Record {
    let result = outcome::failed(record, code, message, hint, retryable);
    finish(record.clone(), result)
}

fn outcome_failed(record: Record, error: &DTrustError) -> Record {
    let result = outcome::failed_with(&record, error);
    finish(record, result)
}

/// The CSR's DER from its PEM.
fn csr_der(pem: &str) -> Result<Vec<u8>, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("csr_pem is not PEM: {e}"))?;
    let Pem {
        label, contents, ..
    } = block;
    if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
        return Err(format!(
            "csr_pem holds a `{label}`, not a CERTIFICATE REQUEST"
        ));
    }
    Ok(contents)
}

fn order_request(
    job: &IssueJob,
    client_reference: &str,
    pkcs10: Option<String>,
    password: Secret,
) -> OrderRequest {
    let s = &job.subject;
    let san = job.san.clone().unwrap_or_default();
    OrderRequest {
        product: job.product.clone(),
        request_type: match job.request_type {
            JobRequestType::Pkcs10 => RequestType::Pkcs10,
            JobRequestType::Pkcs12 => RequestType::Pkcs12,
        },
        pkcs10,
        subject: Subject {
            cn: s.cn.clone(),
            o: s.o.clone(),
            ou: s.ou.clone(),
            c: s.c.clone(),
            l: s.l.clone(),
            st: s.st.clone(),
            email: s.email.clone(),
            serial_number: s.serial_number.clone(),
            organization_identifier: s.organization_identifier.clone(),
            given_name: s.given_name.clone(),
            surname: s.surname.clone(),
        },
        san: San {
            email: san.email,
            dns: san.dns,
            upn: san.upn,
        },
        revocation_password: Some(password),
        client_reference: client_reference.to_string(),
    }
}
