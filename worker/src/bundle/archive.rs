//! The bundle's zip, read in memory with hard caps.
//!
//! Nothing is extracted to disk. The caps keep a hostile or broken zip from costing
//! more than a few MiB: at most [`MAX_ENTRIES`] entries of at most [`MAX_ENTRY_SIZE`]
//! bytes each, checked against the central directory before anything is inflated and
//! again while inflating (a zip may lie about its sizes). Folders, links and names that
//! could point elsewhere (`/`, `\`, `..`) are refused: a bundle is flat.

use std::io::{Cursor, Read};
use std::path::Path;

use zip::ZipArchive;

/// Most entries a bundle may hold (it needs three).
pub const MAX_ENTRIES: usize = 16;
/// Largest uncompressed size of one entry: 1 MiB.
pub const MAX_ENTRY_SIZE: u64 = 1 << 20;
/// Largest zip file accepted: room for every entry at full size, plus the directory.
pub const MAX_ARCHIVE_SIZE: u64 = (MAX_ENTRIES as u64 + 1) * MAX_ENTRY_SIZE;

/// A fatal problem with the zip itself; reading stops at the first one.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read the bundle file `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the bundle is {size} bytes; a connector bundle is at most {max} bytes ({MAX_ENTRIES} entries of at most 1 MiB)")]
    TooLarge { size: u64, max: u64 },
    #[error("the bundle is not a readable zip file ({detail}); create it with e.g. `zip bundle.zip dtrust.properties client.p12 server.cer`")]
    NotZip { detail: String },
    #[error("the bundle has {count} entries; at most {MAX_ENTRIES} are allowed (it needs dtrust.properties, the client .p12 and the server .cer)")]
    TooManyEntries { count: usize },
    #[error("the bundle holds two entries named `{name}`; every entry name must be unique")]
    DuplicateName { name: String },
    #[error("entry `{name}` is a directory; put dtrust.properties, the .p12 and the .cer at the top level of the zip, without folders")]
    Directory { name: String },
    #[error("entry `{name}` is a symbolic link; a bundle holds plain files only")]
    Symlink { name: String },
    #[error("entry `{name}`: names with `/`, `\\`, `..` or control characters are not allowed; put every file at the top level of the zip")]
    UnsafeName { name: String },
    #[error("entry `{name}` is larger than 1 MiB ({MAX_ENTRY_SIZE} bytes) uncompressed ({size}); no file of a bundle is that large")]
    EntryTooLarge { name: String, size: String },
    #[error("entry `{name}` is encrypted; the zip itself must not have a password (the keystore has its own, `p12Password`)")]
    Encrypted { name: String },
    #[error("entry `{name}` cannot be read: {detail}")]
    Unreadable { name: String, detail: String },
}

/// One file of the bundle.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Entry {
    // The data may be a keystore or properties with a password: print its size only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry({:?}, {} bytes)", self.name, self.data.len())
    }
}

/// The flat list of files in a bundle, in zip order.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: Vec<Entry>,
}

