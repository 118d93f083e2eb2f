//! The steps of a revocation: find the serial (from the job, or from its order), pick
//! the password (the job's, else the one derived from the CN), store the record as in
//! flight, revoke. `ALREADY_REVOKED` counts as success: the revocation's goal holds.

use tracing::debug;

use super::outcome::{self, now_ms};
use super::{finish, Engine};
use crate::dtrust::wire::RevokeRequest;
use crate::dtrust::{DTrustError, ErrorCode};
use crate::job::model::{Job, JobResult};
use crate::job::password;
use crate::job::record::{Record, State};
use crate::store::StoreError;

/// One step; returns the record as stored now and the next record to store.
pub(super) async fn step(engine: &Engine, record: Record) -> Result<(Record, Record), StoreError> {
    let Job::Revoke(job) = record.job.clone() else {
        let next = fail(
            &record,
            "INVALID_JOB",
            "a revoke step for a job that is not a revocation".into(),
            "",
        );
        return Ok((record, next));
    };
    let done = |next: Record| Ok((record.clone(), next));
    let password = match (&job.revocation_password, &job.cn) {
        (Some(given), _) => given.clone(),
        (None, Some(cn)) => password::derived_from_cn(cn),
        (None, None) => {
            return done(fail(
                &record,
                "MISSING_REVOCATION_SECRET",
                "the job has neither a revocation_password nor the certificate's cn".into(),
                "Pass the revocation password stored at issuance as revocation_password; for certificates issued without one, pass the certificate's CN as cn (the password is then derived from it).",
            ))
        }
    };
    let mut current = record.clone();
    let serial = match (&job.serial, &job.order_id) {
        (Some(serial), _) => serial.to_ascii_lowercase(),
        (None, Some(order_id)) => {
            current.attempts += 1;
            match engine.dtrust("order", engine.dtrust.order(order_id)).await {
                Ok((order, _)) => match order.serial {
                    Some(serial) => serial.to_ascii_lowercase(),
                    None => {
                        return Ok((
                            record.clone(),
                            fail(
                                &current,
                                "NOT_REVOCABLE",
                                format!(
                                    "order `{order_id}` has no certificate to revoke (status {:?})",
                                    order.status
                                ),
                                "Only issued certificates can be revoked; check the order id.",
                            ),
                        ))
                    }
                },
                Err(e) if e.retryable() => {
                    return Ok((record.clone(), engine.retry_or_fail(current, &e)))
                }
                Err(e) => return Ok((record.clone(), outcome_failed(current, &e))),
            }
        }
        (None, None) => {
            return done(fail(
                &record,
                "INVALID_JOB",
                "the job has neither serial nor order_id".into(),
                "",
            ));
        }
    };
    let mut next = current.clone();
    next.state = State::InFlight;
    next.attempts += 1;
    next.order_id = next.order_id.or(job.order_id.clone());
    next.next_at = Some(now_ms() + engine.config.request_timeout.as_millis() as i64 + 10_000);
    // Not flushed before the request, unlike an order: if a crash loses this state, the
    // revocation is sent again, which D-Trust answers "already revoked" (a success).
    // The result is flushed before it is published, as every result.
    let stored = engine.store_change(&record, next)?;
    debug!(%serial, "revoking at D-Trust");
    let request = RevokeRequest {
        revocation_password: password,
        reason: job.reason,
    };
    let answer = engine
        .dtrust("revoke", engine.dtrust.revoke(&serial, &request))
        .await;
    let next = match answer {
        Ok(revoked) => {
            let mut result = success(&stored, &revoked.serial.to_ascii_lowercase());
            result.revoked_at = Some(revoked.revoked_at);
            finish(stored.clone(), result)
        }
        Err(DTrustError::Rejected {
            code: ErrorCode::AlreadyRevoked,
            ..
        }) => {
            let mut result = success(&stored, &serial);
            result.warnings.push(if stored.retries > 0 || stored.lookup_first {
                "D-Trust reports the certificate as revoked already, most likely by this job's earlier request whose answer was lost".into()
            } else {
                "the certificate was already revoked; nothing was changed".into()
            });
            finish(stored.clone(), result)
        }
        Err(e) if e.retryable() => {
            let mut retry = stored.clone();
            retry.lookup_first = true;
            engine.retry_or_fail(retry, &e)
        }
        Err(e) => outcome_failed(stored.clone(), &e),
    };
    Ok((stored, next))
}

fn success(record: &Record, serial: &str) -> JobResult {
    let mut result = outcome::succeeded(record);
    result.serial = Some(serial.to_string());
    result.order_id = record.order_id.clone();
    result
}

fn fail(record: &Record, code: &str, message: String, hint: &str) -> Record {
    let result = outcome::failed(record, code, message, hint, false);
    finish(record.clone(), result)
}

fn outcome_failed(record: Record, error: &DTrustError) -> Record {
    let result = outcome::failed_with(&record, error);
    finish(record, result)
}
