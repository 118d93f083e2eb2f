//! Key archival through a Certificate Manager (CM), as messages on `{p}.keyarchive`
//! (`shared/contract/messages.md`, "Key archive"): the CM generates and archives the
//! key pair and a dummy certificate, D-Trust certifies the key, the CM imports the real
//! certificate over the dummy.
//!
//! This module holds the messages and the rules for their fields; the engine runs the
//! steps (`engine::archive`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Worker → CM, key `generate`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generate<'a> {
    pub job_id: &'a str,
    /// The bundle's `keyArchive`.
    pub archive: &'a str,
    /// `tokenProcedure.<product>`.
    pub token_procedure: &'a str,
    /// The job's `subject`, unchanged.
    pub subject: &'a Value,
    pub key_size: u32,
    /// The product's `issuer_dn`, so the dummy certificate's issuer matches D-Trust's.
    pub issuer_dn: &'a str,
}

/// CM → worker, key `generated`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Generated {
    pub job_id: String,
    pub csr_pem: String,
}

/// Worker → CM, key `import`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Import<'a> {
    pub job_id: &'a str,
    pub archive: &'a str,
    /// `caTokenProcedureImportCert`.
    pub token_procedure_import: &'a str,
    pub order_id: &'a str,
    pub certificate_pem: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_pem: Option<&'a str>,
}

/// CM → worker, key `imported`: success, or the CM's error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Imported {
    pub job_id: String,
    #[serde(default)]
    pub error: Option<CmError>,
}

/// The CM's error on `imported`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CmError {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// The key size the CM generates for a product: the smallest of its `key_sizes` that is
/// at least 3072, else the largest; `None` when the product lists none.
pub fn key_size(key_sizes: &[u32]) -> Option<u32> {
    key_sizes
        .iter()
        .copied()
        .filter(|&s| s >= 3072)
        .min()
        .or_else(|| key_sizes.iter().copied().max())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_size_follows_the_contract() {
        assert_eq!(key_size(&[2048, 3072, 4096]), Some(3072));
        assert_eq!(key_size(&[4096, 8192]), Some(4096));
        assert_eq!(key_size(&[1024, 2048]), Some(2048));
        assert_eq!(key_size(&[]), None);
    }

    #[test]
    fn messages_have_the_contract_fields() {
        let subject = serde_json::json!({"cn": "x", "c": "DE"});
        let generate = Generate {
            job_id: "j",
            archive: "Key archive",
            token_procedure: "TP",
            subject: &subject,
            key_size: 3072,
            issuer_dn: "CN=CA",
        };
        assert_eq!(
            serde_json::to_value(&generate).unwrap(),
            serde_json::json!({"job_id": "j", "archive": "Key archive", "token_procedure": "TP", "subject": {"cn": "x", "c": "DE"}, "key_size": 3072, "issuer_dn": "CN=CA"})
        );
        let imported: Imported =
            serde_json::from_str(r#"{"job_id":"j","error":{"code":"KEY_MISMATCH","message":"m"}}"#)
                .unwrap();
        assert_eq!(imported.error.unwrap().code, "KEY_MISMATCH");
    }
}
