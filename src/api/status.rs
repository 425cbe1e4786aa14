//! The one place where errors become gRPC statuses. Client-facing text names the offending field
//! and never holds a Redis address, a key or an internal error chain; the log holds those.

use tonic::{Code, Status};

use crate::engine::RequestError;
use crate::metrics;

/// Bad input: INVALID_ARGUMENT with the field path (e.g. `requests[3].cost`) first.
pub fn invalid(field: &str, reason: &str) -> Status {
    Status::new(Code::InvalidArgument, format!("{field}: {reason}"))
}

/// Counts an INVALID_ARGUMENT made by `invalid` in `sluice_requests_rejected_total`, labelled by
/// the kind of field it names (a fixed set: `cost`, `domain`, `descriptors` or `request`).
pub fn rejected(status: &Status) {
    let field = status.message().split(':').next().unwrap_or_default();
    let last = field.rsplit('.').next().unwrap_or(field);
    let label = match last.split('[').next().unwrap_or(last) {
        "cost" => "cost",
        "domain" => "domain",
        "descriptors" | "entries" | "key" | "value" | "limit" | "hits_addend" | "is_negative_hits" => {
            "descriptors"
        }
        _ => "request",
    };
    metrics::rejected(label);
}

/// A call whose deadline left no time to decide.
pub fn late() -> Status {
    Status::deadline_exceeded("the call's deadline leaves no time to decide")
}

/// Maps an engine error for the request at `requests[index]`.
pub fn from_request_error(index: usize, error: RequestError) -> Status {
    match error {
        RequestError::Invalid { field, reason } => {
            metrics::rejected(if field.starts_with("tiers") { "tiers" } else { "cost" });
            invalid(&format!("requests[{index}].{field}"), &reason)
        }
        other => from_error(other),
    }
}

/// Maps an engine error of a `Report`, whose fields are the request's own.
pub fn from_report_error(error: RequestError) -> Status {
    match error {
        RequestError::Invalid { field, reason } => invalid(&field, &reason),
        other => from_error(other),
    }
}

/// Maps an engine error of `ShouldRateLimit`.
pub fn from_envoy_error(error: RequestError) -> Status {
    from_error(error)
}

/// Maps an engine error of an operator's action: the store could not carry it out.
pub fn from_admin_error(error: RequestError) -> Status {
    tracing::warn!(error = %error, "admin action failed");
    Status::unavailable("the store is unavailable")
}

fn from_error(error: RequestError) -> Status {
    match error {
        RequestError::Invalid { field, reason } => invalid(&field, &reason),
        RequestError::Late => late(),
        RequestError::Store(e) if e.is_transient() => {
            tracing::warn!(error = %e, "store unavailable");
            Status::unavailable("rate limit store unavailable")
        }
        RequestError::Store(e) => {
            tracing::error!(error = %e, "store failed");
            Status::internal("internal error")
        }
    }
}
