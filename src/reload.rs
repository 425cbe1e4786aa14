//! Reloading the configuration while serving. When its file or an Envoy domain file it names
//! changes (looked at every second), or on SIGHUP, the file is loaded again and its tiers, threat
//! lists and Envoy domains are swapped into the engine at once: calls in flight finish with the old
//! ones, and counts stay under the same tier names. A file that does not load keeps the old
//! configuration serving. The other sections (listeners, Redis, fallback, limits, admin) take
//! effect at the next start, and a reload that changes them says so in the log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config;
use crate::engine::Engine;
use crate::metrics;

/// How often the configuration file is looked at for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// What the reloader compares: the bytes of the configuration file and of every Envoy domain file
/// it names (a directory's `.yaml`/`.yml` files, sorted), so an edit, a new file or a removed one
/// is noticed.
fn snapshot(path: &Path, envoy_paths: &[PathBuf]) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    config::files_read(path, envoy_paths)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(&f).ok();
            (f, bytes)
        })
        .collect()
}

/// Reloads the configuration at `path` when it or a domain file of `envoy_paths` changes, or on
/// SIGHUP, until `stop` says the server stops.
pub fn spawn_reloader(
    engine: Arc<Engine>,
    path: PathBuf,
    mut envoy_paths: Vec<PathBuf>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut seen = snapshot(&path, &envoy_paths);
        // What the running server started with, of the sections a reload does not swap in.
        let started = config::restart_sections(&path);
        #[cfg(unix)]
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut every = tokio::time::interval(RELOAD_EVERY);
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = every.tick() => {
                    let now = snapshot(&path, &envoy_paths);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                }
                _ = hup => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            match config::load(Some(&path)) {
                Ok(settings) => {
                    let tiers = settings.tiers.len();
                    if settings.envoy_paths != envoy_paths {
                        envoy_paths = settings.envoy_paths;
                        seen = snapshot(&path, &envoy_paths);
                    }
                    engine.replace_tiers(settings.tiers);
                    engine.replace_domains(settings.domains);
                    metrics::config_reload("ok");
                    tracing::info!(config = %path.display(), tiers, "configuration reloaded");
                    if let (Some(started), Some(now)) = (&started, config::restart_sections(&path)) {
                        let waiting = config::changed_sections(started, &now);
                        if !waiting.is_empty() {
                            tracing::warn!(
                                sections = %waiting.join(", "),
                                "these sections changed, and take effect at the next start, not now"
                            );
                        }
                    }
                }
                Err(e) => {
                    metrics::config_reload("error");
                    for line in e.lines() {
                        tracing::error!(problem = %line, "configuration not reloaded; the previous one keeps serving");
                    }
                }
            }
        }
    });
}
