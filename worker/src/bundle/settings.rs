//! The settings of `dtrust.properties`: every key the connector knows, its default, and
//! its environment override.
//!
//! A key `k` may be overridden by the environment variable `DTRUST_` + `k` in upper
//! case with `.` written as `_` (`p12Password` → `DTRUST_P12PASSWORD`), except
//! `keyArchive.timeout`, whose variable is `DTRUST_KEY_ARCHIVE_TIMEOUT` as the AMQP
//! contract names it. `tokenProcedure.<product>` is overridden by
//! `DTRUST_TOKENPROCEDURE_<PRODUCT>` with every character other than a letter or digit
//! written as `_`. An empty value, in the file or the environment, means "not set".

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::properties::Properties;
use super::report::{list, Problem, Report, Warning};
use crate::secret::Secret;

/// Where settings are overridden from: the process environment, or a map in tests.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// One key of `dtrust.properties`.
struct Key {
    name: &'static str,
    env: &'static str,
}

const fn key(name: &'static str, env: &'static str) -> Key {
    Key { name, env }
}

/// Every fixed key the connector reads (`tokenProcedure.<product>` comes on top).
const KEYS: &[Key] = &[
    key("url", "DTRUST_URL"),
    key("p12File", "DTRUST_P12FILE"),
    key("p12Password", "DTRUST_P12PASSWORD"),
    key("serverCertificate", "DTRUST_SERVERCERTIFICATE"),
    key("certificateTemplates", "DTRUST_CERTIFICATETEMPLATES"),
    key("keyArchive", "DTRUST_KEYARCHIVE"),
    key(
        "caTokenProcedureImportCert",
        "DTRUST_CATOKENPROCEDUREIMPORTCERT",
    ),
    key("keyArchive.timeout", "DTRUST_KEY_ARCHIVE_TIMEOUT"),
    key("proxyHost", "DTRUST_PROXYHOST"),
    key("proxyPort", "DTRUST_PROXYPORT"),
    key("proxyUser", "DTRUST_PROXYUSER"),
    key("proxyPassword", "DTRUST_PROXYPASSWORD"),
    key("connectTimeoutMs", "DTRUST_CONNECTTIMEOUTMS"),
    key("requestTimeoutMs", "DTRUST_REQUESTTIMEOUTMS"),
    key("maxRequestsPerSecond", "DTRUST_MAXREQUESTSPERSECOND"),
    key(
        "revocationPasswordSecret",
        "DTRUST_REVOCATIONPASSWORDSECRET",
    ),
    key("amqp.prefix", "DTRUST_AMQP_PREFIX"),
    key("store.path", "DTRUST_STORE_PATH"),
];

/// Keys of D-Trust's legacy SOAP interface, refused for REST.
pub const SOAP_KEYS: &[&str] = &["namespaceURI", "localPart"];

const TOKEN_PROCEDURE: &str = "tokenProcedure.";

/// Defaults of the optional settings.
pub const DEFAULT_P12_PASSWORD: &str = "123456";
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_MAX_REQUESTS_PER_SECOND: f64 = 10.0;
pub const DEFAULT_KEY_ARCHIVE_TIMEOUT_S: u64 = 3600;
pub const DEFAULT_AMQP_PREFIX: &str = "dtrust";
pub const DEFAULT_STORE_PATH: &str = "dtrust-data";

/// The environment variable that overrides `tokenProcedure.<product>`.
pub fn token_procedure_env(product: &str) -> String {
    let tail: String = product
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("DTRUST_TOKENPROCEDURE_{tail}")
}

/// The connector's settings, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL of the D-Trust REST interface (https).
    pub url: Url,
    /// Which zip entries hold the keystore and the server certificate.
    pub entries: EntryNames,
    /// The products this connector may order, in the order given.
    pub certificate_templates: Vec<String>,
    /// Key backup through a Certificate Manager, when `keyArchive` is set.
    pub key_archive: Option<KeyArchive>,
    pub proxy: Option<Proxy>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Client-side limit toward D-Trust, per worker process.
    pub max_requests_per_second: f64,
    /// Shared secret from which workers derive generated revocation passwords.
    pub revocation_password_secret: Option<Secret>,
    /// Prefix of every AMQP exchange and queue name.
    pub amqp_prefix: String,
    /// Folder of the worker's local job store.
    pub store_path: PathBuf,
    /// The environment variables that overrode a value, for the summary.
    pub env_overrides: Vec<String>,
}

