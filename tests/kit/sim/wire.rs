//! The simulator's own JSON types, written from the contract
//! (`shared/contract/dtrust-rest.md`), independent of the worker's, so that a mapping bug
//! on either side shows. Requests are read strictly (unknown fields refused); answers
//! leave out absent fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::RequestType;

/// `GET /v1/ping`.
#[derive(Debug, Serialize)]
pub(crate) struct Ping<'a> {
    pub account: &'a str,
}

/// One product of `GET /v1/products`.
#[derive(Debug, Serialize)]
pub(crate) struct ProductOut<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub request_types: &'a [RequestType],
    pub key_sizes: &'a [u32],
    pub required_rdns: &'a [String],
    pub rdn_patterns: &'a BTreeMap<String, String>,
    pub revocation_password_pattern: &'a str,
    pub issuer_dn: &'a str,
}

/// The body of `POST /v1/orders`. Every field is optional here so that the simulator
/// can say which one is missing with the contract's error code.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrderRequest {
    pub product: Option<String>,
    pub request_type: Option<String>,
    pub pkcs10: Option<String>,
    pub subject: Option<Subject>,
    pub san: Option<San>,
    pub revocation_password: Option<String>,
    pub client_reference: Option<String>,
}

/// An order's subject, by RDN name. Only OU may repeat (a JSON array).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Subject {
    #[serde(rename = "CN")]
    pub cn: Option<String>,
    #[serde(rename = "O")]
    pub o: Option<String>,
    #[serde(rename = "OU")]
    pub ou: Option<Vec<String>>,
    #[serde(rename = "C")]
    pub c: Option<String>,
    #[serde(rename = "L")]
    pub l: Option<String>,
    #[serde(rename = "ST")]
    pub st: Option<String>,
    #[serde(rename = "E")]
    pub e: Option<String>,
    #[serde(rename = "serialNumber")]
    pub serial_number: Option<String>,
    #[serde(rename = "organizationIdentifier")]
    pub organization_identifier: Option<String>,
    #[serde(rename = "GN")]
    pub gn: Option<String>,
    #[serde(rename = "SN")]
    pub sn: Option<String>,
}

impl Subject {
    /// `(RDN name, value)` in [`super::config::RDN_NAMES`] order, OU once per value.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        fn one<'a>(
            name: &'static str,
            v: &'a Option<String>,
        ) -> impl Iterator<Item = (&'static str, String)> + 'a {
            v.iter().map(move |v| (name, v.clone()))
        }
        one("CN", &self.cn)
            .chain(one("O", &self.o))
            .chain(self.ou.iter().flatten().map(|v| ("OU", v.clone())))
            .chain(one("C", &self.c))
            .chain(one("L", &self.l))
            .chain(one("ST", &self.st))
            .chain(one("E", &self.e))
            .chain(one("serialNumber", &self.serial_number))
            .chain(one("organizationIdentifier", &self.organization_identifier))
            .chain(one("GN", &self.gn))
            .chain(one("SN", &self.sn))
            .collect()
    }
}

/// An order's subject alternative names.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct San {
    #[serde(default)]
    pub email: Vec<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub upn: Vec<String>,
}

/// An order as answered.
#[derive(Debug, Serialize)]
pub(crate) struct OrderOut {
    pub order_id: String,
    pub client_reference: String,
    pub product: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pkcs12: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pkcs12_password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorItem>,
}

/// The body of `POST /v1/certificates/{serial}/revoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    pub revocation_password: Option<String>,
    pub reason: Option<String>,
}

/// The revocation reasons of the contract.
pub(crate) const REVOCATION_REASONS: [&str; 5] = [
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
];

/// The answer of a revocation.
#[derive(Debug, Serialize)]
pub(crate) struct RevokeOut {
    pub serial: String,
    pub revoked_at: String,
}

/// One error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorItem {
    /// D-Trust's error code.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The request field it is about, when there is one (e.g. `subject.CN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Every 4xx and 5xx body.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody<'a> {
    pub errors: [&'a ErrorItem; 1],
}
