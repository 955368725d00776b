//! The join token: what a host needs to join a cluster over mutual TLS.
//!
//! `SHOAL1-<cluster id>-<CA fingerprint>-<secret>`: the cluster id the agent
//! will serve; the SHA-256 of the cluster CA certificate (DER, 64 hex
//! digits), which the agent pins before it sends anything; and the secret
//! (32 hex digits) the control plane issues a certificate for. The idea is
//! Docker Swarm's `SWMTKN`.

use std::fmt;
use std::str::FromStr;

/// The name the dispatcher's certificate is issued for and agents check,
/// whatever address they dial (the CA pin is what they trust).
pub const DISPATCHER_TLS_NAME: &str = "dispatcher.shoal.internal";

const PREFIX: &str = "SHOAL1";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The cluster id.
    pub cluster_id: String,
    /// SHA-256 of the cluster CA certificate (DER).
    pub ca_fingerprint: [u8; 32],
    /// The secret, as written (hex).
    pub secret: String,
}

// The secret never reaches a log through Debug.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("cluster_id", &self.cluster_id)
            .field("ca_fingerprint", &hex(&self.ca_fingerprint))
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a Shoal join token: {0} (it looks like SHOAL1-<cluster id>-<64 hex digits>-<32 hex digits>; `shoal up` and `shoal server` print it)"
)]
pub struct TokenError(String);

/// Writes a file that grants access (a key, a token, a kubeconfig with a
/// token): readable by its owner only, durable, and replaced atomically (a
/// reader never sees half of it).
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The fingerprint a token pins: SHA-256 of the CA certificate (DER).
pub fn ca_fingerprint(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}-{}-{}-{}",
            self.cluster_id,
            hex(&self.ca_fingerprint),
            self.secret
        )
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        let s = s.trim();
        let mut parts = s.split('-');
        if parts.next() != Some(PREFIX) {
            return Err(TokenError(format!("it does not start with {PREFIX}-")));
        }
        let (Some(cluster_id), Some(fp), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError("it does not have four parts".into()));
        };
        if cluster_id.is_empty() || !cluster_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(TokenError("the cluster id part is not alphanumeric".into()));
        }
        if !is_hex(fp, 64) {
            return Err(TokenError(
                "the CA fingerprint part is not 64 hex digits".into(),
            ));
        }
        if !is_hex(secret, 32) {
            return Err(TokenError("the secret part is not 32 hex digits".into()));
        }
        let mut ca_fingerprint = [0u8; 32];
        for (i, b) in ca_fingerprint.iter_mut().enumerate() {
            *b = u8::from_str_radix(&fp[2 * i..2 * i + 2], 16)
                .map_err(|_| TokenError("the CA fingerprint part is not hex".into()))?;
        }
        Ok(JoinToken {
            cluster_id: cluster_id.to_string(),
            ca_fingerprint,
            secret: secret.to_ascii_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_and_hides_the_secret() {
        let t = JoinToken {
            cluster_id: "a1b2c3".into(),
            ca_fingerprint: [0xab; 32],
            secret: "0123456789abcdef0123456789abcdef".into(),
        };
        let s = t.to_string();
        assert!(s.starts_with("SHOAL1-a1b2c3-abab"), "{s}");
        assert_eq!(s.parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn refusals_say_which_part() {
        let fp = "ab".repeat(32);
        let secret = "cd".repeat(16);
        for (token, why) in [
            ("SWMTKN-1-x-y".to_string(), "SHOAL1-"),
            (format!("SHOAL1-abc-{fp}"), "four parts"),
            (format!("SHOAL1-a_b-{fp}-{secret}"), "cluster id"),
            (
                format!("SHOAL1-abc-{}-{secret}", "ab".repeat(31)),
                "fingerprint",
            ),
            (format!("SHOAL1-abc-{fp}-{}", "zz".repeat(16)), "secret"),
        ] {
            let e = token.parse::<JoinToken>().unwrap_err().to_string();
            assert!(e.contains(why), "{token}: {e}");
        }
    }
}
