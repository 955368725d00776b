//! One module per subcommand.

pub mod agent;
pub mod apply;
pub mod completion;
pub mod crds;
pub mod delete;
pub mod describe;
pub mod events;
pub mod get;
pub mod host;
pub mod join_token;
pub mod logs;
pub mod ps;
pub mod resume;
pub mod rollback;
pub mod scale;
pub mod server;
pub mod up;
pub mod validate;
