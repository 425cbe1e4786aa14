//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: Envoy's messages in, the
//! engine's statuses (`envoy::Status`) out, with the rate limit headers the configuration asks for.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::check_len;
use super::status::invalid;
use crate::algorithm::Verdict;
use crate::config::InputLimits;
use crate::decision::{Described, Headers, deciding, render};
use crate::engine::Engine;
use crate::envoy::domain::RateLimit as Rule;
use crate::envoy::{self, Descriptor, Status as Decided};
use crate::traces::{self, Api, Outcome};

#[derive(Debug)]
pub struct EnvoyService {
    engine: Arc<Engine>,
    limits: InputLimits,
    headers: Headers,
}

impl EnvoyService {
    pub fn new(engine: Arc<Engine>, limits: InputLimits, headers: Headers) -> Self {
        EnvoyService { engine, limits, headers }
    }

    pub fn into_server(self) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl RateLimitService for EnvoyService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let span = super::call_span(Api::ShouldRateLimit, request.metadata());
        let deadline = super::deadline(request.metadata());
        let request = to_domain(request.into_inner(), self.limits).inspect_err(|status| {
            super::status::rejected(status);
            traces::answered(&span, Outcome { grpc_code: status.code().into(), ..Outcome::default() });
        })?;
        let answer = self
            .engine
            .should_rate_limit(&request.domain, &request.descriptors, request.hits, deadline)
            .instrument(span.clone())
            .await
            .map_err(super::status::from_envoy_error);
        if !span.is_disabled() {
            // The domain is the caller's to write: recorded only when it is a configured one.
            let known = self.engine.domains().by_name.contains_key(&request.domain);
            let outcome = match &answer {
                Ok(answer) => Outcome {
                    allowed: Some(!answer.over),
                    source: answer.source.map(|s| s.as_str()),
                    tiers: answer.statuses.iter().filter(|s| matches!(s, Decided::Limited { .. })).count(),
                    domain: known.then_some(request.domain.as_str()),
                    ..Outcome::default()
                },
                Err(status) => Outcome { grpc_code: status.code().into(), ..Outcome::default() },
            };
            traces::answered(&span, outcome);
        }
        let answer = answer?;
        let mut response = respond(&answer, self.headers);
        if answer.metadata {
            response.dynamic_metadata = Some(metadata::of(&request, &answer.statuses));
        }
        Ok(Response::new(response))
    }
}

/// A `ShouldRateLimit` request within the input bounds, in the domain's terms.
#[derive(Debug)]
pub struct Converted {
    pub domain: String,
    pub descriptors: Vec<Descriptor>,
    /// Units each descriptor consumes unless it carries its own `hits_addend`.
    pub hits: u64,
    /// The request's `hits_addend` as sent (0: absent).
    pub hits_addend: u32,
}

/// Checks a request against the input bounds and converts it; a request past a bound gets
/// INVALID_ARGUMENT naming the field and the bound.
pub fn to_domain(r: RateLimitRequest, limits: InputLimits) -> Result<Converted, Status> {
    if r.domain.is_empty() {
        return Err(invalid("domain", "must not be empty"));
    }
    check_len(|| "domain".to_owned(), &r.domain, limits)?;
    if r.descriptors.is_empty() {
        return Err(invalid("descriptors", "must hold at least one descriptor"));
    }
    if r.descriptors.len() > limits.max_descriptors {
        return Err(invalid(
            "descriptors",
            &format!(
                "{} descriptors exceed limits.max_descriptors ({})",
                r.descriptors.len(),
                limits.max_descriptors
            ),
        ));
    }
    let mut descriptors = Vec::with_capacity(r.descriptors.len());
    for (i, d) in r.descriptors.into_iter().enumerate() {
        if d.entries.len() > limits.max_entries {
            return Err(invalid(
                &format!("descriptors[{i}].entries"),
                &format!("{} entries exceed limits.max_entries ({})", d.entries.len(), limits.max_entries),
            ));
        }
        let mut entries = Vec::with_capacity(d.entries.len());
        for (j, e) in d.entries.into_iter().enumerate() {
            if e.key.is_empty() {
                return Err(invalid(&format!("descriptors[{i}].entries[{j}].key"), "must not be empty"));
            }
            check_len(|| format!("descriptors[{i}].entries[{j}].key"), &e.key, limits)?;
            // A value of any length is counted (see `envoy::domain::short`): keys and domains come
            // from Envoy's configuration, values from the client.
            entries.push((e.key, e.value));
        }
        if d.is_negative_hits {
            // Charging a refund would bill the client twice; until refunds are counted, say so.
            return Err(invalid(
                &format!("descriptors[{i}].is_negative_hits"),
                "refunds are not supported: send the descriptor without it",
            ));
        }
        if let Some(l) = &d.limit
            && let Some(window_ms) = envoy::unit_window_ms(l.unit)
            && u128::from(l.requests_per_unit) * u128::from(window_ms)
                > crate::algorithm::MAX_LIMIT_TIMES_WINDOW
        {
            return Err(invalid(
                &format!("descriptors[{i}].limit"),
                &format!(
                    "{} per {window_ms} ms is too large (requests_per_unit x the unit in ms must stay under 2^50, \
                     where counts stay exact)",
                    l.requests_per_unit
                ),
            ));
        }
        descriptors.push(Descriptor {
            entries,
            limit_override: d.limit.map(|l| (u64::from(l.requests_per_unit), l.unit)),
            hits: d.hits_addend.map(|h| h.value),
        });
    }
    Ok(Converted {
        domain: r.domain,
        descriptors,
        hits: u64::from(r.hits_addend.max(1)),
        hits_addend: r.hits_addend,
    })
}

