//! One module per subcommand.

pub mod crds;
pub mod server;
pub mod validate;