impl Archive {
    /// Reads a bundle file from disk, refusing files over [`MAX_ARCHIVE_SIZE`] before
    /// reading them (and while reading, for pipes and files that grow).
    pub fn read_file(path: &Path) -> Result<Archive, ArchiveError> {
        let io = |source| ArchiveError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let declared = file.metadata().map_err(io)?.len();
        if declared > MAX_ARCHIVE_SIZE {
            return Err(ArchiveError::TooLarge {
                size: declared,
                max: MAX_ARCHIVE_SIZE,
            });
        }
        let mut bytes = Vec::with_capacity(declared as usize);
        file.take(MAX_ARCHIVE_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Archive::from_bytes(&bytes)
    }

    /// Reads a bundle from the bytes of its zip.
    pub fn from_bytes(bytes: &[u8]) -> Result<Archive, ArchiveError> {
        if bytes.len() as u64 > MAX_ARCHIVE_SIZE {
            return Err(ArchiveError::TooLarge {
                size: bytes.len() as u64,
                max: MAX_ARCHIVE_SIZE,
            });
        }
        let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(|e| ArchiveError::NotZip {
            detail: e.to_string(),
        })?;
        if zip.len() > MAX_ENTRIES {
            return Err(ArchiveError::TooManyEntries { count: zip.len() });
        }
        if zip.has_duplicate_names() {
            let name = first_duplicate(zip.file_names_raw());
            return Err(ArchiveError::DuplicateName { name });
        }
        let mut entries = Vec::with_capacity(zip.len());
        for index in 0..zip.len() {
            entries.push(read_entry(&mut zip, index)?);
        }
        Ok(Archive { entries })
    }

    /// All entries, in zip order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry with exactly this name.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Entries whose name ends in one of `extensions` (lowercase, with the dot),
    /// compared without regard to case.
    pub fn with_extension<'a>(&'a self, extensions: &'a [&str]) -> impl Iterator<Item = &'a Entry> {
        self.entries.iter().filter(move |e| {
            let lower = e.name.to_ascii_lowercase();
            extensions.iter().any(|ext| lower.ends_with(ext))
        })
    }
}

fn read_entry(zip: &mut ZipArchive<Cursor<&[u8]>>, index: usize) -> Result<Entry, ArchiveError> {
    let unreadable = |name: &str, e: &dyn std::fmt::Display| ArchiveError::Unreadable {
        name: name.to_string(),
        detail: e.to_string(),
    };
    let file = zip
        .by_index_data(index)
        .map_err(|e| unreadable(&format!("#{index}"), &e))?;
    let name = String::from_utf8_lossy(file.name_raw()).into_owned();
    if file.is_dir() {
        return Err(ArchiveError::Directory { name });
    }
    if is_unsafe_name(&name) {
        return Err(ArchiveError::UnsafeName { name });
    }
    if file.is_symlink() {
        return Err(ArchiveError::Symlink { name });
    }
    if file.encrypted() {
        return Err(ArchiveError::Encrypted { name });
    }
    if file.size() > MAX_ENTRY_SIZE {
        return Err(ArchiveError::EntryTooLarge {
            size: format!("{} bytes", file.size()),
            name,
        });
    }
    // Inflate through our own cap as well: the directory may understate the size.
    let file = zip.by_index(index).map_err(|e| unreadable(&name, &e))?;
    let mut data = Vec::new();
    file.take(MAX_ENTRY_SIZE + 1)
        .read_to_end(&mut data)
        .map_err(|e| unreadable(&name, &e))?;
    if data.len() as u64 > MAX_ENTRY_SIZE {
        return Err(ArchiveError::EntryTooLarge {
            name,
            size: "more than its directory entry says".into(),
        });
    }
    Ok(Entry { name, data })
}

fn is_unsafe_name(name: &str) -> bool {
    name.is_empty()
        || name.contains(['/', '\\'])
        || name == "."
        || name.contains("..")
        || name.chars().any(char::is_control)
        || name.contains(':')
}

fn first_duplicate<'a>(names: impl Iterator<Item = &'a [u8]>) -> String {
    let mut seen = std::collections::HashSet::new();
    for raw in names {
        if !seen.insert(raw) {
            return String::from_utf8_lossy(raw).into_owned();
        }
    }
    String::from("?")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in files {
            writer
                .start_file(*name, SimpleFileOptions::default())
                .unwrap();
            writer.write_all(data).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn reads_flat_entries_in_order() {
        let archive = Archive::from_bytes(&zip_of(&[("a.txt", b"A"), ("b.P12", b"B")])).unwrap();
        let names: Vec<_> = archive.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "b.P12"]);
        assert_eq!(archive.get("a.txt").unwrap().data, b"A");
        assert_eq!(archive.with_extension(&[".p12", ".pfx"]).count(), 1);
    }

    #[test]
    fn refuses_names_that_leave_the_folder() {
        for name in [
            "../evil",
            "dir/file",
            "dir\\file",
            "..",
            "C:evil",
            "a\u{0}b",
        ] {
            let err = Archive::from_bytes(&zip_of(&[(name, b"x")])).unwrap_err();
            assert!(
                matches!(
                    err,
                    ArchiveError::UnsafeName { .. } | ArchiveError::Directory { .. }
                ),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn refuses_garbage_and_oversized_input() {
        let err = Archive::from_bytes(b"not a zip").unwrap_err();
        assert!(err.to_string().contains("not a readable zip file"), "{err}");
        let big = vec![0u8; MAX_ARCHIVE_SIZE as usize + 1];
        assert!(matches!(
            Archive::from_bytes(&big).unwrap_err(),
            ArchiveError::TooLarge { .. }
        ));
    }
}
