//! Prometheus metrics, served as text on the admin listener's `/metrics`.
//!
//! Names follow Prometheus conventions (`keygate_` prefix, `_total` counters, `_seconds`);
//! labels are bounded sets (decisions, results), never a key id or a raw path. The two
//! labels that come from key records are bounded too: `plan` by the config's plans, `owner`
//! (off by default) by `[metrics] max_owners` (see [`Usage`]).
//!
//! Besides keygate's own: `process_*` (CPU, resident memory, open file descriptors, start
//! time; the prometheus crate's process collector, Linux only) and `keygate_build_info`.

use std::collections::HashMap;
use std::sync::RwLock;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// `keygate_key_cache_lookups_total` by `result`.
pub struct CacheLookups {
    pub hit: IntCounter,
    /// Served, and a background read refreshes it (older than `ttl`, feed not vouching).
    pub stale_hit: IntCounter,
    /// A key remembered as unknown.
    pub negative_hit: IntCounter,
    pub miss: IntCounter,
}

pub struct Metrics {
    registry: Registry,
    /// Requests by decision (`allowed` or a rejection code) and status class.
    requests: IntCounterVec,
    /// `requests{decision="allowed"}` per status class, resolved once: the hot path should not
    /// hash label strings.
    allowed: [IntCounter; 5],
    /// Key cache lookups by result, each series resolved once.
    pub cache: CacheLookups,
    /// Reads of a key from the store (cache misses and refreshes, after coalescing).
    pub store_reads: IntCounter,
    /// Store reads and writes that failed or timed out.
    pub store_errors: IntCounter,
    /// 1 while the key store answers, 0 while it does not.
    pub store_up: IntGauge,
    /// Time from a change committed in the store to this sidecar dropping the cached key.
    pub propagation: Histogram,
    /// The most recent propagation delay.
    pub propagation_last: Gauge,
    /// Whole-cache flushes (file reloads, change-feed gaps).
    pub cache_flushes: IntCounter,
    /// Time from request head to response head, allowed and refused: `[allowed, rejected]`.
    request_latency: [Histogram; 2],
    /// Time the upstream took to send its response head.
    pub upstream_latency: Histogram,
    /// Upstream requests that ended in 502/504, by [`UpstreamFailure`] kind (resolved once).
    upstream_failures: [IntCounter; UpstreamFailure::ALL.len()],
    /// Admitted requests by plan and (opt-in) by owner.
    usage: Usage,
    /// Client connections open now (public and plain listeners).
    pub open_connections: IntGauge,
    /// WebSocket tunnels open now, and those that ended, by [`TunnelClose`].
    tunnels_open: IntGauge,
    tunnels_closed: [IntCounter; TunnelClose::ALL.len()],
    /// Client connections accepted on the public and plain listeners, by the shard that
    /// accepted them (`[server] sharded`; always "0" otherwise).
    accepted: IntCounterVec,
    /// Keys due for rotation (`[keys] max_age` / `warn_before`), as of the last store scan.
    pub keys_due_for_rotation: IntGauge,
    /// TLS handshakes that failed (bad client, plain HTTP on the TLS port, timeout).
    pub tls_handshake_failures: IntCounter,
    /// TLS handshakes completed on the public port, by version, key-exchange group and
    /// resumption ([`Metrics::tls_handshake`]).
    tls_handshakes: IntCounterVec,
    /// Config and certificate reloads by what was reloaded and result.
    pub reloads: IntCounterVec,
    /// Shared quotas and suspensions.
    pub limits: LimitMetrics,
    /// Invalid keys the stuffing guard counted, and the sources it blocked.
    guard_failures: IntCounter,
    guard_blocks: IntCounter,
    /// The Redis store's connections and the change feed's health.
    pub store_health: StoreHealth,
    /// Submissions of batched writes (io_uring or AIO), and the writes they carried, as
    /// [`crate::batch`] reports them (for the whole process).
    write_batches: IntCounter,
    batched_writes: IntCounter,
    /// 1 while writes are batched, 0 where `batch_writes` is off, neither io_uring nor AIO
    /// is available, or a submission failed.
    write_batching: IntGauge,
    /// Which backend batches (`backend` = `io_uring` | `aio`): 1 for it, 0 for the other.
    write_batching_backend: IntGaugeVec,
}

