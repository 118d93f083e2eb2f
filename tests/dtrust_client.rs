//! The worker's D-Trust client against the simulator, over real mutual TLS: every
//! endpoint, every error code with its hint, trust anchor and pinned leaf, foreign
//! certificates on either side, an HTTP CONNECT proxy with and without authentication,
//! and transport failures sorted into not sent and unknown outcome.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use dtrust_testkit::bundle::{BundleBuilder, CER_NAME};
use dtrust_testkit::pki::{self, csr, Ca, KeyKind, P12Encryption};
use dtrust_testkit::proxy::ConnectProxy;
use dtrust_testkit::sim::{fingerprint, Endpoint, Faults, Sim, SimConfig};
use dtrust_worker::bundle::Bundle;
use dtrust_worker::dtrust::wire::{
    OrderRequest, OrderStatus, Reason, RequestType, RevokeRequest, San, Subject,
};
use dtrust_worker::dtrust::{Client, DTrustError, ErrorCode, Outcome};
use dtrust_worker::secret::Secret;

const PASSWORD: &str = "Rv-client-test-0001";

/// A simulator and a bundle pointing at it; `adjust` changes the bundle.
async fn setup(
    config: SimConfig,
    adjust: impl FnOnce(BundleBuilder, &Sim) -> BundleBuilder,
) -> (Sim, Client, BundleBuilder) {
    let pki = BundleBuilder::new("https://placeholder/");
    let sim = Sim::start(config, &pki).await;
    let builder = adjust(pki.set("url", &sim.url()), &sim);
    let client = client_for(&builder);
    (sim, client, builder)
}

