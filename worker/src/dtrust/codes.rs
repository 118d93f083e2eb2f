//! D-Trust's error codes, with what each means for an operator and whether a retry can
//! help. The hints follow the troubleshooting section of Identity Manager's D-Trust
//! connector documentation, so operators meet the advice they already know.

use std::fmt;

/// An error code D-Trust answers with (or an unknown one, kept verbatim).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    GenericRdnRegexError,
    EmailDomainDoesNotFit,
    GenericPasswordRegexError,
    InvalidRequestType,
    InvalidCsr,
    ClientCertRejected,
    ProductNotAllowed,
    NotFound,
    RevocationPasswordWrong,
    AlreadyRevoked,
    RateLimited,
    InternalError,
    Unavailable,
    /// A code this version does not know.
    Other(String),
}

impl ErrorCode {
    /// Every code of the contract, for documentation and tests.
    pub const KNOWN: [ErrorCode; 13] = [
        ErrorCode::GenericRdnRegexError,
        ErrorCode::EmailDomainDoesNotFit,
        ErrorCode::GenericPasswordRegexError,
        ErrorCode::InvalidRequestType,
        ErrorCode::InvalidCsr,
        ErrorCode::ClientCertRejected,
        ErrorCode::ProductNotAllowed,
        ErrorCode::NotFound,
        ErrorCode::RevocationPasswordWrong,
        ErrorCode::AlreadyRevoked,
        ErrorCode::RateLimited,
        ErrorCode::InternalError,
        ErrorCode::Unavailable,
    ];

    /// The code as D-Trust writes it.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::GenericRdnRegexError => "GENERIC_RDN_REGEXERROR",
            ErrorCode::EmailDomainDoesNotFit => "EMAILDOMAIN_DOES_NOT_FIT",
            ErrorCode::GenericPasswordRegexError => "GENERIC_PASSWORD_REGEXERROR",
            ErrorCode::InvalidRequestType => "INVALID_REQUEST_TYPE",
            ErrorCode::InvalidCsr => "INVALID_CSR",
            ErrorCode::ClientCertRejected => "CLIENT_CERT_REJECTED",
            ErrorCode::ProductNotAllowed => "PRODUCT_NOT_ALLOWED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::RevocationPasswordWrong => "REVOCATION_PASSWORD_WRONG",
            ErrorCode::AlreadyRevoked => "ALREADY_REVOKED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Other(code) => code,
        }
    }

    /// Parses D-Trust's spelling; unknown codes are kept as [`ErrorCode::Other`].
    pub fn parse(code: &str) -> ErrorCode {
        ErrorCode::KNOWN
            .into_iter()
            .find(|c| c.as_str() == code)
            .unwrap_or_else(|| ErrorCode::Other(code.to_string()))
    }

    /// Whether the same request may succeed later. `ALREADY_REVOKED` is not retried:
    /// the revocation's goal already holds, and the worker reports success.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited | ErrorCode::InternalError | ErrorCode::Unavailable
        )
    }

    /// What to change, in an operator's words.
    pub fn hint(&self) -> &'static str {
        match self {
            ErrorCode::GenericRdnRegexError => {
                "An attribute of the subject does not fit the product's rules (see 'pre-validated data' in D-Trust's management portal). \
                 Common causes: a certificate template that puts 'CN=' inside the CN value (remove it), \
                 or a product that requires organizationIdentifier while that attribute is not yet enabled for your D-Trust account \
                 (ask D-Trust to enable it, or leave the product out of certificateTemplates)."
            }
            ErrorCode::EmailDomainDoesNotFit => {
                "An e-mail address in the subject or the SAN uses a domain that is not (fully) verified for your D-Trust account: \
                 verify the domain in D-Trust's management portal, or use an address of a verified domain."
            }
            ErrorCode::GenericPasswordRegexError => {
                "The revocation password does not fit the product's password rule. Generate it in the process \
                 (e.g. the service task 'Credentials: Generate Random Password'), keep it in a secret field, and pass it as \
                 revocation_password; or omit it and let the worker generate one that fits."
            }
            ErrorCode::InvalidRequestType => {
                "The certificate request type does not match its content: a PKCS10 order needs a CSR, a PKCS12 order must not carry one. \
                 For key backup, the Certificate Manager token procedures that create the archived keys must be configured for PKCS#10 requests."
            }
            ErrorCode::InvalidCsr => {
                "The CSR cannot be used: it does not parse, its signature does not verify, or its key size is not one the product allows \
                 (see the product's key_sizes with `dtrust-worker products`). Create a new CSR with an allowed key size."
            }
            ErrorCode::ClientCertRejected => {
                "D-Trust does not accept the account's client certificate (unknown, expired or revoked): check the .p12 in the bundle \
                 with `dtrust-worker check-config`, and ask D-Trust for a new account certificate if needed."
            }
            ErrorCode::ProductNotAllowed => {
                "The product is not enabled for your D-Trust account: check the product id against `dtrust-worker products`, \
                 or ask D-Trust to enable it."
            }
            ErrorCode::NotFound => {
                "D-Trust knows no such order or certificate serial: check the serial (hex) or order id."
            }
            ErrorCode::RevocationPasswordWrong => {
                "The revocation password is not the one stored with the certificate. Pass the password returned at issuance; \
                 the password derived from the CN only fits certificates issued without a stored password."
            }
            ErrorCode::AlreadyRevoked => "The certificate is already revoked; nothing to do.",
            ErrorCode::RateLimited => {
                "D-Trust is limiting the request rate: the worker waits as D-Trust asks. If it happens often, lower maxRequestsPerSecond \
                 (divided among all workers)."
            }
            ErrorCode::InternalError | ErrorCode::Unavailable => {
                "D-Trust had a problem on its side; the worker retries with backoff. If it lasts, check D-Trust's service status."
            }
            ErrorCode::Other(_) => {
                "D-Trust answered with an error code this worker does not know; see the message, and D-Trust's documentation."
            }
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_are_kept() {
        for code in ErrorCode::KNOWN {
            assert_eq!(ErrorCode::parse(code.as_str()), code);
            assert!(!code.hint().is_empty());
        }
        assert_eq!(
            ErrorCode::parse("NEW_CODE"),
            ErrorCode::Other("NEW_CODE".into())
        );
    }

    #[test]
    fn only_server_side_and_rate_limit_errors_are_retryable() {
        let retryable: Vec<&str> = ErrorCode::KNOWN
            .iter()
            .filter(|c| c.retryable())
            .map(ErrorCode::as_str)
            .collect();
        assert_eq!(retryable, ["RATE_LIMITED", "INTERNAL_ERROR", "UNAVAILABLE"]);
    }

    #[test]
    fn the_rdn_hint_names_both_known_causes() {
        let hint = ErrorCode::GenericRdnRegexError.hint();
        assert!(hint.contains("'CN=' inside the CN"));
        assert!(hint.contains("organizationIdentifier"));
    }
}