fn respond(answer: &envoy::Answer, headers: Headers) -> RateLimitResponse {
    let (statuses, over) = (&answer.statuses[..], answer.over);
    let descriptor_statuses = statuses
        .iter()
        .map(|s| match s {
            Decided::Unmatched => DescriptorStatus { code: Code::Ok.into(), ..Default::default() },
            Decided::Unlimited => {
                DescriptorStatus { code: Code::Ok.into(), limit_remaining: u32::MAX, ..Default::default() }
            }
            Decided::Limited { rule, verdict, .. } => DescriptorStatus {
                code: if s.over() { Code::OverLimit.into() } else { Code::Ok.into() },
                current_limit: Some(RateLimit {
                    name: rule.name.clone(),
                    requests_per_unit: u32::try_from(rule.requests_per_unit).unwrap_or(u32::MAX),
                    unit: rule.unit,
                }),
                limit_remaining: if verdict.allowed {
                    u32::try_from(verdict.remaining).unwrap_or(u32::MAX)
                } else {
                    0
                },
                // Whole seconds rounded up, as the reference gives them (for a fixed window the same
                // number: the seconds left in the window), and never 0: no retry at once.
                duration_until_reset: Some(duration(verdict.reset_after_ms.div_ceil(1000).max(1) * 1000)),
                ..Default::default()
            },
        })
        .collect();
    RateLimitResponse {
        overall_code: if over { Code::OverLimit.into() } else { Code::Ok.into() },
        statuses: descriptor_statuses,
        response_headers_to_add: header_values(statuses, headers, over),
        ..Default::default()
    }
}

fn duration(ms: u64) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// The descriptor envoyproxy/ratelimit's headers describe: the first with the least remaining,
/// unless one outside quota mode is over, when the last such one.
fn reference_deciding(statuses: &[Decided]) -> Option<usize> {
    let (mut chosen, mut least) = (None, u64::from(u32::MAX));
    for (i, s) in statuses.iter().enumerate() {
        let Decided::Limited { verdict, quota, .. } = s else { continue };
        let remaining = if s.over() { 0 } else { verdict.remaining.min(u64::from(u32::MAX)) };
        if remaining < least {
            (chosen, least) = (Some(i), remaining);
        }
        if s.over() && !quota {
            (chosen, least) = (Some(i), 0);
        }
    }
    chosen
}

/// The headers of the deciding descriptor (see `decision::deciding`; with `ratelimit` headers,
/// `reference_deciding`), in the configured style.
fn header_values(statuses: &[Decided], headers: Headers, over: bool) -> Vec<HeaderValue> {
    let limited: Vec<(usize, &Rule, &Verdict, bool, bool)> = statuses
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Decided::Limited { rule, verdict, shadow, quota, .. } => {
                Some((i, rule, verdict, *shadow, *quota))
            }
            _ => None,
        })
        .collect();
    let chosen = match headers {
        Headers::RateLimit => reference_deciding(statuses).and_then(|i| limited.iter().find(|l| l.0 == i)),
        _ => deciding(&limited, |(_, _, v, shadow, _)| (v, *shadow)),
    };
    let Some(&(i, rule, verdict, ..)) = chosen else {
        return Vec::new();
    };
    // The longest wait of any enforcing descriptor outside quota mode (one that counted a denied
    // request's hits too), and at least the shortest of the quotas', when every quota is over; none
    // when a descriptor over its limit can never pass, so no wait is promised.
    let never = statuses.iter().any(|s| s.over() && matches!(s, Decided::Limited { never: true, .. }));
    let enforcing = limited.iter().filter(|(.., shadow, _)| !shadow);
    let regular = enforcing.clone().filter(|(.., quota)| !quota).map(|(_, _, v, ..)| v.retry_after_ms).max();
    let quota_open = limited.iter().any(|&(.., shadow, quota)| shadow && quota);
    let quotas = enforcing.filter(|(.., quota)| *quota).map(|(_, _, v, ..)| v.retry_after_ms).min();
    let quotas = if quota_open { None } else { quotas };
    let retry = regular.max(quotas).filter(|_| over && !never);
    fn described(i: usize, rule: &Rule) -> Described<'_> {
        Described {
            name: if rule.name.is_empty() {
                format!("descriptor_{i}").into()
            } else {
                rule.name.as_str().into()
            },
            limit: rule.requests_per_unit,
            window_ms: rule.window_ms,
        }
    }
    let policies: Vec<Described> = limited.iter().map(|&(i, rule, ..)| described(i, rule)).collect();
    let remaining = if statuses[i].over() { 0 } else { verdict.remaining };
    render(headers, &policies, &described(i, rule), remaining, verdict.reset_after_ms, retry)
        .into_iter()
        .map(|(key, value)| HeaderValue { key: key.into(), value, ..Default::default() })
        .collect()
}

