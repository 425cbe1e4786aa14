//! Which tiers apply to a request, and the key each one counts it under.
//!
//! A tier matches when all of its conditions hold and every attribute of its key is present. Keys
//! are `sluice:{<tier>:<identity>}`: the identity joins the key's attribute values with `|` after
//! escaping `%`, `|`, `{`, `}` and control characters, so no client value can collide with
//! another's, end the hash tag early, or step into another tier (tier names hold no `:`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::algorithm::Algorithm;
use crate::check::{Counts, FailureMode};
use crate::request::{Attr, Attributes, canonical_ip, escape_into};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    AnyOf(Vec<String>),
    Prefix(Vec<String>),
}

impl Condition {
    fn holds(&self, value: Option<&str>) -> bool {
        let Some(value) = value else { return false };
        match self {
            Condition::AnyOf(values) => values.iter().any(|v| v == value),
            Condition::Prefix(prefixes) => prefixes.iter().any(|p| value.starts_with(p.as_str())),
        }
    }
}

/// What a matching tier does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The request passes without any tier being checked or counting.
    Exempt,
    /// This tier neither limits nor counts.
    Unlimited,
    Limited(Limit),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub algorithm: Algorithm,
    pub limit: u64,
    pub window_ms: u64,
    /// Units per request, multiplied by the request's cost.
    pub cost: u64,
}

#[derive(Debug)]
pub struct Tier {
    pub name: Arc<str>,
    pub conditions: Vec<(Attr, Condition)>,
    pub key: Vec<Attr>,
    pub rule: Rule,
    pub shadow: bool,
    pub on_failure: FailureMode,
    /// Present when the limit adapts to the threat score.
    pub adaptive: Option<crate::algorithm::adaptive::Adaptive>,
    /// Present when repeated violations block a key.
    pub penalty: Option<crate::algorithm::penalty::Penalty>,
    /// What consumes the quota: requests, or reported failures only.
    pub counts: Counts,
    /// Present when a heavy key's typical volume may raise its limit.
    pub baseline: Option<crate::algorithm::baseline::Baseline>,
    /// `sluice:{<name>:`, the static part of every key of this tier.
    key_prefix: String,
}

impl Tier {
    /// A tier that enforces (not shadow) and counts locally when Redis fails; set the public
    /// fields to change either.
    pub fn new(name: &str, conditions: Vec<(Attr, Condition)>, key: Vec<Attr>, rule: Rule) -> Tier {
        Tier {
            name: name.into(),
            conditions,
            key,
            rule,
            shadow: false,
            on_failure: FailureMode::Local,
            adaptive: None,
            penalty: None,
            counts: Counts::Requests,
            baseline: None,
            key_prefix: format!("sluice:{{{name}:"),
        }
    }

    /// Whether this tier applies to the request.
    pub fn matches(&self, attrs: &Attributes) -> bool {
        self.conditions.iter().all(|(attr, cond)| cond.holds(attrs.get(attr)))
            && self.key.iter().all(|attr| attrs.get(attr).is_some())
    }

    /// The counter key of this request in this tier; call only when `matches` holds.
    pub fn key_for(&self, attrs: &Attributes) -> String {
        let mut key = String::with_capacity(self.key_prefix.len() + 48);
        key.push_str(&self.key_prefix);
        for (i, attr) in self.key.iter().enumerate() {
            if i > 0 {
                key.push('|');
            }
            let value = attrs.get(attr).unwrap_or_default();
            match attr {
                Attr::Ip => escape_into(&mut key, &canonical_ip(value)),
                _ => escape_into(&mut key, value),
            }
        }
        key.push('}');
        key
    }
}

/// The running set of tiers, in configuration order.
#[derive(Debug, Default)]
pub struct Tiers {
    tiers: Vec<Arc<Tier>>,
    by_name: HashMap<Arc<str>, usize>,
    /// What the adaptive tiers look for in a request.
    pub signals: crate::threat::Signals,
}

impl Tiers {
    pub fn new(tiers: Vec<Tier>) -> Tiers {
        let tiers: Vec<Arc<Tier>> = tiers.into_iter().map(Arc::new).collect();
        let by_name = tiers.iter().enumerate().map(|(i, t)| (Arc::clone(&t.name), i)).collect();
        Tiers { tiers, by_name, signals: Default::default() }
    }

    pub fn all(&self) -> &[Arc<Tier>] {
        &self.tiers
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Tier>> {
        self.position(name).map(|(_, t)| t)
    }

    /// The tier named `name` and its position in configuration order.
    pub fn position(&self, name: &str) -> Option<(usize, &Arc<Tier>)> {
        self.by_name.get(name).map(|&i| (i, &self.tiers[i]))
    }

    pub fn len(&self) -> usize {
        self.tiers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(key: Vec<Attr>) -> Tier {
        let limit = Limit { algorithm: Algorithm::SlidingWindow, limit: 5, window_ms: 1000, cost: 1 };
        Tier::new("auth", vec![], key, Rule::Limited(limit))
    }

    #[test]
    fn keys_cannot_collide_or_escape_the_hash_tag() {
        let t = tier(vec![Attr::Ip, Attr::Extra("username".into())]);
        let attrs = |ip: &str, name: &str| Attributes {
            ip: ip.into(),
            extra: [("username".to_owned(), name.to_owned())].into(),
            ..Default::default()
        };
        let a = t.key_for(&attrs("1.2.3.4|x", "bob"));
        let b = t.key_for(&attrs("1.2.3.4", "x|bob"));
        assert_ne!(a, b);
        let c = t.key_for(&attrs("1}:x{", "\n"));
        assert_eq!(c, "sluice:{auth:1%7D:x%7B|%0A}");
        assert_eq!(c.matches('{').count(), 1);
        assert_eq!(c.matches('}').count(), 1);
        assert_ne!(t.key_for(&attrs("%7C", "b")), t.key_for(&attrs("|", "b")));
    }

    #[test]
    fn one_key_per_address_however_written() {
        let t = tier(vec![Attr::Ip]);
        let key = |ip: &str| t.key_for(&Attributes { ip: ip.into(), ..Default::default() });
        assert_eq!(key("2001:DB8:0::1"), key("2001:db8::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.10"));
        assert_eq!(key("not-an-ip"), "sluice:{auth:not-an-ip}");
    }

    #[test]
    fn a_missing_key_attribute_means_no_match() {
        let t = tier(vec![Attr::User]);
        assert!(!t.matches(&Attributes { ip: "1.1.1.1".into(), ..Default::default() }));
        assert!(t.matches(&Attributes { user: "u".into(), ..Default::default() }));
    }
}