/// The settings that pick and open the bundle's other entries.
#[derive(Debug, Clone)]
pub struct EntryNames {
    /// `p12File`, when the bundle names its keystore.
    pub p12_file: Option<String>,
    pub p12_password: Secret,
    /// True when `p12Password` was not set and the default is used.
    pub p12_password_is_default: bool,
    /// `serverCertificate`, when the bundle names it.
    pub server_certificate: Option<String>,
}

impl EntryNames {
    /// Reads just these settings (environment first), e.g. when others are broken.
    pub fn read(props: &Properties, env: &dyn Environment) -> EntryNames {
        Self::read_values(&mut Values {
            props,
            env,
            overrides: Vec::new(),
        })
    }

    fn read_values(v: &mut Values<'_>) -> EntryNames {
        let password = v.fixed("p12Password");
        EntryNames {
            p12_file: v.fixed("p12File"),
            p12_password_is_default: password.is_none(),
            p12_password: Secret::from(
                password.unwrap_or_else(|| DEFAULT_P12_PASSWORD.to_string()),
            ),
            server_certificate: v.fixed("serverCertificate"),
        }
    }
}

/// Key backup settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyArchive {
    /// `keyArchive`: the Certificate Manager connector that archives keys.
    pub name: String,
    /// `caTokenProcedureImportCert`.
    pub import_procedure: String,
    /// `tokenProcedure.<product>` for each product of `certificateTemplates`.
    pub token_procedures: BTreeMap<String, String>,
    /// `keyArchive.timeout`: how long to wait for each Certificate Manager answer.
    pub timeout: Duration,
}

/// An HTTP proxy (CONNECT) toward D-Trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
    pub auth: Option<ProxyAuth>,
}

/// Basic authentication at the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAuth {
    pub user: String,
    pub password: Secret,
}

/// The merged view of file and environment.
struct Values<'a> {
    props: &'a Properties,
    env: &'a dyn Environment,
    overrides: Vec<String>,
}

impl Values<'_> {
    /// The value of `key` (environment first), `None` when absent or empty.
    fn get(&mut self, key: &str, env: &str) -> Option<String> {
        if let Some(value) = self.env.var(env) {
            self.overrides.push(env.to_string());
            return non_empty(value.trim());
        }
        self.props.get(key).and_then(|v| non_empty(v.trim()))
    }

    fn fixed(&mut self, key: &'static str) -> Option<String> {
        let env = KEYS.iter().find(|k| k.name == key).map_or("", |k| k.env);
        self.get(key, env)
    }
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