/// The dynamic metadata of an answer, as envoyproxy/ratelimit builds it with
/// `RESPONSE_DYNAMIC_METADATA`: `domain`; `descriptors`, one object per request descriptor with its
/// `entries` as `key=value` strings, its `limit` override in protobuf text form and its own
/// `hitsAddend` when it has them; the request's `hitsAddend` unless 0; and `metadata`, the
/// `metadata` of every descriptor that passed (limited and not over), merged in request order: a
/// key already present keeps its first value, and two objects under one key merge the same way.
mod metadata {
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

    use super::{Converted, Decided};
    use crate::envoy::domain::{Metadata, Unit};

    pub fn of(request: &Converted, statuses: &[Decided]) -> Struct {
        let mut fields = std::collections::HashMap::new();
        fields.insert("domain".to_owned(), string(request.domain.clone()));
        let descriptors = request.descriptors.iter().map(|d| {
            let mut fields = std::collections::HashMap::new();
            let entries = d.entries.iter().map(|(k, v)| string(format!("{k}={v}"))).collect();
            fields.insert("entries".to_owned(), list(entries));
            if let Some((requests_per_unit, unit)) = d.limit_override {
                fields.insert("limit".to_owned(), string(limit_text(requests_per_unit, unit)));
            }
            if let Some(hits) = d.hits {
                fields.insert("hitsAddend".to_owned(), number(hits as f64));
            }
            value(Kind::StructValue(Struct { fields }))
        });
        fields.insert("descriptors".to_owned(), list(descriptors.collect()));
        if request.hits_addend != 0 {
            fields.insert("hitsAddend".to_owned(), number(f64::from(request.hits_addend)));
        }
        let mut passed = Metadata::new();
        for s in statuses {
            if let Decided::Limited { rule, .. } = s
                && !s.over()
                && let Some(m) = &rule.metadata
            {
                merge(&mut passed, m);
            }
        }
        if !passed.is_empty() {
            fields.insert("metadata".to_owned(), json(&serde_json::Value::Object(passed)));
        }
        Struct { fields }
    }

    /// `into` keeps what it has; what it lacks comes from `from`; objects on both sides merge.
    fn merge(into: &mut Metadata, from: &Metadata) {
        for (key, v) in from {
            match (into.get_mut(key), v) {
                (None, _) => {
                    into.insert(key.clone(), v.clone());
                }
                (Some(serde_json::Value::Object(mine)), serde_json::Value::Object(theirs)) => {
                    merge(mine, theirs)
                }
                (Some(_), _) => {}
            }
        }
    }

    /// A limit override as Go's protobuf text form writes it: fields at their default left out.
    fn limit_text(requests_per_unit: u64, unit: i32) -> String {
        let mut parts = Vec::new();
        if requests_per_unit != 0 {
            parts.push(format!("requests_per_unit:{requests_per_unit}"));
        }
        if unit != 0 {
            parts.push(match Unit::from_code(unit) {
                Some(u) => format!("unit:{}", u.name().to_ascii_uppercase()),
                None => format!("unit:{unit}"),
            });
        }
        parts.join(" ")
    }

    fn json(v: &serde_json::Value) -> Value {
        value(match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(items) => {
                Kind::ListValue(ListValue { values: items.iter().map(json).collect() })
            }
            serde_json::Value::Object(fields) => Kind::StructValue(Struct {
                fields: fields.iter().map(|(k, v)| (k.clone(), json(v))).collect(),
            }),
        })
    }

    fn value(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    fn string(s: String) -> Value {
        value(Kind::StringValue(s))
    }

    fn number(n: f64) -> Value {
        value(Kind::NumberValue(n))
    }

    fn list(values: Vec<Value>) -> Value {
        value(Kind::ListValue(ListValue { values }))
    }
}
