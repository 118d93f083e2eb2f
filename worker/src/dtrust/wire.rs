//! The D-Trust REST interface on the wire, as `shared/contract/dtrust-rest.md` models it.
//! Every field name of the interface is written here and nowhere else, so adapting to
//! D-Trust's real specification is a change in this one file.
//!
//! Types are lenient where D-Trust may add things (unknown fields are ignored, unknown
//! request types and statuses are kept) and strict where the worker relies on a value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secret::{expose_optional_secret, expose_secret, Secret};

/// `GET /v1/ping`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ping {
    pub account: String,
}

/// A certificate request type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RequestType {
    /// The caller sends a CSR.
    #[serde(rename = "PKCS10")]
    Pkcs10,
    /// D-Trust generates the key pair and returns a PKCS#12.
    #[serde(rename = "PKCS12")]
    Pkcs12,
    /// A type this version does not know.
    #[serde(other, skip_serializing)]
    Unknown,
}

impl RequestType {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestType::Pkcs10 => "PKCS10",
            RequestType::Pkcs12 => "PKCS12",
            RequestType::Unknown => "unknown",
        }
    }
}

/// One product (certificate type) of the account, with its validation rules.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Product {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub request_types: Vec<RequestType>,
    #[serde(default)]
    pub key_sizes: Vec<u32>,
    /// RDN names as D-Trust writes them (`CN`, `O`, `organizationIdentifier`, ...).
    #[serde(default)]
    pub required_rdns: Vec<String>,
    /// RDN name → regular expression its value must match entirely.
    #[serde(default)]
    pub rdn_patterns: BTreeMap<String, String>,
    #[serde(default)]
    pub revocation_password_pattern: Option<String>,
    #[serde(default)]
    pub issuer_dn: Option<String>,
}

/// The subject of an order, with D-Trust's attribute names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    #[serde(rename = "CN", skip_serializing_if = "Option::is_none", default)]
    pub cn: Option<String>,
    #[serde(rename = "O", skip_serializing_if = "Option::is_none", default)]
    pub o: Option<String>,
    #[serde(rename = "OU", skip_serializing_if = "Vec::is_empty", default)]
    pub ou: Vec<String>,
    #[serde(rename = "C", skip_serializing_if = "Option::is_none", default)]
    pub c: Option<String>,
    #[serde(rename = "L", skip_serializing_if = "Option::is_none", default)]
    pub l: Option<String>,
    #[serde(rename = "ST", skip_serializing_if = "Option::is_none", default)]
    pub st: Option<String>,
    #[serde(rename = "E", skip_serializing_if = "Option::is_none", default)]
    pub email: Option<String>,
    #[serde(
        rename = "serialNumber",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub serial_number: Option<String>,
    #[serde(
        rename = "organizationIdentifier",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub organization_identifier: Option<String>,
    #[serde(rename = "GN", skip_serializing_if = "Option::is_none", default)]
    pub given_name: Option<String>,
    #[serde(rename = "SN", skip_serializing_if = "Option::is_none", default)]
    pub surname: Option<String>,
}

impl Subject {
    /// The values of an RDN by D-Trust's name for it (`OU` may have several).
    pub fn values(&self, rdn: &str) -> Vec<&str> {
        fn one(v: &Option<String>) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        match rdn {
            "CN" => one(&self.cn),
            "O" => one(&self.o),
            "OU" => self.ou.iter().map(String::as_str).collect(),
            "C" => one(&self.c),
            "L" => one(&self.l),
            "ST" => one(&self.st),
            "E" => one(&self.email),
            "serialNumber" => one(&self.serial_number),
            "organizationIdentifier" => one(&self.organization_identifier),
            "GN" => one(&self.given_name),
            "SN" => one(&self.surname),
            _ => Vec::new(),
        }
    }
}

/// Subject alternative names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct San {
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub email: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub dns: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub upn: Vec<String>,
}

