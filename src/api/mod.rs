//! Transports: protocol messages in, domain requests to the engine, decisions back out. Nothing here
//! decides anything.

pub mod admin;
pub mod envoy;
pub mod native;
pub mod status;

impl From<pb::Attributes> for crate::tier::Attributes {
    fn from(a: pb::Attributes) -> Self {
        crate::tier::Attributes {
            ip: a.ip,
            user: a.user,
            endpoint: a.endpoint,
            method: a.method,
            user_agent: a.user_agent,
            client_tier: a.client_tier,
            extra: a.extra.into_iter().collect(),
        }
    }
}

/// Code generated from proto/sluice/v1/sluice.proto.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sluice.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sluice_descriptor.bin"));
}
