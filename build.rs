//! Compiles the protobuf schemas in `proto/` with prost, through protox (a pure-Rust protobuf
//! compiler), so the build needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/criu/rpc.proto",
        "proto/criu/stats.proto",
        "proto/criu/images.proto",
        "proto/haul/wire.proto",
        "proto/haul/sync.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
