//! Every metric of the gateway, registered once in one Prometheus registry.
//!
//! Names carry the `gleepost_gateway_` prefix; `docs/operations.md` explains each one.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const NS: &str = "gleepost_gateway";

/// Every `connections_refused_total` reason (each series exists from start-up).
pub(crate) const REFUSAL_REASONS: [&str; 6] = [
    "capacity",
    "broker",
    "per_user",
    "per_ip",
    "rate",
    "auth_rate",
];

/// All gateway metrics.
pub(crate) struct Metrics {
    registry: Registry,
    /// Open client connections, every transport.
    pub(crate) connections: IntGauge,
    /// Client connections opened (every transport; a WebSocket once its upgrade completed).
    pub(crate) connections_opened: IntCounter,
    /// Connections closed, by reason.
    pub(crate) connections_closed: IntCounterVec,
    /// Rejected connection attempts, by reason.
    pub(crate) auth_failures: IntCounterVec,
    /// Connection attempts refused by a limit (429) or for lack of capacity (503), by reason.
    pub(crate) connections_refused: IntCounterVec,
    /// Publish API requests, by HTTP status.
    pub(crate) publish_requests: IntCounterVec,
    /// Publish API requests from their headers to their answer (any status), by route
    /// (`publish`, `batch`).
    pub(crate) publish_duration: HistogramVec,
    /// One publish through the broker (a request, or a batch item), queueing in the Redis
    /// batcher and the script's round trip included.
    pub(crate) broker_publish_duration: Histogram,
    /// JWT connections admitted without a revocation check (the broker did not answer).
    pub(crate) revocation_unchecked: IntCounter,
    /// `POST /v1/disconnect` and `GET /v1/presence` requests, by endpoint and HTTP status.
    pub(crate) control_requests: IntCounterVec,
    /// Open connections on the admin port.
    pub(crate) admin_connections: IntGauge,
    /// Complete admin requests being handled (the busy share in use).
    pub(crate) admin_in_flight: IntGauge,
    /// Admin connections closed by the gateway without a complete request, by reason.
    pub(crate) admin_dropped: IntCounterVec,
    /// Events accepted for publishing (one per recipient user).
    pub(crate) events_published: IntCounter,
    /// Recipients of a publish whose copy Redis refused (their own keys).
    pub(crate) events_refused: IntCounter,
    /// Frames written to client sockets.
    pub(crate) events_delivered: IntCounter,
    /// Events written, by transport (`ws`, `sse`, `poll`).
    pub(crate) transport_delivered: IntCounterVec,
    /// Open client connections, by transport (`ws`, `sse`, `poll`: pending long-polls).
    pub(crate) transport_connections: IntGaugeVec,
    /// Events not delivered to a connection, by reason.
    pub(crate) events_dropped: IntCounterVec,
    /// Time from an event entering this node (publish accepted or broker receive) to its frame
    /// being written.
    pub(crate) delivery_latency: Histogram,
    /// Broker channels this node is subscribed to (per link: users × (channel templates + the
    /// gateway channel), plus its probe channel).
    pub(crate) subscribed_channels: IntGauge,
    /// Broker (re)connections after a failure.
    pub(crate) broker_reconnects: IntCounter,
    /// Messages received from the broker subscription.
    pub(crate) broker_messages: IntCounter,
    /// Broker payloads dropped because they are not valid events, by reason.
    pub(crate) broker_malformed: IntCounterVec,
    /// `resync` events sent (resume and gap repair), one per connection, by reason.
    pub(crate) resyncs: IntCounterVec,
    /// Events sent from history (resume and gap repair), one per connection.
    pub(crate) events_replayed: IntCounter,
    /// Round trip of the node's self-probe through the broker.
    pub(crate) probe_rtt: Histogram,
    /// 1 while the node is ready (broker works end to end, not draining).
    pub(crate) ready: IntGauge,
    /// 1 from SIGTERM on (the node is draining), else 0.
    pub(crate) draining: IntGauge,
    /// The soft `RLIMIT_NOFILE` the process runs with (after raising it to the hard limit).
    pub(crate) open_files_limit: IntGauge,
    /// The effective `--max-connections` (0 = no limit).
    pub(crate) max_connections: IntGauge,
    /// Panics caught in connection tasks.
    pub(crate) panics: IntCounter,
    /// JWKS fetches that failed (the cached keys were kept).
    pub(crate) jwks_refresh_failures: IntCounter,
    /// JWKS fetches that loaded a key set.
    pub(crate) jwks_refreshes: IntCounter,
    /// Keys in the JWKS cache.
    pub(crate) jwks_keys: IntGauge,
    /// Unix time of the last successful JWKS fetch (0: none yet).
    pub(crate) jwks_last_success: IntGauge,
}

