//! What the gateway counts, with `prometheus-client`: the families recorded
//! as requests go ([`Metrics`]), and what is read at scrape time from the
//! gateway's own state ([`Scraped`]: plugins, reloads, tunnels, the
//! upstream pool, the build and the process). Served as OpenMetrics text on
//! the admin listener's `/metrics`.
//!
//! Every label value comes from configuration (route prefixes, service and
//! plugin names), from a closed set (method class, status code, reason,
//! kind), or from a plugin's content hash: never from client input, so the
//! number of series is bounded by the configuration.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::Route;
use crate::context::RequestCtx;

/// Request and upstream latencies, in seconds: fine below a millisecond
/// (a proxied request takes tens of microseconds), coarse up to a minute.
const LATENCY: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];

pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY)
}

/// A route, labelled by its prefix; requests no route matched read `none`.
/// Cloning shares the route.
#[derive(Clone, Debug)]
pub struct RouteLabel(pub Option<Arc<Route>>);

impl RouteLabel {
    fn prefix(&self) -> &str {
        self.0.as_ref().map_or("none", |r| r.prefix.as_str())
    }
}

impl PartialEq for RouteLabel {
    fn eq(&self, other: &Self) -> bool {
        self.prefix() == other.prefix()
    }
}

impl Eq for RouteLabel {}

impl std::hash::Hash for RouteLabel {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.prefix().hash(state);
    }
}

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(self.prefix())
    }
}

/// A name from configuration (a service), shared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(&self.0)
    }
}

/// The request method, folded into a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
pub enum MethodClass {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
    OTHER,
}

impl MethodClass {
    pub fn of(method: &Method) -> MethodClass {
        match *method {
            Method::GET => MethodClass::GET,
            Method::HEAD => MethodClass::HEAD,
            Method::POST => MethodClass::POST,
            Method::PUT => MethodClass::PUT,
            Method::PATCH => MethodClass::PATCH,
            Method::DELETE => MethodClass::DELETE,
            Method::OPTIONS => MethodClass::OPTIONS,
            _ => MethodClass::OTHER,
        }
    }
}

/// A route's own handles to its series: requests are counted without
/// hashing a label set (a family lookup hashes the route prefix with
/// SipHash, ~450 instructions a request).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    duration: OnceLock<Histogram>,
    upstream: OnceLock<Histogram>,
    /// (method, status) → counter; a route sees a handful.
    requests: Mutex<Vec<(MethodClass, u16, Counter)>>,
}

/// A copy of a route (a reload's) starts with no handles of its own.
impl Clone for RouteMetrics {
    fn clone(&self) -> Self {
        RouteMetrics::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: RouteLabel,
    pub method: MethodClass,
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: RouteLabel,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    pub route: RouteLabel,
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: Name,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub service: Name,
    pub kind: &'static str,
}

/// A family of latency (or other) histograms, each made by a constructor.
pub type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// One fixed label, such as `compiler="cranelift"`.
pub type OneLabel = [(&'static str, &'static str); 1];

/// The families recorded as requests are served.
#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Histograms<RouteLabels>,
    /// Every error response, by the reason its access line gives.
    pub refusals: Family<RefusalLabels, Counter>,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub upstream_seconds: Histograms<ServiceLabels>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            refusals: Family::default(),
            auth_failures: Family::default(),
            upstream_seconds: Family::new_with_constructor(latency_histogram),
            upstream_errors: Family::default(),
        }
    }
}

impl Metrics {
    /// Counts a finished request (its status, latency, and the reason it was
    /// refused, the same one its access line gives).
    pub fn record(&self, ctx: &RequestCtx, status: u16, elapsed: Duration) {
        let method = MethodClass::of(&ctx.method);
        let Some(r) = &ctx.route else {
            return self.record_by_labels(ctx, RouteLabel(None), method, status, elapsed);
        };
        let route = || RouteLabel(Some(r.clone()));
        let cached = &r.metrics;
        cached
            .duration
            .get_or_init(|| self.request_seconds.get_or_create(&RouteLabels { route: route() }).clone())
            .observe(elapsed.as_secs_f64());
        let mut requests = cached.requests.lock().unwrap_or_else(|e| e.into_inner());
        match requests.iter().find(|(m, s, _)| *m == method && *s == status) {
            Some((_, _, counter)) => {
                counter.inc();
            }
            None => {
                let counter = self
                    .requests
                    .get_or_create(&RequestLabels {
                        route: route(),
                        method,
                        status,
                    })
                    .clone();
                counter.inc();
                requests.push((method, status, counter));
            }
        }
        drop(requests);
        self.record_refusal(ctx, route);
    }

