//! Connector bundles for tests and the demo: a valid one by default, and every way an
//! operator's bundle can be wrong, by changing one thing.

use std::io::{Cursor, Write};

use time::OffsetDateTime;
use zip::write::SimpleFileOptions;

use crate::pki::{self, Ca, Issued, P12Encryption};

/// Everything a bundle is made of, each part replaceable.
pub struct BundleBuilder {
    /// Lines of dtrust.properties.
    pub properties: Vec<String>,
    /// The zip entries besides dtrust.properties, in order.
    pub entries: Vec<(String, Vec<u8>)>,
    /// The CA that issued the client and server certificates.
    pub ca: Ca,
    /// The account's client certificate and key.
    pub client: Issued,
    /// The server certificate of the (simulated) D-Trust service.
    pub server: Issued,
}

/// The keystore's entry name in the default bundle (an Identity Manager-style name).
pub const P12_NAME: &str = "CSMWM447922870184925_neXus_Technology_GmbH_2015_SSL.p12";
/// The server certificate's entry name in the default bundle.
pub const CER_NAME: &str = "D-TRUST_SSL_Class_3_CA_1_2009.cer";
/// The keystore password of the default bundle.
pub const P12_PASSWORD: &str = "Tr0ub4dor&3-keystore";
/// The `revocationPasswordSecret` of the test bundles.
pub const REVOCATION_SECRET: &str = "kit-shared-revocation-secret-7f3a";

impl BundleBuilder {
    /// A valid bundle for `url`: products SSL-Basic, SSL-OV, Personal-Sig; the CA as
    /// trust anchor; an AES keystore with password [`P12_PASSWORD`].
    pub fn new(url: &str) -> BundleBuilder {
        let ca = Ca::new("dtrust-worker Test CA");
        let (nb, na) = pki::valid_for(365);
        let client = ca.client("CSM447922870184925 neXus Technology GmbH", nb, na);
        let server = ca.server(&["localhost", "127.0.0.1"]);
        let p12 = pki::pkcs12(
            &client,
            &[&ca.cert.cert_der],
            P12_PASSWORD,
            P12Encryption::Aes256,
        );
        BundleBuilder {
            properties: vec![
                "# D-Trust REST interface".into(),
                format!("url={url}"),
                format!("p12File={P12_NAME}"),
                format!("p12Password={P12_PASSWORD}"),
                format!("serverCertificate={CER_NAME}"),
                "certificateTemplates=SSL-Basic;SSL-OV;Personal-Sig".into(),
                // Shared by every worker on a prefix (generated revocation passwords).
                format!("revocationPasswordSecret={REVOCATION_SECRET}"),
            ],
            entries: vec![
                (P12_NAME.into(), p12),
                (CER_NAME.into(), ca.cert.cert_der.clone()),
            ],
            ca,
            client,
            server,
        }
    }

    /// Sets (or adds) a property, replacing every earlier line of that key.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self = self.remove(key);
        self.properties.push(format!("{key}={value}"));
        self
    }

    /// Removes every line of a property.
    pub fn remove(mut self, key: &str) -> Self {
        let prefix = format!("{key}=");
        self.properties.retain(|l| !l.starts_with(&prefix));
        self
    }

    /// Replaces (or adds) a zip entry.
    pub fn entry(mut self, name: &str, data: Vec<u8>) -> Self {
        self = self.without_entry(name);
        self.entries.push((name.into(), data));
        self
    }

    /// Removes a zip entry.
    pub fn without_entry(mut self, name: &str) -> Self {
        self.entries.retain(|(n, _)| n != name);
        self
    }

    /// Replaces the keystore with one for `client`, in `encryption`.
    pub fn keystore(self, client: &Issued, password: &str, encryption: P12Encryption) -> Self {
        let p12 = pki::pkcs12(client, &[&self.ca.cert.cert_der], password, encryption);
        self.entry(P12_NAME, p12)
    }

    /// A client certificate from this bundle's CA, valid from `not_before` to `not_after`.
    pub fn client_valid(&self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Issued {
        self.ca.client(
            "CSM447922870184925 neXus Technology GmbH",
            not_before,
            not_after,
        )
    }

    /// The dtrust.properties text.
    pub fn properties_text(&self) -> String {
        let mut text = self.properties.join("\n");
        text.push('\n');
        text
    }

    /// The zip.
    pub fn build(&self) -> Vec<u8> {
        let mut files = vec![(
            "dtrust.properties".to_string(),
            self.properties_text().into_bytes(),
        )];
        files.extend(self.entries.iter().cloned());
        zip_of(&files)
    }

    /// Writes the zip to `path`.
    pub fn write(&self, path: &std::path::Path) {
        std::fs::write(path, self.build()).expect("write bundle");
    }
}

/// A zip of the given files, deflated.
pub fn zip_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        zip.start_file(name.as_str(), options).expect("zip entry");
        zip.write_all(data).expect("zip data");
    }
    zip.finish().expect("finish zip").into_inner()
}
