//! The fixtures that own real processes and sockets (Redis Cluster, Sentinel, the fault-injecting TCP
//! proxy) do what other tests rely on them to do.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::RedisServer;
use common::cluster::RedisCluster;
use common::proxy::TcpProxy;
use common::sentinel::RedisSentinel;
use sluice::store::redis::key_slot;

fn set(key: &str, value: &str) -> redis::Cmd {
    redis::cmd("SET").arg(key).arg(value).clone()
}

fn get(key: &str) -> redis::Cmd {
    redis::cmd("GET").arg(key).clone()
}

#[test]
fn cluster_serves_each_key_from_its_master_and_slots_match_redis() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, 0);
    eprintln!("cluster of 3 masters ready in {:?}", started.elapsed());
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.seed_urls(), cluster.urls());
    let mut masters = cluster.master_ports();
    masters.sort_unstable();
    let mut ports = cluster.ports();
    ports.sort_unstable();
    assert_eq!(masters, ports, "with no replicas every node is a master");

    let any = cluster.ports()[0];
    let keys = [
        "",
        "alpha",
        "{user:42}:minute",
        "{user:42}:hour",
        "{}:empty-tag",
        "a{b}c{d}",
        "no}open{tag",
        "{unclosed",
        "}{x}",
        "ключ{ü}",
        "rate:10.0.0.1:/api/v1/items",
    ];
    for key in keys {
        let server: u16 = cluster.cmd_on(any, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key));
        assert_eq!(key_slot(key.as_bytes()), server, "slot of {key:?}");
    }
    assert_eq!(key_slot(b"{user:42}:minute"), 15880);
    assert_eq!(key_slot(b"a{b}c{d}"), key_slot(b"b"));
    assert_ne!(key_slot(b"{}:empty-tag"), key_slot(b""), "an empty tag hashes the whole key");

    for key in ["alpha", "beta", "gamma", "{user:42}:minute"] {
        let owner = cluster.master_of_key(key);
        let _: () = cluster.cmd_on(owner, &set(key, &format!("value of {key}")));
        let read: String = cluster.cmd_on(owner, &get(key));
        assert_eq!(read, format!("value of {key}"));
        let other = *cluster.ports().iter().find(|&&p| p != owner).expect("another node");
        let err = cluster.try_cmd_on::<Option<String>>(other, &get(key)).expect_err("a non-owner redirects");
        assert_eq!(err.code(), Some("MOVED"), "{err}");
        let owner_addr = format!("127.0.0.1:{owner}");
        assert_eq!(err.redirect_node(), Some((owner_addr.as_str(), key_slot(key.as_bytes()))));
    }
}

#[test]
fn cluster_promotes_a_replica_when_its_master_is_killed() {
    let started = Instant::now();
    let mut cluster = RedisCluster::start(3, 1);
    eprintln!("cluster of 3 masters + 3 replicas ready in {:?}", started.elapsed());
    assert_eq!(cluster.urls().len(), 6);
    assert_eq!(cluster.master_ports().len(), 3);

    let key = "{failover}:counter";
    let master = cluster.master_of_key(key);
    let replicas = cluster.replicas_of(master);
    assert_eq!(replicas.len(), 1, "one replica per master");
    let acked = common::cluster::set_replicated(master, key, "kept");
    assert_eq!(acked, 1, "the replica acknowledged the write");

    cluster.kill_node(master);
    let killed = Instant::now();
    let promoted = cluster.wait_for_failover_of(master, Duration::from_secs(15));
    eprintln!("failover of {master} to {promoted} took {:?}", killed.elapsed());

    assert_eq!(promoted, replicas[0]);
    assert_eq!(cluster.master_of_key(key), promoted);
    assert!(!cluster.seed_urls().contains(&format!("redis://127.0.0.1:{master}")));
    assert_eq!(cluster.seed_urls().len(), 5);
    let read: Option<String> = cluster.cmd_on(promoted, &get(key));
    assert_eq!(read.as_deref(), Some("kept"), "the promoted replica lost the key\n{}", cluster.logs());
    let _: () = cluster.cmd_on(promoted, &set(key, "written after failover"));
}

#[test]
fn sentinel_promotes_the_replica_when_the_primary_is_killed() {
    let started = Instant::now();
    let mut sentinel = RedisSentinel::start();
    eprintln!("sentinel setup ready in {:?}", started.elapsed());
    assert_eq!(sentinel.master_name(), "mymaster");
    assert_eq!(sentinel.sentinel_urls().len(), 3);
    for port in sentinel.sentinel_ports() {
        assert_eq!(sentinel.master_port_per(port), Some(sentinel.primary_port()));
    }
    let replica = sentinel.replica_port();
    assert_ne!(replica, sentinel.primary_port());

    let primary = sentinel.primary_port();
    let acked = common::cluster::set_replicated(primary, "session", "kept");
    assert_eq!(acked, 1, "the replica acknowledged the write");
    let refused = common::cluster::query::<()>(replica, &set("session", "x"));
    assert_eq!(refused.expect_err("a replica is read-only").code(), Some("READONLY"));

    sentinel.kill_primary();
    let killed = Instant::now();
    let promoted = sentinel.wait_for_promotion(Duration::from_secs(15));
    eprintln!("sentinel failover took {:?}", killed.elapsed());

    assert_eq!(promoted, replica);
    let read: String = sentinel.cmd_on(promoted, &get("session"));
    assert_eq!(read, "kept");
    let _: () = sentinel.cmd_on(promoted, &set("session", "written after failover"));
}

