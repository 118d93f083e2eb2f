//! The Certificate Manager steps of a key-archive job (`shared/contract/messages.md`,
//! "Key archive"): `generate` → `generated` (the CSR) → the D-Trust order (by the issue
//! steps) → `import` → `imported` → the result.
//!
//! Each step is stored in the job's record, so a crash resumes at the right step
//! without repeating a finished one. Waiting for the CM holds no delivery and no task:
//! the record waits in state `awaiting_cm` with its deadline as `next_at`; the CM's
//! answer (on `{p}.keyarchive.replies`) or the deadline moves it on.

use tracing::{info, warn, Instrument};

use super::outcome::{self, now_ms};
use super::{finish, Disposition, Engine};
use crate::job::model::{IssueJob, JobResult};
use crate::job::record::{Archive, ArchiveStep, Record, State};
use crate::keyarchive::{self, Generate, Generated, Import, Imported};
use crate::store::StoreError;
use crate::transport::{keys, Outgoing};

/// The issue job's key-archive step, when it has one to take now; `None` when the
/// issue steps go on as usual (the order, with the CM's CSR).
pub(super) async fn step(
    engine: &Engine,
    record: &Record,
    job: &IssueJob,
) -> Option<Result<(Record, Record), StoreError>> {
    let archive = record.archive.clone();
    let done = |next: Record| Some(Ok((record.clone(), next)));
    match (record.state, archive.as_ref().map(|a| a.step)) {
        (State::AwaitingCm, step) => done(timed_out(engine, record, step)),
        (_, None) => done(send_generate(engine, record, job).await),
        (_, Some(ArchiveStep::Generate)) => done(send_generate(engine, record, job).await),
        (_, Some(ArchiveStep::Order)) => None,
        (_, Some(ArchiveStep::Import)) => done(send_import(engine, record).await),
    }
}

/// Checks what key archival needs before anything is sent; the failed record if it
/// cannot run.
pub(super) fn check(engine: &Engine, record: &Record, job: &IssueJob) -> Option<Record> {
    let fail = |code: &str, message: String, hint: &str| Some(fail(record, code, message, hint));
    let Some(settings) = &engine.config.key_archive else {
        return fail(
            "KEY_ARCHIVE_NOT_CONFIGURED",
            "the job asks for key archival, but the bundle has no key backup settings (keyArchive)".into(),
            "Set keyArchive, caTokenProcedureImportCert and tokenProcedure.<product> in dtrust.properties, or submit the job without key_archive.",
        );
    };
    if job.csr_pem.is_some() || job.request_type != crate::job::model::JobRequestType::Pkcs10 {
        return fail(
            "INVALID_JOB",
            "a key-archive job has request_type pkcs10 and no csr_pem: the Certificate Manager makes the key".into(),
            "Drop csr_pem and use request_type pkcs10 for key_archive jobs.",
        );
    }
    if !settings.token_procedures.contains_key(&job.product) {
        return fail(
            "KEY_ARCHIVE_NOT_CONFIGURED",
            format!(
                "no Certificate Manager token procedure is mapped for product `{}`",
                job.product
            ),
            "Set tokenProcedure.<product> for this product in dtrust.properties.",
        );
    }
    None
}

async fn send_generate(engine: &Engine, record: &Record, job: &IssueJob) -> Record {
    let Some(settings) = &engine.config.key_archive else {
        return fail(
            record,
            "KEY_ARCHIVE_NOT_CONFIGURED",
            "no key backup settings".into(),
            "",
        );
    };
    let rules = match engine.rules(&job.product).await {
        Ok(Some(rules)) => rules,
        Ok(None) => {
            return fail(
                record,
                "PRODUCT_NOT_ALLOWED",
                format!(
                    "product `{}` is not among the D-Trust account's products",
                    job.product
                ),
                crate::dtrust::ErrorCode::ProductNotAllowed.hint(),
            )
        }
        Err(e) if e.retryable() => return engine.retry_or_fail(record.clone(), &e),
        Err(e) => return finish(record.clone(), outcome::failed_with(record, &e)),
    };
    let (Some(key_size), Some(issuer_dn)) = (
        keyarchive::key_size(&rules.product.key_sizes),
        rules.product.issuer_dn.as_deref(),
    ) else {
        return fail(
            record,
            "KEY_ARCHIVE_FAILED",
            format!("product `{}` lists no key sizes or no issuer_dn, which the Certificate Manager needs", job.product),
            "Check the product with `dtrust-worker products`.",
        );
    };
    let subject = serde_json::to_value(&job.subject).unwrap_or_default();
    let message = Generate {
        job_id: &record.job_id,
        archive: &settings.name,
        token_procedure: settings
            .token_procedures
            .get(&job.product)
            .map_or("", String::as_str),
        subject: &subject,
        key_size,
        issuer_dn,
    };
    match publish(engine, keys::GENERATE, &record.job_id, &message).await {
        Ok(()) => {
            info!(
                key_size,
                "asked the Certificate Manager to generate the key pair"
            );
            awaiting(engine, record, ArchiveStep::Generate, None)
        }
        Err(e) => {
            warn!(error = %e, "generate not confirmed; trying again");
            later(record)
        }
    }
}

