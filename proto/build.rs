//! Compiles the `airlock.v1` protobufs with protox (a protobuf compiler written in
//! Rust), so building Airlock never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/airlock/v1/events.proto",
        "proto/airlock/v1/api.proto",
        "proto/airlock/v1/worker.proto",
        "proto/airlock/v1/recorder.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .btree_map(".")
        // Recorded bytes pass from the gRPC buffer to a chunk without a copy.
        .bytes(".airlock.v1.Frame")
        .compile_fds(descriptors)?;
    Ok(())
}