/// What became of one request, as `keygate_requests_total{decision}` and the access log name
/// it: one value per request, whichever engine served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forwarded to the upstream (whatever the upstream then answered).
    Allowed,
    /// Refused by keygate with this error code (the README's error table).
    Refused(&'static str),
    /// The plain listener redirected the client to HTTPS.
    HttpsRedirect,
    /// The client went away before its response could be written.
    ClientClosed,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Refused(code) => code,
            Self::HttpsRedirect => "https_redirect",
            Self::ClientClosed => "client_closed",
        }
    }
}

/// A finished exchange: the status the client got (or, for [`Decision::ClientClosed`], the
/// 499 logged for it) and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    pub decision: Decision,
}

/// Why an upstream request ended in 502 `upstream_unavailable` or 504 `upstream_timeout`, or
/// was cut off mid-body: the label of `keygate_upstream_failures_total{kind}`. A 502 alone does not say whether the
/// service is down (refused), overloaded (timeouts), restarting under load (resets) or
/// misconfigured (TLS, protocol); the kind does, and each points at a different fix. The
/// engines classify their errors into it (`forward::failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection: refused, unreachable, or the host has no address.
    Refused,
    /// No connection within `[upstream] connect_timeout`.
    ConnectTimeout,
    /// No response head within `[upstream] timeout`.
    Timeout,
    /// The connection was reset or closed before a whole response head.
    Reset,
    /// The TLS handshake with an `https://` upstream failed (certificate, name, version).
    Tls,
    /// The upstream's response could not be read as HTTP (malformed head or framing).
    Protocol,
    Other,
    /// Nothing within a response body for `[upstream] body_timeout`: the response, its head
    /// already sent, was cut off (`forward::silence`).
    BodyTimeout,
}

impl UpstreamFailure {
    pub const ALL: [Self; 8] = [
        Self::Refused,
        Self::ConnectTimeout,
        Self::Timeout,
        Self::Reset,
        Self::Tls,
        Self::Protocol,
        Self::Other,
        Self::BodyTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Tls => "tls",
            Self::Protocol => "protocol",
            Self::Other => "other",
            Self::BodyTimeout => "body_timeout",
        }
    }
}

/// How a WebSocket tunnel ended: the label of `keygate_tunnels_closed_total{reason}`. Many
/// `idle` closes say `[upstream] tunnel_idle_timeout` is shorter than the application's quiet
/// spells; many `error`s, resets or paths that died; `key_lapsed`, keys revoked (or changed)
/// under open WebSockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelClose {
    /// The client or the upstream closed it, or both answered keygate's "going away" when it
    /// stopped.
    Closed,
    /// keygate closed it because the key it was admitted with no longer admits it (revoked,
    /// suspended, deleted, expired, or changed).
    KeyLapsed,
    /// Nothing either way for `[upstream] tunnel_idle_timeout`: keygate told both ends (1001)
    /// and closed it, or cut it off when one did not answer.
    Idle,
    /// A read or write failed (a reset, or a dead path found by TCP keepalive).
    Error,
}

impl TunnelClose {
    pub const ALL: [Self; 4] = [Self::Closed, Self::KeyLapsed, Self::Idle, Self::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::KeyLapsed => "key_lapsed",
            Self::Idle => "idle",
            Self::Error => "error",
        }
    }
}