fn upstream(redis: &RedisServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], redis.port))
}

fn connect(url: &str, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let conn = redis::Client::open(url)?.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

fn ping(conn: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(conn)
}

/// Sends a raw RESP PING and reads whatever comes back within `timeout`.
fn raw_ping(stream: &mut TcpStream, timeout: Duration) -> std::io::Result<String> {
    stream.write_all(b"PING\r\n")?;
    read_some(stream, timeout)
}

fn read_some(stream: &mut TcpStream, timeout: Duration) -> std::io::Result<String> {
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn proxy_forwards_and_sever_fails_connections_fast_until_healed() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(upstream(&redis));
    assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}", proxy.addr().port()));
    let second = Duration::from_secs(1);

    let mut conn = connect(&proxy.url(), second).expect("connect through the proxy");
    assert_eq!(ping(&mut conn).expect("ping through the proxy"), "PONG");
    let _: () = redis::cmd("SET").arg("k").arg("through the proxy").query(&mut conn).expect("set");
    let direct: String = redis.cmd(redis::cmd("GET").arg("k"));
    assert_eq!(direct, "through the proxy");
    assert_eq!(proxy.open_connections(), 1);

    proxy.sever();
    assert_eq!(proxy.open_connections(), 0);
    let asked = Instant::now();
    assert!(ping(&mut conn).is_err(), "a severed connection fails");
    assert!(asked.elapsed() < Duration::from_millis(500), "and fails fast: {:?}", asked.elapsed());

    let asked = Instant::now();
    let fresh = connect(&proxy.url(), second).and_then(|mut c| ping(&mut c));
    assert!(fresh.is_err(), "new connections are refused while severed: {fresh:?}");
    assert!(asked.elapsed() < Duration::from_millis(500), "and fail fast: {:?}", asked.elapsed());

    proxy.heal();
    let mut conn = connect(&proxy.url(), second).expect("connect after heal");
    assert_eq!(ping(&mut conn).expect("ping after heal"), "PONG");
}

#[test]
fn proxy_stall_hangs_connections_and_heal_resumes_them() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(upstream(&redis));
    let mut conn = connect(&proxy.url(), Duration::from_secs(1)).expect("connect through the proxy");
    assert_eq!(ping(&mut conn).expect("ping through the proxy"), "PONG");
    let mut raw = TcpStream::connect(proxy.addr()).expect("raw connect");
    assert_eq!(raw_ping(&mut raw, Duration::from_secs(1)).expect("raw ping"), "+PONG\r\n");

    proxy.stall();
    conn.set_read_timeout(Some(Duration::from_millis(300))).expect("read timeout");
    let asked = Instant::now();
    let stalled = ping(&mut conn).expect_err("a stalled connection gets no answer");
    assert!(stalled.is_timeout(), "a hang, not a refusal: {stalled}");
    assert!(asked.elapsed() >= Duration::from_millis(290), "{:?}", asked.elapsed());

    let hung = raw_ping(&mut raw, Duration::from_millis(300)).expect_err("no answer while stalled");
    assert!(matches!(hung.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{hung}");
    let mut late = TcpStream::connect(proxy.addr()).expect("new connections are accepted while stalled");
    let hung = raw_ping(&mut late, Duration::from_millis(300)).expect_err("but get no answer");
    assert!(matches!(hung.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{hung}");
    assert_eq!(proxy.open_connections(), 3, "stalled connections stay open");

    proxy.heal();
    assert_eq!(read_some(&mut raw, Duration::from_secs(2)).expect("held-back reply"), "+PONG\r\n");
    assert_eq!(read_some(&mut late, Duration::from_secs(2)).expect("held-back reply"), "+PONG\r\n");
    let mut fresh = connect(&proxy.url(), Duration::from_secs(1)).expect("connect after heal");
    assert_eq!(ping(&mut fresh).expect("ping after heal"), "PONG");
}

#[tokio::test]
async fn proxy_serves_async_clients_and_closes_connections_on_drop() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(upstream(&redis));
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.expect("connect through the proxy");
    stream.write_all(b"PING\r\n").await.expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf))
        .await
        .expect("a reply in time")
        .expect("read");
    assert_eq!(&buf[..n], b"+PONG\r\n");

    drop(proxy);
    let after = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf))
        .await
        .expect("the connection ends promptly when the proxy is dropped");
    assert!(matches!(after, Ok(0) | Err(_)), "closed, got {after:?}");
}
