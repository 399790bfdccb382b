//! Generates the Rust types, gRPC stubs and protobuf-JSON (serde) impls for
//! `proto/apollo.proto` without a system `protoc`.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/apollo.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let fds = protox::compile([proto], ["proto"])?;
    let descriptor_bytes = fds.encode_to_vec();
    // Written by hand: `compile_fds` ignores the descriptor-set path option, and
    // reflection plus pbjson both need the encoded set.
    fs::write(out_dir.join("apollo_descriptor.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        .compile_well_known_types(true)
        // Ordered maps make encodings (and so content-derived message ids) stable.
        .btree_map(".")
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .btree_map(["."])
        .build(&[".apollo"])?;
    Ok(())
}
