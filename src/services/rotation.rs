//! Background service: prepares every limiter's next window ahead of time,
//! so that no request pays for clearing a table at a window boundary.

use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::runtime::SharedRuntime;

pub struct Rotation {
    runtime: SharedRuntime,
}

impl Rotation {
    pub fn new(runtime: SharedRuntime) -> Self {
        Rotation { runtime }
    }
}

#[async_trait]
impl BackgroundService for Rotation {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let rt = self.runtime.load_full();
            rt.clients.rotate();
            // Several times a window: the next table is ready long before
            // the boundary, and a late tick is caught up on the next one.
            let tick = (rt.clients.policy.window / 8)
                .clamp(Duration::from_millis(10), Duration::from_millis(500));
            drop(rt);
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
