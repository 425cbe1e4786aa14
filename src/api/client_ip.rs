//! Who the client is, behind proxies: the address a forward-auth request is counted under.
//!
//! The TCP peer is the client unless it is a trusted proxy (`http_api.trusted_proxies`). From a
//! trusted peer, `X-Forwarded-For` is read right to left (every field line of it, joined in order),
//! and the first address that is not a trusted proxy is the client: everything left of it was
//! written by someone no trusted hop vouches for, so a client that sends its own
//! `X-Forwarded-For` through a trusted proxy only adds entries the walk never reaches. When every
//! entry is trusted, the left-most is the client. An entry that is not an address ends the walk at
//! the last good address (the trusted hop to its right, else the peer): never an empty address,
//! which a tier keyed by `ip` would not count. Without `X-Forwarded-For`, a trusted peer's
//! `X-Real-IP` is believed. Addresses are canonical (`::ffff:1.2.3.4` is `1.2.3.4`, a port is
//! dropped), so one client is one key however a proxy writes it.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// At most this many `X-Forwarded-For` entries are walked; a longer chain ends at the last one
/// read, as an unreadable entry does.
const MOST_HOPS: usize = 32;

/// The client's address, for a request from `peer` carrying `headers`.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.ip().to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Right to left over every field line. A line is read whatever bytes it holds: a proxy that
    // appends the address it saw writes it on the line the client began, and a byte that is not
    // text must not drop that address with the client's garbage (the walk stops at the garbage,
    // left of it). Only a line that is not ASCII is copied.
    let lines: Vec<std::borrow::Cow<'_, str>> =
        headers.get_all("x-forwarded-for").iter().map(|v| String::from_utf8_lossy(v.as_bytes())).collect();
    let mut entries = lines
        .iter()
        .rev()
        .flat_map(|line| line.rsplit(','))
        .map(|e| e.trim_matches([' ', '\t']))
        .filter(|e| !e.is_empty())
        .take(MOST_HOPS)
        .peekable();
    if entries.peek().is_none() {
        return headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse(v.trim()))
            .unwrap_or(peer);
    }
    let mut last = peer;
    for entry in entries {
        match parse(entry) {
            Some(ip) if !is_trusted(&ip) => return ip,
            Some(ip) => last = ip,
            None => return last,
        }
    }
    last
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:443`; `None` for anything else (`unknown`, an obfuscated `_id`, a zone).
fn parse(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<std::net::Ipv6Addr>().ok().map(|ip| IpAddr::V6(ip).to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const PEER: &str = "10.0.0.5:41000";

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7"), ("x-real-ip", "198.51.100.8")]);
        assert_eq!(client_ip("203.0.113.9:5000".parse().unwrap(), &h, &trusted()), ip("203.0.113.9"));
        assert_eq!(client_ip(PEER.parse().unwrap(), &h, &[]), ip("10.0.0.5"), "nothing trusted");
    }

    #[test]
    fn the_right_most_untrusted_entry_is_the_client() {
        let peer = PEER.parse().unwrap();
        // A client forging its own entry through a trusted proxy: the proxy appends the real one.
        let h = headers(&[("x-forwarded-for", "198.51.100.7, 203.0.113.9, 10.1.1.1")]);
        assert_eq!(client_ip(peer, &h, &trusted()), ip("203.0.113.9"));
        // Two field lines are one list, in order.
        let h = headers(&[("x-forwarded-for", "198.51.100.7"), ("x-forwarded-for", "203.0.113.9,10.1.1.1")]);
        assert_eq!(client_ip(peer, &h, &trusted()), ip("203.0.113.9"));
        // Every entry trusted: the left-most.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(client_ip(peer, &h, &trusted()), ip("10.9.9.9"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_one_client() {
        let peer = PEER.parse().unwrap();
        for entry in ["203.0.113.9", "203.0.113.9:1234", "::ffff:203.0.113.9", "[::ffff:203.0.113.9]:80"] {
            let h = headers(&[("x-forwarded-for", entry)]);
            assert_eq!(client_ip(peer, &h, &trusted()), ip("203.0.113.9"), "{entry}");
        }
        for entry in ["2001:db8::1", "[2001:db8::1]", "[2001:db8::1]:443"] {
            let h = headers(&[("x-forwarded-for", entry)]);
            assert_eq!(client_ip(peer, &h, &trusted()), ip("2001:db8::1"), "{entry}");
        }
        let mapped_peer = "[::ffff:10.0.0.5]:41000".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_ip(mapped_peer, &h, &trusted()), ip("203.0.113.9"), "a v4 peer on a v6 socket");
    }

    /// A client's byte that is not text, on the line its proxy appended the real address to,
    /// neither hides that address nor lets `X-Real-IP` speak instead.
    #[test]
    fn a_line_that_is_not_text_keeps_the_address_appended_to_it() {
        let peer = PEER.parse().unwrap();
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", axum::http::HeaderValue::from_bytes(b"\xff, 203.0.113.9").unwrap());
        h.append("x-real-ip", "198.51.100.8".parse().unwrap());
        assert_eq!(client_ip(peer, &h, &trusted()), ip("203.0.113.9"));
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", axum::http::HeaderValue::from_bytes(b"\xff").unwrap());
        h.append("x-real-ip", "198.51.100.8".parse().unwrap());
        assert_eq!(client_ip(peer, &h, &trusted()), ip("10.0.0.5"), "garbage alone: the peer, not X-Real-IP");
    }

    #[test]
    fn garbage_ends_the_walk_at_the_last_good_address_never_at_nothing() {
        let peer = PEER.parse().unwrap();
        for (xff, expected) in [
            ("unknown", "10.0.0.5"),
            ("203.0.113.9, _hidden, 10.1.1.1", "10.1.1.1"),
            ("fe80::1%eth0", "10.0.0.5"),
            ("01.2.3.4", "10.0.0.5"),
            (",,,", "10.0.0.5"),
            ("", "10.0.0.5"),
        ] {
            let h = headers(&[("x-forwarded-for", xff)]);
            assert_eq!(client_ip(peer, &h, &trusted()), ip(expected), "{xff:?}");
        }
        // A chain longer than the walk: the last trusted entry read.
        let long = vec!["10.2.2.2"; 100].join(",");
        let h = headers(&[("x-forwarded-for", &format!("203.0.113.9,{long}"))]);
        assert_eq!(client_ip(peer, &h, &trusted()), ip("10.2.2.2"));
    }

    #[test]
    fn x_real_ip_only_without_x_forwarded_for_and_only_from_a_trusted_peer() {
        let peer = PEER.parse().unwrap();
        let h = headers(&[("x-real-ip", " 203.0.113.9 ")]);
        assert_eq!(client_ip(peer, &h, &trusted()), ip("203.0.113.9"));
        let h = headers(&[("x-real-ip", "nonsense")]);
        assert_eq!(client_ip(peer, &h, &trusted()), ip("10.0.0.5"));
        let h = headers(&[("x-real-ip", "198.51.100.8"), ("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_ip(peer, &h, &trusted()), ip("203.0.113.9"), "X-Forwarded-For wins");
    }
}
