//! Compiles `proto/datalayer/v1/*.proto` with the protoc shipped inside
//! `protoc-bin-vendored`, so no system protoc is needed, and writes the
//! descriptor set that server reflection serves.

use std::{env, error::Error, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let proto_dir = PathBuf::from("proto");
    let mut protos: Vec<PathBuf> = fs::read_dir(proto_dir.join("datalayer/v1"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    protos.sort();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("datalayer_descriptor.bin"))
        .compile_with_config(
            config,
            &protos,
            &[proto_dir, protoc_bin_vendored::include_path()?],
        )?;

    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
