//! Compiles `proto/*.proto` into Rust with prost, using protox (a pure-Rust
//! protobuf compiler) so no `protoc` binary is needed anywhere.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/sdkws.proto", "proto/msg.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let mut config = prost_build::Config::new();
    // Maps are encoded in key order, so our encodings are deterministic
    // (prost's default HashMap would make every run's bytes differ).
    config.btree_map(["."]);
    config.compile_fds(fds)?;
    Ok(())
}
