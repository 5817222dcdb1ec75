//! Stage: route. Normalizes the path (400 when that cannot be done safely),
//! finds the longest matching prefix (404 when none), and rewrites the request
//! target to the normalized path so the upstream sees what was matched.

use http::Request;
use http::uri::PathAndQuery;

use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::path::normalize;
use crate::router::Router;

pub fn resolve<B>(ctx: &mut RequestCtx, router: &Router, req: &mut Request<B>) -> Result<(), GatewayError> {
    let path = normalize(req.uri().path()).map_err(|e| GatewayError::bad_request(e.to_string()))?;
    let route = router.find(&path).ok_or(GatewayError::NotFound)?;
    ctx.route = Some(route.clone());
    if path != req.uri().path() {
        let target = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let pq = PathAndQuery::try_from(target).map_err(|_| GatewayError::bad_request("invalid request target"))?;
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(pq);
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| GatewayError::bad_request("invalid request target"))?;
    }
    ctx.path = path;
    Ok(())
}
