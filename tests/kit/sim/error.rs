//! Error answers: a status, one `{code, message, field}` item, and a `Retry-After` when
//! the client should wait.

use super::wire::ErrorItem;

/// The codes the simulator answers with. The first thirteen are the contract's; the last
/// three are the simulator's for what the contract leaves open (documented in
/// [`super`]).
pub mod codes {
    pub const GENERIC_RDN_REGEXERROR: &str = "GENERIC_RDN_REGEXERROR";
    pub const EMAILDOMAIN_DOES_NOT_FIT: &str = "EMAILDOMAIN_DOES_NOT_FIT";
    pub const GENERIC_PASSWORD_REGEXERROR: &str = "GENERIC_PASSWORD_REGEXERROR";
    pub const INVALID_REQUEST_TYPE: &str = "INVALID_REQUEST_TYPE";
    pub const INVALID_CSR: &str = "INVALID_CSR";
    pub const CLIENT_CERT_REJECTED: &str = "CLIENT_CERT_REJECTED";
    pub const PRODUCT_NOT_ALLOWED: &str = "PRODUCT_NOT_ALLOWED";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const REVOCATION_PASSWORD_WRONG: &str = "REVOCATION_PASSWORD_WRONG";
    pub const ALREADY_REVOKED: &str = "ALREADY_REVOKED";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const INTERNAL_ERROR: &str = "INTERNAL_ERROR";
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    /// 400: a malformed body or query, a missing field, a bad `client_reference` or
    /// revocation `reason` (not in the contract's table).
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    /// 405: a known path with another method (not in the contract's table).
    pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";
    /// The default `error.code` of an order rejected through the control API.
    pub const ORDER_REJECTED: &str = "ORDER_REJECTED";
}

/// An error answer.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: u16,
    pub item: ErrorItem,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            item: ErrorItem {
                code: code.into(),
                message: message.into(),
                field: None,
            },
            retry_after: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> ApiError {
        self.item.field = Some(field.into());
        self
    }

    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, code, message)
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(400, codes::INVALID_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, codes::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, codes::INTERNAL_ERROR, message)
    }
}