/// A tunnel counted in `keygate_tunnels_open` until dropped (whatever ends its task).
pub struct OpenTunnel<'a>(&'a IntGauge);

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Request latencies span a cache hit (tens of µs) to a slow upstream (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

impl Metrics {
    /// Metrics with the default `[metrics]` settings (by plan, not by owner).
    pub fn new() -> Self {
        Self::with(&MetricsConfig::default())
    }

    pub fn with(config: &MetricsConfig) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "keygate_requests_total",
                "Requests by decision and status class",
            ),
            &["decision", "class"],
        )
        .expect("valid metric");
        let cache = IntCounterVec::new(
            Opts::new(
                "keygate_key_cache_lookups_total",
                "Key cache lookups by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let store_reads = IntCounter::new(
            "keygate_key_store_reads_total",
            "Key reads from the store, after coalescing concurrent misses",
        )
        .expect("valid metric");
        let store_errors = IntCounter::new(
            "keygate_key_store_errors_total",
            "Key store operations that failed or timed out",
        )
        .expect("valid metric");
        let store_up = IntGauge::new(
            "keygate_key_store_up",
            "1 while the key store answers, 0 while it does not",
        )
        .expect("valid metric");
        let propagation = Histogram::with_opts(
            HistogramOpts::new(
                "keygate_key_change_propagation_seconds",
                "Delay from a key change in the store to its invalidation in this sidecar",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        let propagation_last = Gauge::new(
            "keygate_key_change_propagation_last_seconds",
            "The most recent key change propagation delay",
        )
        .expect("valid metric");
        let cache_flushes = IntCounter::new(
            "keygate_key_cache_flushes_total",
            "Whole-cache flushes after a reload or a change-feed gap",
        )
        .expect("valid metric");
        let request_latency = HistogramVec::new(
            HistogramOpts::new(
                "keygate_request_duration_seconds",
                "Time from a request's head to its response's head, by outcome",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )
        .expect("valid metric");
        let upstream_latency = Histogram::with_opts(
            HistogramOpts::new(
                "keygate_upstream_duration_seconds",
                "Time the upstream took to send its response head (or fail)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let open_connections =
            IntGauge::new("keygate_open_connections", "Client connections open now")
                .expect("valid metric");
        let tunnels_open = IntGauge::new(
            "keygate_tunnels_open",
            "WebSocket tunnels open now (client connections that became tunnels after a 101)",
        )
        .expect("valid metric");
        let tunnels_closed = IntCounterVec::new(
            Opts::new(
                "keygate_tunnels_closed_total",
                "WebSocket tunnels that ended, by reason: closed (by either side), key_lapsed \
                 (its key revoked or changed), idle ([upstream] tunnel_idle_timeout), error (a \
                 reset, or a path that died)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let accepted = IntCounterVec::new(
            Opts::new(
                "keygate_connections_accepted_total",
                "Client connections accepted on the public and plain listeners, by the shard \
                 (event loop) that accepted them: \"0\" unless [server] sharded",
            ),
            &["shard"],
        )
        .expect("valid metric");
        accepted.with_label_values(&["0"]);
        let keys_due_for_rotation = IntGauge::new(
            "keygate_keys_due_for_rotation",
            "Keys past [keys] max_age or within [keys] warn_before of their replace-by date, \
             as of the last scan of the store",
        )
        .expect("valid metric");
        let tls_handshake_failures = IntCounter::new(
            "keygate_tls_handshake_failures_total",
            "TLS handshakes with clients that failed or timed out",
        )
        .expect("valid metric");
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "keygate_tls_handshakes_total",
                "TLS handshakes completed with clients on the public port, by TLS version, \
                 key-exchange group (X25519MLKEM768: hybrid post-quantum) and whether the \
                 client resumed a session",
            ),
            &["version", "group", "resumed"],
        )
        .expect("valid metric");
        // Exported at zero from the start, as the failure counter is: the share of clients on
        // the hybrid group is then a ratio of two series that exist before the first client.
        for group in ["X25519MLKEM768", "X25519"] {
            tls_handshakes.with_label_values(&["1.3", group, "false"]);
        }
        let write_batches = IntCounter::new(
            "keygate_write_batches_total",
            "Submissions of batched writes, io_uring_enter or io_submit (to upstreams and HTTP/1.1 clients; one per event-loop turn with writes)",
        )
        .expect("valid metric");
        let batched_writes = IntCounter::new(
            "keygate_batched_writes_total",
            "Writes sent in those submissions",
        )
        .expect("valid metric");
        let guard_failures = IntCounter::new(
            "keygate_guard_invalid_keys_total",
            "Malformed or unknown API keys counted by the credential-stuffing guard",
        )
        .expect("valid metric");
        let guard_blocks = IntCounter::new(
            "keygate_guard_blocks_total",
            "Sources (IPv4 addresses, IPv6 /64s) the credential-stuffing guard started refusing",
        )
        .expect("valid metric");
        let write_batching = IntGauge::new(
            "keygate_write_batching_enabled",
            "1 while writes are batched (through io_uring or AIO), 0 while they go one by one",
        )
        .expect("valid metric");
        let write_batching_backend = IntGaugeVec::new(
            Opts::new(
                "keygate_write_batching_backend",
                "1 for the kernel interface that batches writes (io_uring, or aio where io_uring is refused), 0 for the other",
            ),
            &["backend"],
        )
        .expect("valid metric");
        for backend in ["io_uring", "aio"] {
            write_batching_backend.with_label_values(&[backend]).set(0);
        }
        let reloads = IntCounterVec::new(
            Opts::new(
                "keygate_reloads_total",
                "Config and certificate reloads by what and result",
            ),
            &["what", "result"],
        )
        .expect("valid metric");
        let upstream_failures = IntCounterVec::new(
            Opts::new(
                "keygate_upstream_failures_total",
                "Upstream requests that ended in 502 or 504, by kind (refused, connect_timeout, timeout, reset, tls, protocol, other), and responses cut off when the upstream went silent mid-body (body_timeout)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "keygate_build_info",
                "Always 1: the version and git commit of the running binary",
            ),
            &["version", "commit"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), crate::COMMIT])
            .set(1);
        for c in [
            Box::new(request_latency.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upstream_latency.clone()),
            Box::new(open_connections.clone()),
            Box::new(tunnels_open.clone()),
            Box::new(tunnels_closed.clone()),
            Box::new(accepted.clone()),
            Box::new(keys_due_for_rotation.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(tls_handshakes.clone()),
            Box::new(reloads.clone()),
            Box::new(requests.clone()),
            Box::new(cache.clone()),
            Box::new(store_reads.clone()),
            Box::new(store_errors.clone()),
            Box::new(store_up.clone()),
            Box::new(propagation.clone()),
            Box::new(propagation_last.clone()),
            Box::new(cache_flushes.clone()),
            Box::new(write_batches.clone()),
            Box::new(batched_writes.clone()),
            Box::new(guard_failures.clone()),
            Box::new(guard_blocks.clone()),
            Box::new(upstream_failures.clone()),
            Box::new(build_info),
            Box::new(write_batching.clone()),
            Box::new(write_batching_backend.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics are registered once");
        let usage = Usage::register(&registry, config);
        let limits = LimitMetrics::register(&registry);
        let store_health = StoreHealth::register(&registry);
        let allowed = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|class| requests.with_label_values(&["allowed", class]));
        // Zero-valued series exist from the start, so dashboards and alerts see them.
        for what in ["config", "tls"] {
            for result in ["ok", "failed"] {
                reloads.with_label_values(&[what, result]);
            }
        }
        Self {
            request_latency: ["allowed", "rejected"]
                .map(|outcome| request_latency.with_label_values(&[outcome])),
            upstream_latency,
            upstream_failures: UpstreamFailure::ALL
                .map(|kind| upstream_failures.with_label_values(&[kind.as_str()])),
            usage,
            open_connections,
            tunnels_open,
            tunnels_closed: TunnelClose::ALL
                .map(|reason| tunnels_closed.with_label_values(&[reason.as_str()])),
            accepted,
            keys_due_for_rotation,
            tls_handshake_failures,
            tls_handshakes,
            reloads,
            registry,
            allowed,
            requests,
            cache: CacheLookups {
                hit: cache.with_label_values(&["hit"]),
                stale_hit: cache.with_label_values(&["stale_hit"]),
                negative_hit: cache.with_label_values(&["negative_hit"]),
                miss: cache.with_label_values(&["miss"]),
            },
            store_reads,
            store_errors,
            store_up,
            propagation,
            propagation_last,
            cache_flushes,
            limits,
            guard_failures,
            guard_blocks,
            store_health,
            write_batches,
            batched_writes,
            write_batching,
            write_batching_backend,
        }
    }

    /// Counts one invalid key the stuffing guard saw, and the block it started, if any.
    /// The counter of connections accepted by shard `index`, resolved once per accept loop.
    /// Counts a completed TLS handshake; the labels come from a closed set
    /// (`server::tls::Handshake`), a handful of series in all.
    pub fn tls_handshake(&self, version: &str, group: &str, resumed: bool) {
        let resumed = if resumed { "true" } else { "false" };
        self.tls_handshakes
            .with_label_values(&[version, group, resumed])
            .inc();
    }

    pub fn accepted_by(&self, index: usize) -> IntCounter {
        self.accepted.with_label_values(&[&index.to_string()])
    }

    pub fn guard(&self, counted: crate::guard::Counted) {
        self.guard_failures.inc();
        if counted == crate::guard::Counted::Blocked {
            self.guard_blocks.inc();
        }
    }

    /// Counts one finished request.
    pub fn request(&self, outcome: Outcome, latency: std::time::Duration) {
        let class = (usize::from(outcome.status / 100)).clamp(1, 5) - 1;
        let allowed = outcome.decision == Decision::Allowed;
        self.request_latency[usize::from(!allowed)].observe(latency.as_secs_f64());
        if allowed {
            self.allowed[class].inc();
        } else {
            const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
            self.requests
                .with_label_values(&[outcome.decision.as_str(), CLASSES[class]])
                .inc();
        }
    }

    /// Counts one upstream request that failed (and was answered 502 or 504, or cut off).
    pub fn upstream_failed(&self, kind: UpstreamFailure) {
        self.upstream_failure(kind).inc();
    }

    /// The counter of one kind, for a response body that may count itself later.
    /// A tunnel opens: counted open until the guard is dropped.
    /// WebSocket tunnels open now.
    pub fn tunnels_open(&self) -> i64 {
        self.tunnels_open.get()
    }

    pub fn tunnel_opened(&self) -> OpenTunnel<'_> {
        self.tunnels_open.inc();
        OpenTunnel(&self.tunnels_open)
    }

    pub fn tunnel_closed(&self, reason: TunnelClose) {
        let i = TunnelClose::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("ALL lists every reason");
        self.tunnels_closed[i].inc();
    }

    pub fn upstream_failure(&self, kind: UpstreamFailure) -> &IntCounter {
        let i = UpstreamFailure::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("ALL lists every kind");
        &self.upstream_failures[i]
    }

    /// Counts one admitted request by its key's plan and owner (as configured).
    pub fn used(&self, plan: Option<&str>, owner: &str) {
        self.usage.count(plan, owner);
    }

    /// Counts one reload of `what` (`config` or `tls`).
    pub fn reloaded(&self, what: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.with_label_values(&[what, result]).inc();
    }

    /// Records one propagation delay.
    pub fn propagated(&self, delay: std::time::Duration) {
        self.propagation.observe(delay.as_secs_f64());
        self.propagation_last.set(delay.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl crate::batch::Report for Metrics {
    fn batching(&self, backend: Option<crate::batch::Backend>) {
        self.write_batching.set(i64::from(backend.is_some()));
        let name = backend.map(crate::batch::Backend::name);
        for label in ["io_uring", "aio"] {
            self.write_batching_backend
                .with_label_values(&[label])
                .set(i64::from(name == Some(label)));
        }
    }

    fn submitted(&self, writes: usize) {
        self.write_batches.inc();
        self.batched_writes.inc_by(writes as u64);
    }
}

/// The limiter's metrics: shared-quota leases and temporary suspensions.
pub struct LimitMetrics {
    /// 1 while quotas are counted locally because the quota store does not answer.
    pub fallback: IntGauge,
    /// Sidecars sharing the quotas as this one last counted them (sizes chunks and the
    /// fallback budget).
    pub live_sidecars: IntGauge,
    /// Lease grant round trips to the quota store, by outcome (`ok`, `error`).
    pub refills: IntCounterVec,
    /// Requests whose lease was spent while the quota store did not answer, by outcome:
    /// `admitted` on the fallback budget, or `refused` (`[store] quota_fallback = "refuse"`).
    pub decided_alone: IntCounterVec,
    /// Requests refused for a moment because the quota store held back the rest of a quota
    /// after an outage (what sidecars may have admitted alone), though it was not used up.
    pub held: IntCounter,
    /// Keys suspended by this sidecar for exceeding their rate limit repeatedly.
    pub suspensions: IntCounter,
}

impl LimitMetrics {
    fn register(registry: &Registry) -> Self {
        let fallback = IntGauge::new(
            "keygate_quota_fallback",
            "1 while the quota store does not answer: shared quotas are counted locally \
             (or refused, with quota_fallback = refuse)",
        )
        .expect("valid metric");
        let live_sidecars = IntGauge::new(
            "keygate_quota_live_sidecars",
            "Sidecars sharing quotas through the store, as this one last counted them",
        )
        .expect("valid metric");
        let refills = IntCounterVec::new(
            Opts::new(
                "keygate_quota_lease_refills_total",
                "Quota lease grant round trips to the store, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let decided_alone = IntCounterVec::new(
            Opts::new(
                "keygate_quota_decided_alone_total",
                "Requests whose quota lease was spent while the quota store did not answer: \
                 admitted on this sidecar's fallback budget, or refused (quota_fallback = refuse)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let held = IntCounter::new(
            "keygate_quota_held_refusals_total",
            "Requests refused for a moment (429 with a Retry-After of a second or two) while the \
             quota store held back the rest of a quota after an outage, though it was not used up",
        )
        .expect("valid metric");
        let suspensions = IntCounter::new(
            "keygate_key_suspensions_total",
            "Keys this sidecar suspended for exceeding their rate limit repeatedly",
        )
        .expect("valid metric");
        for c in [
            Box::new(fallback.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(live_sidecars.clone()),
            Box::new(refills.clone()),
            Box::new(decided_alone.clone()),
            Box::new(held.clone()),
            Box::new(suspensions.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for outcome in ["ok", "error"] {
            refills.with_label_values(&[outcome]);
        }
        for outcome in ["admitted", "refused"] {
            decided_alone.with_label_values(&[outcome]);
        }
        Self {
            fallback,
            live_sidecars,
            refills,
            decided_alone,
            held,
            suspensions,
        }
    }
}

/// `[metrics]`: which usage labels to keep.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MetricsConfig {
    /// `keygate_plan_requests_total{plan}`: one series per plan (the config's, plus `none`).
    pub by_plan: bool,
    /// `keygate_owner_requests_total{owner}`: one series per key owner, so opt-in.
    pub by_owner: bool,
    /// With `by_owner`: the first this many owners seen get a series of their own; later
    /// ones are counted as `owner="_other"` (and logged once).
    pub max_owners: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            by_plan: true,
            by_owner: false,
            max_owners: 100,
        }
    }
}

/// Admitted requests by plan and by owner.
///
/// Why a cap instead of a top-N for owners: a counter that moves in and out of a top-N set
/// appears, vanishes and restarts from another value, which `rate()` reads as resets; the
/// first `max_owners` owners keep their series for the life of the process, monotonic.
/// Dashboards take the top N with `topk()` at query time. Owners beyond the cap are one
/// `_other` series; an operator who needs every owner has `keys usage` and the access log.
struct Usage {
    by_plan: Option<IntCounterVec>,
    by_owner: Option<IntCounterVec>,
    max_owners: usize,
    /// Owners with a series of their own.
    owners: RwLock<HashMap<Box<str>, IntCounter>>,
    other: Option<IntCounter>,
}

/// The `owner` value of the series that counts owners past the cap.
pub const OTHER_OWNERS: &str = "_other";

impl Usage {
    fn register(registry: &Registry, config: &MetricsConfig) -> Self {
        let by_plan = config.by_plan.then(|| {
            let v = IntCounterVec::new(
                Opts::new(
                    "keygate_plan_requests_total",
                    "Admitted requests by the key's plan (none: no plan)",
                ),
                &["plan"],
            )
            .expect("valid metric");
            registry.register(Box::new(v.clone())).expect("unique");
            v
        });
        let by_owner = config.by_owner.then(|| {
            let v = IntCounterVec::new(
                Opts::new(
                    "keygate_owner_requests_total",
                    "Admitted requests by the key's owner ([metrics] max_owners owners, the rest as _other)",
                ),
                &["owner"],
            )
            .expect("valid metric");
            registry.register(Box::new(v.clone())).expect("unique");
            v
        });
        let other = by_owner
            .as_ref()
            .map(|v| v.with_label_values(&[OTHER_OWNERS]));
        Self {
            by_plan,
            by_owner,
            max_owners: config.max_owners,
            owners: RwLock::new(HashMap::new()),
            other,
        }
    }

    fn count(&self, plan: Option<&str>, owner: &str) {
        if let Some(by_plan) = &self.by_plan {
            by_plan.with_label_values(&[plan.unwrap_or("none")]).inc();
        }
        let (Some(by_owner), Some(other)) = (&self.by_owner, &self.other) else {
            return;
        };
        if let Some(counter) = self
            .owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(owner)
        {
            counter.inc();
            return;
        }
        let mut owners = self.owners.write().unwrap_or_else(|p| p.into_inner());
        if let Some(counter) = owners.get(owner) {
            counter.inc();
        } else if owners.len() < self.max_owners && owner != OTHER_OWNERS {
            let counter = by_owner.with_label_values(&[owner]);
            counter.inc();
            owners.insert(owner.into(), counter);
        } else {
            if other.get() == 0 {
                tracing::warn!(
                    max_owners = self.max_owners,
                    "more key owners than [metrics] max_owners: further owners are counted as owner=\"_other\""
                );
            }
            other.inc();
        }
    }
}

/// The Redis store's connections and the change feed: what shows a quiet fault.
pub struct StoreHealth {
    /// Command connections given up as dead, by reason (`timeouts`: that many commands in a
    /// row got no answer; `closed`: an I/O error or a closed connection).
    pub reconnects: IntCounterVec,
    /// Times the store was found emptied or replaced (its instance token changed); each
    /// flushed the key cache.
    pub replaced: IntCounter,
    /// 1 while the change feed confirmed within `[store] confirm_within` that this sidecar's
    /// cache is current, 0 while it cannot.
    pub feed_current: IntGauge,
    /// When the change feed last confirmed it (Unix seconds; 0: never).
    pub feed_confirmed: Gauge,
}

impl StoreHealth {
    fn register(registry: &Registry) -> Self {
        let reconnects = IntCounterVec::new(
            Opts::new(
                "keygate_redis_reconnects_total",
                "Redis command connections given up as dead, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let replaced = IntCounter::new(
            "keygate_key_store_replaced_total",
            "Times the key store was found emptied or replaced; each flushed the key cache",
        )
        .expect("valid metric");
        let feed_current = IntGauge::new(
            "keygate_key_feed_current",
            "1 while the change feed confirms within [store] confirm_within that the key cache is current",
        )
        .expect("valid metric");
        let feed_confirmed = Gauge::new(
            "keygate_key_feed_last_confirmed_timestamp_seconds",
            "When the change feed last confirmed that the key cache is current (Unix time)",
        )
        .expect("valid metric");
        for c in [
            Box::new(reconnects.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(replaced.clone()),
            Box::new(feed_current.clone()),
            Box::new(feed_confirmed.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for reason in ["timeouts", "closed"] {
            reconnects.with_label_values(&[reason]);
        }
        // Current until shown otherwise: the file store's feed confirms on its own schedule
        // and a Redis feed sets this from its first poll.
        feed_current.set(1);
        Self {
            reconnects,
            replaced,
            feed_current,
            feed_confirmed,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
