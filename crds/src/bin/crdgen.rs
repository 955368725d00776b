//! Writes the CustomResourceDefinitions of Shoal to `crds/*.yaml`.
//!
//! Usage: `cargo run -p shoal-crds --bin crdgen [DIR]` (DIR defaults to the
//! crate's directory). The files are committed; a test fails when they drift
//! from the types.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for crd in shoal_crds::crd::all() {
        let path = dir.join(shoal_crds::crd::file_name(&crd));
        let yaml = match shoal_crds::crd::to_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("crdgen: cannot render {}: {e}", crd.spec.names.plural);
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
