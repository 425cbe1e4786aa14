//! `sluice.v1.RateLimiter`: checks the size of every input, converts to engine requests, and
//! converts decisions back.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::status::{from_request_error, invalid};
use super::{check_len, pb};
use crate::algorithm::adaptive::factor_names;
use crate::check::Mode;
use crate::config::InputLimits;
use crate::decision::Decision;
use crate::engine::{self, Engine};
use crate::request::{Attr, Attributes};
use crate::traces::{self, Api, Outcome};

#[derive(Debug)]
pub struct NativeService {
    engine: Arc<Engine>,
    limits: InputLimits,
}

impl NativeService {
    pub fn new(engine: Arc<Engine>, limits: InputLimits) -> Self {
        NativeService { engine, limits }
    }

    pub fn into_server(self) -> pb::rate_limiter_server::RateLimiterServer<Self> {
        pb::rate_limiter_server::RateLimiterServer::new(self)
    }

    /// `Check`, within its span.
    async fn decide(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let correlation_id = correlation_id(request.metadata().get("x-request-id").map(|v| v.as_bytes()));
        let deadline = super::deadline(request.metadata());
        check(Carrier::Grpc, &self.engine, self.limits, request.into_inner(), correlation_id, deadline)
            .await
            .map(Response::new)
    }

    /// `Report`, within its span.
    async fn take_report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let correlation_id = correlation_id(request.metadata().get("x-request-id").map(|v| v.as_bytes()));
        report(&self.engine, self.limits, request.into_inner(), correlation_id).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl pb::rate_limiter_server::RateLimiter for NativeService {
    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let span = super::call_span(Api::Check, request.metadata());
        let answer = self.decide(request).instrument(span.clone()).await;
        if !span.is_disabled() {
            traces::answered(&span, check_outcome(answer.as_ref().map(Response::get_ref)));
        }
        answer
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let span = super::call_span(Api::Report, request.metadata());
        let answer = self.take_report(request).instrument(span.clone()).await;
        traces::answered(&span, report_outcome(answer.as_ref().map(Response::get_ref)));
        answer
    }
}

/// What a trace records of a `Check`'s answer, whichever API carried it.
pub(crate) fn check_outcome<'a>(answer: Result<&'a pb::CheckResponse, &Status>) -> Outcome<'a> {
    match answer {
        Ok(r) => Outcome {
            allowed: Some(r.decisions.iter().all(|d| d.allowed)),
            source: r.decisions.iter().map(|d| d.source.as_str()).find(|s| !s.is_empty()),
            tiers: r.decisions.iter().map(|d| d.tiers.len()).sum(),
            requests: Some(r.decisions.len()),
            ..Outcome::default()
        },
        Err(status) => Outcome { grpc_code: status.code().into(), ..Outcome::default() },
    }
}

/// What a trace records of a `Report`'s answer, whichever API carried it.
pub(crate) fn report_outcome(answer: Result<&pb::ReportResponse, &Status>) -> Outcome<'static> {
    match answer {
        Ok(r) => Outcome { tiers: r.tiers_counted as usize, ..Outcome::default() },
        Err(status) => Outcome { grpc_code: status.code().into(), ..Outcome::default() },
    }
}

/// Which API carried a `Check`, for `sluice_api_decisions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    Grpc,
    Http,
    ForwardAuth,
}

impl Carrier {
    /// Its position in `metrics::API_LABELS`.
    pub fn metric(self) -> usize {
        match self {
            Carrier::Grpc => 0,
            Carrier::Http => 1,
            Carrier::ForwardAuth => 2,
        }
    }
}

/// `Check`, whichever API carried it: the input checked against its bounds, every request
/// decided, the decisions converted back.
pub async fn check(
    api: Carrier,
    engine: &Engine,
    limits: InputLimits,
    request: pb::CheckRequest,
    correlation_id: String,
    deadline: Option<std::time::Instant>,
) -> Result<pb::CheckResponse, Status> {
    let mut requests = to_requests(request.requests, limits).inspect_err(super::status::rejected)?;
    for r in &mut requests {
        r.correlation_id.clone_from(&correlation_id);
    }
    let mode = if request.dry_run { Mode::DryRun } else { Mode::Consume };
    let decisions = engine
        .check_batch(&requests, mode, deadline)
        .await
        .map_err(|(i, e)| from_request_error(i, e))?
        .into_iter()
        .inspect(|d| crate::metrics::api_decision(api.metric(), d.allowed))
        .map(to_proto)
        .collect();
    Ok(pb::CheckResponse { decisions })
}

/// `Report`, whichever API carried it.
pub async fn report(
    engine: &Engine,
    limits: InputLimits,
    r: pb::ReportRequest,
    correlation_id: String,
) -> Result<pb::ReportResponse, Status> {
    let outcome = match pb::Outcome::try_from(r.outcome) {
        Ok(pb::Outcome::Success) => engine::Reported::Success,
        Ok(pb::Outcome::Failure) => engine::Reported::Failure,
        _ => return Err(invalid("outcome", "must be SUCCESS or FAILURE")),
    };
    let at = |field: &str| field.to_owned();
    let request = engine::Request { correlation_id, ..to_parts(&at, r.attributes, r.tiers, limits)? };
    let counted = engine.report(&request, outcome).await.map_err(super::status::from_report_error)?;
    Ok(pb::ReportResponse { tiers_counted: u32::try_from(counted).unwrap_or(u32::MAX) })
}