    /// The time `route`'s service took to answer a request's head.
    pub fn upstream_answered(&self, route: &Route, elapsed: Duration) {
        route
            .metrics
            .upstream
            .get_or_init(|| {
                self.upstream_seconds
                    .get_or_create(&ServiceLabels {
                        service: Name(route.service.clone()),
                    })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A request no route matched: counted through the families.
    fn record_by_labels(&self, ctx: &RequestCtx, route: RouteLabel, method: MethodClass, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                method,
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels { route: route.clone() })
            .observe(elapsed.as_secs_f64());
        self.record_refusal(ctx, || route.clone());
    }

    /// An error response, under the reason its access line gives.
    fn record_refusal(&self, ctx: &RequestCtx, route: impl Fn() -> RouteLabel) {
        if let Some(reason) = ctx.reason {
            if let Some(auth) = ctx.auth_reason {
                self.auth_failures.get_or_create(&ReasonLabels { reason: auth }).inc();
            }
            self.refusals.get_or_create(&RefusalLabels { route: route(), reason }).inc();
        }
    }

    /// Registers the families in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gatehouse_requests",
            "Requests answered, by route, method and status",
            self.requests.clone(),
        );
        registry.register(
            "gatehouse_request_duration_seconds",
            "Time from the request's head to the response's head, by route",
            self.request_seconds.clone(),
        );
        registry.register(
            "gatehouse_request_errors",
            "Error responses by route and reason (the access line's `reason`)",
            self.refusals.clone(),
        );
        registry.register(
            "gatehouse_auth_failures",
            "Requests refused with 401, by reason",
            self.auth_failures.clone(),
        );
        registry.register(
            "gatehouse_upstream_duration_seconds",
            "Time from sending a request to a service to its response head, by service",
            self.upstream_seconds.clone(),
        );
        registry.register(
            "gatehouse_upstream_errors",
            "Requests to a service that got no response, by service and kind",
            self.upstream_errors.clone(),
        );
    }
}

/// One metric family written at scrape time.
pub struct Writer<'a, 'b> {
    encoder: &'a mut DescriptorEncoder<'b>,
}

impl<'a, 'b> Writer<'a, 'b> {
    pub fn new(encoder: &'a mut DescriptorEncoder<'b>) -> Self {
        Writer { encoder }
    }

    /// A family of `metric_type` with one value per label set.
    pub fn family<L: EncodeLabelSet, M: EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        metric_type: MetricType,
        values: impl IntoIterator<Item = (L, M)>,
    ) -> fmt::Result {
        let mut family = self.encoder.encode_descriptor(name, help, None, metric_type)?;
        for (labels, metric) in values {
            metric.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    pub fn counters<L: EncodeLabelSet>(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (L, u64)>) -> fmt::Result {
        self.family(
            name,
            help,
            MetricType::Counter,
            values.into_iter().map(|(l, v)| (l, ConstCounter::new(v))),
        )
    }

    pub fn gauges<L: EncodeLabelSet>(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (L, i64)>) -> fmt::Result {
        self.family(
            name,
            help,
            MetricType::Gauge,
            values.into_iter().map(|(l, v)| (l, ConstGauge::new(v))),
        )
    }

    pub fn gauges_f64<L: EncodeLabelSet>(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (L, f64)>) -> fmt::Result {
        self.family(
            name,
            help,
            MetricType::Gauge,
            values.into_iter().map(|(l, v)| (l, ConstGauge::new(v))),
        )
    }
}

/// A collector from a closure over the gateway's state, read at each scrape.
pub struct Scraped<F>(pub F);

impl<F> fmt::Debug for Scraped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scraped")
    }
}

impl<F> Collector for Scraped<F>
where
    F: for<'a, 'b> Fn(&mut Writer<'a, 'b>) -> fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        (self.0)(&mut Writer::new(&mut encoder))
    }
}

/// This process: resident memory, open file descriptors, CPU time and start
/// time, under the names every Prometheus client uses.
pub fn process(w: &mut Writer<'_, '_>) -> fmt::Result {
    let none: [(&str, &str); 0] = [];
    let page = 4096.0;
    if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
    {
        w.gauges_f64(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            [(none, pages * page)],
        )?;
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        w.gauges("process_open_fds", "Open file descriptors", [(none, fds.count() as i64)])?;
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
        w.family(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            MetricType::Counter,
            [(none, ConstCounter::new(ticks(11) + ticks(12)))],
        )?;
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let Some(boot) = boot {
            w.gauges_f64(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                [(none, boot + ticks(19))],
            )?;
        }
    }
    Ok(())
}

/// `gatehouse_build_info`: the version, the commit and the wasmtime release.
pub fn build(w: &mut Writer<'_, '_>) -> fmt::Result {
    let labels = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("git_sha", env!("GATEHOUSE_GIT_SHA")),
        ("wasmtime", env!("GATEHOUSE_WASMTIME_VERSION")),
    ];
    w.gauges("gatehouse_build_info", "The build that is running (always 1)", [(labels, 1)])
}

/// Encodes `registry` as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        let _ = writeln!(out, "# the exposition failed");
    }
    out
}
