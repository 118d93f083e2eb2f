//! The Certificate Manager simulator (`dtrust_testkit::cm`) against the real broker,
//! driven as the worker drives a CM: `generate` and `import` published to
//! `{p}.keyarchive`, the answers read from `{p}.keyarchive.replies`.
//!
//! Each test has its own prefix, deleted at its end. RSA keys are 2048 bits except in
//! one test (3072): key generation is slow in debug builds.

use std::time::{Duration, Instant};

use dtrust_testkit::broker::{amqp_url, unique_prefix, Cleanup};
use dtrust_testkit::cm::pkix::{self, Attribute};
use dtrust_testkit::cm::{CmBehaviour, CmSim};
use dtrust_testkit::sim::{Sim, SimConfig, ISSUING_CA_DN};
use dtrust_worker::job::schema::Schemas;
use dtrust_worker::transport::lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use dtrust_worker::transport::lapin::types::{FieldTable, ShortString};
use dtrust_worker::transport::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use dtrust_worker::transport::{Names, Topology};
use futures_util::StreamExt;
use rcgen::{CertificateParams, DnType, Issuer, KeyPair, PublicKeyData, SignatureAlgorithm};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::{FromDer, X509Certificate};

const ARCHIVE: &str = "KeyArchive-Test";
const TOKEN_PROCEDURE: &str = "TP-SSL-Archived";
const TOKEN_PROCEDURE_IMPORT: &str = "TP-ImportCert";
const WAIT: Duration = Duration::from_secs(15);
const QUIET: Duration = Duration::from_millis(800);

/// A reply the worker's side received.
#[derive(Debug)]
struct Reply {
    routing_key: String,
    correlation_id: Option<String>,
    persistent: bool,
    content_type: Option<String>,
    body: Value,
}

/// The worker's side of the key-archive exchange: publishes requests, reads replies.
struct WorkerSide {
    names: Names,
    _connection: Connection,
    channel: Channel,
    replies: mpsc::UnboundedReceiver<Reply>,
}

impl WorkerSide {
    /// Connects and declares the worker's topology (delivery limit 5).
    async fn start(prefix: &str) -> WorkerSide {
        WorkerSide::connect(prefix, true).await
    }

    /// Connects to a topology declared already.
    async fn start_declared(prefix: &str) -> WorkerSide {
        WorkerSide::connect(prefix, false).await
    }

    async fn connect(prefix: &str, declare: bool) -> WorkerSide {
        let names = Names::new(prefix);
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("the test connects to the broker (is RabbitMQ running? see AMQP_URL)");
        if declare {
            Topology::new(names.clone(), 5)
                .declare(&connection)
                .await
                .expect("declare topology");
        }
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let consume = connection.create_channel().await.expect("channel");
        let mut consumer = consume
            .basic_consume(
                names.keyarchive_replies.as_str().into(),
                "test-worker-side".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume replies");
        let (tx, replies) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _channel = consume;
            while let Some(Ok(delivery)) = consumer.next().await {
                let reply = Reply {
                    routing_key: delivery.routing_key.to_string(),
                    correlation_id: delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(ShortString::to_string),
                    persistent: *delivery.properties.delivery_mode() == Some(2),
                    content_type: delivery
                        .properties
                        .content_type()
                        .as_ref()
                        .map(ShortString::to_string),
                    body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
                };
                if tx.send(reply).is_err() {
                    break;
                }
            }
        });
        WorkerSide {
            names,
            _connection: connection,
            channel,
            replies,
        }
    }

    /// Publishes `body` as the contract says: to `{p}.keyarchive`, persistent JSON,
    /// `correlation_id` = its `job_id`, mandatory, confirmed.
    async fn send(&self, key: &str, body: &Value) {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(job_id) = body.get("job_id").and_then(Value::as_str) {
            properties = properties.with_correlation_id(job_id.into());
        }
        let exchange = self.names.keyarchive.clone();
        self.send_raw(
            &exchange,
            key,
            &serde_json::to_vec(body).expect("json"),
            properties,
        )
        .await;
    }

    /// Publishes bytes with the given properties, mandatory, confirmed and routed.
    async fn send_raw(
        &self,
        exchange: &str,
        key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) {
        let confirmation = self
            .channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                payload,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirmation.is_ack(), "request not confirmed");
        assert!(
            confirmation.take_message().is_none(),
            "request not routed: {key}"
        );
    }

    async fn next_reply(&mut self) -> Reply {
        tokio::time::timeout(WAIT, self.replies.recv())
            .await
            .expect("a reply within the wait")
            .expect("the reply consumer runs")
    }

    /// Whether no reply came within `QUIET`.
    async fn quiet(&mut self) -> bool {
        tokio::time::timeout(QUIET, self.replies.recv())
            .await
            .is_err()
    }
}

