//! Joining a cluster over mutual TLS with a join token, and the host's
//! credentials afterwards.
//!
//! 1. Pin the CA: a TLS handshake with the dispatcher, accepted only if its
//!    chain holds a certificate whose SHA-256 is the token's CA fingerprint
//!    and the server certificate verifies against it. Nothing is sent before.
//! 2. `Join` over TLS verified with that CA: the token's secret and the host
//!    name buy a client certificate for the host.
//! 3. Sessions present the certificate; the credentials are kept in the
//!    agent's state directory (the key readable by its owner only), so a
//!    restarted agent needs no token.
//!
//! With several dispatchers (a highly available control plane, where only
//! the leader serves agents), [`join_any`], [`renew_any`] and
//! [`keep_renewed`] try them in turn: one that cannot be reached, or that
//! is not the leader (it answers `Unavailable`), gives way to the next; a
//! real refusal (a wrong secret, another cluster's CA) stops at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use shoal_proto::join::{DISPATCHER_TLS_NAME, JoinToken, ca_fingerprint, hex};
use shoal_proto::{DispatcherClient, JoinRequest, RenewRequest};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The dispatcher cannot be reached (retryable).
    #[error("cannot reach the dispatcher at {address}: {message}")]
    Unreachable {
        /// What was dialled.
        address: String,
        /// Why it failed.
        message: String,
    },
    /// The dispatcher is not the token's cluster, or refused the token
    /// (fatal: a person must check the token or the address).
    #[error("{0}")]
    Refused(String),
    /// Reading or writing the state directory (fatal).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The address or the credentials are malformed (fatal).
    #[error("{0}")]
    Invalid(String),
}

impl JoinError {
    /// Whether trying again later may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, JoinError::Unreachable { .. })
    }
}