impl San {
    pub fn is_empty(&self) -> bool {
        self.email.is_empty() && self.dns.is_empty() && self.upn.is_empty()
    }
}

/// `POST /v1/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderRequest {
    pub product: String,
    pub request_type: RequestType,
    /// The CSR, base64 of its DER (PKCS10 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pkcs10: Option<String>,
    pub subject: Subject,
    #[serde(skip_serializing_if = "San::is_empty")]
    pub san: San,
    #[serde(
        serialize_with = "expose_optional_secret",
        skip_serializing_if = "Option::is_none"
    )]
    pub revocation_password: Option<Secret>,
    pub client_reference: String,
}

/// The status of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum OrderStatus {
    Pending,
    Issued,
    Rejected,
    /// A status this version does not know; treated like `Pending`.
    #[serde(other)]
    Unknown,
}

/// An order, as `POST /v1/orders` and `GET /v1/orders...` return it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Order {
    pub order_id: String,
    #[serde(default)]
    pub client_reference: Option<String>,
    #[serde(default)]
    pub product: Option<String>,
    pub status: OrderStatus,
    /// The certificate, base64 DER (ISSUED).
    #[serde(default)]
    pub certificate: Option<String>,
    /// The issuing chain, base64 DER each.
    #[serde(default)]
    pub chain: Vec<String>,
    /// The PKCS#12 D-Trust generated, base64 (ISSUED, PKCS12 only): holds a private key.
    #[serde(default)]
    pub pkcs12: Option<Secret>,
    #[serde(default)]
    pub pkcs12_password: Option<Secret>,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub error: Option<ApiError>,
}

/// A revocation reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reason {
    #[default]
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
}

/// `POST /v1/certificates/{serial}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevokeRequest {
    #[serde(serialize_with = "expose_secret")]
    pub revocation_password: Secret,
    pub reason: Reason,
}

/// The answer to a revocation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RevokeResponse {
    pub serial: String,
    pub revoked_at: String,
}

/// One entry of an error body `{ "errors": [...] }`, or an order's `error`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiError {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub field: Option<String>,
}

/// A 4xx/5xx body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorBody {
    pub errors: Vec<ApiError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_request_serializes_with_dtrust_names_and_the_password() {
        let request = OrderRequest {
            product: "SSL-OV".into(),
            request_type: RequestType::Pkcs10,
            pkcs10: Some("MIIB".into()),
            subject: Subject {
                cn: Some("www.example.com".into()),
                organization_identifier: Some("VATDE-123456789".into()),
                ou: vec!["IT".into()],
                ..Subject::default()
            },
            san: San {
                dns: vec!["www.example.com".into()],
                ..San::default()
            },
            revocation_password: Some(Secret::new("Rv-secret-1234")),
            client_reference: "dtw-job-1".into(),
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "product": "SSL-OV", "request_type": "PKCS10", "pkcs10": "MIIB",
                "subject": {"CN": "www.example.com", "OU": ["IT"], "organizationIdentifier": "VATDE-123456789"},
                "san": {"dns": ["www.example.com"]},
                "revocation_password": "Rv-secret-1234",
                "client_reference": "dtw-job-1"
            })
        );
        assert!(!format!("{request:?}").contains("Rv-secret-1234"));
    }

    #[test]
    fn orders_and_products_tolerate_additions() {
        let order: Order = serde_json::from_value(serde_json::json!({
            "order_id": "o-1", "status": "ON_HOLD", "new_field": 1, "pkcs12": "AAAA", "pkcs12_password": "pw"
        }))
        .unwrap();
        assert_eq!(order.status, OrderStatus::Unknown);
        assert!(!format!("{order:?}").contains("\"pw\""));
        let product: Product = serde_json::from_value(serde_json::json!({
            "id": "X", "request_types": ["PKCS10", "CMC"], "extra": true
        }))
        .unwrap();
        assert_eq!(
            product.request_types,
            [RequestType::Pkcs10, RequestType::Unknown]
        );
    }
}
