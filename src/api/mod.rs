//! Transports: protocol messages in, domain requests to the engine, decisions back out. Nothing here
//! decides anything.

pub mod admin;
pub mod client_ip;
pub mod envoy;
pub mod http_api;
pub mod native;
pub mod status;

use std::time::{Duration, Instant};

use crate::config::InputLimits;
use crate::traces;

/// INVALID_ARGUMENT naming `field` when `text` is longer than `limits.max_value_bytes`. The name
/// is made only for the error: most values pass, and a decision should not pay to name them.
pub(crate) fn check_len(
    field: impl FnOnce() -> String,
    text: &str,
    limits: InputLimits,
) -> Result<(), tonic::Status> {
    if text.len() > limits.max_value_bytes {
        return Err(status::invalid(
            &field(),
            &format!("{} bytes exceed limits.max_value_bytes ({})", text.len(), limits.max_value_bytes),
        ));
    }
    Ok(())
}

/// The span of a gRPC call of `api` (see `span_from`).
pub(crate) fn call_span(api: traces::Api, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    span_from(api, |name| metadata.get(name).and_then(|v| v.to_str().ok()))
}

/// The span of a call of `api`, child of the caller's span when its `traceparent` (read by
/// `header`, from gRPC metadata or HTTP headers) says so (see `traces`); `Span::none()`, without a
/// look at the headers, when traces are off.
pub(crate) fn span_from<'h>(api: traces::Api, header: impl Fn(&str) -> Option<&'h str>) -> tracing::Span {
    if !traces::enabled() {
        return tracing::Span::none();
    }
    traces::decision_span(api, header("traceparent"), header("tracestate"))
}

/// The caller's deadline from its `grpc-timeout` header (1 to 8 digits and a unit: H, M, S, m, u,
/// n), counted from now, when it arrived. A header that does not parse is ignored.
pub fn deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let split = text.len().checked_sub(1)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

impl From<pb::Attributes> for crate::request::Attributes {
    fn from(a: pb::Attributes) -> Self {
        crate::request::Attributes {
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

impl From<crate::request::Attributes> for pb::Attributes {
    fn from(a: crate::request::Attributes) -> Self {
        pb::Attributes {
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
    include!(concat!(env!("OUT_DIR"), "/sluice.v1.serde.rs"));

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sluice_descriptor.bin"));
}
