//! Sluice: a distributed rate-limiting service.
//!
//! The path of one decision, and where each part lives:
//!
//! ```text
//! gateway --gRPC--> api::native        translate protobuf <-> domain, check input sizes
//!                   engine             which tiers apply (tier), one check per limited tier
//!                   store::Store       decide all checks at once, all or nothing:
//!                     LocalStore         in process (no Redis configured)
//!                     RedisStore         lua/decide.lua by FCALL, many requests a call, Redis's clock
//!                     FallbackStore      Redis, else local counts within the deadline
//!                   algorithm          the arithmetic, shared in meaning with lua/
//!         <-- decision                 allow/deny, retry-after, remaining, headers
//! ```
//!
//! `config` reads YAML and the environment into typed settings; `server` wires everything and
//! serves gRPC and HTTP (`http`, `metrics`), over TLS through `tls`; `reload` swaps in a changed
//! configuration while serving, `certs` rotated certificate files; `traces` makes a span of each
//! decision for an OpenTelemetry collector when `tracing` is configured; `cli` is the binary's front.

pub mod algorithm;
pub mod api;
pub mod certs;
pub mod check;
pub mod cli;
pub mod config;
pub mod decision;
pub mod engine;
pub mod envoy;
pub mod http;
pub mod metrics;
pub mod over_limit;
pub mod reload;
pub mod request;
pub mod server;
pub mod shedding;
pub mod store;
pub mod threat;
pub mod tier;
pub mod tls;
pub mod traces;
pub mod transport;
