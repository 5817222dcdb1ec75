//! The immutable routing state a request runs against. Reloads build a new
//! `Snapshot` and swap it whole; a request keeps the one it started with.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Upstream;
use crate::router::Router;
use crate::wasm::PluginSet;

/// Everything request handling reads that a reload may replace.
#[derive(Default)]
pub struct Snapshot {
    pub router: Router,
    /// Every service named by a route file, with its upstream.
    pub services: Arc<HashMap<String, Arc<Upstream>>>,
    /// Every file in the plugins folder, loaded or failed.
    pub plugins: Arc<PluginSet>,
}
