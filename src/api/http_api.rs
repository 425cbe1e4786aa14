//! Decisions over HTTP (`http_api`), for gateways and services that do not speak gRPC:
//!
//! - `POST /v1/check` and `POST /v1/report`: sluice.v1's `CheckRequest` and `ReportRequest` in their
//!   canonical JSON form, answered with `CheckResponse` and `ReportResponse`. They go through the
//!   same code as gRPC (`native::check`, `native::report`): the same bounds, load shedding and
//!   failure modes. A denial is 200 with `"allowed": false`: this is an API, not a gate. Bad input
//!   is 400 with gRPC's message, which names the field: `{"code": 3, "message": "..."}`.
//! - `/v1/forward-auth` (any method): the original request comes from the headers a gateway sends
//!   (`X-Forwarded-Method`/`X-Original-Method`, `X-Forwarded-Uri`/`X-Original-URI`,
//!   `X-Forwarded-Host`, `User-Agent`, the configured attribute headers; the client from
//!   `client_ip`). Allowed: 200 with the RateLimit headers, which the gateway can copy; denied:
//!   `http_api.deny_status` with `Retry-After` and the RateLimit headers.
//!
//! With traces on, each call makes the same spans as gRPC's `Check` (forward-auth included) or
//! `Report`, under the caller's `traceparent` header.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use tonic::{Code, Status};
use tracing::Instrument;

use super::{client_ip, native, pb};
use crate::check::Mode;
use crate::config::{HttpApiSettings, InputLimits};
use crate::engine::Engine;
use crate::http::Peer;
use crate::traces;

#[derive(Clone)]
struct Api {
    engine: Arc<Engine>,
    limits: InputLimits,
    settings: Arc<HttpApiSettings>,
    bodies: Bodies,
}

/// How many bodies of the largest size may be read at once: together they bound the memory that
/// requests in flight hold, however many connections send them.
const BODIES_AT_ONCE: usize = 16;

/// Request bodies, read whole before a decision: each at most `max` bytes, and all those being
/// read or decided at most `BODIES_AT_ONCE` times that, counted as they arrive.
#[derive(Clone)]
struct Bodies {
    max: usize,
    budget: Arc<tokio::sync::Semaphore>,
}

impl Bodies {
    fn new(max: usize) -> Bodies {
        let total = max.saturating_mul(BODIES_AT_ONCE).min(tokio::sync::Semaphore::MAX_PERMITS);
        Bodies { max, budget: Arc::new(tokio::sync::Semaphore::new(total)) }
    }

    /// The body, and what it holds of the budget until dropped; past `max`, RESOURCE_EXHAUSTED
    /// (413), read no further; when the budget is spent, UNAVAILABLE (503), read no further.
    async fn read(
        &self,
        headers: &HeaderMap,
        body: axum::body::Body,
    ) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), Status> {
        let too_large = || {
            Status::resource_exhausted(format!(
                "the request body exceeds server.max_message_bytes ({} bytes)",
                self.max
            ))
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max as u64) {
            return Err(too_large());
        }
        let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let mut read = Vec::new();
        let mut frames = body.into_data_stream();
        while let Some(frame) = futures::StreamExt::next(&mut frames).await {
            let chunk = frame.map_err(|e| Status::invalid_argument(format!("the request body: {e}")))?;
            if read.len() + chunk.len() > self.max {
                return Err(too_large());
            }
            let n = u32::try_from(chunk.len()).map_err(|_| too_large())?;
            if n > 0 {
                let permit = Arc::clone(&self.budget).try_acquire_many_owned(n).map_err(|_| {
                    Status::unavailable("too many request bodies are being read at once: try again")
                })?;
                match &mut held {
                    Some(h) => h.merge(permit),
                    None => held = Some(permit),
                }
            }
            read.extend_from_slice(&chunk);
        }
        Ok((Bytes::from(read), held))
    }
}

/// The HTTP API's routes. Bodies are bounded by `max_body_bytes` (the gRPC port's message bound),
/// and those in flight together by `BODIES_AT_ONCE` times it.
pub fn router(
    engine: Arc<Engine>,
    limits: InputLimits,
    settings: HttpApiSettings,
    max_body_bytes: usize,
) -> Router {
    let bodies = Bodies::new(max_body_bytes);
    Router::new()
        .route("/v1/check", post(check))
        .route("/v1/report", post(report))
        .route("/v1/forward-auth", any(forward_auth))
        // Bodies are read by `Bodies`, under its bounds.
        .layer(DefaultBodyLimit::disable())
        .with_state(Api { engine, limits, settings: Arc::new(settings), bodies })
}