/// A host's credentials: the cluster CA, its certificate and key (PEM).
#[derive(Clone)]
pub struct Credentials {
    /// The cluster CA certificate.
    pub ca_pem: String,
    /// The host's certificate.
    pub cert_pem: String,
    /// The host's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Credentials {
    /// TLS for sessions: the cluster CA checks the dispatcher, the host's
    /// certificate proves the host.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(DISPATCHER_TLS_NAME)
    }

    /// SHA-256 of the CA certificate.
    pub fn ca_fingerprint(&self) -> Result<[u8; 32], JoinError> {
        let der = CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .map_err(|e| JoinError::Invalid(format!("the CA certificate: {e}")))?;
        Ok(ca_fingerprint(der.as_ref()))
    }

    /// When the host's certificate became valid and when it stops being
    /// valid (unix seconds).
    pub fn validity(&self) -> Result<(i64, i64), JoinError> {
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| JoinError::Invalid(format!("the host certificate: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| JoinError::Invalid(format!("the host certificate: {e}")))?;
        let v = cert.validity();
        Ok((v.not_before.timestamp(), v.not_after.timestamp()))
    }

    /// Whether the certificate is for the key held: a control plane that
    /// signed another key would leave the host with a pair that cannot work.
    fn check_key(&self) -> Result<(), JoinError> {
        let key = rcgen::KeyPair::from_pem(&self.key_pem)
            .map_err(|e| JoinError::Invalid(format!("the host key: {e}")))?;
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| JoinError::Invalid(format!("the host certificate: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| JoinError::Invalid(format!("the host certificate: {e}")))?;
        if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err(JoinError::Refused(
                "the control plane issued a certificate for another key than this host's".into(),
            ));
        }
        Ok(())
    }

    /// When to renew the certificate (unix seconds): once a third of its
    /// validity is left.
    pub fn renew_at(&self) -> Result<i64, JoinError> {
        let (from, until) = self.validity()?;
        Ok(until - (until - from) / 3)
    }

    const FILES: [&'static str; 3] = ["ca.crt", "host.crt", "host.key"];

    /// The credentials kept in `dir`, if all are there.
    pub fn load(dir: &Path) -> Result<Option<Credentials>, JoinError> {
        let mut parts = Vec::new();
        for f in Self::FILES {
            let path = dir.join(f);
            match std::fs::read_to_string(&path) {
                Ok(s) => parts.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(JoinError::Io { path, source }),
            }
        }
        let key_pem = parts.pop().unwrap_or_default();
        let cert_pem = parts.pop().unwrap_or_default();
        let ca_pem = parts.pop().unwrap_or_default();
        Ok(Some(Credentials {
            ca_pem,
            cert_pem,
            key_pem,
        }))
    }

    /// Deletes the credentials kept in `dir` (revoked: the host must join
    /// again); missing files are fine.
    pub fn forget(dir: &Path) -> Result<(), JoinError> {
        for f in Self::FILES {
            let path = dir.join(f);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(JoinError::Io { path, source }),
            }
        }
        Ok(())
    }

    /// Keeps the credentials in `dir` (created if missing; files readable
    /// by their owner only, each replaced atomically).
    pub fn save(&self, dir: &Path) -> Result<(), JoinError> {
        std::fs::create_dir_all(dir).map_err(|source| JoinError::Io {
            path: dir.to_owned(),
            source,
        })?;
        for (f, contents) in Self::FILES
            .iter()
            .zip([&self.ca_pem, &self.cert_pem, &self.key_pem])
        {
            let path = dir.join(f);
            shoal_proto::join::write_private(&path, contents.as_bytes())
                .map_err(|source| JoinError::Io { path, source })?;
        }
        Ok(())
    }
}

fn to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Accepts a server only if its chain holds the pinned CA and its
/// certificate verifies against it; remembers that CA.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
    found: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| ca_fingerprint(c.as_ref()) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the dispatcher's certificates do not include the CA of the join token (fingerprint {})",
                    hex(&self.fingerprint)
                ))
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        *self
            .found
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ca.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `host:port` of an `https://` dispatcher URL.
fn authority(url: &str) -> Result<String, JoinError> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| JoinError::Invalid(format!("--dispatcher {url:?}: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(JoinError::Invalid(format!(
            "--dispatcher {url:?}: joining needs the dispatcher's https:// join address"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| JoinError::Invalid(format!("--dispatcher {url:?}: no host")))?;
    let port = uri.port_u16().unwrap_or(443);
    Ok(format!("{host}:{port}"))
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster CA, read from the dispatcher at `url` and accepted only if
/// it is the one the token names.
pub async fn pin_ca(url: &str, token: &JoinToken) -> Result<String, JoinError> {
    let address = authority(url)?;
    let unreachable = |message: String| JoinError::Unreachable {
        address: address.clone(),
        message,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCa {
        fingerprint: token.ca_fingerprint,
        provider: provider.clone(),
        found: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| JoinError::Invalid(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let tcp = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(&address))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let name =
        ServerName::try_from(DISPATCHER_TLS_NAME).map_err(|e| JoinError::Invalid(e.to_string()))?;
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
    match tokio::time::timeout(TIMEOUT, handshake).await {
        Err(_) => return Err(unreachable("the TLS handshake timed out".into())),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(JoinError::Refused(format!(
                "{address} is not the dispatcher of the token's cluster: {e}"
            )));
        }
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Ok(Ok(_)) => {}
    }
    let ca = verifier
        .found
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .ok_or_else(|| JoinError::Refused(format!("{address} presented no CA")))?;
    Ok(to_pem(ca.as_ref()))
}

/// A client of the dispatcher at `url` over `tls`.
async fn dial(
    url: &str,
    tls: ClientTlsConfig,
) -> Result<DispatcherClient<tonic::transport::Channel>, JoinError> {
    let channel = Endpoint::from_shared(url.to_string())
        .map_err(|e| JoinError::Invalid(format!("--dispatcher {url:?}: {e}")))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .tls_config(tls)
        .map_err(|e| JoinError::Invalid(e.to_string()))?
        .connect()
        .await
        .map_err(|e| JoinError::Unreachable {
            address: url.to_string(),
            message: e.to_string(),
        })?;
    Ok(DispatcherClient::new(channel))
}

/// The credentials in the answer of the dispatcher at `url` to a join or a
/// renewal (`what` it was asked, for the message): unreachable (retryable)
/// on an unavailable server, refused otherwise.
fn credentials_from(
    url: &str,
    what: &str,
    own_key_pem: String,
    answer: Result<tonic::Response<shoal_proto::JoinResponse>, tonic::Status>,
) -> Result<Credentials, JoinError> {
    let resp = answer
        .map_err(|s| match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                JoinError::Unreachable {
                    address: url.to_string(),
                    message: s.message().to_string(),
                }
            }
            _ => JoinError::Refused(format!("the dispatcher refused {what}: {}", s.message())),
        })?
        .into_inner();
    // A control plane that predates signing requests makes the key itself.
    let key_pem = if resp.private_key_pem.is_empty() {
        own_key_pem
    } else {
        resp.private_key_pem
    };
    let creds = Credentials {
        ca_pem: resp.ca_pem,
        cert_pem: resp.certificate_pem,
        key_pem,
    };
    creds.check_key()?;
    Ok(creds)
}

