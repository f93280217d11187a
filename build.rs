//! Compiles every `.proto` under `proto/` (every package: `datalayer.*.v1`
//! and the ecosystem protocols served beside them) with the protoc shipped
//! inside `protoc-bin-vendored`, so no system protoc is needed. Writes one
//! module tree (`proto::<package path>`, see `_includes.rs`) and one
//! descriptor set that server reflection serves.

use std::{
    env,
    error::Error,
    fs,
    path::{Path, PathBuf},
};

/// Every `.proto` file below `dir`, sorted so builds are reproducible.
fn protos(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(protos(&path)?);
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

fn main() -> Result<(), Box<dyn Error>> {
    let proto_dir = PathBuf::from("proto");
    let mut files = protos(&proto_dir)?;
    let mut includes = vec![proto_dir];
    // The example service (`--features echo`) is not part of the product's
    // API, so its proto lives apart.
    let examples = PathBuf::from("proto-examples");
    if env::var_os("CARGO_FEATURE_ECHO").is_some() {
        files.extend(protos(&examples)?);
        includes.push(examples);
    }
    includes.push(protoc_bin_vendored::include_path()?);

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("datalayer_descriptor.bin"))
        .include_file("_includes.rs")
        // Decode failures of a request are the caller's mistake: this codec
        // answers INVALID_ARGUMENT where the stock one answers INTERNAL.
        .codec_path("crate::grpc::codec::Codec")
        .compile_with_config(config, &files, &includes)?;

    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=proto-examples");
    commit();
    Ok(())
}

/// `DATALAYER_COMMIT` for `--version`: the environment's (a Docker build
/// has no `.git`: it passes the commit as a build argument), else git's,
/// else "unknown".
fn commit() {
    println!("cargo:rerun-if-env-changed=DATALAYER_COMMIT");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = env::var("DATALAYER_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // Rebuild when HEAD moves (a worktree's HEAD lives in its own git dir).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"])
            && let Some(common) = git(&["rev-parse", "--git-common-dir"])
            && Path::new(&format!("{common}/{reference}")).exists()
        {
            println!("cargo:rerun-if-changed={common}/{reference}");
        }
    }
    println!("cargo:rustc-env=DATALAYER_COMMIT={commit}");
}
