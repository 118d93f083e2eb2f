//! Jobs and results as the AMQP contract (`shared/contract/messages.md`) defines them.
//! A job is only deserialized into these types after it passed the JSON Schema, so the
//! types can be plain; secrets are [`Secret`]s and never print.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dtrust::wire::Reason;
use crate::secret::{expose_optional_secret, Secret};

/// What a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Issue,
    Revoke,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Issue => "issue",
            Kind::Revoke => "revoke",
        }
    }
}

/// A job message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Job {
    Issue(Box<IssueJob>),
    Revoke(RevokeJob),
}

impl Job {
    pub fn job_id(&self) -> &str {
        match self {
            Job::Issue(j) => &j.job_id,
            Job::Revoke(j) => &j.job_id,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Job::Issue(_) => Kind::Issue,
            Job::Revoke(_) => Kind::Revoke,
        }
    }

    pub fn metadata(&self) -> Option<&Value> {
        match self {
            Job::Issue(j) => j.metadata.as_ref(),
            Job::Revoke(j) => j.metadata.as_ref(),
        }
    }

    /// The job with its secrets removed (for a record whose result was delivered).
    pub fn without_secrets(&self) -> Job {
        match self {
            Job::Issue(j) => Job::Issue(Box::new(IssueJob {
                revocation_password: None,
                ..(**j).clone()
            })),
            Job::Revoke(j) => Job::Revoke(RevokeJob {
                revocation_password: None,
                ..j.clone()
            }),
        }
    }
}

/// `pkcs10` (the caller sends a CSR) or `pkcs12` (D-Trust generates the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobRequestType {
    Pkcs10,
    Pkcs12,
}

/// An issuance job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueJob {
    pub job_id: String,
    pub product: String,
    pub request_type: JobRequestType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr_pem: Option<String>,
    pub subject: JobSubject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san: Option<JobSan>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_optional_secret"
    )]
    pub revocation_password: Option<Secret>,
    #[serde(default)]
    pub key_archive: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// The subject, with the contract's names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub o: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ou: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub st: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surname: Option<String>,
}

/// Subject alternative names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSan {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upn: Vec<String>,
}

/// A revocation job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeJob {
    pub job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default)]
    pub reason: Reason,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_optional_secret"
    )]
    pub revocation_password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// `succeeded` or `failed`: terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Succeeded,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultError {
    pub code: String,
    pub message: String,
    pub hint: String,
    pub retryable: bool,
}

/// The result message: exactly one terminal outcome per job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResult {
    pub job_id: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    pub status: Status,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_pem: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_optional_secret"
    )]
    pub pkcs12_base64: Option<Secret>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_optional_secret"
    )]
    pub pkcs12_password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_optional_secret"
    )]
    pub revocation_password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResultError>,
    pub finished_at: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl JobResult {
    /// A result with only the common fields set.
    pub fn new(
        job_id: &str,
        kind: Kind,
        metadata: Option<Value>,
        status: Status,
        attempts: u32,
        finished_at: String,
    ) -> JobResult {
        JobResult {
            job_id: job_id.to_string(),
            kind,
            metadata,
            status,
            attempts,
            order_id: None,
            certificate_pem: None,
            chain_pem: None,
            pkcs12_base64: None,
            pkcs12_password: None,
            serial: None,
            not_before: None,
            not_after: None,
            revocation_password: None,
            revoked_at: None,
            error: None,
            finished_at,
            warnings: Vec::new(),
        }
    }

    /// A failed result.
    pub fn failed(
        job_id: &str,
        kind: Kind,
        metadata: Option<Value>,
        attempts: u32,
        finished_at: String,
        error: ResultError,
    ) -> JobResult {
        JobResult {
            error: Some(error),
            ..JobResult::new(
                job_id,
                kind,
                metadata,
                Status::Failed,
                attempts,
                finished_at,
            )
        }
    }

    /// The routing key on `{p}.results`: `result.<kind>.<status>`.
    pub fn routing_key(&self) -> String {
        format!("result.{}.{}", self.kind.as_str(), self.status.as_str())
    }

    /// The result with its secret fields removed, and a warning saying so.
    pub fn without_secrets(&self) -> JobResult {
        let had = self.pkcs12_base64.is_some()
            || self.pkcs12_password.is_some()
            || self.revocation_password.is_some();
        let mut result = JobResult {
            pkcs12_base64: None,
            pkcs12_password: None,
            revocation_password: None,
            ..self.clone()
        };
        if had {
            result.warnings.push(
                "secret fields (revocation_password, pkcs12_base64, pkcs12_password) were delivered with the first result of this job and are not kept; this is a repeat".into(),
            );
        }
        result
    }
}
