//! A kubeconfig for clients of this server (kubectl, kube-rs).

use std::path::Path;

/// The kubeconfig text for a server at `url` (no credentials: a server on
/// loopback in dev mode).
pub fn kubeconfig(url: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: shoal\n  cluster:\n    server: {url:?}\n\
         users:\n\
         - name: shoal\n  user: {{}}\n\
         contexts:\n\
         - name: shoal\n  context:\n    cluster: shoal\n    user: shoal\n    namespace: {namespace:?}\n\
         current-context: shoal\n\
         preferences: {{}}\n"
    )
}

/// Writes the kubeconfig atomically (write to a temporary file, rename), so
/// a client never reads half a file.
pub fn write(path: &Path, url: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, kubeconfig(url, "default"))?;
    std::fs::rename(&tmp, path)
}

/// The kubeconfig text for a server at `https://…` whose certificate comes
/// from the CA `ca_pem`, with the bearer `token`.
pub fn kubeconfig_secure(url: &str, namespace: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: shoal\n  cluster:\n    server: {url:?}\n    certificate-authority-data: {ca}\n\
         users:\n\
         - name: shoal\n  user:\n    token: {token:?}\n\
         contexts:\n\
         - name: shoal\n  context:\n    cluster: shoal\n    user: shoal\n    namespace: {namespace:?}\n\
         current-context: shoal\n\
         preferences: {{}}\n"
    )
}
