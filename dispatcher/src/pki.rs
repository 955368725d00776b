//! The cluster's certificate authority and join secret (DESIGN.md,
//! Security): created on first start in the control plane's `pki/`
//! directory, it signs the dispatcher's server certificate and one client
//! certificate per host that joins with the token.
//!
//! Files (keys and the secret readable by the owner only): `ca.crt`,
//! `ca.key`, `join-secret`. The dispatcher's own certificate is made afresh
//! at every start, for [`DISPATCHER_TLS_NAME`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use ring::rand::SecureRandom;
use shoal_proto::JoinResponse;
use shoal_proto::join::{DISPATCHER_TLS_NAME, JoinToken, ca_fingerprint, hex};

/// Why the PKI cannot be loaded or a certificate issued (all fatal for the
/// caller: a broken `pki/` directory needs a person).
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file of the `pki/` directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Generating or parsing a key or a certificate.
    #[error("{0}")]
    Crypto(String),
    /// A certificate that must not be issued (e.g. for peer id 0).
    #[error("{0}")]
    Invalid(String),
    /// A host's certificate signing request that is not one, or whose
    /// signature does not match its key.
    #[error("the certificate signing request: {0}")]
    Request(String),
}

/// The TLS name control-plane peers dial each other by (every peer
/// certificate is valid for it), like [`DISPATCHER_TLS_NAME`] for agents.
pub const PEER_TLS_NAME: &str = "shoal-peer";

/// The common name of a peer certificate is this followed by the peer's Raft
/// id (`shoal-peer-3`).
pub const PEER_NAME_PREFIX: &str = "shoal-peer-";

fn crypto(what: &str) -> impl Fn(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError::Crypto(format!("{what}: {e}"))
}

/// The cluster CA, the join secret and the dispatcher's TLS identity.
pub struct ClusterPki {
    ca_pem: String,
    ca_key_pem: String,
    token: JoinToken,
    server_cert_pem: String,
    server_key_pem: String,
}

// Keys and the secret never reach a log.
impl std::fmt::Debug for ClusterPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPki")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    shoal_proto::join::write_private(path, contents.as_bytes()).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn random_hex(bytes: usize) -> Result<String, PkiError> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| PkiError::Crypto("the system random source failed".into()))?;
    Ok(hex(&buf))
}

fn pem_to_der(pem_str: &str) -> Result<Vec<u8>, PkiError> {
    let p = x509_parser::pem::parse_x509_pem(pem_str.as_bytes())
        .map_err(|e| PkiError::Crypto(format!("reading a PEM certificate: {e}")))?;
    Ok(p.1.contents)
}

