//! Compiles the admin gRPC API (`proto/floodgate/admin/v1/admin.proto`)
//! without a system `protoc`: `protox` parses it, `tonic-prost-build`
//! generates the code, and the encoded descriptor set is kept for server
//! reflection.

/// Why an optimized build of the gateway does not get the profile
/// scripts/rustc-pgo gives it, if it does not (a build that silently lost
/// a quarter of its speed would be measured, and shipped, as if it had it).
fn built_without_profile() -> Option<String> {
    if std::env::var("OPT_LEVEL").ok()? != "3" {
        return None;
    }
    let off = std::env::var("FLOODGATE_PGO").unwrap_or_default();
    if matches!(
        off.to_ascii_lowercase().as_str(),
        "off" | "0" | "false" | "no"
    ) {
        return None;
    }
    let wrapper = std::env::var("RUSTC_WRAPPER").unwrap_or_default();
    if !wrapper.ends_with("scripts/rustc-pgo") {
        return Some(format!(
            "rustc runs through {wrapper:?}, not scripts/rustc-pgo (RUSTC_WRAPPER replaces .cargo/config.toml's rustc-wrapper)"
        ));
    }
    #[allow(clippy::disallowed_methods)] // a build script: blocking is fine
    let wrote = std::fs::read_to_string("pgo/rustc-version").unwrap_or_default();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let this = std::process::Command::new(rustc)
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if wrote.trim() != this {
        return Some(format!(
            "the profile was written by {:?}, this is {this:?} (a profile fits only the rustc that wrote it: run scripts/pgo)",
            wrote.trim()
        ));
    }
    None
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/floodgate/admin/v1/admin.proto";
    println!("cargo:rerun-if-changed={proto}");
    // scripts/ordered-cc's inputs (the hot list, the script, its switch):
    // a change to any of them links the binary again.
    println!("cargo:rerun-if-changed=benches/hot-functions.txt");
    println!("cargo:rerun-if-changed=scripts/ordered-cc");
    println!("cargo:rerun-if-env-changed=FLOODGATE_LINK_ORDER");
    // scripts/rustc-pgo's inputs (the profile and the rustc that wrote it,
    // the script, its switch): a change to any of them builds the
    // gateway's crate again (the other crates keep what they were built
    // with: `cargo clean`). The directory, not the file: a missing file
    // would rebuild the crate at every command.
    println!("cargo:rerun-if-changed=pgo");
    println!("cargo:rerun-if-changed=scripts/rustc-pgo");
    println!("cargo:rerun-if-env-changed=FLOODGATE_PGO");
    // What the warning below reads: a wrapper set (or unset) later runs
    // it again.
    println!("cargo:rerun-if-env-changed=RUSTC_WRAPPER");
    if let Some(why) = built_without_profile() {
        println!("cargo:warning=built without pgo/floodgate.profdata (profile-guided optimization): {why}");
    }
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
