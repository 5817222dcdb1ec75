//! `Gateway::handle`: the stages, called in order, and nothing else.
//!
//! ```text
//! request_id → admit → route → authenticate → identity → component → upstream
//!                                   (any stage may end it with an error)
//! → echo request id → log
//! ```

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::GatewayBody;
use crate::context::{Peer, RequestCtx};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::snapshot::Snapshot;
use crate::stage;
use crate::stage::component::Handled;

impl Gateway {
    /// Handles one request from a client connection. Never fails: every error
    /// becomes a response carrying the request id.
    pub async fn handle(&self, req: Request<Incoming>, peer: Arc<Peer>) -> Response<GatewayBody> {
        let mut ctx = RequestCtx::new(peer, req.method().clone(), req.uri().path());
        stage::request_id::assign(&mut ctx, req.headers());
        let snapshot = self.snapshot();
        let mut resp = match self.run(&snapshot, &mut ctx, req).await {
            Ok(resp) => resp,
            Err(err) => {
                ctx.fail(&err);
                err.into_response(ctx.request_id())
            }
        };
        stage::request_id::echo(&ctx, &mut resp);
        stage::log::record(&ctx, &resp);
        resp
    }

    async fn run(
        &self,
        snapshot: &Snapshot,
        ctx: &mut RequestCtx,
        mut req: Request<Incoming>,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        stage::admit::check(ctx, &req, &self.limits)?;
        stage::route::resolve(ctx, &snapshot.router, &mut req)?;
        stage::authenticate::run(ctx, req.headers(), &self.verifier).await?;
        stage::identity::apply(ctx, req.headers_mut())?;
        match stage::component::run(ctx, self, snapshot, req).await? {
            Handled::Native(req) => stage::upstream::forward(ctx, req, &self.upstream).await,
            Handled::Forward(req) => stage::upstream::forward(ctx, req, &self.upstream).await,
            Handled::Respond(resp) => Ok(resp),
        }
    }
}
