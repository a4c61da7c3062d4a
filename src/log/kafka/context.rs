//! The rdkafka client context of the Kafka log's clients ([`Ctx`]): librdkafka's logs and
//! errors routed to `tracing`, the producer's health (every broker down), and a consumer's
//! rebalance events queued for its next `poll`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Rebalance events of one consumer: `(assigned, partitions)`, oldest first.
pub(super) type Events = Arc<Mutex<Vec<(bool, Vec<u32>)>>>;

/// Health of the producer, fed by librdkafka's error callback and by deliveries.
#[derive(Default)]
pub(super) struct Health {
    /// Set when every broker is down; cleared by the next successful delivery or metadata call.
    pub(super) brokers_down: AtomicBool,
}

/// Routes librdkafka's logs and errors to `tracing`, and records producer health.
#[derive(Clone, Default)]
pub(super) struct Ctx {
    pub(super) health: Arc<Health>,
    /// Rebalance events of a consumer, drained by its `poll`.
    pub(super) events: Events,
    /// The consumer's topic (Kafka name).
    pub(super) topic: Arc<str>,
    /// The consumer's group (Kafka name), for logs.
    pub(super) group: Arc<str>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(facility = fac, message = log_message, "librdkafka error.")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(facility = fac, message = log_message, "librdkafka warning.")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility = fac, message = log_message, "librdkafka notice.")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(facility = fac, message = log_message, "librdkafka debug.")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.brokers_down.store(true, Ordering::Release);
        }
        tracing::warn!(error = %error, reason, "Kafka client error.");
    }
}

impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (assigned, tpl) = match rebalance {
            Rebalance::Assign(tpl) => (true, tpl),
            Rebalance::Revoke(tpl) => (false, tpl),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "Kafka rebalance failed.");
                return;
            }
        };
        let parts: Vec<u32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .collect();
        tracing::info!(topic = %self.topic, group = %self.group, assigned, partitions = ?parts,
            "Kafka partitions rebalanced.");
        self.events.lock().push((assigned, parts));
    }
}
