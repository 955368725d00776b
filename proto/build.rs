//! Generates the Rust code of `proto/shoal/agent/v1/agent.proto` (agents ⇄
//! control plane) and `proto/shoal/control/v1/raft.proto` (control plane ⇄
//! control plane) into `OUT_DIR` (clients and servers), so the code can
//! never drift from the `.proto`s.
//!
//! `protoc` is `$PROTOC` if set, else the one vendored by
//! `protoc-bin-vendored`; it is handed to prost's `Config` explicitly — no
//! global `PROTOC` is set (other crates in the tree need other protocs).

use std::error::Error;
use std::path::PathBuf;

const PROTO_DIR: &str = "proto";
const PROTO_FILES: [&str; 2] = [
    "proto/shoal/agent/v1/agent.proto",
    "proto/shoal/control/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    println!("cargo:rerun-if-env-changed=PROTOC");

    let mut includes = vec![PathBuf::from(PROTO_DIR)];
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => protoc_bin_vendored::protoc_bin_path()?,
    };
    // The well-known types (google/protobuf/timestamp.proto). A system protoc
    // also knows its own copy; the first match wins and they are identical.
    if let Ok(wkt) = protoc_bin_vendored::include_path() {
        includes.push(wkt);
    }

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Maps as BTreeMap, like the resource types (and a deterministic encoding).
    config.btree_map(["."]);

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &PROTO_FILES.map(PathBuf::from), &includes)?;
    Ok(())
}
