//! Certificates that rotate: the gRPC listener's certificate, key and client CA (`server.tls`,
//! which the admin listener inherits) and the Redis client's CA, certificate and key
//! (`redis.tls`) are read again every `reload_interval_ms` and taken up while serving, without a
//! restart and without closing a connection.
//!
//! The files are polled, their bytes compared, since a mounted Kubernetes Secret changes by a
//! symlink swap that a watch on the files themselves does not see. A new set is taken up only once
//! it has read the same at two looks in a row: a writer caught half-way (a certificate already
//! new, its key still old) is waited out instead of refused. A set that does not make a working
//! configuration (unreadable, not PEM, a key that is not the certificate's) is refused: the error
//! is logged and counted, the previous certificates keep serving, and the same bytes are not tried
//! again.
//!
//! - Listener: a whole new rustls configuration is swapped in (`tls`); new handshakes use it,
//!   established connections keep theirs.
//! - Redis: the client's certificates are fixed when it is built, so a new `RedisStore` is connected
//!   with the new files and swapped into the fallback store (`FallbackStore::rotate`); calls in
//!   flight finish on the old one. If Redis does not take the new certificate yet (it may be
//!   waiting for a CA of its own), the old connection stays and the new files are tried again at
//!   every look.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::TlsSettings;
use crate::metrics;
use crate::store::fallback::FallbackStore;
use crate::store::redis::Access;
use crate::tls::{self, SharedConfig};

/// What one file held at a look: its bytes, or why it could not be read.
type Content = Result<Vec<u8>, std::io::ErrorKind>;

/// A set of files: each with the key that names it in the configuration.
#[derive(Debug)]
struct Files {
    section: &'static str,
    files: Vec<(&'static str, PathBuf)>,
    /// What the files held when last taken up or refused.
    settled: Vec<Content>,
    /// What they held at the last look, when it differed from `settled`.
    pending: Option<Vec<Content>>,
}

impl Files {
    fn read(&self) -> Vec<Content> {
        self.files.iter().map(|(_, path)| std::fs::read(path).map_err(|e| e.kind())).collect()
    }

    /// The files' new contents, once they differ from the settled ones and have read the same at
    /// two looks in a row; again at every look until `settle` is called.
    fn changed(&mut self) -> Option<Vec<Content>> {
        let now = self.read();
        if now == self.settled {
            self.pending = None;
            return None;
        }
        if self.pending.as_ref() == Some(&now) {
            return Some(now);
        }
        self.pending = Some(now);
        None
    }

    fn settle(&mut self, contents: Vec<Content>) {
        self.settled = contents;
        self.pending = None;
    }

    /// The bytes of every file, or a problem naming the first that could not be read.
    fn bytes(&self, contents: Vec<Content>) -> Result<Vec<Vec<u8>>, String> {
        self.files
            .iter()
            .zip(contents)
            .map(|((key, path), content)| {
                content.map_err(|kind| format!("{}.{key}: cannot read {path:?} ({kind})", self.section))
            })
            .collect()
    }
}

/// What became of a changed set of files.
enum Outcome {
    /// Taken up, or refused for good: not tried again until the files change.
    Settled,
    /// Not taken up for now: tried again at the next look.
    Retry,
}

/// Looks at `files` every `interval` until `stop`, handing each changed set to `apply`.
fn spawn_watch<F, Fut>(mut files: Files, interval: Duration, mut stop: watch::Receiver<bool>, mut apply: F)
where
    F: FnMut(Result<Vec<Vec<u8>>, String>) -> Fut + Send + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    tokio::spawn(async move {
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let Some(contents) = files.changed() else { continue };
            match apply(files.bytes(contents.clone())).await {
                Outcome::Settled => files.settle(contents),
                Outcome::Retry => {}
            }
        }
    });
}

/// Builds the listeners' TLS configuration from `tls` and keeps it up to date with the files until
/// `stop`.
pub fn watch_listener(tls: &TlsSettings, stop: watch::Receiver<bool>) -> Result<SharedConfig, tls::PemError> {
    let config = tls::server_config(&tls.cert_pem, &tls.key_pem, tls.client_ca_pem.as_deref())?;
    let shared: SharedConfig = Arc::new(arc_swap::ArcSwap::new(config));
    metrics::tls_loaded("grpc", true);
    let mut files = vec![("cert_file", tls.cert_file.clone()), ("key_file", tls.key_file.clone())];
    let mut settled = vec![Ok(tls.cert_pem.clone()), Ok(tls.key_pem.clone())];
    if let (Some(path), Some(pem)) = (&tls.client_ca_file, &tls.client_ca_pem) {
        files.push(("client_ca_file", path.clone()));
        settled.push(Ok(pem.clone()));
    }
    let files = Files { section: "server.tls", files, settled, pending: None };
    let swap = Arc::clone(&shared);
    spawn_watch(files, tls.reload_interval, stop, move |bytes| {
        let built = bytes.and_then(|b| {
            let config = tls::server_config(&b[0], &b[1], b.get(2).map(Vec::as_slice))
                .map_err(|e| format!("server.tls.{e}"))?;
            Ok((config, tls::fingerprint(&b[0]).unwrap_or_default()))
        });
        match built {
            Ok((config, sha256)) => {
                swap.store(config);
                metrics::tls_reload("grpc", "ok");
                tracing::info!(section = "server.tls", sha256 = %sha256, "TLS certificate reloaded: new connections get it");
            }
            Err(problem) => {
                metrics::tls_reload("grpc", "error");
                tracing::error!(section = "server.tls", %problem, "TLS files not reloaded; the previous certificate keeps serving");
            }
        }
        std::future::ready(Outcome::Settled)
    });
    Ok(shared)
}