impl Settings {
    /// Reads and checks the settings; problems and warnings go to `report`. Returns
    /// `None` when a problem leaves the settings unusable.
    pub fn read(
        props: &Properties,
        env: &dyn Environment,
        report: &mut Report,
    ) -> Option<Settings> {
        warn_about_keys(props, report);
        let soap: Vec<&str> = SOAP_KEYS
            .iter()
            .copied()
            .filter(|k| props.get(k).is_some())
            .collect();
        if !soap.is_empty() {
            report.problem(Problem::LegacySoap { keys: list(&soap) });
        }
        let mut v = Values {
            props,
            env,
            overrides: Vec::new(),
        };

        let url = read_url(v.fixed("url"), report);
        let templates = read_templates(v.fixed("certificateTemplates"), report);
        let entries = EntryNames::read_values(&mut v);
        let key_archive = read_key_archive(&mut v, &templates, report);
        let proxy = read_proxy(&mut v, report);
        let connect_ms = number(
            &mut v,
            "connectTimeoutMs",
            DEFAULT_CONNECT_TIMEOUT_MS,
            1..=3_600_000,
            "a number of milliseconds from 1 to 3600000",
            report,
        );
        let request_ms = number(
            &mut v,
            "requestTimeoutMs",
            DEFAULT_REQUEST_TIMEOUT_MS,
            1..=3_600_000,
            "a number of milliseconds from 1 to 3600000",
            report,
        );
        let rate = read_rate(v.fixed("maxRequestsPerSecond"), report);
        let prefix = v
            .fixed("amqp.prefix")
            .unwrap_or_else(|| DEFAULT_AMQP_PREFIX.to_string());
        if !valid_prefix(&prefix) {
            report.problem(Problem::InvalidValue {
                key: "amqp.prefix".into(),
                value: prefix.clone(),
                expected: "a name of 1 to 64 letters, digits, `.`, `_` or `-`",
            });
        }
        let revocation_password_secret = v.fixed("revocationPasswordSecret").map(Secret::from);
        if revocation_password_secret.is_none() {
            report.warn(Warning::RevocationSecretUnset);
        }
        let settings = Settings {
            url: url?,
            entries,
            certificate_templates: templates,
            key_archive,
            proxy,
            connect_timeout: Duration::from_millis(connect_ms),
            request_timeout: Duration::from_millis(request_ms),
            max_requests_per_second: rate,
            revocation_password_secret,
            amqp_prefix: prefix,
            store_path: PathBuf::from(
                v.fixed("store.path")
                    .unwrap_or_else(|| DEFAULT_STORE_PATH.to_string()),
            ),
            env_overrides: Vec::new(),
        };
        let mut overrides = v.overrides;
        overrides.sort();
        overrides.dedup();
        Some(Settings {
            env_overrides: overrides,
            ..settings
        })
    }
}

fn read_url(value: Option<String>, report: &mut Report) -> Option<Url> {
    let Some(value) = value else {
        report.problem(Problem::MissingKey {
            key: "url",
            what: "set it to the https base URL of the D-Trust REST interface (e.g. `url=https://cmc.d-trust.net/rest/`)",
        });
        return None;
    };
    match Url::parse(&value) {
        Ok(url) if url.scheme() == "https" && url.host().is_some() => Some(url),
        Ok(url) if url.scheme() == "https" => {
            report.problem(Problem::InvalidUrl {
                value,
                detail: format!("no host in `{url}`"),
            });
            None
        }
        Ok(_) => {
            report.problem(Problem::UrlNotHttps { value });
            None
        }
        Err(e) => {
            report.problem(Problem::InvalidUrl {
                value,
                detail: e.to_string(),
            });
            None
        }
    }
}

fn read_templates(value: Option<String>, report: &mut Report) -> Vec<String> {
    let mut products: Vec<String> = Vec::new();
    for product in value.iter().flat_map(|v| v.split(';')).map(str::trim) {
        if product.is_empty() {
            continue;
        }
        if products.iter().any(|p| p == product) {
            report.warn(Warning::DuplicateTemplate {
                product: product.to_string(),
            });
        } else {
            products.push(product.to_string());
        }
    }
    if products.is_empty() {
        report.problem(Problem::NoTemplates);
    }
    products
}

fn read_key_archive(
    v: &mut Values<'_>,
    templates: &[String],
    report: &mut Report,
) -> Option<KeyArchive> {
    let name = v.fixed("keyArchive");
    let import = v.fixed("caTokenProcedureImportCert");
    let timeout = number(
        v,
        "keyArchive.timeout",
        DEFAULT_KEY_ARCHIVE_TIMEOUT_S,
        1..=30 * 24 * 3600,
        "a number of seconds from 1 to 2592000 (30 days)",
        report,
    );
    let mut procedures = BTreeMap::new();
    let mut missing = Vec::new();
    for product in templates {
        let key = format!("{TOKEN_PROCEDURE}{product}");
        match v.get(&key, &token_procedure_env(product)) {
            Some(procedure) => {
                procedures.insert(product.clone(), procedure);
            }
            None => missing.push(key),
        }
    }
    let Some(name) = name else {
        let configured = import
            .as_ref()
            .map(|_| "caTokenProcedureImportCert".to_string())
            .into_iter()
            .chain(procedures.keys().map(|p| format!("{TOKEN_PROCEDURE}{p}")));
        for key in configured {
            report.warn(Warning::KeyArchiveOff { key });
        }
        return None;
    };
    if import.is_none() {
        missing.insert(0, "caTokenProcedureImportCert".to_string());
    }
    if !missing.is_empty() {
        report.problem(Problem::KeyArchiveIncomplete {
            missing: list(&missing),
        });
        return None;
    }
    Some(KeyArchive {
        name,
        import_procedure: import.unwrap_or_default(),
        token_procedures: procedures,
        timeout: Duration::from_secs(timeout),
    })
}

