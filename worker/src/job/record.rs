//! The stored state of one job: what the worker knows of it at each step, so a crash
//! anywhere resumes from here. One record per `job_id`.

use serde::{Deserialize, Serialize};

use super::model::{Job, JobResult, Kind};
use crate::secret::{expose_optional_secret, Secret};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Stored; its next D-Trust step is due at `next_at` (now, or a retry later).
    Ready,
    /// A request that may create an order or revoke was sent, its answer not yet
    /// stored: whoever resumes must look the order up before sending again.
    InFlight,
    /// D-Trust took the order and has not issued it yet: polled at `next_at`.
    Pending,
    /// Waiting for the Certificate Manager's answer; `next_at` is the deadline.
    AwaitingCm,
    /// The result is stored, not yet confirmed by the broker.
    Finished,
    /// The broker confirmed the result.
    Delivered,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Ready,
        State::InFlight,
        State::Pending,
        State::AwaitingCm,
        State::Finished,
        State::Delivered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::InFlight => "in_flight",
            State::Pending => "pending",
            State::AwaitingCm => "awaiting_cm",
            State::Finished => "finished",
            State::Delivered => "delivered",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the job has its terminal outcome.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Finished | State::Delivered)
    }
}

/// Where a key-archive job stands with the Certificate Manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveStep {
    /// `generate` is to be sent, or was sent and `generated` is awaited.
    Generate,
    /// The CM's CSR is here: order at D-Trust.
    Order,
    /// The certificate is issued: `import` is to be sent, or was sent and `imported`
    /// is awaited.
    Import,
}

/// A key-archive job's progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Archive {
    pub step: ArchiveStep,
    /// Whether this step's message went to the CM (confirmed by the broker).
    #[serde(default)]
    pub sent: bool,
    /// The CM's CSR over the archived key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr_pem: Option<String>,
    /// The issued result, kept until the CM confirms the import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<JobResult>,
}

/// Where one delivered copy of a job wants its result: `{p}.results` always, and its
/// `reply_to` queue with its `correlation_id` when it gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// One job's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub job_id: String,
    pub kind: Kind,
    pub state: State,
    /// Bumped by every stored change; a change applies only to the version it read.
    pub version: u64,
    /// The job as received (its secrets removed once the result is delivered).
    pub job: Job,
    /// Where else to send the result (`reply_to`), with which `correlation_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Deliveries of this job that were acknowledged before its result was published:
    /// each gets the result when it is (every delivered copy ends with a result).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owed: Vec<Route>,
    /// The reference D-Trust stores with the order, for lookups.
    pub client_reference: String,
    /// D-Trust calls made for this job.
    pub attempts: u32,
    /// Retryable failures so far (for the backoff and the attempt limit).
    #[serde(default)]
    pub retries: u32,
    /// Times the job was put off because another worker held its lease (for the
    /// growing delay between tries; not counted as retries).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deferrals: u32,
    /// An earlier request may have reached D-Trust: look up before sending again.
    #[serde(default)]
    pub lookup_first: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// A revocation password the worker generated for this job.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_optional_secret"
    )]
    pub generated_password: Option<Secret>,
    /// When the next step is due, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<i64>,
    /// Key archival progress, for issue jobs with `key_archive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<Archive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Record {
    /// The route of the delivery that made the record.
    pub fn route(&self) -> Route {
        Route {
            reply_to: self.reply_to.clone(),
            correlation_id: self.correlation_id.clone(),
        }
    }

    /// A new record for a job just received, due now.
    pub fn new(job: Job, client_reference: String, now_ms: i64) -> Record {
        Record {
            job_id: job.job_id().to_string(),
            kind: job.kind(),
            state: State::Ready,
            version: 0,
            job,
            reply_to: None,
            correlation_id: None,
            owed: Vec::new(),
            client_reference,
            attempts: 0,
            retries: 0,
            deferrals: 0,
            lookup_first: false,
            order_id: None,
            generated_password: None,
            next_at: Some(now_ms),
            archive: None,
            result: None,
            last_error: None,
            created_at: now_ms,
            updated_at: now_ms,
            finished_at: None,
        }
    }

    /// Whether any secret is still held.
    pub fn holds_secrets(&self) -> bool {
        let job_secret = match &self.job {
            Job::Issue(j) => j.revocation_password.is_some(),
            Job::Revoke(j) => j.revocation_password.is_some(),
        };
        let result_secret = self.result.as_ref().is_some_and(|r| {
            r.revocation_password.is_some()
                || r.pkcs12_password.is_some()
                || r.pkcs12_base64.is_some()
        });
        job_secret || result_secret || self.generated_password.is_some()
    }

    /// The record with every secret removed (once the result is delivered).
    pub fn scrubbed(&self) -> Record {
        Record {
            job: self.job.without_secrets(),
            generated_password: None,
            result: self.result.as_ref().map(JobResult::without_secrets),
            archive: self.archive.as_ref().map(|a| Archive {
                issued: None,
                ..a.clone()
            }),
            ..self.clone()
        }
    }
}

/// A stored-record sample for unit tests elsewhere: a revocation of serial `0a` that
/// holds the password `pw-123456789012`, received at `now_ms`.
#[cfg(test)]
pub(crate) fn sample_revocation(job_id: &str, now_ms: i64) -> Record {
    let job = Job::Revoke(crate::job::model::RevokeJob {
        job_id: job_id.into(),
        serial: Some("0a".into()),
        order_id: None,
        reason: Default::default(),
        revocation_password: Some(crate::secret::Secret::new("pw-123456789012")),
        cn: None,
        metadata: None,
    });
    Record::new(job, format!("ref-{job_id}"), now_ms)
}