/// One test's world: its prefix (deleted at the end), the worker's side, and the CM.
struct Fixture {
    worker: WorkerSide,
    cm: CmSim,
    _cleanup: Cleanup,
}

impl Fixture {
    async fn new(test: &str, behaviour: CmBehaviour) -> Fixture {
        let prefix = unique_prefix(test);
        let cleanup = Cleanup::new(&prefix);
        let worker = WorkerSide::start(&prefix).await;
        let cm = CmSim::start(&prefix, behaviour).await;
        Fixture {
            worker,
            cm,
            _cleanup: cleanup,
        }
    }

    /// See [`generate`].
    async fn generate(&mut self, job_id: &str, key_size: u32) -> Vec<u8> {
        generate(&mut self.worker, job_id, key_size).await
    }
}

/// Sends `generate` for `job_id` and returns the CSR (DER) of the `generated` reply.
async fn generate(worker: &mut WorkerSide, job_id: &str, key_size: u32) -> Vec<u8> {
    worker
        .send("generate", &generate_message(job_id, key_size))
        .await;
    let reply = worker.next_reply().await;
    assert_eq!(reply.routing_key, "generated", "{reply:?}");
    assert_eq!(reply.body["job_id"], job_id);
    csr_der(&reply.body)
}

fn generate_message(job_id: &str, key_size: u32) -> Value {
    json!({
        "job_id": job_id,
        "archive": ARCHIVE,
        "token_procedure": TOKEN_PROCEDURE,
        "subject": {
            "cn": "Erika Mustermann",
            "o": "Example GmbH",
            "ou": ["IT", "PKI Team"],
            "c": "DE",
            "l": "Berlin",
            "st": "Berlin",
            "email": "erika.mustermann@example.com",
            "serial_number": "ABC-123",
            "organization_identifier": "VATDE-123456789",
            "given_name": "Erika",
            "surname": "Mustermann"
        },
        "key_size": key_size,
        "issuer_dn": ISSUING_CA_DN
    })
}

fn import_message(job_id: &str, certificate_pem: &str, chain_pem: Option<&str>) -> Value {
    let mut message = json!({
        "job_id": job_id,
        "archive": ARCHIVE,
        "token_procedure_import": TOKEN_PROCEDURE_IMPORT,
        "order_id": format!("ORD-{job_id}"),
        "certificate_pem": certificate_pem,
    });
    if let Some(chain) = chain_pem {
        message["chain_pem"] = json!(chain);
    }
    message
}

fn csr_der(reply: &Value) -> Vec<u8> {
    let pem = reply["csr_pem"].as_str().expect("csr_pem is a string");
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("csr_pem is PEM");
    assert_eq!(block.label, "CERTIFICATE REQUEST");
    block.contents
}

/// The subjectPublicKeyInfo (DER) of a CSR.
fn csr_spki(csr_der: &[u8]) -> Vec<u8> {
    let (_, csr) = X509CertificationRequest::from_der(csr_der).expect("the CSR parses");
    csr.certification_request_info.subject_pki.raw.to_vec()
}

/// A public key known only by its SubjectPublicKeyInfo, for rcgen to certify.
struct ForeignKey {
    key_bits: Vec<u8>,
}

