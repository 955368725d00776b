//! One module per subcommand.

pub mod agent;
pub mod apply;
pub mod completion;
pub mod crds;
pub mod delete;
pub mod describe;
pub mod events;
pub mod exec;
pub mod get;
pub mod host;
pub mod join_token;
pub mod logs;
pub mod operator;
pub mod ps;
pub mod resume;
pub mod rollback;
pub mod scale;
pub mod server;
pub mod top;
pub mod up;
pub mod validate;

/// Service `name` of the connection's namespace; `None` after saying on
/// stderr that it does not exist.
pub async fn service_or_report(
    conn: &crate::client::Conn,
    name: &str,
) -> anyhow::Result<Option<shoal_crds::Service>> {
    let svc = conn
        .namespaced::<shoal_crds::Service>()
        .get_opt(name)
        .await
        .map_err(|e| conn.explain(e))?;
    if svc.is_none() {
        eprintln!(
            "error: service {name:?} not found in namespace {}",
            conn.namespace
        );
    }
    Ok(svc)
}
