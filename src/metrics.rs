//! Prometheus metrics, served as text on the admin listener's `/metrics`.
//!
//! Names follow Prometheus conventions (`keygate_` prefix, `_total` counters, `_seconds`);
//! labels are bounded sets (decisions, results), never a key id or a raw path.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
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
    /// Client connections open now (public and plain listeners).
    pub open_connections: IntGauge,
    /// TLS handshakes that failed (bad client, plain HTTP on the TLS port, timeout).
    pub tls_handshake_failures: IntCounter,
    /// Config and certificate reloads by what was reloaded and result.
    pub reloads: IntCounterVec,
    /// Shared quotas and suspensions.
    pub limits: LimitMetrics,
    /// The Redis store's connections and the change feed's health.
    pub store_health: StoreHealth,
    /// io_uring submissions of writes, and the writes they carried
    /// ([`crate::forward::batch`]; counted for the whole process), brought up to date at each
    /// scrape.
    write_batches: IntCounter,
    batched_writes: IntCounter,
}

/// Request latencies span a cache hit (tens of µs) to a slow upstream (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Self {
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
        let tls_handshake_failures = IntCounter::new(
            "keygate_tls_handshake_failures_total",
            "TLS handshakes with clients that failed or timed out",
        )
        .expect("valid metric");
        let write_batches = IntCounter::new(
            "keygate_write_batches_total",
            "io_uring submissions of writes (to upstreams and HTTP/1.1 clients; one per event-loop turn with writes)",
        )
        .expect("valid metric");
        let batched_writes = IntCounter::new(
            "keygate_batched_writes_total",
            "Writes sent in those submissions",
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "keygate_reloads_total",
                "Config and certificate reloads by what and result",
            ),
            &["what", "result"],
        )
        .expect("valid metric");
        for c in [
            Box::new(request_latency.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upstream_latency.clone()),
            Box::new(open_connections.clone()),
            Box::new(tls_handshake_failures.clone()),
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
        ] {
            registry.register(c).expect("metric names are unique");
        }
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
            open_connections,
            tls_handshake_failures,
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
            store_health,
            write_batches,
            batched_writes,
        }
    }

    /// Counts one request: `decision` is `allowed` or the rejection code.
    pub fn request(&self, decision: &str, status: u16, latency: std::time::Duration) {
        let class = (usize::from(status / 100)).clamp(1, 5) - 1;
        let allowed = decision == "allowed";
        self.request_latency[usize::from(!allowed)].observe(latency.as_secs_f64());
        if allowed {
            self.allowed[class].inc();
        } else {
            const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
            self.requests
                .with_label_values(&[decision, CLASSES[class]])
                .inc();
        }
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
        let (batches, writes) = crate::forward::batch::totals();
        self.write_batches
            .inc_by(batches.saturating_sub(self.write_batches.get()));
        self.batched_writes
            .inc_by(writes.saturating_sub(self.batched_writes.get()));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The limiter's metrics: shared-quota leases and temporary suspensions.
pub struct LimitMetrics {
    /// 1 while quotas are counted locally because the quota store does not answer.
    pub fallback: IntGauge,
    /// Lease grant round trips to the quota store, by outcome (`ok`, `error`).
    pub refills: IntCounterVec,
    /// Keys suspended by this sidecar for exceeding their rate limit repeatedly.
    pub suspensions: IntCounter,
}

impl LimitMetrics {
    fn register(registry: &Registry) -> Self {
        let fallback = IntGauge::new(
            "keygate_quota_fallback",
            "1 while shared quotas are counted locally because the quota store does not answer",
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
        let suspensions = IntCounter::new(
            "keygate_key_suspensions_total",
            "Keys this sidecar suspended for exceeding their rate limit repeatedly",
        )
        .expect("valid metric");
        for c in [
            Box::new(fallback.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refills.clone()),
            Box::new(suspensions.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for outcome in ["ok", "error"] {
            refills.with_label_values(&[outcome]);
        }
        Self {
            fallback,
            refills,
            suspensions,
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
