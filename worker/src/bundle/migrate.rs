//! `migrate-config`: turns a bundle for D-Trust's legacy SOAP interface into one for
//! REST. It drops `namespaceURI` and `localPart`, sets `url`, and keeps every other
//! line, comment and entry byte for byte (in the file's own encoding).

use std::io::{Cursor, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;

use super::archive::{Archive, ArchiveError};
use super::properties::{self, Properties, PropertiesError};
use super::settings::SOAP_KEYS;
use super::PROPERTIES_ENTRY;

/// Why a migration could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("the old bundle has no `dtrust.properties`")]
    NoProperties,
    #[error("dtrust.properties {0}")]
    Syntax(#[from] PropertiesError),
    #[error("--url `{url}` is not an https URL; give the base URL of the D-Trust REST interface, e.g. --url https://cmc.d-trust.net/rest/")]
    BadUrl { url: String },
    #[error("`{path}` exists already; choose another name or pass --force to overwrite it")]
    Exists { path: String },
    #[error("the new bundle must be another file than the old one")]
    SameFile,
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a migration changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The SOAP keys removed, with the line each was on.
    pub removed: Vec<(String, usize)>,
    /// The `url` before, if there was one.
    pub old_url: Option<String>,
}

/// Writes `new` from `old` with the REST `url`.
pub fn migrate(old: &Path, new: &Path, url: &str, force: bool) -> Result<Migration, MigrateError> {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
        _ => return Err(MigrateError::BadUrl { url: url.into() }),
    }
    if new.exists() {
        let same = old.canonicalize().ok() == new.canonicalize().ok();
        if same {
            return Err(MigrateError::SameFile);
        }
        if !force {
            return Err(MigrateError::Exists {
                path: new.display().to_string(),
            });
        }
    }
    let archive = Archive::read_file(old)?;
    let entry = archive
        .get(PROPERTIES_ENTRY)
        .ok_or(MigrateError::NoProperties)?;
    let utf8 = std::str::from_utf8(&entry.data).is_ok();
    let text = properties::decode(&entry.data);
    let props = Properties::parse(&text)?;
    let removed = props
        .entries()
        .iter()
        .filter(|e| SOAP_KEYS.contains(&e.key.as_str()))
        .map(|e| (e.key.clone(), e.line))
        .collect();
    let old_url = props.get("url").map(str::to_string);
    let rewritten = properties::rewrite(&text, SOAP_KEYS, Some(("url", url)))?;
    let bytes = if utf8 {
        rewritten.into_bytes()
    } else {
        // Decoded from ISO-8859-1, and what we add is ASCII: every char fits a byte.
        rewritten
            .chars()
            .map(|c| u8::try_from(c).unwrap_or(b'?'))
            .collect()
    };

    let zip = write_zip(&archive, &bytes).map_err(|source| MigrateError::Write {
        path: new.display().to_string(),
        source,
    })?;
    let tmp = new.with_extension("zip.partial");
    let write = |source| MigrateError::Write {
        path: new.display().to_string(),
        source,
    };
    std::fs::write(&tmp, zip).map_err(write)?;
    std::fs::rename(&tmp, new).map_err(write)?;
    Ok(Migration { removed, old_url })
}

fn write_zip(archive: &Archive, properties: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for entry in archive.entries() {
        zip.start_file(entry.name.as_str(), options)?;
        if entry.name == PROPERTIES_ENTRY {
            zip.write_all(properties)?;
        } else {
            zip.write_all(&entry.data)?;
        }
    }
    Ok(zip.finish()?.into_inner())
}
