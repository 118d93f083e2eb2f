//! What is wrong with a bundle, in words an operator can act on.
//!
//! Every [`Problem`] stops the worker from starting and names the setting or zip entry
//! to fix; every [`Warning`] is printed but lets it start. Loading collects all of them
//! at once, so one `check-config` run shows everything to fix.

use super::archive::ArchiveError;

/// A mistake that keeps the worker from starting.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("the bundle has no `dtrust.properties`; add it at the top level of the zip (entries found: {found})")]
    PropertiesMissing { found: String },
    #[error("dtrust.properties {0}")]
    PropertiesSyntax(#[from] super::properties::PropertiesError),
    #[error("`{key}` is missing: {what}")]
    MissingKey {
        key: &'static str,
        what: &'static str,
    },
    #[error("`certificateTemplates` is missing or empty: set it to the D-Trust products this connector may order, as one `;`-separated string (e.g. `certificateTemplates=SSL-Basic;SSL-OV`); the worker refuses to start without it")]
    NoTemplates,
    #[error("`url` = `{value}` is not a valid URL ({detail}); set the https base URL of the D-Trust REST interface")]
    InvalidUrl { value: String, detail: String },
    #[error("`url` = `{value}` does not use https; the D-Trust REST interface is only reached over TLS with the client certificate, so set an https:// URL")]
    UrlNotHttps { value: String },
    #[error("dtrust.properties sets {keys} for D-Trust's legacy SOAP interface, which D-Trust is phasing out: for the REST interface remove {keys} and set `url` to the REST URL (`dtrust-worker migrate-config OLD.zip NEW.zip --url https://...` does both)")]
    LegacySoap { keys: String },
    #[error("`{key}` = `{value}` is not {expected}")]
    InvalidValue {
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("`{key}` is set but `{needs}` is not: {why}")]
    Incomplete {
        key: &'static str,
        needs: &'static str,
        why: &'static str,
    },
    #[error("key backup is incomplete: `keyArchive` is set, so {missing} must be set too (the Certificate Manager token procedure that imports the real certificate, and one that creates the key pair for each product of `certificateTemplates`)")]
    KeyArchiveIncomplete { missing: String },
    #[error("`{key}` names the entry `{name}`, which is not in the bundle (entries: {found})")]
    EntryNotFound {
        key: &'static str,
        name: String,
        found: String,
    },
    #[error(
        "the bundle has no {what} (a file ending in {extensions}); add it, or name it with `{key}`"
    )]
    EntryAbsent {
        what: &'static str,
        extensions: &'static str,
        key: &'static str,
    },
    #[error(
        "the bundle has several {what} files ({candidates}); name the one to use with `{key}`"
    )]
    EntryAmbiguous {
        what: &'static str,
        candidates: String,
        key: &'static str,
    },
    #[error("keystore `{entry}`: wrong password; set `p12Password` in dtrust.properties or DTRUST_P12PASSWORD (the default is 123456)")]
    KeystorePassword { entry: String },
    #[error("keystore `{entry}` cannot be read as PKCS#12: {detail}")]
    KeystoreUnreadable { entry: String, detail: String },
    #[error("keystore `{entry}` holds no private key with its certificate; export the account's client certificate together with its private key (e.g. `openssl pkcs12 -export -inkey key.pem -in cert.pem`)")]
    KeystoreNoPrivateKey { entry: String },
    #[error("keystore `{entry}`: the private key cannot be used for TLS ({detail})")]
    KeystoreKeyUnusable { entry: String, detail: String },
    #[error("keystore `{entry}`: the private key does not belong to the certificate `{subject}`; export the certificate together with its own key")]
    KeystoreKeyMismatch { entry: String, subject: String },
    #[error("keystore `{entry}`: the client certificate `{subject}` expired on {not_after}; D-Trust will refuse it: request a new account certificate and put its .p12 in the bundle")]
    ClientCertExpired {
        entry: String,
        subject: String,
        not_after: String,
    },
    #[error("keystore `{entry}`: the client certificate `{subject}` is not valid before {not_before}; check the machine's clock, or wait until then")]
    ClientCertNotYetValid {
        entry: String,
        subject: String,
        not_before: String,
    },
    #[error("server certificate `{entry}` cannot be read ({detail}); it must be D-Trust's service certificate as DER or PEM (`-----BEGIN CERTIFICATE-----`)")]
    ServerCertUnreadable { entry: String, detail: String },
    #[error("server certificate `{entry}` holds {count} certificates and `{leaf}` is not a CA; put either CA certificates (trust anchors) or exactly one server certificate (pinned) in it")]
    ServerCertMixed {
        entry: String,
        count: usize,
        leaf: String,
    },
}

/// Something an operator should know, that does not stop the worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    #[error("keystore `{entry}`: the client certificate `{subject}` expires on {not_after}, in {days} days; order its successor now")]
    ClientCertExpiresSoon {
        entry: String,
        subject: String,
        not_after: String,
        days: i64,
    },
    #[error("`p12Password` is not set: using the default password 123456 for keystore `{entry}`")]
    DefaultPassword { entry: String },
    #[error("keystore `{entry}` holds {count} private keys; using `{used}`")]
    SeveralKeys {
        entry: String,
        count: usize,
        used: String,
    },
    #[error("server certificate `{entry}` (`{subject}`) expired on {not_after}")]
    ServerCertExpired {
        entry: String,
        subject: String,
        not_after: String,
    },
    #[error("dtrust.properties line {line}: unknown key `{key}`{suggestion}; it is ignored")]
    UnknownKey {
        key: String,
        line: usize,
        suggestion: String,
    },
    #[error("dtrust.properties sets `{key}` more than once; the last value counts")]
    DuplicateKey { key: String },
    #[error("`certificateTemplates` lists `{product}` more than once")]
    DuplicateTemplate { product: String },
    #[error("`{key}` is set but `keyArchive` is not, so key backup is off and it is ignored")]
    KeyArchiveOff { key: String },
    #[error(
        "`{key}` maps product `{product}`, which is not in `certificateTemplates`; it is ignored"
    )]
    TokenProcedureUnused { key: String, product: String },
    #[error("entry `{name}` is not used by the connector")]
    UnusedEntry { name: String },
    #[error("`revocationPasswordSecret` is not set: generated revocation passwords are random, known only to the worker that made them. One worker per prefix needs no more; with several, set the same secret on all of them, or a job answered from another worker's order comes without its revocation password")]
    RevocationSecretUnset,
}

/// Everything found while loading a bundle.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
    pub warnings: Vec<Warning>,
}

impl Report {
    pub(crate) fn problem(&mut self, problem: impl Into<Problem>) {
        self.problems.push(problem.into());
    }

    pub(crate) fn warn(&mut self, warning: Warning) {
        self.warnings.push(warning);
    }
}

impl From<ArchiveError> for Report {
    fn from(error: ArchiveError) -> Report {
        Report {
            problems: vec![Problem::Archive(error)],
            warnings: Vec::new(),
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "the bundle has {n} problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Report {}

/// `a`, `a and b`, `a, b and c`, each in backticks.
pub(crate) fn list(items: &[impl AsRef<str>]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{}`", i.as_ref())).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}
