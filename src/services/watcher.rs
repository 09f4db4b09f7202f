//! Background service: reloads the config when its file changes or when
//! the process gets SIGHUP.
//!
//! The file is watched through the OS (`notify`: inotify on Linux) on its
//! parent directory, not on the file itself, so that every way a file gets
//! replaced is seen: an editor writing in place, an atomic rename over it,
//! and the symlink swap a Kubernetes ConfigMap does (`..data` re-pointed in
//! the directory; the file's own inode never changes). Events are debounced
//! and the file's content decides: a reload happens only when it differs
//! from the last version read — at start, the version the gateway loaded,
//! so that a change made before the watch is in place is not missed. When
//! the OS watch cannot be set up (no inotify instances left, say), the file
//! is polled instead.
//!
//! Pingora does not handle SIGHUP, and its default action would kill the
//! process: [`install_sighup`] replaces it with a flag this service checks,
//! before any listener opens.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::runtime::control::ControlPlane;

/// Installs the SIGHUP handler; the returned flag turns true on each signal.
pub fn install_sighup() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, flag.clone())?;
    Ok(flag)
}

pub struct ConfigWatcher {
    control: Arc<ControlPlane>,
    sighup: Arc<AtomicBool>,
    /// The file's version when the gateway started ([`file_version`], read
    /// just before the config itself): a change between then and the watch
    /// being in place is caught by comparing against it, not missed.
    loaded: Option<u64>,
}

impl ConfigWatcher {
    pub fn new(control: Arc<ControlPlane>, sighup: Arc<AtomicBool>, loaded: Option<u64>) -> Self {
        ConfigWatcher {
            control,
            sighup,
            loaded,
        }
    }
}

/// The config file's version (see [`fingerprint`]), for start-up code:
/// read it just before loading the config.
#[allow(clippy::disallowed_methods)] // start-up, before any runtime runs
pub fn file_version(path: &Path) -> Option<u64> {
    std::fs::read(path).ok().map(|d| hash(&d))
}

/// How often the SIGHUP flag is looked at (an atomic load).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);
/// A change must hold still this long before the file is read (editors and
/// ConfigMap updates write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(300);
/// The polling period when the OS watch is unavailable.
const POLL: Duration = Duration::from_millis(500);

/// What identifies a version of the file: its content (through symlinks).
async fn fingerprint(path: &Path) -> Option<u64> {
    let data = tokio::fs::read(path).await.ok()?;
    Some(hash(&data))
}

fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Watches the directory holding `path`; each event in it sends a wake-up.
fn watch_dir(path: &Path) -> notify::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // A full channel already holds a wake-up: nothing is lost.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let path = self.control.config_path().to_path_buf();
        // The version the gateway runs, not the file as it is now: a change
        // made before the watch below is in place would otherwise never be
        // seen (the first round compares, as after an event).
        let mut seen = self.loaded;
        // Kept alive for as long as the service runs.
        let (_watcher, mut events) = match watch_dir(&path) {
            Ok((w, rx)) => (Some(w), Some(rx)),
            Err(e) => {
                tracing::warn!(
                    target: "reload",
                    "cannot watch {} ({e}); polling it every {POLL:?} instead",
                    path.display()
                );
                (None, None)
            }
        };
        let mut signal_check = tokio::time::interval(SIGNAL_CHECK);
        let mut poll = tokio::time::interval(POLL);
        let mut first = true;
        loop {
            let changed = std::mem::take(&mut first)
                || tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = signal_check.tick() => false,
                    Some(()) = recv(&mut events) => true,
                    _ = poll.tick(), if events.is_none() => true,
                };
            if self.sighup.swap(false, Ordering::AcqRel) {
                let control = self.control.clone();
                let _ = tokio::task::spawn_blocking(move || control.reload("SIGHUP")).await;
                seen = fingerprint(&path).await;
                continue;
            }
            if !changed || !self.control.watch_enabled() {
                continue;
            }
            // Let the writer finish, then drop the wake-ups it caused.
            tokio::time::sleep(DEBOUNCE).await;
            if let Some(rx) = events.as_mut() {
                while rx.try_recv().is_ok() {}
            }
            let now = fingerprint(&path).await;
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            let control = self.control.clone();
            let _ = tokio::task::spawn_blocking(move || control.reload("file change")).await;
        }
    }
}

/// The next wake-up, or never when there is no watch.
async fn recv(events: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test: blocking file I/O is fine
mod tests {
    use super::*;
    use crate::limits::clock::ManualClock;
    use crate::runtime::control::Overrides;
    use crate::runtime::Runtime;

    fn conf(backend: &str) -> String {
        format!("[server]\nwatch_config = true\n[[upstreams]]\nname = \"a\"\nbackends = [\"{backend}\"]\n[[routes]]\nupstream = \"a\"\n")
    }

    /// Found by a CI run under load: a change made after the gateway read
    /// its config but before this service had its watch in place was
    /// never seen (the service took the file as it found it for the
    /// version running).
    #[tokio::test]
    async fn a_change_before_the_watch_is_in_place_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floodgate.toml");
        std::fs::write(&path, conf("127.0.0.1:1")).unwrap();
        let version = file_version(&path);
        let config = crate::config::load(&path).unwrap();
        let clock = ManualClock::new(0);
        let hosts = Arc::new(crate::limits::connections::Hosts::default());
        let runtime = Runtime::build(config.clone(), clock.clone(), hosts.clone(), None).unwrap();
        let runtime = Arc::new(arc_swap::ArcSwap::from_pointee(runtime));
        let control = Arc::new(ControlPlane::new(
            path.clone(),
            config,
            Overrides::default(),
            runtime.clone(),
            clock,
            hosts,
        ));
        let watcher = ConfigWatcher::new(control, Arc::new(AtomicBool::new(false)), version);
        // The change lands before the service starts watching.
        std::fs::write(&path, conf("127.0.0.1:2")).unwrap();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move { watcher.start(shutdown).await });
        let backend = || runtime.load().config.upstreams[0].backends[0];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while backend().port() != 2 {
            assert!(tokio::time::Instant::now() < deadline, "never reloaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = stop.send(true);
        let _ = task.await;
    }
}
