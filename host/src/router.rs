//! Longest-prefix routing on normalized paths, whole segments only.

use std::sync::Arc;

use crate::config::Route;
use crate::path::under_prefix;

/// An immutable route table.
#[derive(Debug, Default)]
pub struct Router {
    /// Longest prefix first, so the first match is the most specific.
    routes: Vec<Arc<Route>>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Self {
        let mut routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        routes.sort_by(|a, b| b.prefix.len().cmp(&a.prefix.len()).then_with(|| a.prefix.cmp(&b.prefix)));
        Router { routes }
    }

    /// The route for a normalized path, if any.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| under_prefix(path, &r.prefix))
    }

    /// All routes, longest prefix first.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, service: &str) -> Route {
        Route::for_test(prefix, service, false)
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let router = Router::new(vec![
            route("/api/v1/knowledge", "knowledge"),
            route("/api/v1/knowledge/premium", "premium"),
            route("/api/v1/users", "users"),
        ]);
        let svc = |p: &str| router.find(p).map(|r| r.service.to_string());
        assert_eq!(svc("/api/v1/knowledge/premium/x").as_deref(), Some("premium"));
        assert_eq!(svc("/api/v1/knowledge/premiumX").as_deref(), Some("knowledge"));
        assert_eq!(svc("/api/v1/knowledge").as_deref(), Some("knowledge"));
        assert_eq!(svc("/api/v1/users/1").as_deref(), Some("users"));
        assert_eq!(svc("/api/v1/usersX"), None);
        assert_eq!(svc("/"), None);
    }
}