async fn send_import(engine: &Engine, record: &Record) -> Record {
    let (Some(settings), Some(issued)) = (
        &engine.config.key_archive,
        record.archive.as_ref().and_then(|a| a.issued.clone()),
    ) else {
        return fail(
            record,
            "KEY_ARCHIVE_FAILED",
            "the issued certificate is missing from the record".into(),
            "",
        );
    };
    let message = Import {
        job_id: &record.job_id,
        archive: &settings.name,
        token_procedure_import: &settings.import_procedure,
        order_id: issued.order_id.as_deref().unwrap_or_default(),
        certificate_pem: issued.certificate_pem.as_deref().unwrap_or_default(),
        chain_pem: issued.chain_pem.as_deref(),
    };
    match publish(engine, keys::IMPORT, &record.job_id, &message).await {
        Ok(()) => {
            info!(
                order_id = issued.order_id.as_deref().unwrap_or(""),
                "asked the Certificate Manager to import the certificate"
            );
            awaiting(engine, record, ArchiveStep::Import, Some(issued))
        }
        Err(e) => {
            warn!(error = %e, "import not confirmed; trying again");
            later(record)
        }
    }
}

async fn publish(
    engine: &Engine,
    key: &str,
    job_id: &str,
    message: &impl serde::Serialize,
) -> Result<(), String> {
    let body = serde_json::to_vec(message).map_err(|e| e.to_string())?;
    let outgoing = Outgoing::new(&engine.config.names.keyarchive, key, body)
        .with_message_id(job_id.to_string())
        .with_correlation_id(job_id.to_string());
    engine
        .outbox
        .publish(outgoing)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn awaiting(
    engine: &Engine,
    record: &Record,
    step: ArchiveStep,
    issued: Option<JobResult>,
) -> Record {
    let timeout = engine
        .config
        .key_archive
        .as_ref()
        .map_or(3600, |k| k.timeout.as_secs()) as i64;
    let mut next = record.clone();
    next.state = State::AwaitingCm;
    next.next_at = Some(now_ms() + timeout * 1000);
    next.archive = Some(Archive {
        step,
        sent: true,
        csr_pem: record.archive.as_ref().and_then(|a| a.csr_pem.clone()),
        issued,
    });
    next
}

fn later(record: &Record) -> Record {
    let mut next = record.clone();
    next.state = State::Ready;
    next.next_at = Some(now_ms() + 1_000);
    next
}

/// The deadline for the CM's answer passed.
fn timed_out(engine: &Engine, record: &Record, step: Option<ArchiveStep>) -> Record {
    let timeout = engine
        .config
        .key_archive
        .as_ref()
        .map_or(3600, |k| k.timeout.as_secs());
    let what = match step {
        Some(ArchiveStep::Import) => "imported",
        _ => "generated",
    };
    let mut result = outcome::failed(
        record,
        "KEY_ARCHIVE_TIMEOUT",
        format!("the Certificate Manager did not answer with `{what}` within {timeout} s (keyArchive.timeout)"),
        "Check that the Certificate Manager consumes the key-archive requests queue and that its token procedures work; then submit the job again.",
        false,
    );
    carry_issued(&mut result, record);
    finish(record.clone(), result)
}

/// A failed result after D-Trust issued still names the certificate, so the operator
/// can import or revoke it.
fn carry_issued(result: &mut JobResult, record: &Record) {
    if let Some(issued) = record.archive.as_ref().and_then(|a| a.issued.as_ref()) {
        result.order_id = issued.order_id.clone();
        result.serial = issued.serial.clone();
        result.certificate_pem = issued.certificate_pem.clone();
        result.chain_pem = issued.chain_pem.clone();
        result.not_before = issued.not_before.clone();
        result.not_after = issued.not_after.clone();
    }
}

fn fail(record: &Record, code: &str, message: String, hint: &str) -> Record {
    let result = outcome::failed(record, code, message, hint, false);
    finish(record.clone(), result)
}

/// The issued order of a key-archive job: keep the result, import it next.
pub(super) fn issued(mut record: Record, result: JobResult) -> Record {
    record.state = State::Ready;
    record.next_at = Some(now_ms());
    record.archive = Some(Archive {
        step: ArchiveStep::Import,
        sent: false,
        csr_pem: record.archive.as_ref().and_then(|a| a.csr_pem.clone()),
        issued: Some(result),
    });
    record
}

impl Engine {
    /// Handles one message from `{p}.keyarchive.replies`.
    pub async fn on_reply(&self, routing_key: &str, body: &[u8]) -> Disposition {
        self.on_cm_message(routing_key, body, false).await
    }

    /// A Certificate Manager reply another worker forwarded into this worker's lease
    /// queue of the job.
    pub async fn on_forwarded_reply(&self, routing_key: &str, body: &[u8]) -> Disposition {
        self.on_cm_message(routing_key, body, true).await
    }

    async fn on_cm_message(&self, routing_key: &str, body: &[u8], forwarded: bool) -> Disposition {
        let value: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return self
                    .park_reply(
                        body,
                        &format!("a Certificate Manager reply that is not JSON: {e}"),
                    )
                    .await
            }
        };
        let schema = match routing_key {
            keys::GENERATED => "keyarchive-generated",
            keys::IMPORTED => "keyarchive-imported",
            other => {
                return self
                    .park_reply(
                        body,
                        &format!("a key-archive reply with unknown routing key `{other}`"),
                    )
                    .await
            }
        };
        if let Err(errors) = self.schemas.check(schema, &value) {
            return self
                .park_reply(
                    body,
                    &format!(
                        "the {routing_key} message does not fit the contract: {}",
                        errors.join("; ")
                    ),
                )
                .await;
        }
        let Some(job_id) = value
            .get("job_id")
            .and_then(|v| v.as_str())
            .map(str::to_string)
        else {
            return self.park_reply(body, "no job_id").await;
        };
        let span = tracing::info_span!("job", %job_id, kind = "issue");
        self.apply_reply(job_id, routing_key, value, body, forwarded)
            .instrument(span)
            .await
    }

    async fn apply_reply(
        &self,
        job_id: String,
        routing_key: &str,
        value: serde_json::Value,
        body: &[u8],
        forwarded: bool,
    ) -> Disposition {
        // The reply is this worker's when it holds the job's lease (another worker
        // may have a put-off copy of the job, but not the Certificate Manager step), or
        // when it waits for the reply itself and can take the lease now (just after a
        // reconnect, before the leases are taken again).
        let ours = forwarded || self.config.single_worker || self.leases.holds(&job_id) || {
            let waiting_here =
                matches!(self.store.get(&job_id), Ok(Some(r)) if r.state == State::AwaitingCm);
            waiting_here && self.leases.ensure(&job_id, true).await.is_ok()
        };
        if !ours {
            return self.forward_reply(&job_id, routing_key, body).await;
        }
        let guard = self.locks.lock(&job_id).await;
        let record = match self.store.get(&job_id) {
            Ok(Some(record)) => record,
            Ok(None) => {
                warn!(
                    routing_key,
                    "a Certificate Manager reply for an unknown job; ignored"
                );
                return Disposition::Ack;
            }
            Err(_) => return Disposition::Retry,
        };
        let step = record.archive.as_ref().map(|a| a.step);
        let next = match (routing_key, record.state, step) {
            (keys::GENERATED, State::AwaitingCm, Some(ArchiveStep::Generate)) => {
                let generated: Generated = match serde_json::from_value(value) {
                    Ok(g) => g,
                    Err(e) => return self.park_reply(body, &e.to_string()).await,
                };
                info!("the Certificate Manager generated the key pair");
                let mut next = record.clone();
                next.state = State::Ready;
                next.next_at = Some(now_ms());
                next.archive = Some(Archive {
                    step: ArchiveStep::Order,
                    sent: false,
                    csr_pem: Some(generated.csr_pem),
                    issued: None,
                });
                next
            }
            (keys::IMPORTED, State::AwaitingCm, Some(ArchiveStep::Import)) => {
                let imported: Imported = match serde_json::from_value(value) {
                    Ok(i) => i,
                    Err(e) => return self.park_reply(body, &e.to_string()).await,
                };
                let issued = record.archive.as_ref().and_then(|a| a.issued.clone());
                match (imported.error, issued) {
                    (None, Some(result)) => {
                        info!("the Certificate Manager imported the certificate");
                        finish(record.clone(), result)
                    }
                    (Some(cm), _) => {
                        let mut result = outcome::failed(
                            &record,
                            "KEY_ARCHIVE_FAILED",
                            format!("the Certificate Manager could not import the certificate: {}: {}", cm.code, cm.message),
                            "Check the Certificate Manager's import token procedure (caTokenProcedureImportCert); the certificate was issued and can be imported by hand or revoked.",
                            false,
                        );
                        carry_issued(&mut result, &record);
                        finish(record.clone(), result)
                    }
                    (None, None) => fail(
                        &record,
                        "KEY_ARCHIVE_FAILED",
                        "the issued certificate is missing from the record".into(),
                        "",
                    ),
                }
            }
            _ => {
                info!(
                    routing_key,
                    state = record.state.as_str(),
                    "a repeated or late Certificate Manager reply; ignored"
                );
                return Disposition::Ack;
            }
        };
        let record = match self.save(&record, next).await {
            Ok(record) => record,
            Err(_) => return Disposition::Retry,
        };
        // Go on now (order at D-Trust, or publish the result) rather than at the next tick.
        let record = if record.state.is_terminal() {
            record
        } else {
            let _permit = self.lane(record.kind).acquire_owned().await;
            match self.advance(record).await {
                Ok(record) => record,
                Err(_) => return Disposition::Ack,
            }
        };
        if record.state == State::Finished
            && self.deliver(&record, &super::owed_routes(&record)).await
                == super::Delivered::Confirmed
        {
            self.mark_delivered(&record);
        }
        drop(guard);
        Disposition::Ack
    }

    /// A reply for a job whose lease this worker does not hold goes to the lease queue, where
    /// the worker that holds the job consumes it; with no holder it is kept in
    /// `{p}.dead`.
    async fn forward_reply(&self, job_id: &str, routing_key: &str, body: &[u8]) -> Disposition {
        let queue = self.leases.queue(job_id);
        let message = Outgoing::to_queue(queue, body.to_vec())
            .with_header(crate::transport::lease::ROUTING_KEY_HEADER, routing_key)
            .with_correlation_id(job_id.to_string());
        match self.outbox.publish(message).await {
            Ok(crate::transport::Published::Routed) => {
                info!(
                    routing_key,
                    "a Certificate Manager reply for a job of another worker: forwarded to its lease"
                );
                Disposition::Ack
            }
            Ok(crate::transport::Published::Returned { .. }) => {
                self.park_reply(
                    body,
                    &format!("a Certificate Manager `{routing_key}` reply for job `{job_id}`, which no worker holds now (finished, timed out, or its worker is away from the broker)"),
                )
                .await
            }
            Err(_) => Disposition::Retry,
        }
    }

    /// A reply that cannot be used is kept in `{p}.dead` with the reason.
    async fn park_reply(&self, body: &[u8], reason: &str) -> Disposition {
        warn!(%reason, "unusable Certificate Manager reply");
        let dead = Outgoing::new(&self.config.names.dead_exchange, "", body.to_vec())
            .with_header(crate::transport::ERROR_HEADER, reason.to_string())
            .with_header(
                "x-dtrust-queue",
                self.config.names.keyarchive_replies.clone(),
            );
        match self.outbox.publish(dead).await {
            Ok(_) => Disposition::Ack,
            Err(_) => Disposition::Retry,
        }
    }
}
