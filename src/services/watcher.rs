//! Background service: reloads the config when its file changes or when
//! the process gets SIGHUP.
//!
//! The file is watched through the OS (`notify`: inotify on Linux) on its
//! parent directory, not on the file itself, so that every way a file gets
//! replaced is seen: an editor writing in place, an atomic rename over it,
//! and the symlink swap a Kubernetes ConfigMap does (`..data` re-pointed in
//! the directory; the file's own inode never changes). Events are debounced
//! and the file's content decides: a reload happens only when it differs
//! from the last version read. When the OS watch cannot be set up (no
//! inotify instances left, say), the file is polled instead.
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
}

impl ConfigWatcher {
    pub fn new(control: Arc<ControlPlane>, sighup: Arc<AtomicBool>) -> Self {
        ConfigWatcher { control, sighup }
    }
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
    Some(data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    }))
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
        let mut seen = fingerprint(&path).await;
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
        loop {
            let changed = tokio::select! {
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
