//! TLS settings of a [`Client`](crate::Client): the CAs it trusts and the certificate it
//! presents. reqwest speaks rustls with the ring provider and has no built-in roots, so a
//! client trusts exactly the CAs it is given.

use crate::ClientError;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Which CAs a client trusts and which certificate it presents; everything is optional.
///
/// Only paths are held; the private key is read when the client is built, kept in memory that
/// is wiped afterwards, and never printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file with the CA certificates that sign the server's certificate (`--ca-file`,
    /// `FLOTILLA_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate chain, leaf first, for a server that requires
    /// client certificates (`--client-cert`, `FLOTILLA_CLIENT_CERT`).
    pub client_cert: Option<PathBuf>,
    /// PEM file with the private key of `client_cert` (`--client-key`, `FLOTILLA_CLIENT_KEY`).
    pub client_key: Option<PathBuf>,
}

impl TlsOptions {
    /// Options trusting the CAs in `ca_file`.
    pub fn with_ca_file(ca_file: impl Into<PathBuf>) -> TlsOptions {
        TlsOptions {
            ca_file: Some(ca_file.into()),
            ..TlsOptions::default()
        }
    }

    /// The same options presenting the certificate in `cert` with the key in `key`.
    #[must_use]
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// Adds these settings to a reqwest client under construction.
    pub(crate) fn apply(
        &self,
        mut builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, ClientError> {
        builder = builder.use_rustls_tls().tls_built_in_root_certs(false);
        if let Some(ca_file) = &self.ca_file {
            let pem = read(ca_file)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| tls_error(ca_file, &e.to_string()))?;
            if certs.is_empty() {
                return Err(tls_error(ca_file, "no certificate in the file"));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                // reqwest takes the chain and the key as one PEM buffer.
                let mut pem = Zeroizing::new(read(cert)?.to_vec());
                pem.push(b'\n');
                pem.extend_from_slice(&read(key)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    tls_error(
                        cert,
                        &format!("{} (with the key in {})", cause(&e), key.display()),
                    )
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(ClientError::Tls(
                    "a client certificate needs its key too (--client-key)".to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(ClientError::Tls(
                    "a client key needs its certificate too (--client-cert)".to_owned(),
                ));
            }
        }
        Ok(builder)
    }
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| tls_error(path, &e.to_string()))
}

fn tls_error(path: &Path, message: &str) -> ClientError {
    ClientError::Tls(format!("{}: {message}", path.display()))
}

/// The innermost cause of a reqwest builder error, which says what was wrong with the PEM.
fn cause(error: &reqwest::Error) -> String {
    let mut last = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        last = cause.to_string();
        source = cause.source();
    }
    last
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_are_named() {
        let missing = TlsOptions::with_ca_file("/nonexistent/ca.pem");
        let Err(error) = missing.apply(reqwest::Client::builder()) else {
            panic!("a missing CA file was accepted");
        };
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");

        let half = TlsOptions {
            client_cert: Some("c.pem".into()),
            ..TlsOptions::default()
        };
        assert!(half.apply(reqwest::Client::builder()).is_err());
    }
}
