//! The operator's one-screen view of a checked bundle (`check-config`). It prints no
//! secret: passwords appear only as "set" or "default".

use std::fmt;

use time::OffsetDateTime;

use super::cert::format_time;
use super::{Bundle, ServerTrust};

/// Displays a [`Bundle`] for operators.
pub struct Summary<'a>(pub(super) &'a Bundle);

const W: usize = 22;

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Bundle {
            settings: s,
            identity,
            server,
            ..
        } = self.0;
        let now = OffsetDateTime::now_utc();
        let leaf = identity.leaf();
        writeln!(f, "  {:W$}{}", "url", s.url)?;
        writeln!(f, "  {:W$}{}", "client certificate", leaf.subject)?;
        writeln!(f, "  {:W$}issued by {}", "", leaf.issuer)?;
        writeln!(
            f,
            "  {:W$}serial {}, valid until {} ({} days)",
            "",
            leaf.serial,
            format_time(leaf.not_after),
            (leaf.not_after - now).whole_days()
        )?;
        writeln!(
            f,
            "  {:W$}keystore `{}`, {} certificate(s) in chain, password {}",
            "",
            identity.entry,
            identity.chain.len(),
            if s.entries.p12_password_is_default {
                "default (123456)"
            } else {
                "set"
            }
        )?;
        let (how, certs) = match server {
            ServerTrust::Anchors { certs, .. } => (
                "trust anchor (CA certificate): the server's chain must lead to it",
                certs.as_slice(),
            ),
            ServerTrust::Pinned { cert, .. } => (
                "pinned: the server must present exactly this certificate",
                std::slice::from_ref(cert),
            ),
        };
        writeln!(
            f,
            "  {:W$}`{}`, {how}",
            "server certificate",
            server.entry()
        )?;
        for cert in certs {
            writeln!(f, "  {:W$}{}", "", cert.subject)?;
            writeln!(f, "  {:W$}valid until {}", "", format_time(cert.not_after))?;
            writeln!(f, "  {:W$}sha256 {}", "", cert.fingerprint())?;
        }
        writeln!(
            f,
            "  {:W$}{} ({})",
            "certificate templates",
            s.certificate_templates.join("; "),
            s.certificate_templates.len()
        )?;
        match &s.proxy {
            None => writeln!(f, "  {:W$}none (direct connection)", "proxy")?,
            Some(p) => writeln!(
                f,
                "  {:W$}{}:{}{}",
                "proxy",
                p.host,
                p.port,
                p.auth
                    .as_ref()
                    .map(|a| format!(", basic authentication as `{}`, password set", a.user))
                    .unwrap_or_default()
            )?,
        }
        match &s.key_archive {
            None => writeln!(f, "  {:W$}off (`keyArchive` not set)", "key backup")?,
            Some(k) => {
                writeln!(
                    f,
                    "  {:W$}archive `{}`, import procedure `{}`, answer timeout {} s",
                    "key backup",
                    k.name,
                    k.import_procedure,
                    k.timeout.as_secs()
                )?;
                for (product, procedure) in &k.token_procedures {
                    writeln!(f, "  {:W$}{product} -> `{procedure}`", "")?;
                }
            }
        }
        writeln!(
            f,
            "  {:W$}connect {} ms, request {} ms",
            "timeouts",
            s.connect_timeout.as_millis(),
            s.request_timeout.as_millis()
        )?;
        writeln!(
            f,
            "  {:W$}{} requests/s toward D-Trust (per worker process)",
            "rate limit", s.max_requests_per_second
        )?;
        writeln!(f, "  {:W$}{}", "amqp prefix", s.amqp_prefix)?;
        writeln!(f, "  {:W$}{}", "store path", s.store_path.display())?;
        if !s.env_overrides.is_empty() {
            writeln!(
                f,
                "  {:W$}{}",
                "from environment",
                s.env_overrides.join(", ")
            )?;
        }
        if s.revocation_password_secret.is_some() {
            writeln!(f, "  {:W$}set", "revocation secret")?;
        }
        Ok(())
    }
}