fn read_proxy(v: &mut Values<'_>, report: &mut Report) -> Option<Proxy> {
    let host = v.fixed("proxyHost");
    let port_text = v.fixed("proxyPort");
    let user = v.fixed("proxyUser");
    let password = v.fixed("proxyPassword").map(Secret::from);
    let port = port_text.as_ref().and_then(|p| match p.parse::<u16>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            report.problem(Problem::InvalidValue {
                key: "proxyPort".into(),
                value: p.clone(),
                expected: "a port number from 1 to 65535",
            });
            None
        }
    });
    let auth = match (user, password) {
        (Some(user), Some(password)) => Some(ProxyAuth { user, password }),
        (None, None) => None,
        (user, _) => {
            let (key, needs) = if user.is_some() {
                ("proxyUser", "proxyPassword")
            } else {
                ("proxyPassword", "proxyUser")
            };
            report.problem(Problem::Incomplete {
                key,
                needs,
                why: "proxy authentication needs both the user and the password",
            });
            None
        }
    };
    match (host, port_text, port) {
        (Some(host), _, Some(port)) => Some(Proxy { host, port, auth }),
        (Some(_), None, _) => {
            report.problem(Problem::Incomplete {
                key: "proxyHost",
                needs: "proxyPort",
                why: "set the proxy's port number (e.g. `proxyPort=3128`)",
            });
            None
        }
        (None, Some(_), _) => {
            report.problem(Problem::Incomplete {
                key: "proxyPort",
                needs: "proxyHost",
                why: "set the proxy's host name or IP address",
            });
            None
        }
        _ => None,
    }
}

fn number(
    v: &mut Values<'_>,
    key: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    expected: &'static str,
    report: &mut Report,
) -> u64 {
    match v.fixed(key) {
        None => default,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if range.contains(&n) => n,
            _ => {
                report.problem(Problem::InvalidValue {
                    key: key.into(),
                    value: text,
                    expected,
                });
                default
            }
        },
    }
}

fn read_rate(value: Option<String>, report: &mut Report) -> f64 {
    let Some(text) = value else {
        return DEFAULT_MAX_REQUESTS_PER_SECOND;
    };
    match text.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n <= 10_000.0 => n,
        _ => {
            report.problem(Problem::InvalidValue {
                key: "maxRequestsPerSecond".into(),
                value: text,
                expected:
                    "a number of requests per second above 0 and at most 10000 (e.g. 10 or 0.5)",
            });
            DEFAULT_MAX_REQUESTS_PER_SECOND
        }
    }
}

