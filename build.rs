//! Compiles proto/ with a pure-Rust protobuf compiler, so no system `protoc` is needed. Also writes
//! the descriptors of Envoy's rate limit service (from the envoy-types crate's own proto files) for
//! server reflection, when those files can be found.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=Cargo.lock");
    // The commit built, for sluice_build_info: SLUICE_REVISION when the build is given it (an image
    // build has no .git), else git's; "unknown" outside a checkout (a source archive).
    println!("cargo:rerun-if-env-changed=SLUICE_REVISION");
    let revision = std::env::var("SLUICE_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|out| out.status.success())
                .and_then(|out| String::from_utf8(out.stdout).ok())
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SLUICE_REVISION={revision}");
    for git in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(git).exists() {
            println!("cargo:rerun-if-changed={git}");
        }
    }
    let descriptors = protox::compile(["sluice/v1/sluice.proto", "sluice/v1/admin.proto"], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let encoded = prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("sluice_descriptor.bin"), &encoded)?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    // The canonical protobuf JSON mapping of the same messages, for the HTTP API: every field
    // written, defaults included (a denial says "allowed": false).
    pbjson_build::Builder::new().register_descriptors(&encoded)?.emit_fields().build(&[".sluice.v1"])?;

    let envoy = match envoy_proto_dir() {
        Some(dir) => {
            let includes =
                ["data-plane-api", "xds", "protoc-gen-validate", "googleapis"].map(|d| dir.join(d));
            let fds = protox::compile(["envoy/service/ratelimit/v3/rls.proto"], includes)?;
            prost::Message::encode_to_vec(&fds)
        }
        None => {
            println!(
                "cargo:warning=envoy-types' proto files not found: reflection will not describe ShouldRateLimit"
            );
            Vec::new()
        }
    };
    std::fs::write(out_dir.join("envoy_rls_descriptor.bin"), envoy)?;
    Ok(())
}

/// The `proto` directory of the envoy-types release in Cargo.lock, in Cargo's registry sources.
fn envoy_proto_dir() -> Option<PathBuf> {
    let lock = std::fs::read_to_string("Cargo.lock").ok()?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))?
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))?
        .trim_end_matches('"')
        .to_owned();
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    std::fs::read_dir(home.join("registry").join("src"))
        .ok()?
        .filter_map(Result::ok)
        .map(|index| index.path().join(format!("envoy-types-{version}")).join("proto"))
        .find(|p| p.join("data-plane-api").is_dir())
}
