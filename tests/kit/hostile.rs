//! Zips built to attack a bundle reader: bombs (honest and lying about their size),
//! path traversal, links, folders, encrypted entries and entry floods.

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;

fn writer() -> zip::ZipWriter<Cursor<Vec<u8>>> {
    zip::ZipWriter::new(Cursor::new(Vec::new()))
}

fn deflated() -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(false)
}

/// One entry of `size` zero bytes: a few KiB compressed, `size` bytes inflated.
pub fn zip_bomb(size: usize) -> Vec<u8> {
    let mut zip = writer();
    zip.start_file("dtrust.properties", deflated())
        .expect("entry");
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        zip.write_all(&chunk[..n]).expect("write");
        left -= n;
    }
    zip.finish().expect("finish").into_inner()
}

/// A bomb whose directory claims it inflates to only 100 bytes.
pub fn lying_zip_bomb(size: usize) -> Vec<u8> {
    let mut bytes = zip_bomb(size);
    patch_all(&mut bytes, b"PK\x03\x04", 22, &100u32.to_le_bytes());
    patch_all(&mut bytes, b"PK\x01\x02", 24, &100u32.to_le_bytes());
    bytes
}

/// One entry whose name is `name` (e.g. `../../etc/cron.d/x`).
pub fn named(name: &str) -> Vec<u8> {
    let mut zip = writer();
    zip.start_file(name, deflated()).expect("entry");
    zip.write_all(b"url=https://evil.test/\n").expect("write");
    zip.finish().expect("finish").into_inner()
}

/// `dtrust.properties` as a symbolic link to `/etc/passwd`.
pub fn symlink() -> Vec<u8> {
    let mut zip = writer();
    zip.add_symlink(
        "dtrust.properties",
        "/etc/passwd",
        SimpleFileOptions::default(),
    )
    .expect("symlink");
    zip.finish().expect("finish").into_inner()
}

/// A folder holding the bundle's files, as `zip -r` makes it.
pub fn with_folder() -> Vec<u8> {
    let mut zip = writer();
    zip.add_directory("bundle/", SimpleFileOptions::default())
        .expect("dir");
    zip.start_file("bundle/dtrust.properties", deflated())
        .expect("entry");
    zip.write_all(b"url=https://x.test/\n").expect("write");
    zip.finish().expect("finish").into_inner()
}

/// `count` tiny entries.
pub fn many_entries(count: usize) -> Vec<u8> {
    let mut zip = writer();
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..count {
        zip.start_file(format!("f{i}.txt"), stored).expect("entry");
    }
    zip.finish().expect("finish").into_inner()
}

/// A zip whose one entry is flagged as encrypted.
pub fn encrypted_flag() -> Vec<u8> {
    let mut bytes = named("dtrust.properties");
    // General-purpose flag bit 0: "encrypted".
    patch_flag(&mut bytes, b"PK\x03\x04", 6);
    patch_flag(&mut bytes, b"PK\x01\x02", 8);
    bytes
}

fn positions(bytes: &[u8], signature: &[u8; 4]) -> Vec<usize> {
    bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| w == signature)
        .map(|(i, _)| i)
        .collect()
}

fn patch_all(bytes: &mut [u8], signature: &[u8; 4], offset: usize, value: &[u8]) {
    for at in positions(bytes, signature) {
        bytes[at + offset..at + offset + value.len()].copy_from_slice(value);
    }
}

fn patch_flag(bytes: &mut [u8], signature: &[u8; 4], offset: usize) {
    for at in positions(bytes, signature) {
        bytes[at + offset] |= 1;
    }
}
