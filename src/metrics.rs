//! Monitoring (SPEC 9, issue 10): the metrics of one process, served at `GET /metrics`
//! in the OpenMetrics text format. Counters and histograms are observed where things
//! happen (claims, finishes, deliveries, requests); the state of the queue is read from
//! the database at each scrape, so every process reports the same shared queue.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeStatus {
    pub r#type: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// `due` (its time has come) or `waiting` (scheduled for later).
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabel {
    pub channel: String,
    /// `delivered`, `retry` or `failed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub method: String,
    /// The route's pattern (`/api/v2/patients/{id}`), never the concrete path.
    pub route: String,
    pub status: String,
}

pub struct Metrics {
    registry: Registry,
    pub operations: Family<TypeStatus, Gauge>,
    pub queue: Family<QueueLabel, Gauge>,
    pub finished: Family<TypeStatus, Counter>,
    pub duration: Family<TypeLabel, Histogram>,
    pub rows_per_second: Family<TypeLabel, Histogram>,
    pub lag: Histogram,
    pub retries: Family<TypeLabel, Counter>,
    pub deliveries: Family<DeliveryLabel, Counter>,
    pub http_requests: Family<RouteLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("haven");
        let operations = Family::<TypeStatus, Gauge>::default();
        registry.register(
            "operations",
            "Operations in the database by type and status (read at each scrape)",
            operations.clone(),
        );
        let queue = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "queue_depth",
            "Scheduled operations: due now, or waiting for their time (read at each scrape)",
            queue.clone(),
        );
        let finished = Family::<TypeStatus, Counter>::default();
        registry.register(
            "operations_finished",
            "Operations this process ended, by type and final status",
            finished.clone(),
        );
        let duration = Family::<TypeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.5, 14))
        });
        registry.register(
            "operation_duration_seconds",
            "From start to end of the operations this process ended",
            duration.clone(),
        );
        let rows_per_second = Family::<TypeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(10.0, 3.0, 12))
        });
        registry.register(
            "operation_rows_per_second",
            "Rows a second of the operations this process completed",
            rows_per_second.clone(),
        );
        let lag = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        registry.register(
            "scheduling_lag_seconds",
            "started_at - scheduled_at of the operations this process started",
            lag.clone(),
        );
        let retries = Family::<TypeLabel, Counter>::default();
        registry.register(
            "operation_retries",
            "Attempts that failed temporarily and were scheduled again",
            retries.clone(),
        );
        let deliveries = Family::<DeliveryLabel, Counter>::default();
        registry.register(
            "notification_deliveries",
            "Delivery attempts of notifications by channel and outcome",
            deliveries.clone(),
        );
        let http_requests = Family::<RouteLabel, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            http_requests.clone(),
        );
        Metrics {
            registry,
            operations,
            queue,
            finished,
            duration,
            rows_per_second,
            lag,
            retries,
            deliveries,
            http_requests,
        }
    }

    /// Sets the gauges read from the database.
    pub fn set_queue(&self, counts: &[(String, String, i64)], due: i64, waiting: i64) {
        self.operations.clear();
        for (op_type, status, n) in counts {
            self.operations
                .get_or_create(&TypeStatus {
                    r#type: op_type.clone(),
                    status: status.clone(),
                })
                .set(*n);
        }
        for (state, n) in [("due", due), ("waiting", waiting)] {
            self.queue
                .get_or_create(&QueueLabel {
                    state: state.into(),
                })
                .set(n);
        }
    }

    pub fn delivery(&self, channel: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabel {
                channel: channel.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// The text of `GET /metrics`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