impl PublicKeyData for ForeignKey {
    fn der_bytes(&self) -> &[u8] {
        &self.key_bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

/// A test CA (a stand-in for D-Trust) that certifies public keys.
struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "cm_sim test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).expect("self-sign").pem();
        TestCa { params, key, pem }
    }

    /// A certificate (PEM, DER) for the RSA key of `spki_der`.
    fn certify_spki(&self, spki_der: &[u8]) -> (String, Vec<u8>) {
        let (_, spki) =
            x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).expect("SPKI parses");
        let key = ForeignKey {
            key_bits: spki.subject_public_key.data.to_vec(),
        };
        self.certify(&key)
    }

    fn certify(&self, key: &impl PublicKeyData) -> (String, Vec<u8>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "Erika Mustermann");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(key, &issuer).expect("sign");
        (cert.pem(), cert.der().to_vec())
    }
}

fn cert_spki(cert_der: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(cert_der).expect("certificate parses");
    cert.public_key().raw.to_vec()
}

fn values(attributes: Vec<&x509_parser::x509::AttributeTypeAndValue<'_>>) -> Vec<String> {
    attributes
        .into_iter()
        .map(|a| a.as_str().expect("string value").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_answers_with_a_csr_over_a_new_archived_key() {
    let mut f = Fixture::new("cm-generate", CmBehaviour::Normal).await;
    f.worker
        .send("generate", &generate_message("job-1", 2048))
        .await;
    let reply = f.worker.next_reply().await;

    // the reply is the contract's `generated`
    assert_eq!(reply.routing_key, "generated");
    assert_eq!(reply.correlation_id.as_deref(), Some("job-1"));
    assert!(reply.persistent);
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    let schemas = Schemas::load().expect("schemas");
    assert_eq!(schemas.check("keyarchive-generated", &reply.body), Ok(()));
    assert_eq!(reply.body["job_id"], "job-1");

    // the CSR parses, is signed by its key, and has the key size and subject asked for
    let der = csr_der(&reply.body);
    let (rest, csr) = X509CertificationRequest::from_der(&der).expect("the CSR parses");
    assert!(rest.is_empty());
    csr.verify_signature()
        .expect("the CSR's signature verifies");
    let info = &csr.certification_request_info;
    let key = info.subject_pki.parsed().expect("public key");
    assert_eq!(key.key_size(), 2048);
    let subject = &info.subject;
    assert_eq!(
        values(subject.iter_common_name().collect()),
        ["Erika Mustermann"]
    );
    assert_eq!(
        values(subject.iter_organization().collect()),
        ["Example GmbH"]
    );
    assert_eq!(
        values(subject.iter_organizational_unit().collect()),
        ["IT", "PKI Team"]
    );
    assert_eq!(values(subject.iter_country().collect()), ["DE"]);
    let org_id = x509_parser::der_parser::oid!(2.5.4 .97);
    assert_eq!(
        values(subject.iter_by_oid(&org_id).collect()),
        ["VATDE-123456789"]
    );

    // the archive holds the key and a dummy certificate over it with the asked issuer
    let archived = f.cm.archived("job-1").expect("archived");
    assert_eq!(archived.key_public_spki_der, info.subject_pki.raw);
    assert_eq!(archived.archive, ARCHIVE);
    assert_eq!(archived.token_procedure, TOKEN_PROCEDURE);
    assert_eq!(archived.key_size, 2048);
    assert_eq!(archived.issuer_dn, ISSUING_CA_DN);
    assert_eq!(archived.imported_cert_der, None);
    assert_eq!(archived.token_procedure_import, None);
    let (_, dummy) = X509Certificate::from_der(&archived.dummy_cert_der).expect("dummy parses");
    assert_eq!(dummy.public_key().raw, info.subject_pki.raw);
    assert_eq!(
        dummy.issuer().as_raw(),
        pkix::dn_der(ISSUING_CA_DN).expect("DN")
    );
    let issuer: Vec<String> = dummy
        .issuer()
        .iter_attributes()
        .map(|a| a.as_str().expect("string").to_string())
        .collect();
    assert_eq!(
        issuer,
        [
            "DE",
            "dtrust-worker test kit",
            "D-TRUST Sim Issuing CA 1 2026"
        ]
    );
    assert_eq!(
        values(dummy.subject().iter_organizational_unit().collect()),
        ["IT", "PKI Team"]
    );

    assert_eq!(f.cm.keys_generated("job-1"), 1);
    assert_eq!(f.cm.imports("job-1"), 0);
    assert_eq!(
        f.cm.requests(),
        [("generate".to_string(), "job-1".to_string())]
    );
    assert_eq!(f.cm.replies().len(), 1);
    assert!(f.cm.errors().is_empty(), "{:?}", f.cm.errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_makes_a_3072_bit_key() {
    let mut f = Fixture::new("cm-3072", CmBehaviour::Normal).await;
    let der = f.generate("job-3072", 3072).await;
    let (_, csr) = X509CertificationRequest::from_der(&der).expect("the CSR parses");
    csr.verify_signature().expect("signature");
    let key = csr
        .certification_request_info
        .subject_pki
        .parsed()
        .expect("key");
    assert_eq!(key.key_size(), 3072);
    assert_eq!(f.cm.archived("job-3072").expect("archived").key_size, 3072);
    assert!(f.cm.errors().is_empty(), "{:?}", f.cm.errors());
}

/// The dummy certificate's issuer is byte for byte the subject of the D-Trust
/// simulator's issuing CA, whose DN every product gives as `issuer_dn`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dummy_issuer_is_the_dtrust_simulators_issuer_byte_for_byte() {
    let pki = dtrust_testkit::bundle::BundleBuilder::new("https://placeholder/");
    let sim = Sim::start(SimConfig::default_catalogue(), &pki).await;
    let mut f = Fixture::new("cm-issuer", CmBehaviour::Normal).await;
    let mut message = generate_message("job-issuer", 2048);
    message["issuer_dn"] = json!(sim.issuer_dn());
    f.worker.send("generate", &message).await;
    let reply = f.worker.next_reply().await;
    assert_eq!(reply.routing_key, "generated");
    let ca_der = sim.issuing_ca_der();
    let (_, ca) = X509Certificate::from_der(&ca_der).expect("CA parses");
    let archived = f.cm.archived("job-issuer").expect("archived");
    let (_, dummy) = X509Certificate::from_der(&archived.dummy_cert_der).expect("dummy");
    assert_eq!(dummy.issuer().as_raw(), ca.subject().as_raw());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_of_a_certificate_over_the_archived_key_replaces_the_dummy() {
    let mut f = Fixture::new("cm-import", CmBehaviour::Normal).await;
    let csr = f.generate("job-imp", 2048).await;
    let ca = TestCa::new();
    let (cert_pem, cert_der) = ca.certify_spki(&csr_spki(&csr));
    f.worker
        .send(
            "import",
            &import_message("job-imp", &cert_pem, Some(&ca.pem)),
        )
        .await;
    let reply = f.worker.next_reply().await;
    assert_eq!(reply.routing_key, "imported");
    assert_eq!(reply.correlation_id.as_deref(), Some("job-imp"));
    assert!(reply.persistent);
    assert_eq!(reply.body, json!({ "job_id": "job-imp" }));
    let schemas = Schemas::load().expect("schemas");
    assert_eq!(schemas.check("keyarchive-imported", &reply.body), Ok(()));

    let archived = f.cm.archived("job-imp").expect("archived");
    assert_eq!(
        archived.imported_cert_der.as_deref(),
        Some(cert_der.as_slice())
    );
    assert_eq!(
        archived.token_procedure_import.as_deref(),
        Some(TOKEN_PROCEDURE_IMPORT)
    );
    assert_eq!(archived.order_id.as_deref(), Some("ORD-job-imp"));
    assert_eq!(archived.chain_pem.as_deref(), Some(ca.pem.as_str()));
    assert_eq!(cert_spki(&cert_der), archived.key_public_spki_der);
    assert_eq!(f.cm.keys_generated("job-imp"), 1);
    assert_eq!(f.cm.imports("job-imp"), 1);
    assert_eq!(
        f.cm.requests(),
        [
            ("generate".to_string(), "job-imp".to_string()),
            ("import".to_string(), "job-imp".to_string())
        ]
    );
    assert!(f.cm.errors().is_empty(), "{:?}", f.cm.errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_of_a_certificate_over_another_key_is_refused_with_key_mismatch() {
    let mut f = Fixture::new("cm-mismatch", CmBehaviour::Normal).await;
    f.generate("job-mm", 2048).await;
    let ca = TestCa::new();
    let other = KeyPair::generate().expect("other key");
    let (cert_pem, _) = ca.certify(&other);
    f.worker
        .send("import", &import_message("job-mm", &cert_pem, None))
        .await;
    let reply = f.worker.next_reply().await;
    assert_eq!(reply.routing_key, "imported");
    assert_eq!(reply.body["job_id"], "job-mm");
    assert_eq!(reply.body["error"]["code"], "KEY_MISMATCH");
    assert!(reply.body["error"]["message"].is_string());
    let schemas = Schemas::load().expect("schemas");
    assert_eq!(schemas.check("keyarchive-imported", &reply.body), Ok(()));
    let archived = f.cm.archived("job-mm").expect("archived");
    assert_eq!(archived.imported_cert_der, None);
    assert_eq!(f.cm.imports("job-mm"), 1);
    // an answered CM error is not a contract violation
    assert!(f.cm.errors().is_empty(), "{:?}", f.cm.errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_for_an_unknown_job_or_another_archive_is_refused() {
    let mut f = Fixture::new("cm-unknown", CmBehaviour::Normal).await;
    let ca = TestCa::new();
    let other = KeyPair::generate().expect("key");
    let (cert_pem, _) = ca.certify(&other);
    f.worker
        .send(
            "import",
            &import_message("never-generated", &cert_pem, None),
        )
        .await;
    let reply = f.worker.next_reply().await;
    assert_eq!(reply.body["job_id"], "never-generated");
    assert_eq!(reply.body["error"]["code"], "UNKNOWN_JOB");

    let csr = f.generate("job-arch", 2048).await;
    let (cert_pem, _) = ca.certify_spki(&csr_spki(&csr));
    let mut message = import_message("job-arch", &cert_pem, None);
    message["archive"] = json!("Another-Archive");
    f.worker.send("import", &message).await;
    let reply = f.worker.next_reply().await;
    assert_eq!(reply.body["error"]["code"], "ARCHIVE_MISMATCH");
    assert_eq!(
        f.cm.archived("job-arch")
            .expect("archived")
            .imported_cert_der,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_import_answers_with_the_configured_error() {
    let mut f = Fixture::new("cm-failimport", CmBehaviour::Normal).await;
    let csr = f.generate("job-fail", 2048).await;
    f.cm.set_behaviour(CmBehaviour::fail_import(
        "ARCHIVE_FULL",
        "the key archive is full",
    ));
    assert_eq!(
        f.cm.behaviour(),
        CmBehaviour::fail_import("ARCHIVE_FULL", "the key archive is full")
    );
    let ca = TestCa::new();
    let (cert_pem, _) = ca.certify_spki(&csr_spki(&csr));
    f.worker
        .send("import", &import_message("job-fail", &cert_pem, None))
        .await;
    let reply = f.worker.next_reply().await;
    assert_eq!(
        reply.body,
        json!({
            "job_id": "job-fail",
            "error": { "code": "ARCHIVE_FULL", "message": "the key archive is full" }
        })
    );
    assert_eq!(
        f.cm.archived("job-fail")
            .expect("archived")
            .imported_cert_der,
        None
    );
    assert_eq!(f.cm.imports("job-fail"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_generate_archives_acks_and_never_answers() {
    let prefix = unique_prefix("cm-silentgen");
    let _cleanup = Cleanup::new(&prefix);
    let mut worker = WorkerSide::start(&prefix).await;
    let cm = CmSim::start(&prefix, CmBehaviour::SilentGenerate).await;
    worker
        .send("generate", &generate_message("job-sg", 2048))
        .await;
    assert!(
        cm.wait_until(WAIT, |s| s.keys_generated("job-sg") == 1)
            .await
    );
    assert!(worker.quiet().await, "SilentGenerate answered");
    assert!(cm.archived("job-sg").is_some());

    // the request was acked: a CM started after this one gets nothing to redo
    let state = cm.state();
    cm.shutdown().await;
    let cm = CmSim::start_with_state(&prefix, CmBehaviour::Normal, state).await;
    assert!(worker.quiet().await, "the request came again");
    assert_eq!(cm.requests().len(), 1);
    assert_eq!(cm.keys_generated("job-sg"), 1);
    assert!(cm.errors().is_empty(), "{:?}", cm.errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_import_imports_and_never_answers() {
    let mut f = Fixture::new("cm-silentimp", CmBehaviour::SilentImport).await;
    let csr = f.generate("job-si", 2048).await;
    let ca = TestCa::new();
    let (cert_pem, cert_der) = ca.certify_spki(&csr_spki(&csr));
    f.worker
        .send("import", &import_message("job-si", &cert_pem, None))
        .await;
    assert!(f.cm.wait_until(WAIT, |s| s.imports("job-si") == 1).await);
    assert!(f.worker.quiet().await, "SilentImport answered");
    assert_eq!(
        f.cm.archived("job-si").expect("archived").imported_cert_der,
        Some(cert_der)
    );
    assert_eq!(f.cm.replies().len(), 1, "only `generated`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_generate_for_the_same_job_makes_a_second_key_pair() {
    let mut f = Fixture::new("cm-twice", CmBehaviour::Normal).await;
    let first = csr_spki(&f.generate("job-twice", 2048).await);
    let second = csr_spki(&f.generate("job-twice", 2048).await);
    assert_ne!(first, second, "a new key pair each time");
    assert_eq!(f.cm.keys_generated("job-twice"), 2);
    assert_eq!(
        f.cm.archived("job-twice")
            .expect("archived")
            .key_public_spki_der,
        second
    );

    // a certificate over the first (superseded) key no longer matches
    let ca = TestCa::new();
    let (cert_pem, _) = ca.certify_spki(&first);
    f.worker
        .send("import", &import_message("job-twice", &cert_pem, None))
        .await;
    let reply = f.worker.next_reply().await;
    assert_eq!(reply.body["error"]["code"], "KEY_MISMATCH");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_are_recorded_acked_and_not_answered() {
    let mut f = Fixture::new("cm-invalid", CmBehaviour::Normal).await;
    let json_properties = || {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
    };
    let exchange = f.worker.names.keyarchive.clone();
    // not JSON
    f.worker
        .send_raw(&exchange, "generate", b"{not json", json_properties())
        .await;
    // a required field missing
    let mut no_issuer = generate_message("job-no-issuer", 2048);
    no_issuer
        .as_object_mut()
        .expect("object")
        .remove("issuer_dn");
    f.worker.send("generate", &no_issuer).await;
    // a key size out of the schema's bounds
    f.worker
        .send("generate", &generate_message("job-tiny-key", 512))
        .await;
    // an import whose certificate is not PEM
    f.worker
        .send(
            "import",
            &import_message("job-bad-pem", &"x".repeat(100), None),
        )
        .await;
    // schema-valid, but a CM error `generated` cannot express: stays silent
    f.worker
        .send("generate", &generate_message("job-1024", 1024))
        .await;
    let mut bad_dn = generate_message("job-bad-dn", 2048);
    bad_dn["issuer_dn"] = json!("CN=x,FOO=bar");
    f.worker.send("generate", &bad_dn).await;
    // a routing key that is not the contract's, straight into the queue
    let queue = f.worker.names.keyarchive_requests.clone();
    let body = serde_json::to_vec(&generate_message("job-wrong-key", 2048)).expect("json");
    f.worker
        .send_raw(
            "",
            &queue,
            &body,
            json_properties().with_correlation_id("job-wrong-key".into()),
        )
        .await;

    assert!(
        f.cm.wait_until(WAIT, |s| s.errors().len() >= 7).await,
        "{:?}",
        f.cm.errors()
    );
    assert!(f.worker.quiet().await, "an invalid message was answered");
    let errors = f.cm.errors();
    assert_eq!(errors.len(), 7, "{errors:#?}");
    let about = |job: Option<&str>, needle: &str| {
        errors
            .iter()
            .any(|e| e.job_id.as_deref() == job && e.message.contains(needle))
    };
    assert!(about(None, "not JSON"), "{errors:#?}");
    assert!(
        about(Some("job-no-issuer"), "schema-invalid"),
        "{errors:#?}"
    );
    assert!(about(Some("job-tiny-key"), "schema-invalid"), "{errors:#?}");
    assert!(about(Some("job-bad-pem"), "schema-invalid"), "{errors:#?}");
    assert!(
        about(Some("job-1024"), "unsupported key_size 1024"),
        "{errors:#?}"
    );
    assert!(
        about(Some("job-bad-dn"), "unknown attribute type `FOO`"),
        "{errors:#?}"
    );
    assert!(
        about(Some("job-wrong-key"), "unknown routing key"),
        "{errors:#?}"
    );
    assert_eq!(f.cm.requests().len(), 7);
    assert_eq!(f.cm.keys_generated("job-1024"), 0);
    assert_eq!(f.cm.imports("job-bad-pem"), 0);
    assert!(f.cm.replies().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_off_the_contract_are_recorded_but_answered() {
    let mut f = Fixture::new("cm-props", CmBehaviour::Normal).await;
    let exchange = f.worker.names.keyarchive.clone();
    let body = serde_json::to_vec(&generate_message("job-props", 2048)).expect("json");
    // transient, no content type, correlation_id not the job_id
    let properties = BasicProperties::default().with_correlation_id("something-else".into());
    f.worker
        .send_raw(&exchange, "generate", &body, properties)
        .await;
    let reply = f.worker.next_reply().await;
    assert_eq!(reply.routing_key, "generated");
    let errors = f.cm.errors();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors.iter().any(|e| e.message.contains("not persistent")));
    assert!(errors.iter().any(|e| e.message.contains("content type")));
    assert!(errors.iter().any(|e| e.message.contains("correlation_id")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_behaviour_waits_before_replying() {
    let mut f = Fixture::new("cm-delay", CmBehaviour::Normal.delayed(700)).await;
    let started = Instant::now();
    f.generate("job-delay", 2048).await;
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(f.cm.behaviour().delay(), Duration::from_millis(700));
    assert_eq!(*f.cm.behaviour().base(), CmBehaviour::Normal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_replies_sends_every_reply_twice() {
    let mut f = Fixture::new("cm-dup", CmBehaviour::DuplicateReplies).await;
    let csr = f.generate("job-dup", 2048).await;
    let again = f.worker.next_reply().await;
    assert_eq!(again.routing_key, "generated");
    assert_eq!(csr_der(&again.body), csr);
    assert_eq!(f.cm.keys_generated("job-dup"), 1, "one key, two replies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_consuming_and_a_restarted_cm_keeps_its_archive() {
    let prefix = unique_prefix("cm-restart");
    let _cleanup = Cleanup::new(&prefix);
    let mut worker = WorkerSide::start(&prefix).await;
    let cm = CmSim::start(&prefix, CmBehaviour::Normal).await;
    let csr = generate(&mut worker, "job-rs", 2048).await;
    let state = cm.state();
    cm.shutdown().await;

    let ca = TestCa::new();
    let (cert_pem, cert_der) = ca.certify_spki(&csr_spki(&csr));
    worker
        .send("import", &import_message("job-rs", &cert_pem, None))
        .await;
    assert!(worker.quiet().await, "a stopped CM answered");

    // the request waited in the queue; the restarted CM finds the key in its archive
    let cm = CmSim::start_with_state(&prefix, CmBehaviour::Normal, state).await;
    let reply = worker.next_reply().await;
    assert_eq!(reply.body, json!({ "job_id": "job-rs" }));
    assert_eq!(
        cm.archived("job-rs").expect("archived").imported_cert_der,
        Some(cert_der)
    );
    assert_eq!(cm.keys_generated("job-rs"), 1);
    assert_eq!(cm.imports("job-rs"), 1);
}

/// A worker with another delivery limit declared its job queues first: the CM still
/// starts (it only needs its own queue) and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_beside_a_worker_with_another_delivery_limit() {
    let prefix = unique_prefix("cm-limit");
    let _cleanup = Cleanup::new(&prefix);
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    Topology::new(Names::new(&prefix), 3)
        .declare(&connection)
        .await
        .expect("the worker's topology");
    let mut worker = WorkerSide::start_declared(&prefix).await;
    let cm = CmSim::start(&prefix, CmBehaviour::Normal).await;
    generate(&mut worker, "job-limit", 2048).await;
    assert_eq!(cm.keys_generated("job-limit"), 1);
    assert!(cm.errors().is_empty(), "{:?}", cm.errors());
}

#[test]
fn dn_strings_parse_as_rfc_4514() {
    let attr = |oid: &[u64], value: &str| Attribute {
        oid: oid.to_vec(),
        value: value.to_string(),
    };
    // most specific first in the string, most general first in the result
    assert_eq!(
        pkix::parse_dn(ISSUING_CA_DN).expect("DN"),
        vec![
            vec![attr(&[2, 5, 4, 6], "DE")],
            vec![attr(&[2, 5, 4, 10], "dtrust-worker test kit")],
            vec![attr(&[2, 5, 4, 3], "D-TRUST Sim Issuing CA 1 2026")],
        ]
    );
    // escapes, hex escapes of UTF-8, quotes, spaces around separators, any case, OIDs,
    // repeated types and multi-valued RDNs
    assert_eq!(
        pkix::parse_dn(
            r#"cn=Doe\, John + 2.5.4.5=42 ; OU = A\2bB ,OU="x, y",O=M\C3\BCller,OID.2.5.4.97=VATDE-1"#
        )
        .expect("DN"),
        vec![
            vec![attr(&[2, 5, 4, 97], "VATDE-1")],
            vec![attr(&[2, 5, 4, 10], "Müller")],
            vec![attr(&[2, 5, 4, 11], "x, y")],
            vec![attr(&[2, 5, 4, 11], "A+B")],
            vec![attr(&[2, 5, 4, 3], "Doe, John"), attr(&[2, 5, 4, 5], "42")],
        ]
    );
    // a repeated type stays repeated in the DER, a multi-valued RDN is one SET
    let der = pkix::dn_der("CN=a+SERIALNUMBER=1,OU=x,OU=y,DC=example,DC=com").expect("DER");
    let (rest, name) = x509_parser::x509::X509Name::from_der(&der).expect("parses");
    assert!(rest.is_empty());
    assert_eq!(name.iter().count(), 5);
    assert_eq!(name.iter_organizational_unit().count(), 2);
    for bad in [
        "",
        "CN",
        "CN=",
        "CN=a,",
        "FOO=bar",
        "CN=#0403616263",
        "CN=\"open",
        "CN=a\\",
        "CN=a\\q",
        "CN=a\"b",
        "3.1=x",
        "1.40=x",
        "CN=\\ff",
    ] {
        assert!(pkix::parse_dn(bad).is_err(), "{bad:?} was accepted");
    }
}
