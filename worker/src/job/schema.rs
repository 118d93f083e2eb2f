//! Every message the worker receives is checked against the JSON Schemas of
//! `schemas/` (embedded in the binary) before anything else is done with it.
//!
//! A message that fails gives an [`InvalidMessage`] with what is wrong, in words that
//! never quote the offending value (it could be a password or 10 MB of garbage), and
//! with the `job_id` when the message has a usable one, so the job can still be
//! answered with a failed result.

use jsonschema::{Draft, Registry, Validator};
use serde_json::Value;

use super::model::{Job, Kind};

/// Largest message body accepted; JSON Schema cannot bound a document's total size.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// At most this many schema errors are reported per message.
const MAX_ERRORS: usize = 8;

const FILES: [(&str, &str); 9] = [
    (
        "defs.schema.json",
        include_str!("../../../schemas/defs.schema.json"),
    ),
    (
        "issue-job.schema.json",
        include_str!("../../../schemas/issue-job.schema.json"),
    ),
    (
        "revoke-job.schema.json",
        include_str!("../../../schemas/revoke-job.schema.json"),
    ),
    (
        "job.schema.json",
        include_str!("../../../schemas/job.schema.json"),
    ),
    (
        "result.schema.json",
        include_str!("../../../schemas/result.schema.json"),
    ),
    (
        "keyarchive-generate.schema.json",
        include_str!("../../../schemas/keyarchive-generate.schema.json"),
    ),
    (
        "keyarchive-generated.schema.json",
        include_str!("../../../schemas/keyarchive-generated.schema.json"),
    ),
    (
        "keyarchive-import.schema.json",
        include_str!("../../../schemas/keyarchive-import.schema.json"),
    ),
    (
        "keyarchive-imported.schema.json",
        include_str!("../../../schemas/keyarchive-imported.schema.json"),
    ),
];

/// Why the embedded schemas could not be compiled (a build defect, caught by tests).
#[derive(Debug, thiserror::Error)]
#[error("the embedded schema `{file}` cannot be used: {detail}")]
pub struct SchemaError {
    file: String,
    detail: String,
}

/// A message that cannot be processed, and what is known of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidMessage {
    /// The `job_id`, when the message has one that fits the contract's pattern.
    pub job_id: Option<String>,
    /// The `kind`, when it is `issue` or `revoke`.
    pub kind: Option<Kind>,
    /// What is wrong, without quoting values.
    pub reason: String,
}

/// The compiled validators.
pub struct Schemas {
    validators: Vec<(String, Validator)>,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.validators.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Schemas")
            .field("validators", &names)
            .finish()
    }
}

impl Schemas {
    /// Compiles every embedded schema, resolving their relative `$ref`s offline.
    pub fn load() -> Result<Schemas, SchemaError> {
        let mut documents = Vec::new();
        for (file, text) in FILES {
            let value: Value = serde_json::from_str(text).map_err(|e| SchemaError {
                file: file.into(),
                detail: e.to_string(),
            })?;
            let id = value
                .get("$id")
                .and_then(Value::as_str)
                .ok_or_else(|| SchemaError {
                    file: file.into(),
                    detail: "no $id".into(),
                })?
                .to_string();
            documents.push((file, id, value));
        }
        let registry = Registry::new()
            .extend(documents.iter().map(|(_, id, v)| (id.clone(), v.clone())))
            .and_then(|r| r.prepare())
            .map_err(|e| SchemaError {
                file: "registry".into(),
                detail: e.to_string(),
            })?;
        let mut validators = Vec::new();
        for (file, _, value) in &documents {
            if *file == "defs.schema.json" {
                continue;
            }
            let validator = jsonschema::options()
                .with_draft(Draft::Draft202012)
                .with_registry(&registry)
                .build(value)
                .map_err(|e| SchemaError {
                    file: (*file).into(),
                    detail: e.to_string(),
                })?;
            validators.push((file.trim_end_matches(".schema.json").to_string(), validator));
        }
        Ok(Schemas { validators })
    }

