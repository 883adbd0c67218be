//! Certificates made in the test (rcgen): a CA and the leaves it signs, for TLS and mutual-TLS
//! tests of the API, the agents and the CLI.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::path::{Path, PathBuf};

/// What a PKI helper can fail with.
pub type PkiError = Box<dyn std::error::Error + Send + Sync>;

/// A self-signed CA and what it signs.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<TestCa, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key)?;
        Ok(TestCa { cert, key })
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's certificate, DER.
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// The CA's certificate written to `<dir>/<file>`.
    pub fn write_cert(&self, dir: &Path, file: &str) -> Result<PathBuf, PkiError> {
        let path = dir.join(file);
        std::fs::write(&path, self.cert.pem())?;
        Ok(path)
    }

    /// A leaf certificate for `names` with `usage`: (certificate PEM, key PEM).
    pub fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// [`TestCa::issue`] written to `<dir>/<file>.pem` and `<dir>/<file>.key`: (certificate
    /// path, key path).
    pub fn issue_files(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        let (cert, key) = self.issue(names, usage)?;
        let paths = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&paths.0, cert)?;
        std::fs::write(&paths.1, key)?;
        Ok(paths)
    }
}
