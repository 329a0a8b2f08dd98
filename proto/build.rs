//! Compiles `proto/pivot/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.

/// Admin API messages that derive `serde::Serialize`.
const SERIALIZED: &[&str] = &[
    "WhoAmIResponse",
    "ServiceView",
    "RuleView",
    "PolicyView",
    "PolicyChange",
    "RuleChange",
    "UserChange",
    "ReplicaView",
    "SentinelView",
    "TopologyView",
    "ProxyView",
    "ListProxiesResponse",
    "EventView",
    "ListEventsResponse",
    "AuditView",
    "ListAuditResponse",
    "LiveMessage",
    "FailoverReport",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/pivot/v1/pivot.proto", "proto/pivot/v1/admin.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let mut builder = tonic_prost_build::configure();
    // The admin API's views serialise to JSON as the REST API shows them (`pivotctl --json`).
    for view in SERIALIZED {
        builder = builder.type_attribute(
            format!(".pivot.v1.{view}"),
            "#[derive(serde::Serialize)] #[serde(rename_all = \"snake_case\")]",
        );
    }
    builder
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
