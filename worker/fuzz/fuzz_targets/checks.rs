//! What every fuzz input must satisfy. Shared by the fuzz targets and by the test
//! `tests/fuzz_corpus.rs`, which runs these checks on the corpus in every `make test`.

use std::collections::BTreeMap;

use dtrust_worker::bundle::properties::{decode, rewrite, Properties};
use dtrust_worker::bundle::Bundle;
use dtrust_worker::job::schema::Schemas;

/// Any bytes as a bundle zip: a bundle or a report of problems, never a panic.
pub fn bundle(data: &[u8]) {
    let env: BTreeMap<String, String> = BTreeMap::new();
    if let Err(report) = Bundle::from_zip_bytes(data, &env, time::OffsetDateTime::now_utc()) {
        assert!(
            !report.problems.is_empty(),
            "a failed load names its problems"
        );
    }
}

/// Any bytes as `dtrust.properties`: parsed, or an error with a line number; what
/// parses can be migrated, and the result parses with the new `url`.
pub fn properties(data: &[u8]) {
    let text = decode(data);
    match Properties::parse(&text) {
        Ok(_) => {
            let rewritten = rewrite(
                &text,
                &["namespaceURI", "localPart"],
                Some(("url", "https://x.test/")),
            )
            .expect("a text that parses can be rewritten");
            let props = Properties::parse(&rewritten).expect("a rewritten text parses");
            assert_eq!(props.get("url"), Some("https://x.test/"));
            assert_eq!(props.get("namespaceURI"), None);
        }
        Err(e) => assert!(e.line >= 1, "errors carry a line number"),
    }
}

/// Any bytes as a job message: a job, or an invalid message with a reason (and a job
/// id of at most 128 characters when it has one), never a panic.
pub fn job(data: &[u8]) {
    thread_local! {
        static SCHEMAS: Schemas = Schemas::load().expect("embedded schemas");
    }
    SCHEMAS.with(|schemas| match schemas.parse_job(data) {
        Ok(job) => assert!(!job.job_id().is_empty()),
        Err(invalid) => {
            assert!(!invalid.reason.is_empty());
            if let Some(id) = &invalid.job_id {
                assert!(id.len() <= 128);
            }
        }
    });
}
