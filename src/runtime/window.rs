//! An adaptive window as the runtime holds it: the gateway-wide one or an
//! upstream's, with the settings it was built from.

use std::sync::Arc;

use crate::config::BackpressureConfig;
use crate::limits::adaptive::Controller;
use crate::limits::clock::Clock;

/// One adaptive window: the gateway-wide one (`global`) or an upstream's.
#[derive(Clone, Debug)]
pub struct AdaptiveWindow {
    pub name: String,
    pub config: BackpressureConfig,
    pub controller: Arc<Controller>,
}

impl AdaptiveWindow {
    /// The scope for `config`, keeping `previous`'s controller (and so its
    /// window and in-flight count) when its settings are unchanged.
    pub(super) fn build(
        name: &str,
        config: &BackpressureConfig,
        clock: &Arc<dyn Clock>,
        previous: Option<&AdaptiveWindow>,
    ) -> Self {
        let controller = previous
            .filter(|p| p.config == *config)
            .map(|p| p.controller.clone())
            .unwrap_or_else(|| Controller::new(config.adaptive.clone(), clock.clone()));
        AdaptiveWindow {
            name: name.to_string(),
            config: config.clone(),
            controller,
        }
    }
}
