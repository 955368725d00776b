//! Files of a directory kept in a Kubernetes Secret: the operator's own
//! state (cluster id, cluster CA, join secret), shared by every replica and
//! kept when a pod moves. The first replica to publish wins; the others
//! take its files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use shoal_store::StoreError;

use crate::store_error;

/// A Secret mirroring files: each key names one file.
pub struct SecretFiles {
    api: kube::Api<Secret>,
    namespace: String,
    name: String,
    /// Secret key → file.
    files: BTreeMap<String, PathBuf>,
}

impl std::fmt::Debug for SecretFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFiles")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// What [`SecretFiles::publish`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// The Secret holds this replica's files now.
    Created,
    /// Another replica published first: its files replaced these.
    TookTheirs,
}

impl SecretFiles {
    /// The Secret `namespace/name`, keys mapped to files.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        files: impl IntoIterator<Item = (String, PathBuf)>,
    ) -> Self {
        Self {
            api: kube::Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: name.into(),
            files: files.into_iter().collect(),
        }
    }

    fn subject(&self) -> String {
        format!("secrets/{}/{}", self.namespace, self.name)
    }

    /// Writes the Secret's files (readable by their owner only). `false`:
    /// there is no such Secret yet.
    pub async fn fetch(&self) -> Result<bool, StoreError> {
        let Some(secret) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| store_error(&self.subject(), e))?
        else {
            return Ok(false);
        };
        let data = secret.data.unwrap_or_default();
        for (key, path) in &self.files {
            let Some(ByteString(bytes)) = data.get(key) else {
                continue;
            };
            write_private(path, bytes)?;
        }
        Ok(true)
    }

    /// Creates the Secret from the files (those that exist) and `extra`
    /// keys. When another replica created it first, its files replace
    /// these.
    pub async fn publish(&self, extra: BTreeMap<String, Vec<u8>>) -> Result<Published, StoreError> {
        let mut data = BTreeMap::new();
        for (key, path) in &self.files {
            match std::fs::read(path) {
                Ok(bytes) => {
                    data.insert(key.clone(), ByteString(bytes));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(path, &e)),
            }
        }
        data.extend(extra.into_iter().map(|(k, v)| (k, ByteString(v))));
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "shoal-operator".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(Published::Created),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.fetch().await?;
                Ok(Published::TookTheirs)
            }
            Err(e) => Err(store_error(&self.subject(), e)),
        }
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Internal(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` (its directory made), readable by the owner
/// only and replaced atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
    }
    shoal_proto::join::write_private(path, bytes).map_err(|e| io_error(path, &e))
}