fn bundle(builder: &BundleBuilder) -> Bundle {
    Bundle::from_zip_bytes(
        &builder.build(),
        &BTreeMap::new(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap_or_else(|r| panic!("{r}"))
}

fn client_for(builder: &BundleBuilder) -> Client {
    Client::new(&bundle(builder)).expect("client")
}

fn pkcs10_order(reference: &str) -> OrderRequest {
    let (der, _, _) = csr("www.example.com", KeyKind::Rsa2048);
    OrderRequest {
        product: "SSL-Basic".into(),
        request_type: RequestType::Pkcs10,
        pkcs10: Some(base64::engine::general_purpose::STANDARD.encode(der)),
        subject: Subject {
            cn: Some("www.example.com".into()),
            c: Some("DE".into()),
            ..Subject::default()
        },
        san: San {
            dns: vec!["www.example.com".into()],
            ..San::default()
        },
        revocation_password: Some(Secret::new(PASSWORD)),
        client_reference: reference.into(),
    }
}

fn rejected(result: Result<impl std::fmt::Debug, DTrustError>) -> DTrustError {
    match result {
        Err(e @ DTrustError::Rejected { .. }) => {
            assert_eq!(e.outcome(), Outcome::Rejected);
            e
        }
        other => panic!("expected a D-Trust error answer, got {other:?}"),
    }
}

fn code(e: &DTrustError) -> ErrorCode {
    match e {
        DTrustError::Rejected { code, .. } => code.clone(),
        other => panic!("no code in {other:?}"),
    }
}

#[tokio::test]
async fn every_endpoint_works() {
    let (sim, client, _) = setup(SimConfig::default_catalogue(), |b, _| b).await;
    assert_eq!(client.ping().await.unwrap().account, sim.account());

    let products = client.products().await.unwrap();
    let ids: Vec<&str> = products.iter().map(|p| p.id.as_str()).collect();
    assert!(
        ids.contains(&"SSL-Basic") && ids.contains(&"SSL-OV") && ids.contains(&"Personal-Sig"),
        "{ids:?}"
    );
    assert!(products
        .iter()
        .all(|p| p.issuer_dn.as_deref() == Some(sim.issuer_dn())));

    let order = client
        .create_order(&pkcs10_order("ref-endpoints"))
        .await
        .unwrap();
    assert_eq!(order.status, OrderStatus::Issued);
    let serial = order.serial.clone().expect("serial");
    let (again, _) = client.order(&order.order_id).await.unwrap();
    assert_eq!(again.certificate, order.certificate);
    let found = client.orders_by_reference("ref-endpoints").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].order_id, order.order_id);
    assert!(client
        .orders_by_reference("ref-none")
        .await
        .unwrap()
        .is_empty());

    let mut pkcs12 = pkcs10_order("ref-p12");
    pkcs12.request_type = RequestType::Pkcs12;
    pkcs12.pkcs10 = None;
    let order12 = client.create_order(&pkcs12).await.unwrap();
    assert!(order12.pkcs12.is_some() && order12.pkcs12_password.is_some());

    let revoked = client
        .revoke(
            &serial,
            &RevokeRequest {
                revocation_password: Secret::new(PASSWORD),
                reason: Reason::Superseded,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        revoked.serial.to_ascii_lowercase(),
        serial.to_ascii_lowercase()
    );
    assert!(!revoked.revoked_at.is_empty());
}

#[tokio::test]
async fn pending_orders_carry_retry_after_until_issued() {
    let (_sim, client, _) = setup(SimConfig::default_catalogue(), |b, _| b).await;
    let mut request = pkcs10_order("ref-ev");
    request.product = "SSL-EV".into();
    request.subject.o = Some("Example GmbH".into());
    request.subject.serial_number = Some("HRB 12345".into());
    let order = client.create_order(&request).await.unwrap();
    assert_eq!(order.status, OrderStatus::Pending);
    let (pending, retry_after) = client.order(&order.order_id).await.unwrap();
    if pending.status == OrderStatus::Pending {
        assert!(retry_after.is_some());
    }
}

#[tokio::test]
async fn every_error_code_arrives_with_its_hint() {
    let (sim, client, builder) = setup(SimConfig::default_catalogue(), |b, _| b).await;

    let mut o = pkcs10_order("ref-e1");
    o.subject.cn = Some("CN=www.example.com".into());
    let e = rejected(client.create_order(&o).await);
    assert_eq!(code(&e), ErrorCode::GenericRdnRegexError);
    assert!(e.hint().contains("'CN=' inside the CN") && !e.retryable());

    let mut o = pkcs10_order("ref-e2");
    o.san.email = vec!["someone@unverified.test".into()];
    let e = rejected(client.create_order(&o).await);
    assert_eq!(code(&e), ErrorCode::EmailDomainDoesNotFit);
    assert!(e.hint().contains("not (fully) verified"));

    let mut o = pkcs10_order("ref-e3");
    o.revocation_password = Some(Secret::new("short"));
    let e = rejected(client.create_order(&o).await);
    assert_eq!(code(&e), ErrorCode::GenericPasswordRegexError);
    assert!(e.hint().contains("Generate Random Password"));
    assert!(!e.to_string().contains("short\""));

    let mut o = pkcs10_order("ref-e4");
    o.pkcs10 = None;
    let e = rejected(client.create_order(&o).await);
    assert_eq!(code(&e), ErrorCode::InvalidRequestType);
    assert!(e.hint().contains("PKCS#10"));

    let mut o = pkcs10_order("ref-e5");
    o.pkcs10 = Some("bm90IGEgY3Ny".into());
    let e = rejected(client.create_order(&o).await);
    assert_eq!(code(&e), ErrorCode::InvalidCsr);

    let mut o = pkcs10_order("ref-e6");
    o.product = "Code-Signing".into();
    let e = rejected(client.create_order(&o).await);
    assert_eq!(code(&e), ErrorCode::ProductNotAllowed);

    let e = rejected(client.order("no-such-order").await);
    assert_eq!(code(&e), ErrorCode::NotFound);

    let order = client.create_order(&pkcs10_order("ref-e7")).await.unwrap();
    let serial = order.serial.unwrap();
    let wrong = RevokeRequest {
        revocation_password: Secret::new("Wrong-password-123"),
        reason: Reason::Unspecified,
    };
    let e = rejected(client.revoke(&serial, &wrong).await);
    assert_eq!(code(&e), ErrorCode::RevocationPasswordWrong);
    let right = RevokeRequest {
        revocation_password: Secret::new(PASSWORD),
        reason: Reason::Unspecified,
    };
    client.revoke(&serial, &right).await.unwrap();
    let e = rejected(client.revoke(&serial, &right).await);
    assert_eq!(code(&e), ErrorCode::AlreadyRevoked);
    assert!(!e.retryable());

    sim.set_faults(Faults {
        rate_limit_rate: 1.0,
        retry_after_secs: 7,
        endpoints: vec![Endpoint::Ping],
        ..Faults::default()
    });
    let e = rejected(client.ping().await);
    assert_eq!(code(&e), ErrorCode::RateLimited);
    assert!(e.retryable());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));

    for (status, expected) in [
        (500, ErrorCode::InternalError),
        (503, ErrorCode::Unavailable),
    ] {
        sim.set_faults(Faults {
            error_rate: 1.0,
            error_statuses: vec![status],
            endpoints: vec![Endpoint::Ping],
            ..Faults::default()
        });
        let e = rejected(client.ping().await);
        assert_eq!(code(&e), expected, "HTTP {status}");
        assert!(e.retryable());
    }
    sim.set_faults(Faults::default());

    sim.reject_client_cert(&fingerprint(&builder.client.cert_der));
    let e = rejected(client.ping().await);
    assert_eq!(code(&e), ErrorCode::ClientCertRejected);
    assert!(e.hint().contains("account certificate"));
}

