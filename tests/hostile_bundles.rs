//! Hostile bundles fail fast, with a clear error and bounded memory. A counting
//! allocator measures the peak heap each load needs; the tests in this file take turns
//! so the figures are each test's own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use dtrust_testkit::hostile;
use dtrust_worker::bundle::archive::{Archive, ArchiveError, MAX_ARCHIVE_SIZE};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static TURN: Mutex<()> = Mutex::new(());

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1 << 20;

/// Loads `zip` and returns the error and the peak heap the load added.
fn load(zip: &[u8]) -> (ArchiveError, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let result = Archive::from_bytes(zip);
    let peak = PEAK.load(Ordering::SeqCst) - base;
    match result {
        Ok(archive) => panic!("hostile zip accepted: {archive:?}"),
        Err(e) => (e, peak),
    }
}

#[test]
fn a_zip_bomb_is_refused_before_inflating() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let bomb = hostile::zip_bomb(256 * MIB);
    assert!(bomb.len() < MIB, "the bomb is small: {}", bomb.len());
    let (err, peak) = load(&bomb);
    assert!(matches!(err, ArchiveError::EntryTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    assert!(peak < 4 * MIB, "peak heap {peak} bytes");
}

#[test]
fn a_zip_bomb_that_lies_about_its_size_is_cut_off() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (err, peak) = load(&hostile::lying_zip_bomb(256 * MIB));
    assert!(
        matches!(
            err,
            ArchiveError::EntryTooLarge { .. } | ArchiveError::Unreadable { .. }
        ),
        "{err}"
    );
    assert!(peak < 4 * MIB, "peak heap {peak} bytes");
}

#[test]
fn traversal_names_links_folders_and_encryption_are_refused() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    for name in [
        "../dtrust.properties",
        "../../etc/cron.d/evil",
        "/etc/passwd",
        "sub\\dtrust.properties",
    ] {
        let (err, _) = load(&hostile::named(name));
        assert!(
            matches!(err, ArchiveError::UnsafeName { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("top level of the zip"), "{err}");
    }
    let (err, _) = load(&hostile::symlink());
    assert!(matches!(err, ArchiveError::Symlink { .. }), "{err}");
    let (err, _) = load(&hostile::with_folder());
    assert!(matches!(err, ArchiveError::Directory { .. }), "{err}");
    let (err, _) = load(&hostile::encrypted_flag());
    assert!(matches!(err, ArchiveError::Encrypted { .. }), "{err}");
}

#[test]
fn ten_thousand_entries_are_refused_with_bounded_memory() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let flood = hostile::many_entries(10_000);
    let (err, peak) = load(&flood);
    assert!(
        matches!(err, ArchiveError::TooManyEntries { count: 10_000 }),
        "{err}"
    );
    assert!(err.to_string().contains("at most 16"), "{err}");
    assert!(
        peak < 16 * MIB,
        "peak heap {peak} bytes for a {} byte zip",
        flood.len()
    );
}

#[test]
fn an_oversized_file_is_refused_before_it_is_read() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.zip");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(MAX_ARCHIVE_SIZE * 4).unwrap(); // sparse: costs no disk
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let err = Archive::read_file(&path).unwrap_err();
    let peak = PEAK.load(Ordering::SeqCst) - base;
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    assert!(peak < MIB, "peak heap {peak} bytes");
}
