//! `sluice events` as operators run it: the real binary against a real redis-server, printing the
//! security events stream, and with `--follow` staying on through quiet spells to print what comes.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::RedisServer;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const STREAM: &str = "sluice:events";

/// Appends an event with the fields the store writes (`SecurityEvent::fields`); returns its ID.
fn add_event(redis: &RedisServer, tier: &str, correlation_id: &str) -> String {
    redis.cmd(
        redis::cmd("XADD")
            .arg(STREAM)
            .arg("*")
            .arg("tier")
            .arg(tier)
            .arg("score")
            .arg("80")
            .arg("factors")
            .arg("user_agent,burst")
            .arg("correlation_id")
            .arg(correlation_id),
    )
}

/// Whether a client of `redis` is blocked in XREAD right now.
fn blocked_in_xread(redis: &RedisServer) -> bool {
    let clients: String = redis.cmd(redis::cmd("CLIENT").arg("LIST"));
    clients.lines().any(|l| l.contains("cmd=xread") && l.split_whitespace().any(|f| f == "flags=b"))
}

#[test]
fn follow_waits_through_silence_and_prints_what_comes() {
    let redis = RedisServer::start();
    let before = add_event(&redis, "login", "corr-before");

    let child = Command::new(BIN)
        .args(["events", "--redis", &redis.url(), "--count", "5", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice events --follow");
    let mut process = common::Process(child);
    let stdout = process.0.stdout.take().expect("stdout");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |patience: Duration| -> serde_json::Value {
        let line = lines
            .recv_timeout(patience)
            .unwrap_or_else(|e| panic!("no line from sluice events within {patience:?}: {e}"))
            .expect("read a line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
    };

    let first = next_line(Duration::from_secs(10));
    assert_eq!(first["id"], before.as_str(), "the event already there is printed first: {first}");
    assert_eq!(first["correlation_id"], "corr-before", "{first}");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !blocked_in_xread(&redis) {
        assert!(Instant::now() < deadline, "sluice events --follow never blocked in XREAD");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Two seconds of silence: four times the Redis client's default response timeout, which is
    // what used to end the command.
    std::thread::sleep(Duration::from_secs(2));
    if let Some(status) = process.0.try_wait().expect("try_wait") {
        let mut stderr = String::new();
        let _ = std::io::Read::read_to_string(process.0.stderr.as_mut().expect("stderr"), &mut stderr);
        panic!("sluice events --follow exited ({status}) after 2 s without events: {stderr}");
    }

    let id = add_event(&redis, "auth", "corr-after");
    let event = next_line(Duration::from_secs(5));
    assert_eq!(event["id"], id.as_str(), "{event}");
    assert_eq!(event["tier"], "auth", "{event}");
    assert_eq!(event["score"], "80", "{event}");
    assert_eq!(event["factors"], "user_agent,burst", "{event}");
    assert_eq!(event["correlation_id"], "corr-after", "{event}");
    assert!(process.0.try_wait().expect("try_wait").is_none(), "still following after an event");
}

/// Redis out of reach: the message names where, without the URL's password.
#[test]
fn an_unreachable_redis_is_named_without_its_password() {
    let port = common::pick_port(false);
    let out = Command::new(BIN)
        .args(["events", "--redis", &format!("redis://:s3cret-pass@127.0.0.1:{port}"), "--count", "1"])
        .output()
        .expect("run sluice events");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&format!("events from redis://127.0.0.1:{port}")), "{said}");
    assert!(!said.contains("s3cret"), "the password was printed: {said}");
}