/// Parameters of a certificate for `common_name`, valid for `names` (DNS
/// names or IP addresses) and the one extended key usage.
fn leaf_params(
    common_name: &str,
    names: &[&str],
    eku: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(crypto("certificate"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => (*n)
                .try_into()
                .map(SanType::DnsName)
                .map_err(crypto("certificate name")),
        })
        .collect::<Result<_, _>>()?;
    params.extended_key_usages = vec![eku];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

impl ClusterPki {
    /// Loads the CA and the secret from `dir`, creating them on first use,
    /// and makes the dispatcher's certificate.
    pub fn load_or_create(dir: &Path, cluster_id: &str) -> Result<ClusterPki, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let (crt, key, secret_path) = (
            dir.join("ca.crt"),
            dir.join("ca.key"),
            dir.join("join-secret"),
        );
        let (ca_pem, ca_key_pem) = match (read(&crt)?, read(&key)?) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let key_pair = KeyPair::generate().map_err(crypto("CA key"))?;
                let mut params =
                    CertificateParams::new(Vec::<String>::new()).map_err(crypto("CA"))?;
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, format!("Shoal cluster {cluster_id} CA"));
                params.distinguished_name = dn;
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                let cert = params.self_signed(&key_pair).map_err(crypto("CA"))?;
                let (c, k) = (cert.pem(), key_pair.serialize_pem());
                // The key first: a certificate without its key is useless.
                write_private(&key, &k)?;
                write_private(&crt, &c)?;
                (c, k)
            }
        };
        let secret = match read(&secret_path)? {
            Some(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => {
                let s = random_hex(16)?;
                write_private(&secret_path, &format!("{s}\n"))?;
                s
            }
        };
        let token = JoinToken {
            cluster_id: cluster_id.to_string(),
            ca_fingerprint: ca_fingerprint(&pem_to_der(&ca_pem)?),
            secret,
        };
        let mut pki = ClusterPki {
            ca_pem,
            ca_key_pem,
            token,
            server_cert_pem: String::new(),
            server_key_pem: String::new(),
        };
        let (cert, key) = pki.sign(&leaf_params(
            DISPATCHER_TLS_NAME,
            &[DISPATCHER_TLS_NAME],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?)?;
        // The chain includes the CA: a joining agent finds it there and
        // checks it against the fingerprint in its token.
        pki.server_cert_pem = format!("{cert}{}", pki.ca_pem);
        pki.server_key_pem = key;
        Ok(pki)
    }

    /// A new key and its certificate, signed by the CA (PEM each).
    fn sign(&self, params: &CertificateParams) -> Result<(String, String), PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(crypto("CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, ca_key).map_err(crypto("CA"))?;
        let key = KeyPair::generate().map_err(crypto("key"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(crypto("certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A serving certificate (chained to the CA) and its key for the API
    /// server, valid for `names`: DNS names or IP addresses.
    pub fn issue_server(&self, names: &[String]) -> Result<(String, String), PkiError> {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (cert, key) = self.sign(&leaf_params(
            "shoal-apiserver",
            &names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?)?;
        Ok((format!("{cert}{}", self.ca_pem), key))
    }

    /// A certificate and its key (PEM each) for control-plane peer `id` (the
    /// Raft id of a `shoal server`): common name `shoal-peer-<id>`, valid for
    /// [`PEER_TLS_NAME`], for both serving and dialling (its peers dial it,
    /// and it dials them with the same identity). See [`peer_of`].
    pub fn issue_peer(&self, id: u64) -> Result<(String, String), PkiError> {
        if id == 0 {
            return Err(PkiError::Invalid("a peer id must not be 0".into()));
        }
        let mut params = leaf_params(
            &format!("{PEER_NAME_PREFIX}{id}"),
            &[PEER_TLS_NAME],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(&params)
    }

    /// TLS for the peer listener of control-plane peer `id`: a new
    /// certificate of [`ClusterPki::issue_peer`], and client certificates of
    /// the cluster CA required (whether a client certificate is a peer's is
    /// for the caller to check, with [`peer_of`]).
    pub fn peer_server_tls(&self, id: u64) -> Result<tonic::transport::ServerTlsConfig, PkiError> {
        let (cert, key) = self.issue_peer(id)?;
        Ok(tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false))
    }

    /// TLS for control-plane peer `id` dialling its peers: the cluster CA as
    /// the only root, [`PEER_TLS_NAME`] as the name the server certificate
    /// must carry, and a new certificate of [`ClusterPki::issue_peer`] as
    /// the client's.
    pub fn peer_client_tls(&self, id: u64) -> Result<tonic::transport::ClientTlsConfig, PkiError> {
        let (cert, key) = self.issue_peer(id)?;
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .domain_name(PEER_TLS_NAME)
            .identity(tonic::transport::Identity::from_pem(cert, key)))
    }

    /// The join token (print it for people; never log it).
    pub fn token(&self) -> &JoinToken {
        &self.token
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// TLS for the join listener: the dispatcher's certificate, and client
    /// certificates of the cluster CA accepted but not required (a joining
    /// host has none yet; every call but `Join` checks for one).
    pub fn server_tls(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.server_cert_pem,
                &self.server_key_pem,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }

    /// Whether `secret` is the join secret (in constant time).
    pub fn secret_matches(&self, secret: &str) -> bool {
        let (a, b) = (self.token.secret.as_bytes(), secret.trim().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Credentials for host `host_name`, valid for `validity` from now, and
    /// from a little before (a tenth of it, at most a minute: clocks differ).
    pub fn issue(&self, host_name: &str, validity: Duration) -> Result<JoinResponse, PkiError> {
        let (certificate_pem, private_key_pem) = self.sign(&host_params(host_name, validity)?)?;
        Ok(JoinResponse {
            certificate_pem,
            private_key_pem,
            ca_pem: self.ca_pem.clone(),
        })
    }

    /// Like [`ClusterPki::issue`], for a key the host made itself: the
    /// certificate is for the public key of `csr_pem` (a PKCS#10 request whose
    /// signature is checked, so the host holds the key), and the answer
    /// carries no key. Only the key is taken from the request: the name,
    /// usages and validity are this CA's, whatever the request asks.
    pub fn issue_for_request(
        &self,
        host_name: &str,
        csr_pem: &str,
        validity: Duration,
    ) -> Result<JoinResponse, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Request(e.to_string()))?;
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(crypto("CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, ca_key).map_err(crypto("CA"))?;
        let cert = host_params(host_name, validity)?
            .signed_by(&csr.public_key, &issuer)
            .map_err(crypto("certificate"))?;
        Ok(JoinResponse {
            certificate_pem: cert.pem(),
            private_key_pem: String::new(),
            ca_pem: self.ca_pem.clone(),
        })
    }
}

/// A host certificate's settings: client authentication as `host_name`,
/// valid from a little before now (clocks differ) for `validity`.
fn host_params(host_name: &str, validity: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = leaf_params(host_name, &[host_name], ExtendedKeyUsagePurpose::ClientAuth)?;
    let span = |d: Duration| {
        time::Duration::try_from(d)
            .map_err(|e| PkiError::Crypto(format!("certificate validity: {e}")))
    };
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - span((validity / 10).min(Duration::from_secs(60)))?;
    params.not_after = now + span(validity)?;
    Ok(params)
}

/// The SHA-256 (hex) of a certificate, as the Host's
/// [`shoal_crds::CERTIFICATE_ANNOTATION`] records it.
pub fn fingerprint(cert_der: &[u8]) -> String {
    hex(&shoal_proto::join::ca_fingerprint(cert_der))
}

/// [`fingerprint`] of a PEM certificate.
pub fn fingerprint_pem(cert_pem: &str) -> Result<String, PkiError> {
    Ok(fingerprint(&pem_to_der(cert_pem)?))
}

/// The host a client certificate was issued for (its common name). The TLS
/// layer has already checked that the cluster CA signed it.
pub fn host_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The control-plane peer a certificate was issued for by
/// [`ClusterPki::issue_peer`]: its Raft id, from a common name
/// `shoal-peer-<id>`. The TLS layer has already checked that the cluster CA
/// signed it. `None` for any other certificate — an agent's host
/// certificate in particular, even for a host named `shoal-peer-<n>`: a peer
/// certificate must also be valid for [`PEER_TLS_NAME`] and for serving,
/// which a host certificate never is.
pub fn peer_of(cert_der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let mut cns = cert.subject().iter_common_name();
    let cn = cns.next()?.as_str().ok()?;
    if cns.next().is_some() {
        return None;
    }
    let digits = cn.strip_prefix(PEER_NAME_PREFIX)?;
    // Canonical decimal only: `shoal-peer-03` or `shoal-peer-+3` is not peer 3.
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u64 = digits.parse().ok()?;
    let eku = cert.extended_key_usage().ok()??.value;
    if !(eku.server_auth && eku.client_auth) {
        return None;
    }
    let san = cert.subject_alternative_name().ok()??.value;
    let named = san.general_names.iter().any(
        |n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if *d == PEER_TLS_NAME),
    );
    named.then_some(id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn created_once_then_loaded_with_the_same_token() {
        let dir = tempfile::tempdir().unwrap();
        let a = ClusterPki::load_or_create(dir.path(), "abc123").unwrap();
        let b = ClusterPki::load_or_create(dir.path(), "abc123").unwrap();
        assert_eq!(a.token(), b.token());
        assert_eq!(a.ca_pem(), b.ca_pem());
        let token: JoinToken = a.token().to_string().parse().unwrap();
        assert_eq!(&token, a.token());
        assert_eq!(
            token.ca_fingerprint,
            ca_fingerprint(&pem_to_der(a.ca_pem()).unwrap())
        );
        use std::os::unix::fs::PermissionsExt;
        for f in ["ca.key", "join-secret"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
        }
        assert!(a.secret_matches(&token.secret));
        assert!(!a.secret_matches("0123456789abcdef0123456789abcdef"));
        assert!(!a.secret_matches(""));
    }

    #[test]
    fn a_signing_request_gets_a_certificate_for_its_key_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::load_or_create(dir.path(), "abc123").unwrap();
        // The request asks for another name and for serving: only its key is
        // taken.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "shoal-peer-1");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let creds = pki
            .issue_for_request("node-2", &csr, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(creds.private_key_pem, "", "the key stays with the host");
        let der = pem_to_der(&creds.certificate_pem).unwrap();
        assert_eq!(host_of(&der).as_deref(), Some("node-2"));
        assert_eq!(peer_of(&der), None);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let ca_der = pem_to_der(pki.ca_pem()).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(cert.verify_signature(Some(ca.public_key())).is_ok());

        // Not a request, or one whose signature is not its key's.
        let err = pki
            .issue_for_request("node-2", "not a request", Duration::from_secs(3600))
            .unwrap_err();
        assert!(matches!(err, PkiError::Request(_)), "{err}");
        let mut bytes = pem::parse(&csr).unwrap().into_contents();
        let n = bytes.len();
        bytes[n - 5] ^= 0xff;
        let forged = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bytes));
        let err = pki
            .issue_for_request("node-2", &forged, Duration::from_secs(3600))
            .unwrap_err();
        assert!(matches!(err, PkiError::Request(_)), "{err}");
    }

    #[test]
    fn issued_certificates_name_their_host_and_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::load_or_create(dir.path(), "abc123").unwrap();
        let creds = pki
            .issue("node-2", Duration::from_secs(90 * 24 * 3600))
            .unwrap();
        let der = x509_parser::pem::parse_x509_pem(creds.certificate_pem.as_bytes())
            .unwrap()
            .1
            .contents;
        assert_eq!(host_of(&der).as_deref(), Some("node-2"));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = pem_to_der(pki.ca_pem()).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca.subject());
        assert!(cert.verify_signature(Some(ca.public_key())).is_ok());
        assert!(creds.private_key_pem.contains("PRIVATE KEY"));
        // Valid for the validity asked for, from a minute ago.
        let v = cert.validity();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let days = (v.not_after.timestamp() - now) as f64 / 86400.0;
        assert!((89.9..=90.0).contains(&days), "{days} days");
        assert!((55..=65).contains(&(now - v.not_before.timestamp())));
    }

    fn der(pem: &str) -> Vec<u8> {
        pem_to_der(pem).unwrap()
    }

    #[test]
    fn peer_certificates_name_their_peer_and_serve_and_dial() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::load_or_create(dir.path(), "abc123").unwrap();
        let (cert_pem, key_pem) = pki.issue_peer(42).unwrap();
        assert!(key_pem.contains("PRIVATE KEY"));
        let cert_der = der(&cert_pem);
        assert_eq!(peer_of(&cert_der), Some(42));
        // Its common name is also what `host_of` reads: peers are told apart
        // by `peer_of`, not by the name alone.
        assert_eq!(host_of(&cert_der).as_deref(), Some("shoal-peer-42"));

        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        let ca_der = der(pki.ca_pem());
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca.subject());
        assert!(cert.verify_signature(Some(ca.public_key())).is_ok());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            san.general_names,
            vec![x509_parser::extensions::GeneralName::DNSName(PEER_TLS_NAME)]
        );

        assert_eq!(peer_of(&der(&pki.issue_peer(1).unwrap().0)), Some(1));
        assert_eq!(
            peer_of(&der(&pki.issue_peer(u64::MAX).unwrap().0)),
            Some(u64::MAX)
        );
        assert!(matches!(pki.issue_peer(0), Err(PkiError::Invalid(_))));
        assert!(pki.peer_server_tls(3).is_ok());
        assert!(pki.peer_client_tls(3).is_ok());
        assert!(pki.peer_client_tls(0).is_err());
    }

    #[test]
    fn other_certificates_are_not_peers() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::load_or_create(dir.path(), "abc123").unwrap();
        let validity = Duration::from_secs(3600);
        // Host certificates, even of hosts named like a peer.
        for host in ["node-2", "shoal-peer-7", "shoal-peer"] {
            let creds = pki.issue(host, validity).unwrap();
            assert_eq!(peer_of(&der(&creds.certificate_pem)), None, "{host}");
        }
        // The API server's and the dispatcher's serving certificates.
        let (api, _) = pki
            .issue_server(&["shoal-peer".into(), "127.0.0.1".into()])
            .unwrap();
        assert_eq!(peer_of(&der(&api)), None);
        assert_eq!(peer_of(&der(&pki.server_cert_pem)), None);
        assert_eq!(peer_of(&der(pki.ca_pem())), None);
        // Right usages and name, but not a canonical peer id.
        for cn in [
            "shoal-peer-",
            "shoal-peer-07",
            "shoal-peer-+7",
            "shoal-peer-x",
            "shoal-peer-0",
        ] {
            let mut params =
                leaf_params(cn, &[PEER_TLS_NAME], ExtendedKeyUsagePurpose::ServerAuth).unwrap();
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let (cert, _) = pki.sign(&params).unwrap();
            assert_eq!(peer_of(&der(&cert)), None, "{cn}");
        }
        // A peer's name without the peer's usages or TLS name.
        let (cert, _) = pki
            .sign(
                &leaf_params(
                    "shoal-peer-7",
                    &[PEER_TLS_NAME],
                    ExtendedKeyUsagePurpose::ClientAuth,
                )
                .unwrap(),
            )
            .unwrap();
        assert_eq!(peer_of(&der(&cert)), None);
        let mut params = leaf_params(
            "shoal-peer-7",
            &["other"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
        .unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let (cert, _) = pki.sign(&params).unwrap();
        assert_eq!(peer_of(&der(&cert)), None);
        assert_eq!(peer_of(b"not a certificate"), None);
    }
}
