//! `sluice.v1.Admin`: operators' actions on stored state. Served on its own listener, and only to
//! callers presenting the configured bearer token.

use std::net::IpAddr;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb;
use super::status::invalid;
use crate::check::AdminOp;
use crate::engine::Engine;
use crate::request::{Attributes, reputation_keys};
use crate::tier::Rule;

/// Longest reputation mark: 30 days.
const MAX_TTL_MS: i64 = 30 * 86_400_000;

#[derive(Debug)]
pub struct AdminService {
    engine: Arc<Engine>,
}

impl AdminService {
    /// The service behind a check of `authorization: Bearer <token>`.
    pub fn into_server(
        engine: Arc<Engine>,
        token: String,
    ) -> tonic::service::interceptor::InterceptedService<
        pb::admin_server::AdminServer<AdminService>,
        impl tonic::service::Interceptor + Clone,
    > {
        let expected = format!("Bearer {token}");
        let check = move |request: Request<()>| {
            let presented = request.metadata().get("authorization").map(|v| v.as_bytes()).unwrap_or_default();
            if constant_time_eq(presented, expected.as_bytes()) {
                Ok(request)
            } else {
                Err(Status::unauthenticated("a valid admin token is required"))
            }
        };
        pb::admin_server::AdminServer::with_interceptor(AdminService { engine }, check)
    }

    /// The tier-key of a request, checking that the tier exists, counts, and has its key's attributes.
    fn tier_key(&self, r: pb::KeyRequest) -> Result<String, Status> {
        let tiers = self.engine.tiers();
        let tier = tiers
            .by_name(&r.tier)
            .ok_or_else(|| invalid("tier", &format!("no tier is named {:?}", truncate(&r.tier))))?;
        if !matches!(tier.rule, Rule::Limited(_)) {
            return Err(invalid("tier", &format!("tier {:?} counts nothing", tier.name)));
        }
        let attrs = Attributes::from(r.attributes.unwrap_or_default());
        if let Some(missing) = tier.key.iter().find(|a| attrs.get(a).is_none()) {
            return Err(invalid(
                "attributes",
                &format!("tier {:?} is keyed by {missing}, which is missing", tier.name),
            ));
        }
        Ok(tier.key_for(&attrs))
    }

    async fn run(&self, op: AdminOp<'_>) -> Result<Vec<(String, String)>, Status> {
        self.engine.admin(op).await.map_err(super::status::from_admin_error)
    }
}

fn truncate(s: &str) -> &str {
    s.char_indices().nth(64).map_or(s, |(i, _)| &s[..i])
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The reputation key of exactly one of `ip` and `user`.
fn reputation_key(ip: String, user: String) -> Result<String, Status> {
    match (ip.is_empty(), user.is_empty()) {
        (false, true) => {
            if ip.parse::<IpAddr>().is_err() {
                return Err(invalid("ip", &format!("{:?} is not an IP address", truncate(&ip))));
            }
            Ok(reputation_keys(&Attributes { ip, ..Default::default() }).remove(0))
        }
        (true, false) if user.len() <= 4096 => {
            Ok(reputation_keys(&Attributes { user, ..Default::default() }).remove(0))
        }
        (true, false) => Err(invalid("user", "longer than 4096 bytes")),
        _ => Err(invalid("ip", "set exactly one of ip and user")),
    }
}

fn keys(touched: Vec<(String, String)>) -> pb::AdminResponse {
    pb::AdminResponse { keys: touched.into_iter().map(|(_, key)| key).collect() }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn set_reputation(
        &self,
        r: Request<pb::SetReputationRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let r = r.into_inner();
        if !(1..=MAX_TTL_MS).contains(&r.ttl_ms) {
            return Err(invalid(
                "ttl_ms",
                &format!("{} is not between 1 and {MAX_TTL_MS} (30 days)", r.ttl_ms),
            ));
        }
        let key = reputation_key(r.ip, r.user)?;
        let ttl_ms = r.ttl_ms.unsigned_abs();
        Ok(Response::new(keys(self.run(AdminOp::SetReputation { key: &key, ttl_ms }).await?)))
    }

    async fn clear_reputation(
        &self,
        r: Request<pb::ClearReputationRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let r = r.into_inner();
        let key = reputation_key(r.ip, r.user)?;
        Ok(Response::new(keys(self.run(AdminOp::ClearReputation { key: &key }).await?)))
    }

    async fn unblock(&self, r: Request<pb::KeyRequest>) -> Result<Response<pb::AdminResponse>, Status> {
        let key = self.tier_key(r.into_inner())?;
        Ok(Response::new(keys(self.run(AdminOp::Unblock { key: &key }).await?)))
    }

    async fn reset(&self, r: Request<pb::KeyRequest>) -> Result<Response<pb::AdminResponse>, Status> {
        let key = self.tier_key(r.into_inner())?;
        Ok(Response::new(keys(self.run(AdminOp::Reset { key: &key }).await?)))
    }

    async fn inspect(&self, r: Request<pb::KeyRequest>) -> Result<Response<pb::InspectResponse>, Status> {
        let key = self.tier_key(r.into_inner())?;
        let fields = self.run(AdminOp::Inspect { key: &key }).await?.into_iter().collect();
        Ok(Response::new(pb::InspectResponse { key, fields }))
    }
}
