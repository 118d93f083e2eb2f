//! The demo's batch: a mixed set of jobs (PKCS#10, PKCS#12, jobs D-Trust's rules
//! refuse, an invalid message, then a revocation of one issued certificate) published
//! to a running worker, and a table of what came back.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use crate::broker::JobBus;
use crate::pki::{csr, KeyKind};

/// Publishes the batch, waits for the results, prints them; fails when a job that
/// should succeed did not.
pub async fn batch(prefix: &str, timeout: Duration) -> ExitCode {
    let mut bus = JobBus::start(prefix).await;
    let mut jobs: Vec<(Value, &str)> = Vec::new();
    for i in 1..=4 {
        let cn = format!("www{i}.example.com");
        let (_, pem, _) = csr(&cn, KeyKind::Rsa2048);
        jobs.push((
            json!({"job_id": format!("demo-p10-{i}"), "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs10",
                   "csr_pem": pem, "subject": {"cn": cn, "c": "DE"}, "san": {"dns": [cn]}, "metadata": {"batch": "demo"}}),
            "succeeded",
        ));
    }
    for i in 1..=3 {
        jobs.push((
            json!({"job_id": format!("demo-p12-{i}"), "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12",
                   "subject": {"cn": format!("app{i}.example.com"), "c": "DE"}}),
            "succeeded",
        ));
    }
    jobs.push((
        json!({"job_id": "demo-cn-in-cn", "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12",
               "subject": {"cn": "CN=www.example.com", "c": "DE"}}),
        "failed",
    ));
    let (_, ov_csr, _) = csr("www.example.com", KeyKind::Rsa3072);
    jobs.push((
        json!({"job_id": "demo-org-id-missing", "kind": "issue", "product": "SSL-OV", "request_type": "pkcs10",
               "csr_pem": ov_csr, "subject": {"cn": "www.example.com", "o": "Example GmbH", "c": "DE"}}),
        "failed",
    ));
    jobs.push((
        json!({"job_id": "demo-unverified-mail", "kind": "issue", "product": "Personal-Sig", "request_type": "pkcs12",
               "subject": {"cn": "Erika Mustermann", "given_name": "Erika", "surname": "Mustermann", "email": "erika@unverified.test", "c": "DE"}}),
        "failed",
    ));
    jobs.push((
        json!({"job_id": "demo-invalid", "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12",
               "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "subject": {"cn": "x"}}),
        "failed",
    ));
    println!("publishing {} jobs to {}", jobs.len(), bus.names.jobs);
    for (job, _) in &jobs {
        bus.publish_job(job).await;
    }
    let results = bus.results_for(jobs.len(), timeout).await;
    let mut expected: Vec<(String, &str)> = jobs
        .iter()
        .map(|(j, e)| (j["job_id"].as_str().unwrap_or_default().to_string(), *e))
        .collect();

    // Revoke the first certificate with the password the worker generated for it.
    if let Some(first) = results.get("demo-p10-1") {
        if let (Some(serial), Some(password)) = (
            first["serial"].as_str(),
            first["revocation_password"].as_str(),
        ) {
            let revoke = json!({"job_id": "demo-revoke-1", "kind": "revoke", "serial": serial, "revocation_password": password, "reason": "superseded"});
            println!("publishing a revocation of {serial}");
            bus.publish_job(&revoke).await;
            expected.push(("demo-revoke-1".into(), "succeeded"));
        }
    }
    let results = bus.results_for(expected.len(), timeout).await;
    println!();
    println!("{:<22} {:<7} {:<10} DETAIL", "JOB", "KIND", "STATUS");
    let mut wrong = 0;
    for (id, want) in &expected {
        let Some(r) = results.get(id) else {
            println!(
                "{id:<22} {:<7} {:<10} no result within {} s",
                "",
                "MISSING",
                timeout.as_secs()
            );
            wrong += 1;
            continue;
        };
        let status = r["status"].as_str().unwrap_or("?");
        if status != *want {
            wrong += 1;
        }
        let detail = match &r["error"] {
            Value::Object(e) => format!(
                "{}: {}",
                e.get("code").and_then(Value::as_str).unwrap_or(""),
                first_sentence(e.get("hint").and_then(Value::as_str).unwrap_or(""))
            ),
            _ => match r["kind"].as_str() {
                Some("revoke") => format!(
                    "serial {} revoked at {}",
                    r["serial"].as_str().unwrap_or(""),
                    r["revoked_at"].as_str().unwrap_or("")
                ),
                _ => format!(
                    "serial {}, valid until {}{}",
                    r["serial"].as_str().unwrap_or(""),
                    r["not_after"].as_str().unwrap_or(""),
                    if r["pkcs12_base64"].is_string() {
                        ", PKCS#12 with its password"
                    } else {
                        ""
                    }
                ),
            },
        };
        println!(
            "{id:<22} {:<7} {status:<10} {detail}",
            r["kind"].as_str().unwrap_or("")
        );
    }
    println!();
    println!(
        "{} jobs, {} as expected",
        expected.len(),
        expected.len() - wrong
    );
    if wrong == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The hint's first sentence, cut at a word when it is long.
fn first_sentence(text: &str) -> String {
    let end = text.find(". ").map_or(text.len(), |i| i + 1);
    let sentence = &text[..end];
    if sentence.chars().count() <= 140 {
        return sentence.to_string();
    }
    let cut: String = sentence.chars().take(140).collect();
    let at_word = cut.rfind(' ').map_or(cut.as_str(), |i| &cut[..i]);
    format!("{at_word} ...")
}