    fn validator(&self, name: &str) -> Option<&Validator> {
        self.validators
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Checks `value` against the schema `name` (e.g. `result`, `keyarchive-generated`);
    /// the errors, each as `path: what is wrong`.
    pub fn check(&self, name: &str, value: &Value) -> Result<(), Vec<String>> {
        let Some(validator) = self.validator(name) else {
            return Err(vec![format!("no schema named `{name}`")]);
        };
        let errors: Vec<String> = validator
            .iter_errors(value)
            .take(MAX_ERRORS)
            .map(|e| {
                let path = e.instance_path().to_string();
                let path = if path.is_empty() {
                    "/".to_string()
                } else {
                    path
                };
                format!("{path}: {}", e.masked())
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Parses a job message: size cap, JSON, schema, then the typed job.
    pub fn parse_job(&self, body: &[u8]) -> Result<Job, InvalidMessage> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(InvalidMessage {
                job_id: None,
                kind: None,
                reason: format!(
                    "the message has {} bytes; a job is at most {MAX_MESSAGE_BYTES} bytes",
                    body.len()
                ),
            });
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| InvalidMessage {
            job_id: None,
            kind: None,
            reason: format!("the message is not JSON: {e}"),
        })?;
        let job_id = usable_job_id(&value);
        let kind = match value.get("kind").and_then(Value::as_str) {
            Some("issue") => Some(Kind::Issue),
            Some("revoke") => Some(Kind::Revoke),
            _ => None,
        };
        if let Err(errors) = self.check("job", &value) {
            return Err(InvalidMessage {
                job_id,
                kind,
                reason: format!("the job does not fit the contract: {}", errors.join("; ")),
            });
        }
        serde_json::from_value(value).map_err(|e| InvalidMessage {
            job_id,
            kind,
            reason: format!("the job cannot be read: {e}"),
        })
    }
}

/// The message's `job_id` when it fits the contract (1–128 of `[A-Za-z0-9._:-]`).
pub fn usable_job_id(value: &Value) -> Option<String> {
    let id = value.get("job_id")?.as_str()?;
    let fits = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    fits.then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas() -> Schemas {
        Schemas::load().expect("embedded schemas compile")
    }

    #[test]
    fn a_valid_issue_job_parses() {
        let body = br#"{"job_id":"j-1","kind":"issue","product":"SSL-Basic","request_type":"pkcs12","subject":{"cn":"www.example.com","c":"DE"},"revocation_password":"Rv-secret-pw-1"}"#;
        let job = schemas().parse_job(body).unwrap();
        assert_eq!(job.job_id(), "j-1");
        assert_eq!(job.kind(), Kind::Issue);
    }

    #[test]
    fn invalid_jobs_say_what_is_wrong_without_quoting_values() {
        let body = br#"{"job_id":"j-2","kind":"issue","product":"SSL-Basic","request_type":"pkcs12","csr_pem":"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n","subject":{"cn":"x"},"revocation_password":"TopSecret-999"}"#;
        let err = schemas().parse_job(body).unwrap_err();
        assert_eq!(err.job_id.as_deref(), Some("j-2"));
        assert_eq!(err.kind, Some(Kind::Issue));
        assert!(
            err.reason.contains("does not fit the contract"),
            "{}",
            err.reason
        );
        assert!(!err.reason.contains("TopSecret-999"));
    }

    #[test]
    fn garbage_and_oversized_messages_have_no_job_id() {
        let err = schemas().parse_job(b"\x00\xffnot json").unwrap_err();
        assert_eq!(err.job_id, None);
        assert!(err.reason.contains("not JSON"));
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(schemas()
            .parse_job(&huge)
            .unwrap_err()
            .reason
            .contains("at most"));
        let bad_id = br#"{"job_id":"has space","kind":"revoke","serial":"01"}"#;
        assert_eq!(schemas().parse_job(bad_id).unwrap_err().job_id, None);
    }
}
