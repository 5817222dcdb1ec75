//! Host bindings generated from `wit/route-handler.wit`.

use wasmtime::Store;
use wasmtime::component::{ComponentExportIndex, InstancePre, TypedFunc};

use super::host::PluginState;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "route-handler",
    imports: {
        // A plugin waiting on its service must not block a tokio worker.
        "gatehouse:plugin/upstream.send": async,
    },
    exports: { default: async },
});

pub use self::gatehouse::plugin::types::{Action, Caller, Request, RequestInfo, Response};
pub use self::gatehouse::plugin::types::{Level, SendError};

/// The contract version this host serves; components must match its
/// `major.minor` (0.x minors are breaking, as in Cargo).
pub const CONTRACT_VERSION: &str = "0.1.0";
/// The interface a plugin must export.
pub const HANDLER_INTERFACE: &str = "gatehouse:plugin/handler";

/// A plugin ready to run: its imports linked, its `handle` export found and
/// type-checked once, when it loaded, instead of on every request.
pub struct HandlerPre {
    pre: InstancePre<PluginState>,
    handle: ComponentExportIndex,
}

/// `handle`'s signature as the host calls it.
type HandleFunc<'a> = TypedFunc<(Option<&'a Caller>, &'a RequestInfo, &'a Request), (Action,)>;

impl HandlerPre {
    /// Checks `pre`'s exports against the route-handler world.
    pub fn new(pre: InstancePre<PluginState>) -> wasmtime::Result<HandlerPre> {
        // The generated bindings check every export's type; `handle` is then
        // looked up the same way they do.
        RouteHandlerPre::new(pre.clone())?;
        let component = pre.component();
        let handle = component
            .get_export_index(None, format!("{HANDLER_INTERFACE}@{CONTRACT_VERSION}").as_str())
            .and_then(|iface| component.get_export_index(Some(&iface), "handle"))
            .ok_or_else(|| wasmtime::format_err!("no `handle` export"))?;
        Ok(HandlerPre { pre, handle })
    }

    /// The engine the plugin was compiled for.
    pub fn engine(&self) -> &wasmtime::Engine {
        self.pre.engine()
    }

    /// A new instance in `store`, without running it.
    pub async fn instantiate(&self, store: &mut Store<PluginState>) -> wasmtime::Result<wasmtime::component::Instance> {
        self.pre.instantiate_async(store).await
    }

    /// Instantiates into `store` and calls `handle`.
    pub async fn handle(
        &self,
        store: &mut Store<PluginState>,
        caller: Option<&Caller>,
        info: &RequestInfo,
        request: &Request,
    ) -> wasmtime::Result<Action> {
        let instance = self.instantiate(store).await?;
        let func = instance
            .get_func(&mut *store, self.handle)
            .ok_or_else(|| wasmtime::format_err!("no `handle` export"))?;
        // SAFETY: `new` type-checked this export of this component against
        // the world (through `RouteHandlerPre::new`), and `HandleFunc` is
        // the signature the generated bindings call it with.
        let typed: HandleFunc<'_> = unsafe { TypedFunc::new_unchecked(func) };
        let (action,) = typed.call_async(&mut *store, (caller, info, request)).await?;
        Ok(action)
    }
}

/// The `wasi:http/proxy` world's pre-linked component, as `wasmtime serve`
/// runs it.
pub use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The interface a `wasi:http` component exports.
pub const WASI_HTTP_INTERFACE: &str = "wasi:http/incoming-handler";

/// A loaded component of one of the two worlds the gateway runs.
pub enum PluginPre {
    /// `gatehouse:plugin/route-handler`: gets the verified caller, answers
    /// or forwards.
    Gatehouse(HandlerPre),
    /// `wasi:http/proxy`: gets the (stamped) HTTP request and streams its
    /// own response. `version` is the `wasi:http` version it exports.
    WasiHttp { pre: ProxyPre<PluginState>, version: String },
}

impl PluginPre {
    /// The engine the plugin was compiled for.
    pub fn engine(&self) -> &wasmtime::Engine {
        match self {
            PluginPre::Gatehouse(pre) => pre.engine(),
            PluginPre::WasiHttp { pre, .. } => pre.engine(),
        }
    }

    /// The world the component targets, as `/admin/plugins` shows it.
    pub fn world(&self) -> String {
        match self {
            PluginPre::Gatehouse(_) => format!("gatehouse:plugin/route-handler@{CONTRACT_VERSION}"),
            PluginPre::WasiHttp { version, .. } => format!("wasi:http/proxy@{version}"),
        }
    }

    /// A new instance in `store`, without running it.
    pub async fn instantiate(&self, store: &mut Store<PluginState>) -> wasmtime::Result<()> {
        match self {
            PluginPre::Gatehouse(pre) => pre.instantiate(store).await.map(drop),
            PluginPre::WasiHttp { pre, .. } => pre.instantiate_async(store).await.map(drop),
        }
    }
}
