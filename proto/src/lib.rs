//! `pivot.v1`: the protobuf contracts between Pivot's control plane and its proxies (the
//! config stream), generated with tonic/prost at build time from `proto/pivot/v1`.

/// Generated types and gRPC stubs of package `pivot.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("pivot.v1");
}
