//! TLS to the database: `verify-full` (the default) checks the chain and the host name against
//! Mozilla's roots plus `ROTATOR_DB_CA_BUNDLE` (RDS's CAs are not public roots: give the RDS
//! bundle); `require` encrypts without checking who answers; `disable` must be asked for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    VerifyFull,
    Require,
    Disable,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the CA bundle {path}: {reason}")]
    Bundle { path: String, reason: String },
}

/// The database TLS settings, built once.
#[derive(Clone)]
pub struct DbTls {
    pub mode: TlsMode,
    /// The rustls configuration (PostgreSQL); `None` for `disable`.
    pub config: Option<Arc<ClientConfig>>,
    /// The extra CAs, for adapters that build their own TLS configuration (MySQL).
    pub ca_bundle: Option<PathBuf>,
}

impl std::fmt::Debug for DbTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbTls").field("mode", &self.mode).finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl DbTls {
    pub fn new(mode: TlsMode, ca_bundle: Option<&Path>) -> Result<Self, TlsError> {
        let config = match mode {
            TlsMode::Disable => None,
            TlsMode::VerifyFull => {
                let mut roots = RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                if let Some(path) = ca_bundle {
                    let bundle_err = |reason: String| TlsError::Bundle {
                        path: path.display().to_string(),
                        reason,
                    };
                    let mut n = 0;
                    let certs = CertificateDer::pem_file_iter(path)
                        .map_err(|e| bundle_err(e.to_string()))?;
                    for cert in certs {
                        let cert = cert.map_err(|e| bundle_err(e.to_string()))?;
                        roots.add(cert).map_err(|e| bundle_err(e.to_string()))?;
                        n += 1;
                    }
                    if n == 0 {
                        return Err(bundle_err("no PEM certificate in it".into()));
                    }
                }
                Some(
                    ClientConfig::builder_with_provider(provider())
                        .with_safe_default_protocol_versions()
                        .expect("aws-lc-rs supports the default versions")
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                )
            }
            TlsMode::Require => Some(
                ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .expect("aws-lc-rs supports the default versions")
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
                    .with_no_client_auth(),
            ),
        };
        Ok(Self {
            mode,
            config: config.map(Arc::new),
            ca_bundle: ca_bundle.map(Path::to_path_buf),
        })
    }
}

/// `require`: encryption without authentication of the server, like libpq's sslmode=require.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
