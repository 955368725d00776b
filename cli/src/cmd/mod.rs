//! One module per subcommand.

pub mod agent;
pub mod crds;
pub mod server;
pub mod up;
pub mod validate;
