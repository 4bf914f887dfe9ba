//! Compiles proto/ember/v1/*.proto with protox (pure Rust), so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["ps", "replica", "scheduler", "serving"].map(|f| root.join(format!("ember/v1/{f}.proto")));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    // Our codec: a message that does not decode is InvalidArgument, not tonic's Internal.
    tonic_prost_build::configure().bytes(".ember.v1").codec_path("crate::codec::WireCodec").compile_fds(fds)?;
    Ok(())
}
