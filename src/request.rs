//! What is known about one incoming request, and how its values become parts of keys.
//!
//! Values are escaped before they enter a key (`escape_into`): `%`, `|`, `{`, `}` and control
//! characters become `%XX`, so no client value can collide with another's, end a Redis hash tag
//! early, or step into another tier's keys.

use std::collections::HashMap;
use std::fmt::Write as _;

/// A request attribute a tier can match on or key by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Attr {
    Ip,
    User,
    Endpoint,
    Method,
    UserAgent,
    ClientTier,
    /// A free-form attribute, by name.
    Extra(String),
}

impl Attr {
    pub const BUILT_IN: [&'static str; 6] = ["ip", "user", "endpoint", "method", "user_agent", "client_tier"];

    pub fn parse(name: &str) -> Attr {
        match name {
            "ip" => Attr::Ip,
            "user" => Attr::User,
            "endpoint" => Attr::Endpoint,
            "method" => Attr::Method,
            "user_agent" => Attr::UserAgent,
            "client_tier" => Attr::ClientTier,
            other => Attr::Extra(other.to_owned()),
        }
    }
}

impl std::fmt::Display for Attr {
    /// The attribute's name, as configurations and requests spell it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attr::Extra(name) => f.write_str(name),
            built_in => {
                let i =
                    [Attr::Ip, Attr::User, Attr::Endpoint, Attr::Method, Attr::UserAgent, Attr::ClientTier]
                        .iter()
                        .position(|a| a == built_in)
                        .unwrap_or_default();
                f.write_str(Attr::BUILT_IN[i])
            }
        }
    }
}

/// What is known about one incoming request. Empty strings mean absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub ip: String,
    pub user: String,
    pub endpoint: String,
    pub method: String,
    pub user_agent: String,
    pub client_tier: String,
    pub extra: HashMap<String, String>,
}

impl Attributes {
    /// The attribute's value; `None` when absent or empty.
    pub fn get(&self, attr: &Attr) -> Option<&str> {
        let value = match attr {
            Attr::Ip => &self.ip,
            Attr::User => &self.user,
            Attr::Endpoint => &self.endpoint,
            Attr::Method => &self.method,
            Attr::UserAgent => &self.user_agent,
            Attr::ClientTier => &self.client_tier,
            Attr::Extra(name) => self.extra.get(name)?,
        };
        (!value.is_empty()).then_some(value.as_str())
    }

    /// Sets the attribute's value (an empty value means absent).
    pub fn set(&mut self, attr: &Attr, value: String) {
        let slot = match attr {
            Attr::Ip => &mut self.ip,
            Attr::User => &mut self.user,
            Attr::Endpoint => &mut self.endpoint,
            Attr::Method => &mut self.method,
            Attr::UserAgent => &mut self.user_agent,
            Attr::ClientTier => &mut self.client_tier,
            Attr::Extra(name) => self.extra.entry(name.clone()).or_default(),
        };
        *slot = value;
    }
}

/// The reputation keys of a request's IP and user, when it has them: `sluice:{rep}:ip:<ip>` and
/// `sluice:{rep}:user:<user>` (values escaped as in tier keys).
pub fn reputation_keys(attrs: &Attributes) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    for (kind, value) in [("ip", canonical_ip(&attrs.ip)), ("user", attrs.user.as_str().into())] {
        if !value.is_empty() {
            let mut key = format!("sluice:{{rep}}:{kind}:");
            escape_into(&mut key, &value);
            keys.push(key);
        }
    }
    keys
}

/// One spelling per address (`2001:DB8:0::1` is `2001:db8::1`, `::ffff:192.0.2.1` is
/// `192.0.2.1`), so that a client cannot get a fresh counter by writing its address differently;
/// a value that is no address is kept as it is.
pub fn canonical_ip(value: &str) -> std::borrow::Cow<'_, str> {
    match value.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            let canonical = ip.to_canonical().to_string();
            if canonical == value { value.into() } else { canonical.into() }
        }
        Err(_) => value.into(),
    }
}

/// Percent-escapes the separator, the escape, the hash-tag braces and control characters (each
/// UTF-8 byte as `%XX`), which keeps the encoding injective.
pub fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        if matches!(c, '%' | '|' | '{' | '}') || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}
