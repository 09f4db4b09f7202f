//! Compiles the admin gRPC API (`proto/floodgate/admin/v1/admin.proto`)
//! without a system `protoc`: `protox` parses it, `tonic-prost-build`
//! generates the code, and the encoded descriptor set is kept for server
//! reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/floodgate/admin/v1/admin.proto";
    println!("cargo:rerun-if-changed={proto}");
    // scripts/ordered-cc's inputs (the hot list, the script, its switch):
    // a change to any of them links the binary again.
    println!("cargo:rerun-if-changed=benches/hot-functions.txt");
    println!("cargo:rerun-if-changed=scripts/ordered-cc");
    println!("cargo:rerun-if-env-changed=FLOODGATE_LINK_ORDER");
    // scripts/rustc-pgo's inputs (the profile, the script, its switch):
    // a change to any of them builds the gateway's crate again (the other
    // crates keep what they were built with: `cargo clean --release`).
    println!("cargo:rerun-if-changed=pgo/floodgate.profdata");
    println!("cargo:rerun-if-changed=scripts/rustc-pgo");
    println!("cargo:rerun-if-env-changed=FLOODGATE_PGO");
    let fds = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    #[allow(clippy::disallowed_methods)] // a build script: blocking is fine
    std::fs::write(
        out.join("floodgate_admin_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Clients connect through a channel they build (the tests do).
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