async fn check(State(api): State<Api>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let (body, _held) = match api.bodies.read(&headers, body).await {
        Ok(read) => read,
        Err(status) => return error(&status),
    };
    let request: pb::CheckRequest = match parse(&body) {
        Ok(r) => r,
        Err(status) => return error(&status),
    };
    let span = call_span(traces::Api::Check, &headers);
    let answer =
        native::check(native::Carrier::Http, &api.engine, api.limits, request, request_id(&headers), None)
            .instrument(span.clone())
            .await;
    traces::answered(&span, native::check_outcome(answer.as_ref()));
    match answer {
        Ok(response) => json(StatusCode::OK, &response),
        Err(status) => error(&status),
    }
}

async fn report(State(api): State<Api>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let (body, _held) = match api.bodies.read(&headers, body).await {
        Ok(read) => read,
        Err(status) => return error(&status),
    };
    let request: pb::ReportRequest = match parse(&body) {
        Ok(r) => r,
        Err(status) => return error(&status),
    };
    let span = call_span(traces::Api::Report, &headers);
    let answer =
        native::report(&api.engine, api.limits, request, request_id(&headers)).instrument(span.clone()).await;
    traces::answered(&span, native::report_outcome(answer.as_ref()));
    match answer {
        Ok(response) => json(StatusCode::OK, &response),
        Err(status) => error(&status),
    }
}

/// A decision span for an HTTP call (`Check`'s or `Report`'s, whichever API carried it).
fn call_span(api: traces::Api, headers: &HeaderMap) -> tracing::Span {
    super::span_from(api, |name| headers.get(name).and_then(|v| v.to_str().ok()))
}

async fn forward_auth(
    State(api): State<Api>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    // A header as text whatever bytes it holds (each byte that is not UTF-8 as U+FFFD): one that is
    // not ASCII must not drop the attribute, and with it every tier that needs it.
    let text = |name: &str| headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let original_method = text("x-forwarded-method").or_else(|| text("x-original-method"));
    // The path only: a query string would let a client make a fresh key with every `?x=...`.
    let endpoint = text("x-forwarded-uri")
        .or_else(|| text("x-original-uri"))
        .map(|uri| normal_path(uri.split(['?', '#']).next().unwrap_or_default()));
    let mut attributes = pb::Attributes {
        ip: client_ip::client_ip(peer, &headers, &api.settings.trusted_proxies).to_string(),
        method: original_method.unwrap_or_else(|| method.to_string()),
        endpoint: endpoint.unwrap_or_default(),
        user_agent: text("user-agent").unwrap_or_default(),
        ..Default::default()
    };
    if let Some(host) = text("x-forwarded-host") {
        attributes.extra.insert("host".to_owned(), host);
    }
    let request = pb::RateRequest { attributes: Some(attributes), cost: None, tiers: Vec::new() };
    let mut requests = match native::to_requests(vec![request], api.limits) {
        Ok(r) => r,
        Err(status) => {
            super::status::rejected(&status);
            return error(&status);
        }
    };
    requests[0].correlation_id = request_id(&headers);
    // The configured headers, held to the same bound as every attribute.
    for (name, attribute) in &api.settings.attributes {
        if let Some(value) = text(name) {
            if let Err(status) = super::check_len(|| name.clone(), &value, api.limits) {
                super::status::rejected(&status);
                return error(&status);
            }
            requests[0].attributes.set(attribute, value);
        }
    }
    let span = call_span(traces::Api::Check, &headers);
    let decision = match api.engine.check_batch(&requests, Mode::Consume, None).instrument(span.clone()).await
    {
        Ok(mut decisions) => decisions.remove(0),
        Err((i, e)) => return error(&super::status::from_request_error(i, e)),
    };
    let outcome = traces::Outcome {
        allowed: Some(decision.allowed),
        source: decision.source.map(|s| s.as_str()),
        tiers: decision.statuses.len(),
        requests: Some(1),
        ..Default::default()
    };
    traces::answered(&span, outcome);
    crate::metrics::api_decision(native::Carrier::ForwardAuth.metric(), decision.allowed);
    let status = if decision.allowed {
        StatusCode::OK
    } else {
        StatusCode::from_u16(api.settings.deny_status).unwrap_or(StatusCode::TOO_MANY_REQUESTS)
    };
    let mut response = (status, if decision.allowed { "allowed\n" } else { "denied\n" }).into_response();
    for (name, value) in decision.headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// A request path as the applications behind a gateway resolve it, so that a client cannot make a
/// fresh endpoint of the same resource: escapes of unreserved characters decoded (`/%61pi` is
/// `/api`, `%2e` is `.`), other escapes kept, in upper case (an escaped `/` stays inside its
/// segment, so `..%2f` climbs nothing); `\` as `/` (as Windows servers read it); a segment's `;`
/// parameters dropped (as Java servers route `/api;x/items`); empty and `.` segments dropped and
/// `..` taking the one before it away (`//api`, `/./api`, `/x/../api`); a trailing `/` kept.
/// Spellings of one resource become one path; no spelling leaves a prefix it resolves under.
fn normal_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                let byte = (hi * 16 + lo) as u8;
                match char::from(byte) {
                    c if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~') => decoded.push(c),
                    '\\' => decoded.push('/'),
                    _ => {
                        use std::fmt::Write;
                        let _ = write!(decoded, "%{byte:02X}");
                    }
                }
                i += 3;
            }
            (b'\\', _, _) => {
                decoded.push('/');
                i += 1;
            }
            _ => {
                // Up to the next escape or backslash, as it is (the raw text is UTF-8).
                let next = bytes[i..]
                    .iter()
                    .position(|&b| b == b'%' || b == b'\\')
                    .map_or(bytes.len(), |n| i + n.max(1));
                decoded.push_str(&raw[i..next]);
                i = next;
            }
        }
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    let last = decoded.rsplit('/').next().unwrap_or_default();
    let ends_in_slash = matches!(last.split(';').next().unwrap_or_default(), "" | "." | "..");
    if path.is_empty() || ends_in_slash {
        path.push('/');
    }
    path
}