impl Metrics {
    /// Create and register every metric (and process metrics on Linux).
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::with_opts(Opts::new(name, help).namespace(NS))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::with_opts(Opts::new(name, help).namespace(NS))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter_vec =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help).namespace(NS), &[label])?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, buckets: Vec<f64>| -> Result<Histogram, prometheus::Error> {
                let h = Histogram::with_opts(
                    HistogramOpts::new(name, help)
                        .namespace(NS)
                        .buckets(buckets),
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let latency_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0,
        ];
        let metrics = Metrics {
            connections: gauge("connections", "Open client connections (every transport)")?,
            connections_opened: counter(
                "connections_opened_total",
                "Client connections opened (every transport)",
            )?,
            connections_closed: counter_vec(
                "connections_closed_total",
                "Client connections closed (every transport), by reason",
                "reason",
            )?,
            connections_refused: counter_vec(
                "connections_refused_total",
                "Connection attempts refused by a limit (429) or for lack of capacity (503), by reason",
                "reason",
            )?,
            auth_failures: counter_vec(
                "auth_failures_total",
                "Rejected connection attempts, by reason",
                "reason",
            )?,
            publish_requests: counter_vec(
                "publish_requests_total",
                "Publish API requests, by HTTP status",
                "status",
            )?,
            publish_duration: {
                let opts = HistogramOpts::new(
                    "publish_duration_seconds",
                    "Publish API requests from their headers to their answer, in seconds, by route",
                )
                .namespace(NS)
                .buckets(latency_buckets.clone());
                let h = HistogramVec::new(opts, &["route"])?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            broker_publish_duration: histogram(
                "broker_publish_duration_seconds",
                "One publish through the broker (batcher queue and Redis round trip), in seconds",
                latency_buckets.clone(),
            )?,
            revocation_unchecked: counter(
                "revocation_unchecked_total",
                "JWT connections admitted without a revocation check (the broker did not answer)",
            )?,
            control_requests: {
                let opts = Opts::new(
                    "control_requests_total",
                    "Disconnect and presence API requests, by endpoint and HTTP status",
                )
                .namespace(NS);
                let c = IntCounterVec::new(opts, &["endpoint", "status"])?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            admin_connections: gauge("admin_connections", "Open connections on the admin port")?,
            admin_in_flight: gauge(
                "admin_requests_in_flight",
                "Complete publish, disconnect and presence requests being handled (at most 7/8 of --admin-max-connections)",
            )?,
            admin_dropped: counter_vec(
                "admin_connections_dropped_total",
                "Admin connections closed by the gateway without a complete request (evicted, timeout, error)",
                "reason",
            )?,
            events_published: counter(
                "events_published_total",
                "Events accepted for publishing, one per recipient user",
            )?,
            events_refused: counter(
                "events_refused_total",
                "Recipients of a publish whose copy Redis refused (their own keys answered an error): not published to them",
            )?,
            events_delivered: counter(
                "events_delivered_total",
                "Event frames written to client sockets",
            )?,
            events_dropped: counter_vec(
                "events_dropped_total",
                "Events not delivered to a connection, by reason",
                "reason",
            )?,
            transport_delivered: counter_vec(
                "transport_events_delivered_total",
                "Events written to clients, by transport",
                "transport",
            )?,
            transport_connections: {
                let opts = Opts::new(
                    "transport_connections",
                    "Open client connections by transport (poll: pending long-polls)",
                )
                .namespace(NS);
                let g = IntGaugeVec::new(opts, &["transport"])?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            delivery_latency: histogram(
                "delivery_latency_seconds",
                "Event entering this node to frame written, in seconds",
                latency_buckets.clone(),
            )?,
            subscribed_channels: gauge(
                "broker_subscribed_channels",
                "Broker channels this node is subscribed to",
            )?,
            broker_reconnects: counter(
                "broker_reconnects_total",
                "Broker reconnections after a failure",
            )?,
            broker_messages: counter(
                "broker_messages_received_total",
                "Messages received from the broker subscription",
            )?,
            broker_malformed: counter_vec(
                "broker_malformed_payloads_total",
                "Broker payloads dropped as malformed, by reason",
                "reason",
            )?,
            resyncs: counter_vec(
                "resyncs_total",
                "resync events sent (resume and gap repair), by reason",
                "reason",
            )?,
            events_replayed: counter(
                "events_replayed_total",
                "Events sent from history (resume and gap repair)",
            )?,
            probe_rtt: histogram(
                "broker_probe_rtt_seconds",
                "Round trip of the self-probe through the broker, in seconds",
                latency_buckets,
            )?,
            ready: gauge("ready", "1 while the node is ready to serve")?,
            draining: gauge("draining", "1 while the node drains after SIGTERM")?,
            open_files_limit: gauge(
                "open_files_limit",
                "Soft RLIMIT_NOFILE of the process (raised to the hard limit at start)",
            )?,
            max_connections: gauge(
                "max_connections",
                "Effective connection cap of this node (0 = no limit)",
            )?,
            panics: counter("panics_total", "Panics caught in connection tasks")?,
            jwks_refresh_failures: counter(
                "jwks_refresh_failures_total",
                "JWKS fetches that failed (the cached keys were kept)",
            )?,
            jwks_refreshes: counter("jwks_refreshes_total", "JWKS fetches that loaded a key set")?,
            jwks_keys: gauge("jwks_keys", "Keys in the JWKS cache")?,
            jwks_last_success: gauge(
                "jwks_last_success_timestamp_seconds",
                "Unix time of the last successful JWKS fetch (0: none yet)",
            )?,
            registry,
        };
        // Series the shipped alerts rate() over exist from the start (at 0).
        for reason in ["slow_consumer", "closing"] {
            metrics.events_dropped.with_label_values(&[reason]);
        }
        for reason in [
            "not_json",
            "not_object",
            "no_type",
            "oversize",
            "not_utf8",
            "bad_probe",
        ] {
            metrics.broker_malformed.with_label_values(&[reason]);
        }
        for reason in ["evicted", "timeout", "error"] {
            metrics.admin_dropped.with_label_values(&[reason]);
        }
        for transport in ["ws", "sse", "poll"] {
            metrics.transport_delivered.with_label_values(&[transport]);
            metrics
                .transport_connections
                .with_label_values(&[transport]);
        }
        for reason in REFUSAL_REASONS {
            metrics.connections_refused.with_label_values(&[reason]);
        }
        for route in ["publish", "batch"] {
            metrics.publish_duration.with_label_values(&[route]);
        }
        #[cfg(target_os = "linux")]
        {
            let process =
                prometheus::process_collector::ProcessCollector::new(std::process::id() as i32, NS);
            metrics.registry.register(Box::new(process))?;
        }
        Ok(metrics)
    }

    /// Render every metric in the Prometheus text format.
    pub(crate) fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