/// The gateway's request id (`x-request-id`), at most 128 bytes of it; empty unless it is all
/// visible ASCII (or tabs), so nothing in it means anything to a log.
pub fn correlation_id(value: Option<&[u8]>) -> String {
    let visible = |v: &&[u8]| v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    let id = value.filter(visible).unwrap_or_default();
    String::from_utf8_lossy(&id[..id.len().min(128)]).into_owned()
}

/// Checks a batch against the input bounds and converts it to engine requests.
pub fn to_requests(
    requests: Vec<pb::RateRequest>,
    limits: InputLimits,
) -> Result<Vec<engine::Request>, Status> {
    if requests.is_empty() {
        return Err(invalid("requests", "must hold at least one request"));
    }
    if requests.len() > limits.max_batch {
        return Err(invalid(
            "requests",
            &format!("{} requests exceed limits.max_batch ({})", requests.len(), limits.max_batch),
        ));
    }
    requests.into_iter().enumerate().map(|(i, r)| to_request(i, r, limits)).collect()
}

fn to_request(i: usize, r: pb::RateRequest, limits: InputLimits) -> Result<engine::Request, Status> {
    let at = |field: &str| format!("requests[{i}].{field}");
    let cost = match r.cost {
        None => 1,
        Some(0) => {
            return Err(invalid(&at("cost"), "must be at least 1 (use dry_run to look without consuming)"));
        }
        Some(n) => n,
    };
    let request = to_parts(&at, r.attributes, r.tiers, limits)?;
    Ok(engine::Request { cost, ..request })
}

/// Checks the sizes of a request's attributes and tier names; `at` names a field in errors.
fn to_parts(
    at: &dyn Fn(&str) -> String,
    attributes: Option<pb::Attributes>,
    tiers: Vec<String>,
    limits: InputLimits,
) -> Result<engine::Request, Status> {
    if tiers.len() > limits.max_named_tiers {
        return Err(invalid(
            &at("tiers"),
            &format!("{} names exceed limits.max_named_tiers ({})", tiers.len(), limits.max_named_tiers),
        ));
    }
    for (j, name) in tiers.iter().enumerate() {
        check_len(|| at(&format!("tiers[{j}]")), name, limits)?;
    }
    let a = attributes.unwrap_or_default();
    for (name, value) in [
        ("ip", &a.ip),
        ("user", &a.user),
        ("endpoint", &a.endpoint),
        ("method", &a.method),
        ("user_agent", &a.user_agent),
        ("client_tier", &a.client_tier),
    ] {
        check_len(|| at(&format!("attributes.{name}")), value, limits)?;
    }
    if a.extra.len() > limits.max_extra {
        return Err(invalid(
            &at("attributes.extra"),
            &format!("{} entries exceed limits.max_extra ({})", a.extra.len(), limits.max_extra),
        ));
    }
    for (name, value) in &a.extra {
        if name.is_empty() {
            return Err(invalid(&at("attributes.extra"), "an entry has an empty name"));
        }
        check_len(|| at("attributes.extra"), name, limits)?;
        if Attr::BUILT_IN.contains(&name.as_str()) {
            return Err(invalid(
                &at(&format!("attributes.extra[{name:?}]")),
                "is a built-in attribute; set the field of that name instead",
            ));
        }
        check_len(|| at(&format!("attributes.extra[{name:?}]")), value, limits)?;
    }
    Ok(engine::Request { attributes: Attributes::from(a), cost: 1, tiers, correlation_id: String::new() })
}

pub fn to_proto(d: Decision) -> pb::Decision {
    let headers =
        d.headers().into_iter().map(|(name, value)| pb::Header { name: name.into(), value }).collect();
    pb::Decision {
        allowed: d.allowed,
        retry_after_ms: d.retry_after_ms,
        limit: d.limit,
        remaining: d.remaining,
        reset_after_ms: d.reset_after_ms,
        tier: d.tier.as_deref().unwrap_or_default().to_owned(),
        source: d.source.map_or("", |s| s.as_str()).to_owned(),
        threat_score: u32::from(d.threat_score),
        threat_factors: factor_names(d.threat_factors).map(String::from).collect(),
        headers,
        tiers: d
            .statuses
            .into_iter()
            .map(|s| pb::TierStatus {
                tier: s.tier.to_string(),
                allowed: s.verdict.allowed,
                limit: s.limit.limit,
                remaining: s.verdict.remaining,
                retry_after_ms: s.verdict.retry_after_ms,
                reset_after_ms: s.verdict.reset_after_ms,
                shadow: s.shadow && !s.verdict.allowed,
                threat_score: u32::from(s.verdict.score),
                threat_factors: factor_names(s.verdict.factors).map(String::from).collect(),
            })
            .collect(),
    }
}
