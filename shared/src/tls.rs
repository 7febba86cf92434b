//! TLS for the push: the injector CA, the init container's mutual-TLS server configuration and the
//! controller's client configuration. One crypto provider (ring) everywhere.
//!
//! Trust runs one way on purpose. The init container makes a fresh, self-signed server certificate
//! at start (nobody could know it in advance), and demands a client certificate issued by the
//! injector CA: only the controller can push. The controller cannot authenticate that ephemeral
//! server certificate, so it checks only that the server holds its key; what it sends is useless to
//! anyone else — a single-use wrapping token whose secret_id logs in only from the pod's own IP —
//! and the pod-identity check (`GET /v1/identity`, TokenReview) closes the rest.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Errors building TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// PEM text held no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(&'static str),
    /// PEM could not be parsed.
    #[error("invalid PEM in {what}: {source}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Parser error.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// The one crypto provider of this project.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default provider (needed by reqwest, vaultrs and kube).
/// Idempotent: a second call is a no-op.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Parses every certificate in a PEM bundle.
pub fn parse_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

/// Parses one private key from PEM.
pub fn parse_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| TlsError::Pem { what, source })
}

/// What a certificate issued by the [`Ca`] may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (webhook serving certificate).
    Server,
    /// TLS client (the controller's push identity).
    Client,
}

/// A certificate and its key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").finish_non_exhaustive()
    }
}

/// The injector CA: signs the controller's client certificate (and, later, the webhook's).
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Makes a new CA valid for `validity` (ECDSA P-256).
    pub fn generate(common_name: &str, validity: Duration) -> Result<Self, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, validity);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a leaf certificate.
    pub fn issue(
        &self,
        common_name: &str,
        sans: &[String],
        usage: Usage,
        validity: Duration,
    ) -> Result<IssuedCert, TlsError> {
        let mut params = CertificateParams::new(sans.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        set_validity(&mut params, validity);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    // Backdated a little: clocks across nodes are not perfectly in step.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + validity;
}

/// Server configuration without client authentication (ring, HTTP/1.1 only), from a PEM chain
/// (leaf first) and its key: the admission webhook and the dev servers of the test kit.
pub fn server_config(chain_pem: &str, key_pem: &str) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            parse_certs(chain_pem, "server certificate")?,
            parse_key(key_pem, "server key")?,
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Server configuration for the init container's receiver: a fresh self-signed certificate, and
/// client certificates required and verified against `client_ca_pem`.
pub fn receiver_server_config(client_ca_pem: &str) -> Result<ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(client_ca_pem, "client CA")? {
        roots.add(cert)?;
    }
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["vault-approle-init".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "vault-approle-init (ephemeral)");
    set_validity(&mut params, Duration::from_secs(24 * 3600));
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_owned())))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Client configuration for the controller's push: presents `client_cert_pem` and accepts the
/// receiver's ephemeral certificate (see the module docs for why that is sound).
pub fn push_client_config(
    client_cert_pem: &str,
    client_key_pem: &str,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(EphemeralServerCert(
        provider.signature_verification_algorithms,
    ));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            parse_certs(client_cert_pem, "client certificate")?,
            parse_key(client_key_pem, "client key")?,
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any server certificate but still verifies the handshake signature, so the peer must hold
/// the key of the certificate it shows.
#[derive(Debug)]
struct EphemeralServerCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EphemeralServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_issues_client_certs_that_the_receiver_accepts_in_config() {
        let ca = Ca::generate("test CA", Duration::from_secs(3600)).expect("ca");
        let client = ca
            .issue("controller", &[], Usage::Client, Duration::from_secs(600))
            .expect("issue");
        receiver_server_config(ca.cert_pem()).expect("server config");
        push_client_config(&client.cert_pem, &client.key_pem).expect("client config");
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).expect("reload");
        again
            .issue("controller", &[], Usage::Client, Duration::from_secs(600))
            .expect("issue from reloaded CA");
    }

    #[test]
    fn garbage_pem_is_a_clear_error() {
        let err = receiver_server_config("not a pem").expect_err("refused");
        assert!(err.to_string().contains("client CA"), "{err}");
    }
}
