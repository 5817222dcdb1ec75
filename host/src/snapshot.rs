//! The immutable routing state a request runs against. Reloads build a new
//! `Snapshot` and swap it whole; a request keeps the one it started with.

use crate::router::Router;

/// Everything request handling reads that a reload may replace.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub router: Router,
}
