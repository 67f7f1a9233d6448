//! Generated protobuf messages and tonic clients/servers, one module per proto package.

/// `lithos.v1`: the control socket of `lithos_tree`.
pub mod lithos {
    tonic::include_proto!("lithos.v1");
}

/// `cantal.v1`: the local socket of `cantal-agent`.
pub mod cantal {
    tonic::include_proto!("cantal.v1");
}

/// `verwalter.v1`: the control socket of `verwalter`.
pub mod verwalter {
    tonic::include_proto!("verwalter.v1");
}
