//! Typed access to a [`ClusterStore`] for the resource types of `shoal-crds`.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shoal_crds::{Host, Service, Task};

use crate::{ClusterStore, Kind, ListOptions, ObjectKey, Revision, StoreError};

/// A resource type the store holds.
pub trait StoreKind: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Its kind.
    const KIND: Kind;
}

impl StoreKind for Service {
    const KIND: Kind = Kind::Service;
}
impl StoreKind for Task {
    const KIND: Kind = Kind::Task;
}
impl StoreKind for Host {
    const KIND: Kind = Kind::Host;
}
impl StoreKind for k8s_openapi::api::core::v1::Event {
    const KIND: Kind = Kind::Event;
}

/// The JSON shape of a typed object, with `apiVersion` and `kind` set.
pub fn to_value<T: StoreKind>(obj: &T) -> Result<Value, StoreError> {
    let mut v = serde_json::to_value(obj).map_err(|e| StoreError::Invalid(e.to_string()))?;
    if let Some(m) = v.as_object_mut() {
        m.insert(
            "apiVersion".into(),
            Value::String(T::KIND.api_version().into()),
        );
        m.insert("kind".into(), Value::String(T::KIND.name().into()));
    }
    Ok(v)
}

/// The typed form of a stored object.
pub fn from_value<T: StoreKind>(v: Value) -> Result<T, StoreError> {
    serde_json::from_value(v).map_err(|e| {
        StoreError::Internal(format!("stored {} does not decode: {e}", T::KIND.name()))
    })
}

/// `metadata.resourceVersion` of an object as a revision.
pub fn revision_of(obj: &Value) -> Option<Revision> {
    obj.pointer("/metadata/resourceVersion")?
        .as_str()?
        .parse()
        .ok()
}

/// Key of an object of kind `T`.
pub fn key<T: StoreKind>(namespace: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey {
        kind: T::KIND,
        namespace: if T::KIND.namespaced() {
            namespace.map(str::to_owned)
        } else {
            None
        },
        name: name.to_owned(),
    }
}

/// Gets one object.
pub async fn get<T: StoreKind>(
    store: &dyn ClusterStore,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<T>, StoreError> {
    store
        .get(&key::<T>(namespace, name))
        .await?
        .map(from_value)
        .transpose()
}

/// Lists objects and the revision of the snapshot.
pub async fn list<T: StoreKind>(
    store: &dyn ClusterStore,
    opts: &ListOptions,
) -> Result<(Vec<T>, Revision), StoreError> {
    let list = store.list(T::KIND, opts).await?;
    let items = list
        .items
        .into_iter()
        .map(from_value)
        .collect::<Result<_, _>>()?;
    Ok((items, list.revision))
}

/// Creates an object.
pub async fn create<T: StoreKind>(store: &dyn ClusterStore, obj: &T) -> Result<T, StoreError> {
    from_value(store.create(to_value(obj)?).await?)
}

/// Updates metadata and spec (conditional on the object's resourceVersion, if set).
pub async fn update<T: StoreKind>(store: &dyn ClusterStore, obj: &T) -> Result<T, StoreError> {
    from_value(store.update(to_value(obj)?).await?)
}

/// Updates status (conditional on the object's resourceVersion, if set).
pub async fn update_status<T: StoreKind>(
    store: &dyn ClusterStore,
    obj: &T,
) -> Result<T, StoreError> {
    from_value(store.update_status(to_value(obj)?).await?)
}
