//! A plain HTTP/1.1 client for tests: one request per connection, from a loopback source address
//! of the test's choosing (all of 127/8 is on `lo`), so a test can play several clients behind one
//! gateway, and one way to make a Python virtual environment for tools that come from PyPI.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One response: status, headers (lower-case names) and body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `method path` to `to` from `source`, with `headers` and `body`.
pub async fn exchange(
    to: SocketAddr,
    source: IpAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source, 0)).expect("bind the client's address");
    let mut stream = socket.connect(to).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    // A server that refuses a body may answer and close before reading all of it: what it
    // answered is read all the same.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status: status.unwrap_or_else(|| panic!("no status line in {raw:?}")),
        headers,
        body: body.to_owned(),
    }
}

/// 127.0.0.`last`.
pub fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A Python virtual environment `name` under the target directory with `requirements` installed,
/// made (or remade, when the requirements changed) on first use; panics, so the test fails and
/// never skips, when that is impossible.
pub fn venv(name: &str, requirements: &Path) -> PathBuf {
    // Tests of one binary may ask at once: one builds the environment, the others wait.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let stamp = venv.join("installed.txt");
    let wanted = std::fs::read_to_string(requirements).expect("requirements");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let status = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .expect("python3 must be installed");
        assert!(status.success(), "python3 -m venv failed");
        let out = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "-r"])
            .arg(requirements)
            .output()
            .expect("pip");
        assert!(out.status.success(), "pip install failed: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(&stamp, wanted).expect("stamp");
    }
    venv
}
