//! The connector bundle: the zip an operator configures the D-Trust connector with,
//! exactly as for Identity Manager: `dtrust.properties`, the client keystore (`.p12`)
//! and D-Trust's server certificate (`.cer`).
//!
//! [`Bundle::load`] reads it in memory and checks everything at once; the worker refuses
//! to start on any [`Problem`] and prints every [`Warning`]. Nothing of it is logged
//! except through [`Bundle::summary`], which holds no secret.
//!
//! | module | owns |
//! |---|---|
//! | [`archive`] | the zip, with caps against bombs and path tricks |
//! | [`properties`] | Java-properties syntax |
//! | [`settings`] | every key, its default and its `DTRUST_*` override |
//! | [`keystore`] | the PKCS#12 client identity |
//! | [`trust`] | the server certificate: trust anchor or pinned leaf |
//! | [`report`] | problems and warnings, in operators' words |

pub mod archive;
pub mod cert;
pub mod keystore;
pub mod migrate;
pub mod properties;
pub mod report;
pub mod settings;
pub mod summary;
pub mod trust;

use std::path::Path;

use time::OffsetDateTime;

pub use archive::Archive;
pub use keystore::ClientIdentity;
pub use report::{Problem, Report, Warning};
pub use settings::{EntryNames, Environment, ProcessEnv, Settings};
pub use trust::ServerTrust;

/// The name of the settings entry.
pub const PROPERTIES_ENTRY: &str = "dtrust.properties";
const KEYSTORE_EXTENSIONS: &[&str] = &[".p12", ".pfx"];
const SERVER_CERT_EXTENSIONS: &[&str] = &[".cer", ".crt", ".pem"];

/// A checked bundle: everything the worker needs to talk to D-Trust.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub settings: Settings,
    pub identity: ClientIdentity,
    pub server: ServerTrust,
    /// What the operator should know; none of it stops the worker.
    pub warnings: Vec<Warning>,
}

impl Bundle {
    /// Reads and checks the bundle file, with overrides from the process environment.
    pub fn load(path: &Path) -> Result<Bundle, Report> {
        let archive = Archive::read_file(path).map_err(Report::from)?;
        Bundle::from_archive(&archive, &ProcessEnv, OffsetDateTime::now_utc())
    }

    /// Reads and checks a bundle from the bytes of its zip: the whole path from untrusted
    /// bytes to a checked bundle (what the fuzz target drives).
    pub fn from_zip_bytes(
        bytes: &[u8],
        env: &dyn Environment,
        now: OffsetDateTime,
    ) -> Result<Bundle, Report> {
        let archive = Archive::from_bytes(bytes).map_err(Report::from)?;
        Bundle::from_archive(&archive, env, now)
    }

    /// Checks a bundle already read, at the time `now`; all problems at once.
    pub fn from_archive(
        archive: &Archive,
        env: &dyn Environment,
        now: OffsetDateTime,
    ) -> Result<Bundle, Report> {
        let mut report = Report::default();
        let Some(props_entry) = archive.get(PROPERTIES_ENTRY) else {
            let found: Vec<&str> = archive.entries().iter().map(|e| e.name.as_str()).collect();
            report.problem(Problem::PropertiesMissing {
                found: if found.is_empty() {
                    "none".into()
                } else {
                    report::list(&found)
                },
            });
            return Err(report);
        };
        let props = match properties::Properties::parse(&properties::decode(&props_entry.data)) {
            Ok(props) => props,
            Err(e) => {
                report.problem(e);
                return Err(report);
            }
        };
        let settings = Settings::read(&props, env, &mut report);
        let names = match &settings {
            Some(s) => s.entries.clone(),
            None => EntryNames::read(&props, env),
        };

        let keystore_entry = pick_entry(
            archive,
            names.p12_file.as_deref(),
            "p12File",
            "client keystore",
            ".p12 or .pfx",
            KEYSTORE_EXTENSIONS,
            &mut report,
        );
        let identity = keystore_entry.and_then(|entry| {
            let identity = keystore::load(entry, &names.p12_password, now, &mut report);
            if identity.is_some() && names.p12_password_is_default {
                report.warn(Warning::DefaultPassword {
                    entry: entry.name.clone(),
                });
            }
            identity
        });
        let server_entry = pick_entry(
            archive,
            names.server_certificate.as_deref(),
            "serverCertificate",
            "server certificate",
            ".cer, .crt or .pem",
            SERVER_CERT_EXTENSIONS,
            &mut report,
        );
        let server = server_entry.and_then(|entry| trust::load(entry, now, &mut report));

        let used = [
            Some(PROPERTIES_ENTRY),
            keystore_entry.map(|e| e.name.as_str()),
            server_entry.map(|e| e.name.as_str()),
        ];
        for entry in archive.entries() {
            if !used.contains(&Some(entry.name.as_str())) {
                report.warn(Warning::UnusedEntry {
                    name: entry.name.clone(),
                });
            }
        }

        match (settings, identity, server) {
            (Some(settings), Some(identity), Some(server)) if report.problems.is_empty() => {
                Ok(Bundle {
                    settings,
                    identity,
                    server,
                    warnings: report.warnings,
                })
            }
            _ => Err(report),
        }
    }

    /// A summary for operators, without any secret.
    pub fn summary(&self) -> summary::Summary<'_> {
        summary::Summary(self)
    }
}

/// Finds an entry by the name a setting gives, else as the only one with an extension.
fn pick_entry<'a>(
    archive: &'a Archive,
    named: Option<&str>,
    key: &'static str,
    what: &'static str,
    extensions_text: &'static str,
    extensions: &'a [&'a str],
    report: &mut Report,
) -> Option<&'a archive::Entry> {
    if let Some(name) = named {
        let found = archive.get(name);
        if found.is_none() {
            let names: Vec<&str> = archive.entries().iter().map(|e| e.name.as_str()).collect();
            report.problem(Problem::EntryNotFound {
                key,
                name: name.to_string(),
                found: report::list(&names),
            });
        }
        return found;
    }
    let candidates: Vec<&archive::Entry> = archive.with_extension(extensions).collect();
    match candidates.as_slice() {
        [one] => Some(one),
        [] => {
            report.problem(Problem::EntryAbsent {
                what,
                extensions: extensions_text,
                key,
            });
            None
        }
        several => {
            let names: Vec<&str> = several.iter().map(|e| e.name.as_str()).collect();
            report.problem(Problem::EntryAmbiguous {
                what,
                candidates: report::list(&names),
                key,
            });
            None
        }
    }
}
