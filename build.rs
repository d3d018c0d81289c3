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
    // wire.proto embeds the sync messages: they are the types of `crate::sync::pb`, which an
    // extern path leaves out of this generation, so they are generated on their own below
    prost_build::Config::new()
        .extern_path(".haul.sync", "crate::sync::pb")
        // the largest body by far (a file's metadata and extents): boxed, so that every other
        // message stays small
        .boxed(".haul.wire.Message.body.sync_message")
        .compile_fds(fds)?;
    let sync = protox::compile(["proto/haul/sync.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(sync)?;
    Ok(())
}
