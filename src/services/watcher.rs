//! Background service: reloads the config when its file changes (polled,
//! debounced) or when the process gets SIGHUP.
//!
//! Pingora does not handle SIGHUP, and its default action would kill the
//! process: [`install_sighup`] replaces it with a flag this service polls,
//! before any listener opens.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

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

const POLL: Duration = Duration::from_millis(250);
/// A change must hold still this long before it is read (editors write a
/// file in several steps).
const DEBOUNCE: Duration = Duration::from_millis(300);

/// What identifies a version of the file.
fn fingerprint(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    let data = std::fs::read(path).ok()?;
    let hash = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    Some((meta.modified().ok()?, meta.len(), hash))
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let path = self.control.config_path().to_path_buf();
        let mut seen = fingerprint(&path);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
            if self.sighup.swap(false, Ordering::AcqRel) {
                let _ = self.control.reload("SIGHUP");
                seen = fingerprint(&path);
                continue;
            }
            let watch = self.control_watch_enabled();
            let now = fingerprint(&path);
            if !watch || now.is_none() || now == seen {
                continue;
            }
            tokio::time::sleep(DEBOUNCE).await;
            let settled = fingerprint(&path);
            if settled != now {
                continue; // still being written; look again next round
            }
            seen = settled;
            let _ = self.control.reload("file change");
        }
    }
}

impl ConfigWatcher {
    fn control_watch_enabled(&self) -> bool {
        self.control.watch_enabled()
    }
}
