//! The fuzz targets' checks (`worker/fuzz/fuzz_targets/checks.rs`) on their corpus and
//! on a few thousand deterministic mutations of it, so every `make test` runs a small
//! fuzz round; `make fuzz` runs the real, coverage-guided one.

#[path = "../worker/fuzz/fuzz_targets/checks.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use dtrust_testkit::bundle::BundleBuilder;
use dtrust_testkit::rng::Rng;

const MUTATIONS_PER_SEED: usize = 300;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = dtrust_testkit::process::workspace_root()
        .join("worker/fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("dir entry").path();
            (
                path.display().to_string(),
                std::fs::read(&path).expect("read seed"),
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 3, "the {target} corpus is nearly empty");
    files
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.index(4) {
        match rng.index(5) {
            0 if !data.is_empty() => {
                let i = rng.index(data.len());
                data[i] ^= 1 << rng.index(8);
            }
            1 if !data.is_empty() => {
                let i = rng.index(data.len());
                data[i] = rng.next_u64() as u8;
            }
            2 => data.truncate(rng.index(data.len() + 1)),
            3 if !data.is_empty() => {
                let at = rng.index(data.len());
                let len = rng.index(64).min(data.len() - at);
                let chunk = data[at..at + len].to_vec();
                let to = rng.index(data.len());
                data.splice(to..to, chunk);
            }
            _ => data.extend(b"\\u00e9=\\\n\r#!:\xff\x00"),
        }
    }
    data
}

/// Runs `check` on `input`; a panic keeps the input under target/fuzz-failures/.
fn run(name: &str, input: &[u8], check: fn(&[u8])) {
    if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
        let dir: PathBuf = dtrust_testkit::process::workspace_root().join("target/fuzz-failures");
        std::fs::create_dir_all(&dir).expect("create failure folder");
        let file = dir.join(Path::new(name).file_name().unwrap_or_default());
        std::fs::write(&file, input).expect("keep failing input");
        panic!("input {name} panicked; kept at {}", file.display());
    }
}

fn fuzz_round(target: &str, check: fn(&[u8]), extra: Vec<(String, Vec<u8>)>) -> usize {
    let mut rng = Rng(0x5eed_d7a5_7000_0001);
    let mut runs = 0;
    for (name, seed) in corpus(target).into_iter().chain(extra) {
        run(&name, &seed, check);
        for i in 0..MUTATIONS_PER_SEED {
            run(&format!("{name}.mut{i}"), &mutate(&seed, &mut rng), check);
            runs += 1;
        }
    }
    runs
}

#[test]
fn bundle_target_survives_its_corpus_and_mutations() {
    let fresh = BundleBuilder::new("https://dtrust.test/").build();
    let runs = fuzz_round(
        "bundle",
        checks::bundle,
        vec![("fresh-valid.zip".into(), fresh)],
    );
    assert!(runs >= 8 * MUTATIONS_PER_SEED, "{runs}");
}

#[test]
fn properties_target_survives_its_corpus_and_mutations() {
    let runs = fuzz_round("properties", checks::properties, Vec::new());
    assert!(runs >= 3 * MUTATIONS_PER_SEED, "{runs}");
}

#[test]
fn the_committed_valid_seed_is_a_real_bundle() {
    // Guards the corpus: if the seed stopped being a bundle, fuzzing would not reach
    // the keystore and certificate code. Expiry with time is expected and allowed.
    let seed = std::fs::read(
        dtrust_testkit::process::workspace_root().join("worker/fuzz/corpus/bundle/valid.zip"),
    )
    .unwrap();
    let env = std::collections::BTreeMap::<String, String>::new();
    match dtrust_worker::bundle::Bundle::from_zip_bytes(
        &seed,
        &env,
        time::OffsetDateTime::now_utc(),
    ) {
        Ok(bundle) => assert_eq!(bundle.settings.certificate_templates.len(), 3),
        Err(report) => assert!(
            report
                .problems
                .iter()
                .all(|p| p.to_string().contains("expired on")),
            "{report}"
        ),
    }
}

#[test]
fn job_target_survives_its_corpus_and_mutations() {
    let runs = fuzz_round("job", checks::job, Vec::new());
    assert!(runs >= 4 * MUTATIONS_PER_SEED, "{runs}");
}