fn valid_prefix(prefix: &str) -> bool {
    (1..=64).contains(&prefix.len())
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Warns about keys the connector does not know (likely typos) and duplicates.
fn warn_about_keys(props: &Properties, report: &mut Report) {
    for entry in props.entries() {
        let key = entry.key.as_str();
        let known = KEYS.iter().any(|k| k.name == key)
            || SOAP_KEYS.contains(&key)
            || key
                .strip_prefix(TOKEN_PROCEDURE)
                .is_some_and(|p| !p.is_empty());
        if !known {
            report.warn(Warning::UnknownKey {
                key: key.to_string(),
                line: entry.line,
                suggestion: suggest(key)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default(),
            });
        }
    }
    for key in props.duplicate_keys() {
        report.warn(Warning::DuplicateKey {
            key: key.to_string(),
        });
    }
}

/// The known key closest to a misspelt one, if any is close.
fn suggest(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    KEYS.iter()
        .map(|k| k.name)
        .chain(["tokenProcedure.<product>"])
        .map(|name| (edit_distance(&lower, &name.to_ascii_lowercase()), name))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, env: &[(&str, &str)]) -> (Option<Settings>, Report) {
        let props = Properties::parse(text).unwrap();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut report = Report::default();
        let settings = Settings::read(&props, &env, &mut report);
        (settings, report)
    }

    fn messages(report: &Report) -> String {
        report
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    const MINIMAL: &str =
        "url=https://dtrust.test/rest/\ncertificateTemplates=SSL-Basic; SSL-OV;\n";

    #[test]
    fn minimal_settings_take_the_defaults() {
        let (s, report) = read(MINIMAL, &[]);
        let s = s.unwrap();
        assert!(report.problems.is_empty(), "{}", messages(&report));
        assert_eq!(s.url.as_str(), "https://dtrust.test/rest/");
        assert_eq!(s.certificate_templates, ["SSL-Basic", "SSL-OV"]);
        assert_eq!(s.entries.p12_password.expose(), "123456");
        assert!(s.entries.p12_password_is_default);
        assert_eq!(s.connect_timeout, Duration::from_secs(10));
        assert_eq!(s.request_timeout, Duration::from_secs(60));
        assert_eq!(s.max_requests_per_second, 10.0);
        assert_eq!(s.amqp_prefix, "dtrust");
        assert_eq!(s.store_path, PathBuf::from("dtrust-data"));
        assert!(s.key_archive.is_none() && s.proxy.is_none());
    }

    #[test]
    fn environment_overrides_the_file() {
        let text =
            format!("{MINIMAL}p12Password=fromfile\nproxyHost=proxy.local\nproxyPort=3128\n");
        let (s, _) = read(
            &text,
            &[
                ("DTRUST_P12PASSWORD", "fromenv"),
                ("DTRUST_PROXYHOST", ""),
                ("DTRUST_PROXYPORT", ""),
                ("DTRUST_AMQP_PREFIX", "bulk-a"),
            ],
        );
        let s = s.unwrap();
        assert_eq!(s.entries.p12_password.expose(), "fromenv");
        assert!(!s.entries.p12_password_is_default);
        assert!(s.proxy.is_none(), "an empty variable clears the setting");
        assert_eq!(s.amqp_prefix, "bulk-a");
        assert_eq!(
            s.env_overrides,
            [
                "DTRUST_AMQP_PREFIX",
                "DTRUST_P12PASSWORD",
                "DTRUST_PROXYHOST",
                "DTRUST_PROXYPORT"
            ]
        );
    }

    #[test]
    fn missing_templates_refuse_to_start() {
        for text in [
            "url=https://x.test/\n",
            "url=https://x.test/\ncertificateTemplates= ; ;\n",
        ] {
            let (_, report) = read(text, &[]);
            assert!(messages(&report).contains("`certificateTemplates` is missing or empty"));
        }
    }

    #[test]
    fn url_must_be_https() {
        let (s, report) = read("certificateTemplates=A\n", &[]);
        assert!(s.is_none());
        assert!(messages(&report).contains("`url` is missing"));
        let (_, report) = read("url=http://dtrust.test/\ncertificateTemplates=A\n", &[]);
        assert!(
            messages(&report).contains("does not use https"),
            "{}",
            messages(&report)
        );
        let (_, report) = read("url=dtrust.test\ncertificateTemplates=A\n", &[]);
        assert!(
            messages(&report).contains("is not a valid URL"),
            "{}",
            messages(&report)
        );
    }

    #[test]
    fn soap_keys_are_refused_by_name() {
        let text = format!("{MINIMAL}namespaceURI=http://x\nlocalPart=CertService\n");
        let (_, report) = read(&text, &[]);
        let text = messages(&report);
        assert!(text.contains("`namespaceURI` and `localPart`"), "{text}");
        assert!(text.contains("migrate-config"), "{text}");
    }

    #[test]
    fn key_archive_needs_all_its_procedures() {
        let text = format!("{MINIMAL}keyArchive=Key archive\ntokenProcedure.SSL-Basic=TP basic\n");
        let (s, report) = read(&text, &[]);
        assert!(s.unwrap().key_archive.is_none());
        let text = messages(&report);
        assert!(
            text.contains("`caTokenProcedureImportCert` and `tokenProcedure.SSL-OV`"),
            "{text}"
        );

        let full = format!("{MINIMAL}keyArchive=Key archive\ncaTokenProcedureImportCert=TP import\ntokenProcedure.SSL-Basic=TP basic\n");
        let (s, report) = read(&full, &[("DTRUST_TOKENPROCEDURE_SSL_OV", "TP ov")]);
        assert!(report.problems.is_empty(), "{}", messages(&report));
        let archive = s.unwrap().key_archive.unwrap();
        assert_eq!(archive.name, "Key archive");
        assert_eq!(archive.token_procedures["SSL-OV"], "TP ov");
        assert_eq!(archive.timeout, Duration::from_secs(3600));
    }

    #[test]
    fn procedures_without_key_archive_are_reported_as_unused() {
        let text =
            format!("{MINIMAL}caTokenProcedureImportCert=TP import\nrevocationPasswordSecret=s\n");
        let (_, report) = read(&text, &[]);
        assert!(report.problems.is_empty());
        assert_eq!(
            report.warnings,
            [Warning::KeyArchiveOff {
                key: "caTokenProcedureImportCert".into()
            }]
        );
    }

    #[test]
    fn a_missing_revocation_secret_is_a_warning_that_says_when_it_matters() {
        let (s, report) = read(MINIMAL, &[]);
        assert!(s.unwrap().revocation_password_secret.is_none());
        assert_eq!(report.warnings, [Warning::RevocationSecretUnset]);
        let text = report.warnings[0].to_string();
        assert!(text.contains("several"), "{text}");
        assert!(text.contains("same secret on all of them"), "{text}");

        let (s, report) = read(MINIMAL, &[("DTRUST_REVOCATIONPASSWORDSECRET", "from env")]);
        let secret = s.unwrap().revocation_password_secret.unwrap();
        assert_eq!(secret.expose(), "from env");
        assert!(!format!("{secret:?}").contains("from env"));
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    }

    #[test]
    fn proxy_port_must_be_a_number() {
        let text = format!("{MINIMAL}proxyHost=proxy.local\nproxyPort=31x8\n");
        let (_, report) = read(&text, &[]);
        assert!(messages(&report).contains("`proxyPort` = `31x8` is not a port number"));
        let text = format!(
            "{MINIMAL}proxyHost=proxy.local\nproxyPort=3128\nproxyUser=u\nproxyPassword=p\n"
        );
        let (s, report) = read(&text, &[]);
        assert!(report.problems.is_empty());
        let proxy = s.unwrap().proxy.unwrap();
        assert_eq!((proxy.host.as_str(), proxy.port), ("proxy.local", 3128));
        assert_eq!(proxy.auth.unwrap().password.expose(), "p");
    }

    #[test]
    fn numbers_are_checked() {
        let text = format!("{MINIMAL}connectTimeoutMs=0\nrequestTimeoutMs=abc\nmaxRequestsPerSecond=-1\namqp.prefix=a b\n");
        let (_, report) = read(&text, &[]);
        let text = messages(&report);
        for key in [
            "connectTimeoutMs",
            "requestTimeoutMs",
            "maxRequestsPerSecond",
            "amqp.prefix",
        ] {
            assert!(text.contains(&format!("`{key}`")), "{key}: {text}");
        }
    }

    #[test]
    fn unknown_keys_get_a_suggestion() {
        let text = format!("{MINIMAL}p12password=x\ncertificateTemplate=A\nfoo=bar\n");
        let (_, report) = read(&text, &[]);
        let warnings: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
        assert!(
            warnings[0].contains("`p12password` (did you mean `p12Password`?)"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("did you mean `certificateTemplates`?"),
            "{warnings:?}"
        );
        assert!(
            warnings[2].contains("unknown key `foo`; it is ignored"),
            "{warnings:?}"
        );
    }

    #[test]
    fn token_procedure_env_names() {
        assert_eq!(
            token_procedure_env("SSL-Basic"),
            "DTRUST_TOKENPROCEDURE_SSL_BASIC"
        );
        assert_eq!(
            token_procedure_env("qual.sig 1"),
            "DTRUST_TOKENPROCEDURE_QUAL_SIG_1"
        );
    }
}
