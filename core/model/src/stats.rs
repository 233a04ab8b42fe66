//! Counters for metrics, kept in the model as plain integers: reading them is a copy, and
//! the metrics endpoint turns them into Prometheus series at scrape time.

/// Per-queue counters (RabbitMQ's `rabbitmq_queue_*_total` family).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages that entered the queue.
    pub published: u64,
    /// Messages handed to consumers or basic.get.
    pub delivered: u64,
    /// Of those, deliveries flagged redelivered.
    pub redelivered: u64,
    /// Deliveries acknowledged.
    pub acked: u64,
}

/// Broker-wide counters (RabbitMQ's `rabbitmq_global_*` family).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalStats {
    /// Messages published by clients.
    pub received: u64,
    /// Publisher confirms sent (acks).
    pub confirmed: u64,
    /// Messages routed to at least one queue.
    pub routed: u64,
    /// Unroutable messages dropped.
    pub unroutable_dropped: u64,
    /// Unroutable mandatory messages returned.
    pub unroutable_returned: u64,
    /// Deliveries to consumers and basic.get.
    pub delivered: u64,
    /// Deliveries acknowledged.
    pub acknowledged: u64,
    /// Dead-lettered messages by reason (index: `Reason as usize`).
    pub dead_lettered: [u64; 4],
    /// Connections opened.
    pub connections_opened: u64,
    /// Connections closed.
    pub connections_closed: u64,
    /// Channels opened.
    pub channels_opened: u64,
    /// Channels closed.
    pub channels_closed: u64,
    /// Storage writes that failed where no client could be told (acks, topology).
    pub storage_errors: u64,
}

impl std::ops::AddAssign<&GlobalStats> for GlobalStats {
    /// Adds another broker's counters (a node has one broker per vhost).
    fn add_assign(&mut self, o: &GlobalStats) {
        // Destructured, so a counter added later cannot be left out here.
        let GlobalStats {
            received,
            confirmed,
            routed,
            unroutable_dropped,
            unroutable_returned,
            delivered,
            acknowledged,
            dead_lettered,
            connections_opened,
            connections_closed,
            channels_opened,
            channels_closed,
            storage_errors,
        } = *o;
        self.received += received;
        self.confirmed += confirmed;
        self.routed += routed;
        self.unroutable_dropped += unroutable_dropped;
        self.unroutable_returned += unroutable_returned;
        self.delivered += delivered;
        self.acknowledged += acknowledged;
        for (a, b) in self.dead_lettered.iter_mut().zip(dead_lettered) {
            *a += b;
        }
        self.connections_opened += connections_opened;
        self.connections_closed += connections_closed;
        self.channels_opened += channels_opened;
        self.channels_closed += channels_closed;
        self.storage_errors += storage_errors;
    }
}

/// Things about queues worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerEvent {
    /// A queue was created.
    QueueDeclared {
        /// Its name.
        queue: String,
        /// Whether it is durable.
        durable: bool,
    },
    /// A queue was deleted.
    QueueDeleted {
        /// Its name.
        queue: String,
    },
    /// A cluster member could not make something of the cluster's topology real here (a
    /// plugin type it lacks, an unreadable entry).
    Cluster {
        /// What, and why.
        detail: String,
    },
    /// A storage write failed where no client could be told.
    StorageError {
        /// What failed.
        error: String,
    },
    /// A consumer held a delivery past its consumer timeout and was cancelled.
    ConsumerTimedOut {
        /// Its tag.
        consumer: String,
        /// What happened.
        detail: String,
    },
}