#[tokio::test]
async fn a_pinned_server_certificate_is_accepted_and_another_refused() {
    // Pin the simulator's own certificate: accepted.
    let (_sim, client, _) = setup(SimConfig::default_catalogue(), |b, _| {
        let leaf = b.server.cert_der.clone();
        b.entry(CER_NAME, leaf)
    })
    .await;
    client.ping().await.unwrap();

    // Pin another certificate: refused before anything is sent.
    let (_sim, client, _) = setup(SimConfig::default_catalogue(), |b, _| {
        let other = b.ca.server(&["localhost", "127.0.0.1"]).cert_der;
        b.entry(CER_NAME, other)
    })
    .await;
    let e = client.ping().await.unwrap_err();
    assert!(matches!(e, DTrustError::Tls { .. }), "{e:?}");
    assert_eq!((e.outcome(), e.retryable()), (Outcome::NotSent, false));
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let (_sim, client, _) = setup(SimConfig::default_catalogue(), |b, _| {
        let other = Ca::new("Some Other CA").cert.cert_der;
        b.entry(CER_NAME, other)
    })
    .await;
    let e = client.ping().await.unwrap_err();
    assert!(matches!(e, DTrustError::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[tokio::test]
async fn a_client_certificate_the_simulator_does_not_trust_is_rejected() {
    let (_sim, client, _) = setup(SimConfig::default_catalogue(), |b, _| {
        let stranger_ca = Ca::new("Stranger CA");
        let (nb, na) = pki::valid_for(100);
        let stranger = stranger_ca.client("Stranger", nb, na);
        let p12 = pki::pkcs12(
            &stranger,
            &[&stranger_ca.cert.cert_der],
            "pw-stranger",
            P12Encryption::Aes256,
        );
        b.set("p12Password", "pw-stranger")
            .entry(dtrust_testkit::bundle::P12_NAME, p12)
    })
    .await;
    let e = client.ping().await.unwrap_err();
    assert!(matches!(e, DTrustError::Tls { .. }), "{e:?}");
    assert!(!e.retryable());
}

#[tokio::test]
async fn requests_go_through_a_connect_proxy_with_and_without_authentication() {
    let open = ConnectProxy::start(None).await;
    let (_sim, client, _) = setup(SimConfig::default_catalogue(), |b, _| {
        b.set("proxyHost", "127.0.0.1")
            .set("proxyPort", &open.addr().port().to_string())
    })
    .await;
    client.ping().await.unwrap();
    assert_eq!(open.tunnels(), 1);

    let guarded = ConnectProxy::start(Some(("svc-dtrust", "proxy-pw-1"))).await;
    let port = guarded.addr().port().to_string();
    let (_sim, client, _) = setup(SimConfig::default_catalogue(), |b, _| {
        b.set("proxyHost", "127.0.0.1")
            .set("proxyPort", &port)
            .set("proxyUser", "svc-dtrust")
            .set("proxyPassword", "proxy-pw-1")
    })
    .await;
    client.products().await.unwrap();
    assert_eq!(guarded.tunnels(), 1);

    let (_sim, client, _) = setup(SimConfig::default_catalogue(), |b, _| {
        b.set("proxyHost", "127.0.0.1")
            .set("proxyPort", &port)
            .set("proxyUser", "svc-dtrust")
            .set("proxyPassword", "wrong")
    })
    .await;
    let e = client.ping().await.unwrap_err();
    assert!(matches!(e, DTrustError::Proxy { .. }), "{e:?}");
    assert_eq!(e.outcome(), Outcome::NotSent);
    assert!(guarded.refused() >= 1);
}

#[tokio::test]
async fn transport_failures_are_sorted_by_what_may_have_happened() {
    // Nobody listens: not sent, retryable.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let builder = BundleBuilder::new(&format!("https://127.0.0.1:{closed}/"));
    let e = client_for(&builder).ping().await.unwrap_err();
    assert!(matches!(e, DTrustError::NotSent { .. }), "{e:?}");
    assert!(e.retryable());

    // The order is stored, then the connection drops: unknown outcome, and the lookup
    // finds the order.
    let (sim, client, _) = setup(SimConfig::default_catalogue(), |b, _| b).await;
    sim.set_faults(Faults {
        drop_after_store_rate: 1.0,
        endpoints: vec![Endpoint::CreateOrder],
        ..Faults::default()
    });
    let e = client
        .create_order(&pkcs10_order("ref-dropped"))
        .await
        .unwrap_err();
    assert!(matches!(e, DTrustError::UnknownOutcome { .. }), "{e:?}");
    assert_eq!(e.outcome(), Outcome::Unknown);
    sim.set_faults(Faults::default());
    assert_eq!(
        client
            .orders_by_reference("ref-dropped")
            .await
            .unwrap()
            .len(),
        1
    );

    // The order is stored, then no answer comes: the request timeout gives unknown outcome.
    let (sim, client, _) = setup(SimConfig::default_catalogue(), |b, _| {
        b.set("requestTimeoutMs", "700")
    })
    .await;
    sim.set_faults(Faults {
        hang_after_store_rate: 1.0,
        endpoints: vec![Endpoint::CreateOrder],
        ..Faults::default()
    });
    let e = client
        .create_order(&pkcs10_order("ref-hung"))
        .await
        .unwrap_err();
    assert!(matches!(e, DTrustError::UnknownOutcome { .. }), "{e:?}");
    sim.set_faults(Faults::default());
    assert_eq!(sim.orders_for("ref-hung"), 1);
}
