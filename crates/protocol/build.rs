//! Compiles `proto/*.proto` with protox, a pure-Rust protobuf compiler, so building the
//! workspace never needs a system `protoc`.

use std::error::Error;

const PROTOS: [&str; 3] = [
    "proto/lithos.proto",
    "proto/cantal.proto",
    "proto/verwalter.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    // compile_fds does not know the source files, so say them ourselves.
    println!("cargo:rerun-if-changed=proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
