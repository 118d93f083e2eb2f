//! Pre-validation of orders against a product's rules, with real CSRs: the common
//! mistakes are caught before a request is sent, with D-Trust's codes and hints.

use base64::Engine as _;
use dtrust_testkit::pki::{csr, KeyKind};
use dtrust_worker::dtrust::wire::{OrderRequest, Product, RequestType, San, Subject};
use dtrust_worker::dtrust::{DTrustError, ErrorCode, Outcome, ProductRules};
use dtrust_worker::secret::Secret;

fn ssl_ov() -> ProductRules {
    let product: Product = serde_json::from_value(serde_json::json!({
        "id": "SSL-OV",
        "name": "SSL Organization Validated",
        "request_types": ["PKCS10"],
        "key_sizes": [3072, 4096],
        "required_rdns": ["CN", "O", "C", "organizationIdentifier"],
        "rdn_patterns": {
            "CN": "[A-Za-z0-9*][A-Za-z0-9.*-]{0,63}",
            "C": "[A-Z]{2}",
            "organizationIdentifier": "(VAT|NTR|PSD)[A-Z]{2}-[A-Za-z0-9-]{2,32}"
        },
        "revocation_password_pattern": "[A-Za-z0-9!#%+,.:=?@_-]{12,64}",
        "issuer_dn": "CN=D-TRUST Test CA, O=D-Trust GmbH, C=DE"
    }))
    .unwrap();
    let rules = ProductRules::new(product);
    assert!(rules.unusable.is_empty(), "{:?}", rules.unusable);
    rules
}

fn order(csr_der: Option<&[u8]>) -> OrderRequest {
    OrderRequest {
        product: "SSL-OV".into(),
        request_type: RequestType::Pkcs10,
        pkcs10: csr_der.map(|d| base64::engine::general_purpose::STANDARD.encode(d)),
        subject: Subject {
            cn: Some("www.example.com".into()),
            o: Some("Example GmbH".into()),
            c: Some("DE".into()),
            organization_identifier: Some("VATDE-123456789".into()),
            ..Subject::default()
        },
        san: San::default(),
        revocation_password: Some(Secret::new("Rv-long-enough-1")),
        client_reference: "dtw-1".into(),
    }
}

fn code_of(result: Result<(), DTrustError>) -> (ErrorCode, String, Option<String>) {
    match result {
        Err(e @ DTrustError::Invalid { .. }) => {
            assert_eq!(e.outcome(), Outcome::NotSent);
            assert!(!e.retryable());
            let message = e.to_string();
            match e {
                DTrustError::Invalid { code, field, .. } => (code, message, field),
                _ => unreachable!(),
            }
        }
        other => panic!("expected a pre-validation error, got {other:?}"),
    }
}

#[test]
fn a_fitting_order_passes() {
    let (der, _, _) = csr("www.example.com", KeyKind::Rsa3072);
    ssl_ov().check(&order(Some(&der))).unwrap();
}

#[test]
fn a_cn_with_cn_inside_is_caught_with_the_hint() {
    let (der, _, _) = csr("x", KeyKind::Rsa3072);
    let mut o = order(Some(&der));
    o.subject.cn = Some("CN=www.example.com".into());
    let (code, message, field) = code_of(ssl_ov().check(&o));
    assert_eq!(code, ErrorCode::GenericRdnRegexError);
    assert_eq!(field.as_deref(), Some("CN"));
    assert!(message.contains("contains 'CN='"), "{message}");
    assert!(code.hint().contains("'CN=' inside the CN"));
}

#[test]
fn a_missing_required_rdn_is_caught() {
    let (der, _, _) = csr("x", KeyKind::Rsa3072);
    let mut o = order(Some(&der));
    o.subject.organization_identifier = None;
    let (code, message, field) = code_of(ssl_ov().check(&o));
    assert_eq!(code, ErrorCode::GenericRdnRegexError);
    assert_eq!(field.as_deref(), Some("organizationIdentifier"));
    assert!(
        message.contains("requires the subject attribute organizationIdentifier"),
        "{message}"
    );
}

#[test]
fn patterns_must_match_the_whole_value() {
    let (der, _, _) = csr("x", KeyKind::Rsa3072);
    let mut o = order(Some(&der));
    o.subject.c = Some("DEU".into()); // "[A-Z]{2}" matches a part of it, not all
    let (code, _, field) = code_of(ssl_ov().check(&o));
    assert_eq!(
        (code, field.as_deref()),
        (ErrorCode::GenericRdnRegexError, Some("C"))
    );
}

#[test]
fn request_type_and_csr_presence_are_checked() {
    let (code, message, _) = code_of(ssl_ov().check(&order(None)));
    assert_eq!(code, ErrorCode::InvalidRequestType);
    assert!(message.contains("needs a CSR"));
    let mut o = order(None);
    o.request_type = RequestType::Pkcs12;
    let (code, message, _) = code_of(ssl_ov().check(&o));
    assert_eq!(code, ErrorCode::InvalidRequestType);
    assert!(message.contains("not offered"), "{message}");
}

#[test]
fn csr_key_size_signature_and_syntax_are_checked() {
    let (small, _, _) = csr("x", KeyKind::Rsa2048);
    let (code, message, _) = code_of(ssl_ov().check(&order(Some(&small))));
    assert_eq!(code, ErrorCode::InvalidCsr);
    assert!(
        message.contains("2048 bits; the product allows 3072, 4096"),
        "{message}"
    );

    let (ec, _, _) = csr("x", KeyKind::EcP256);
    assert_eq!(
        code_of(ssl_ov().check(&order(Some(&ec)))).0,
        ErrorCode::InvalidCsr
    );

    let (mut tampered, _, _) = csr("www.example.com", KeyKind::Rsa3072);
    let at = tampered.len() - 10; // inside the signature
    tampered[at] ^= 0xff;
    let (code, message, _) = code_of(ssl_ov().check(&order(Some(&tampered))));
    assert_eq!(code, ErrorCode::InvalidCsr);
    assert!(message.contains("signature does not verify"), "{message}");

    let (code, message, _) = code_of(ssl_ov().check(&order(Some(b"not a csr"))));
    assert_eq!(code, ErrorCode::InvalidCsr);
    assert!(message.contains("cannot be parsed"), "{message}");
}

#[test]
fn the_revocation_password_rule_is_checked_without_printing_it() {
    let (der, _, _) = csr("x", KeyKind::Rsa3072);
    let mut o = order(Some(&der));
    o.revocation_password = Some(Secret::new("short$"));
    let (code, message, _) = code_of(ssl_ov().check(&o));
    assert_eq!(code, ErrorCode::GenericPasswordRegexError);
    assert!(!message.contains("short$"), "{message}");
    assert!(ssl_ov().password_fits("Rv-long-enough-1"));
}

#[test]
fn a_pattern_that_cannot_be_compiled_is_skipped_and_reported() {
    let product: Product = serde_json::from_value(serde_json::json!({
        "id": "X", "request_types": ["PKCS12"], "rdn_patterns": {"CN": "(?<=a)b", "C": "[A-Z]{2}"}
    }))
    .unwrap();
    let rules = ProductRules::new(product);
    assert_eq!(rules.unusable.len(), 1);
    assert_eq!(rules.unusable[0].0, "rdn_patterns.CN");
    let mut o = order(None);
    o.product = "X".into();
    o.request_type = RequestType::Pkcs12;
    rules.check(&o).unwrap();
}