/// Keeps the Redis client's certificates up to date with the files of `access` (when it has
/// files) until `stop`, connecting anew through `store` when they change.
pub fn watch_redis(
    access: &Access,
    interval: Duration,
    store: Arc<FallbackStore>,
    stop: watch::Receiver<bool>,
) {
    let Some(tls) = &access.tls else { return };
    let mut files = Vec::new();
    let mut settled = Vec::new();
    let has_ca = if let (Some(path), Some(pem)) = (&tls.paths.ca, &tls.ca_pem) {
        files.push(("ca_file", path.clone()));
        settled.push(Ok(pem.clone()));
        true
    } else {
        false
    };
    let has_client =
        if let (Some((cert_path, key_path)), Some((cert, key))) = (&tls.paths.client, &tls.client) {
            files.extend([("cert_file", cert_path.clone()), ("key_file", key_path.clone())]);
            settled.extend([Ok(cert.clone()), Ok(key.clone())]);
            true
        } else {
            false
        };
    if files.is_empty() {
        return;
    }
    metrics::tls_loaded("redis", true);
    let files = Files { section: "redis.tls", files, settled, pending: None };
    let base = access.clone();
    spawn_watch(files, interval, stop, move |bytes| {
        let store = Arc::clone(&store);
        let mut access = base.clone();
        async move {
            let checked = bytes.and_then(|b| {
                let mut b = b.into_iter();
                let mut fresh = access.tls.clone().unwrap_or_default();
                if has_ca {
                    fresh.ca_pem = b.next();
                }
                if has_client {
                    fresh.client = b.next().zip(b.next());
                }
                let ca = fresh.ca_pem.as_deref().map_or(Ok(()), tls::check_ca);
                ca.and_then(|()| fresh.client.as_ref().map_or(Ok(()), |(c, k)| tls::check_client_pair(c, k)))
                    .map_err(|e| format!("redis.tls.{e}"))?;
                Ok(fresh)
            });
            let fresh = match checked {
                Ok(fresh) => fresh,
                Err(problem) => {
                    metrics::tls_reload("redis", "error");
                    tracing::error!(section = "redis.tls", %problem, "TLS files not reloaded; the previous certificates stay in use");
                    return Outcome::Settled;
                }
            };
            let sha256 =
                fresh.client.as_ref().and_then(|(cert, _)| tls::fingerprint(cert)).unwrap_or_default();
            access.tls = Some(fresh);
            match store.rotate(access).await {
                Ok(()) => {
                    metrics::tls_reload("redis", "ok");
                    tracing::info!(section = "redis.tls", sha256 = %sha256, "TLS files reloaded: Redis is reached with them now");
                    Outcome::Settled
                }
                Err(e) => {
                    metrics::tls_reload("redis", "error");
                    tracing::warn!(section = "redis.tls", error = %e, "cannot reach Redis with the new TLS files yet; the previous connection stays in use, trying again");
                    Outcome::Retry
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path) -> Files {
        let files = vec![("cert_file", dir.join("tls.crt")), ("key_file", dir.join("tls.key"))];
        let mut files = Files { section: "server.tls", files, settled: Vec::new(), pending: None };
        files.settled = files.read();
        files
    }

    #[test]
    fn files_are_taken_up_once_they_read_the_same_twice_in_a_row() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("tls.crt"), "cert 1").expect("write");
        std::fs::write(dir.path().join("tls.key"), "key 1").expect("write");
        let mut files = files(dir.path());
        assert_eq!(files.changed(), None, "nothing changed");

        // A writer caught half-way: the certificate is new, the key not yet.
        std::fs::write(dir.path().join("tls.crt"), "cert 2").expect("write");
        assert_eq!(files.changed(), None, "first sight of a change");
        std::fs::write(dir.path().join("tls.key"), "key 2").expect("write");
        assert_eq!(files.changed(), None, "it changed again since");
        let new = vec![Ok(b"cert 2".to_vec()), Ok(b"key 2".to_vec())];
        assert_eq!(files.changed().as_ref(), Some(&new), "the same twice in a row");
        assert_eq!(files.changed().as_ref(), Some(&new), "offered again until settled");
        files.settle(new);
        assert_eq!(files.changed(), None, "settled");

        // A missing file is a change like any other, and names its key when its bytes are asked for.
        std::fs::remove_file(dir.path().join("tls.key")).expect("remove");
        assert_eq!(files.changed(), None);
        let missing = files.changed().expect("the same twice in a row");
        let problem = files.bytes(missing).expect_err("a file is missing");
        assert!(problem.starts_with("server.tls.key_file: cannot read"), "{problem}");
    }
}