/// A new key for this host (it never leaves the host) and a certificate
/// signing request for it, naming `host_name` (the control plane takes only
/// the key from it): the key and the request, PEM each.
fn key_and_request(host_name: &str) -> Result<(String, String), JoinError> {
    let bad = |what: &str, e: rcgen::Error| JoinError::Invalid(format!("{what}: {e}"));
    let key = rcgen::KeyPair::generate().map_err(|e| bad("making a key", e))?;
    let mut params = rcgen::CertificateParams::new(vec![host_name.to_string()])
        .map_err(|e| bad("the certificate request", e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host_name);
    let csr = params
        .serialize_request(&key)
        .map_err(|e| bad("the certificate request", e))?;
    let csr_pem = csr.pem().map_err(|e| bad("the certificate request", e))?;
    Ok((key.serialize_pem(), csr_pem))
}

/// Joins the cluster of `token` through the dispatcher at `url` as
/// `host_name`: the host's new credentials.
pub async fn join(url: &str, token: &JoinToken, host_name: &str) -> Result<Credentials, JoinError> {
    let ca_pem = pin_ca(url, token).await?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name(DISPATCHER_TLS_NAME);
    let mut client = dial(url, tls).await?;
    let (key_pem, csr_pem) = key_and_request(host_name)?;
    let creds = credentials_from(
        url,
        "to join this host",
        key_pem,
        client
            .join(JoinRequest {
                secret: token.secret.clone(),
                host_name: host_name.to_string(),
                csr_pem,
            })
            .await,
    )?;
    if creds.ca_fingerprint()? != token.ca_fingerprint {
        return Err(JoinError::Refused(
            "the dispatcher answered with another CA than the token's".into(),
        ));
    }
    Ok(creds)
}

/// Trades the host's certificate, still valid, for a new one through the
/// dispatcher at `url` (its mutual TLS listener).
pub async fn renew(url: &str, creds: &Credentials) -> Result<Credentials, JoinError> {
    let mut client = dial(url, creds.client_tls()).await?;
    let (key_pem, csr_pem) = key_and_request("shoal-host")?;
    let new = credentials_from(
        url,
        "to renew this host's certificate",
        key_pem,
        client.renew(RenewRequest { csr_pem }).await,
    )?;
    if new.ca_fingerprint()? != creds.ca_fingerprint()? {
        return Err(JoinError::Refused(
            "the dispatcher renewed with another CA than the cluster's".into(),
        ));
    }
    Ok(new)
}

/// Tries `attempt` on each of `urls` in turn until one answers: the first
/// answer, or the first error that is not retryable; when none could be
/// reached, an [`JoinError::Unreachable`] naming them all.
async fn any_of<'a, T, F, Fut>(urls: &'a [String], mut attempt: F) -> Result<T, JoinError>
where
    F: FnMut(&'a str) -> Fut,
    Fut: std::future::Future<Output = Result<T, JoinError>>,
{
    let mut unreachable = Vec::new();
    for url in urls {
        match attempt(url).await {
            Err(e) if e.is_retryable() => {
                tracing::debug!(%url, error = %e, "trying the next dispatcher");
                unreachable.push(e);
            }
            done => return done,
        }
    }
    if unreachable.len() > 1 {
        let message = unreachable
            .iter()
            .map(|e| match e {
                JoinError::Unreachable { address, message } => format!("{address}: {message}"),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(JoinError::Unreachable {
            address: format!("any of {}", urls.join(", ")),
            message,
        });
    }
    unreachable.pop().map_or_else(
        || Err(JoinError::Invalid("no dispatcher address".into())),
        Err,
    )
}

/// Joins like [`join`] through the first of the dispatchers at `urls` that
/// answers (tried in turn; see [`any_of`]).
pub async fn join_any(
    urls: &[String],
    token: &JoinToken,
    host_name: &str,
) -> Result<Credentials, JoinError> {
    any_of(urls, |url| join(url, token, host_name)).await
}

/// Renews like [`renew`] through the first of the dispatchers at `urls`
/// that answers (tried in turn).
pub async fn renew_any(urls: &[String], creds: &Credentials) -> Result<Credentials, JoinError> {
    any_of(urls, |url| renew(url, creds)).await
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Keeps the host's certificate fresh until `shutdown`: once a third of its
/// validity is left, renews it through the first of the dispatchers at
/// `urls` that answers (tried in turn), keeps the new credentials in
/// `state_dir` and publishes them on `current` (the session's next
/// connection uses them). While no dispatcher can be reached it tries
/// again every 30 s; it gives up when the control plane refuses (the
/// session is refused then too, and says why).
pub async fn keep_renewed(
    urls: Vec<String>,
    state_dir: PathBuf,
    current: watch::Sender<Credentials>,
    shutdown: CancellationToken,
) {
    loop {
        let creds = current.borrow().clone();
        let due = match creds.renew_at() {
            Ok(at) => at - unix_now(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the host certificate; it will not be renewed");
                return;
            }
        };
        if due > 0 {
            // Looked at again at least hourly (the clock may jump).
            let wait = Duration::from_secs(u64::try_from(due).unwrap_or(0).min(3600));
            tokio::select! {
                () = tokio::time::sleep(wait) => continue,
                () = shutdown.cancelled() => return,
            }
        }
        // Renewed by any server, the ones the control plane told too.
        let known = crate::dispatchers::Dispatchers::new(
            urls.clone(),
            Some(state_dir.join(crate::dispatchers::FILE)),
        )
        .all();
        match renew_any(&known, &creds).await {
            Ok(new) => {
                if let Err(e) = new.save(&state_dir) {
                    tracing::error!(error = %e, "cannot keep the renewed certificate");
                }
                let until = new.validity().map(|v| v.1).unwrap_or_default();
                current.send_replace(new);
                tracing::info!(valid_until = until, "host certificate renewed");
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "cannot renew the host certificate yet; trying again in 30s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the host certificate was not renewed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn join_addresses_must_be_https() {
        assert_eq!(authority("https://10.0.0.1:6445").unwrap(), "10.0.0.1:6445");
        assert_eq!(authority("https://node-1").unwrap(), "node-1:443");
        let e = authority("http://10.0.0.1:6445").unwrap_err().to_string();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn credentials_are_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Credentials::load(dir.path()).unwrap().is_none());
        let c = Credentials {
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
        };
        c.save(&dir.path().join("creds")).unwrap();
        let back = Credentials::load(&dir.path().join("creds"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (back.ca_pem, back.cert_pem, back.key_pem),
            ("ca".into(), "cert".into(), "key".into())
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("creds/host.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        assert!(!format!("{c:?}").contains("key"));
    }

    #[tokio::test]
    async fn dispatchers_are_tried_in_turn_until_one_answers_or_refuses() {
        let urls: Vec<String> = ["https://a:1", "https://b:1", "https://c:1"]
            .map(String::from)
            .to_vec();
        let unreachable = |url: &str| JoinError::Unreachable {
            address: url.trim_start_matches("https://").into(),
            message: "connection refused".into(),
        };
        // Unreachable, then an answer: the answer; the rest is not tried.
        let mut tried = Vec::new();
        let got = any_of(&urls, |url| {
            tried.push(url.to_string());
            let r = if url.contains('a') {
                Err(unreachable(url))
            } else {
                Ok(url.to_string())
            };
            async move { r }
        })
        .await
        .unwrap();
        assert_eq!(got, "https://b:1");
        assert_eq!(tried, ["https://a:1", "https://b:1"]);

        // A real refusal stops.
        let e = any_of(&urls, |url| {
            let r: Result<(), _> = if url.contains('a') {
                Err(unreachable(url))
            } else {
                Err(JoinError::Refused(format!("{url} says no")))
            };
            async move { r }
        })
        .await
        .unwrap_err();
        assert!(!e.is_retryable());
        assert_eq!(e.to_string(), "https://b:1 says no");

        // None reachable: retryable, naming each.
        let e = any_of(&urls, |url| {
            let r: Result<(), _> = Err(unreachable(url));
            async move { r }
        })
        .await
        .unwrap_err();
        assert!(e.is_retryable());
        let text = e.to_string();
        for a in ["a:1: connection refused", "b:1: connection refused", "c:1"] {
            assert!(text.contains(a), "{text}");
        }
        // One: its own error, as before.
        let e = any_of(&urls[..1], |url| {
            let r: Result<(), _> = Err(unreachable(url));
            async move { r }
        })
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot reach the dispatcher at a:1: connection refused"
        );
        // None at all: invalid, not retried forever.
        let e = any_of(&[], |_| async { Ok(()) }).await.unwrap_err();
        assert!(!e.is_retryable(), "{e:?}");
    }

    #[test]
    fn pem_encoding_reads_back() {
        let der = (0u8..=255).collect::<Vec<_>>();
        let pem = to_pem(&der);
        let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), der.as_slice());
    }
}