fn request_id(headers: &HeaderMap) -> String {
    native::correlation_id(headers.get("x-request-id").map(HeaderValue::as_bytes))
}

/// A JSON body as the message `T`; a body that is not one is INVALID_ARGUMENT, naming where it
/// went wrong.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Status> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let at = e.path().to_string();
        let message = if at == "." { e.inner().to_string() } else { format!("{at}: {}", e.inner()) };
        Status::invalid_argument(message)
    })?;
    // One JSON value and nothing after it but white space: `{...} xyz` is not a request.
    json.end().map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(value)
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => error(&Status::internal(format!("cannot write the answer: {e}"))),
    }
}

/// A gRPC status as HTTP: the status code gRPC's HTTP mapping gives it, and `{"code", "message"}`.
fn error(status: &Status) -> Response {
    let http = match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({ "code": status.code() as i32, "message": status.message() });
    json_value(http, &body)
}

fn json_value(status: StatusCode, body: &serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::normal_path;

    #[test]
    fn paths_as_the_application_resolves_them() {
        for (raw, normal) in [
            ("/api/items", "/api/items"),
            ("//api//items", "/api/items"),
            ("/%61pi/items", "/api/items"),
            ("/x/../api/items", "/api/items"),
            ("/../../api/./items", "/api/items"),
            ("/%2e%2E/api/%2e/items", "/api/items"),
            ("/api/items/", "/api/items/"),
            ("/api/items/.", "/api/items/"),
            ("/api/x/..", "/api/"),
            // An escaped slash stays in its segment: `..%2f` climbs nothing.
            ("/api/..%2flogin", "/api/..%2Flogin"),
            ("/api/%2e%2e%2flogin", "/api/..%2Flogin"),
            ("/api%2Fitems", "/api%2Fitems"),
            // Backslashes as Windows servers read them, and Java's path parameters.
            ("/api\\items", "/api/items"),
            ("/api%5Citems", "/api/items"),
            ("/api;x/items", "/api/items"),
            ("/api/login;jsessionid=1", "/api/login"),
            ("/public/..;/api/items", "/api/items"),
            // Other escapes kept, in one case.
            ("/api%00/items", "/api%00/items"),
            ("/api%2a", "/api%2A"),
            ("/%zz/%4", "/%zz/%4"),
            ("/%ff", "/%FF"),
            ("/é", "/é"),
            ("", "/"),
            ("/", "/"),
            ("..", "/"),
            ("api", "/api"),
        ] {
            assert_eq!(normal_path(raw), normal, "{raw:?}");
        }
    }
}
