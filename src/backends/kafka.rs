//! The log ports over Apache Kafka with `rdkafka` (bundled librdkafka).
//!
//! Consumer: a consumer-group member on one topic. Offsets are never stored
//! automatically: the pipeline's [`LogConsumer::commit`] stores the offset
//! to resume from only once every effect of the records before it is
//! acknowledged, and librdkafka's auto-commit sends what was stored every
//! `auto.commit.interval.ms`. Assignments and revocations reach the pipeline
//! as [`ConsumerEvent`]s, in order with the records. A revocation is not
//! carried out at once: the partitions stay ours (paused, the group waiting)
//! until the pipeline has finished their running batches and calls
//! [`LogConsumer::release`], which commits what was stored and hands them
//! over. So an old and a new owner never write the same documents at the
//! same time (on FerretDB, whose updates are read-modify-write, that loses
//! one of the writes).
//!
//! Producer: `acks=all` with idempotence, so a retried produce cannot
//! duplicate or reorder within a partition; the partition is chosen with
//! sarama's hash (what OpenIM's producers use), so our records of one key
//! land where OpenIM's would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KHeader, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::domain::context::Header;
use crate::embedded::log::sarama_partition;
use crate::ports::log::{Ack, Delivered};
use crate::ports::{
    BoxFuture, ConsumerEvent, LogConsumer, LogError, LogProducer, OutRecord, Record,
};

/// Connection settings shared by consumers and producers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// SASL/PLAIN user (with `password`), if any.
    pub username: Option<String>,
    /// SASL/PLAIN password.
    pub password: Option<String>,
    /// Producer compression: none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// Largest record the producer sends, bytes.
    pub max_message_bytes: usize,
    /// Consumer session timeout.
    pub session_timeout: Duration,
    /// How often stored offsets are committed.
    pub commit_interval: Duration,
    /// TLS to the brokers, if on.
    pub tls: Option<KafkaTlsFiles>,
}

/// TLS to the brokers (`kafka.yml` `tls`), as files librdkafka reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaTlsFiles {
    /// CA certificate(s), PEM; none: the system's trust store.
    pub ca: Option<String>,
    /// Client certificate, PEM (mutual TLS), with `key`.
    pub cert: Option<String>,
    /// Client private key, PEM.
    pub key: Option<String>,
    /// Password of an encrypted `key`.
    pub key_password: Option<String>,
    /// Accept any broker certificate and host name.
    pub insecure_skip_verify: bool,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".into()],
            username: None,
            password: None,
            compression: "none".into(),
            max_message_bytes: 1_000_000,
            session_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_secs(1),
            tls: None,
        }
    }
}

impl KafkaSettings {
    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","));
        let sasl = self.username.as_ref().zip(self.password.as_ref());
        let protocol = match (sasl.is_some(), self.tls.is_some()) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SASL_PLAINTEXT",
            (false, true) => "SSL",
            (true, true) => "SASL_SSL",
        };
        c.set("security.protocol", protocol);
        if let Some((u, p)) = sasl {
            c.set("sasl.mechanisms", "PLAIN")
                .set("sasl.username", u)
                .set("sasl.password", p);
        }
        if let Some(t) = &self.tls {
            let files = [
                ("ssl.ca.location", &t.ca),
                ("ssl.certificate.location", &t.cert),
                ("ssl.key.location", &t.key),
                ("ssl.key.password", &t.key_password),
            ];
            for (name, value) in files {
                if let Some(v) = value {
                    c.set(name, v);
                }
            }
            if t.insecure_skip_verify {
                c.set("enable.ssl.certificate.verification", "false")
                    .set("ssl.endpoint.identification.algorithm", "none");
            }
        }
        c
    }
}

fn unavailable(e: KafkaError) -> LogError {
    LogError::Unavailable(e.to_string())
}

/// Takes librdkafka's rebalance callbacks: an assignment is applied at once
/// and reported; a revocation is reported and left pending until the
/// pipeline calls [`LogConsumer::release`] (or at once when nobody is left
/// to call it: the consumer is closing).
struct Rebalancer {
    events: mpsc::UnboundedSender<ConsumerEvent>,
    closing: Arc<AtomicBool>,
}

impl ClientContext for Rebalancer {}

impl ConsumerContext for Rebalancer {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr as E;
        let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        match err {
            E::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "applying a partition assignment failed");
                }
                let _ = self.events.send(ConsumerEvent::Assigned(parts));
            }
            E::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if self.closing.load(Ordering::SeqCst)
                    || self.events.send(ConsumerEvent::Revoked(parts)).is_err()
                {
                    hand_back(consumer);
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; dropping the assignment");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Commits what was stored, then gives up the assignment so the group can
/// go on rebalancing. A failed commit only means redelivery to the next
/// owner.
fn hand_back<C: ConsumerContext>(consumer: &impl Consumer<C>) {
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync)
        && !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))
    {
        tracing::warn!(error = %e, "commit on revoke failed; the next owner redelivers");
    }
    if let Err(e) = consumer.unassign() {
        tracing::error!(error = %e, "giving up revoked partitions failed");
    }
}

/// A consumer-group member on one topic.
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer<Rebalancer>>,
    events: mpsc::UnboundedReceiver<ConsumerEvent>,
    topic: Arc<str>,
    /// Records received while an event was pending, handed out next.
    held: Vec<Record>,
    /// Per assigned partition, the offset after the last record handed out.
    next: BTreeMap<i32, i64>,
    /// Records behind the partitions' high watermarks (see [`Self::lag`]).
    lag: Arc<AtomicI64>,
    /// Partitions assigned and not revoked, as the events handed out say.
    /// Records of other partitions (fetched before a revocation) are
    /// dropped: whoever owns the partition next reads them again.
    assigned: std::collections::BTreeSet<i32>,
    /// A revocation was handed out and not yet released.
    revoking: bool,
    /// Set when this consumer is dropped: revocations during close are
    /// carried out at once.
    closing: Arc<AtomicBool>,
}

impl KafkaConsumer {
    /// Joins `group` and subscribes to `topic`.
    pub fn new(settings: &KafkaSettings, group: &str, topic: &str) -> Result<Self, LogError> {
        Self::member(settings, group, topic, None)
    }

    /// Joins `group` as the static member `instance` (`group.instance.id`)
    /// when one is given, and subscribes to `topic`. A static member that
    /// comes back within the session timeout gets its partitions back
    /// without a rebalance.
    pub fn member(
        settings: &KafkaSettings,
        group: &str,
        topic: &str,
        instance: Option<&str>,
    ) -> Result<Self, LogError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let closing = Arc::new(AtomicBool::new(false));
        let mut config = settings.base();
        if let Some(id) = instance {
            config.set("group.instance.id", id);
        }
        let consumer: StreamConsumer<Rebalancer> = config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                settings.commit_interval.as_millis().max(1).to_string(),
            )
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                settings.session_timeout.as_millis().to_string(),
            )
            .set("partition.assignment.strategy", "range")
            .create_with_context(Rebalancer {
                events: tx,
                closing: closing.clone(),
            })
            .map_err(|e| LogError::Refused(format!("kafka consumer: {e}")))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| LogError::Refused(format!("subscribe {topic}: {e}")))?;
        Ok(Self {
            consumer: Arc::new(consumer),
            events: rx,
            topic: topic.into(),
            held: Vec::new(),
            next: BTreeMap::new(),
            lag: Arc::default(),
            assigned: Default::default(),
            revoking: false,
            closing,
        })
    }

    /// Consumer lag: records in this member's partitions that it has not
    /// handed out yet, from the high watermarks librdkafka caches with every
    /// fetch (no request of its own). Updated on every poll; shared, so the
    /// daemon can export it while the loop owns the consumer.
    pub fn lag(&self) -> Arc<AtomicI64> {
        self.lag.clone()
    }

    fn update_lag(&mut self, records: &[Record]) {
        for r in records {
            self.next.insert(r.partition, r.offset + 1);
        }
        let mut behind = 0i64;
        for (p, next) in &self.next {
            if let Some(high) = self.cached_high_watermark(*p) {
                behind += (high - next).max(0);
            }
        }
        self.lag.store(behind, Ordering::Relaxed);
    }

    /// The high watermark of `partition` as librdkafka last saw it in a
    /// fetch response, if it has seen one.
    fn cached_high_watermark(&self, partition: i32) -> Option<i64> {
        let topic = std::ffi::CString::new(self.topic.as_bytes()).ok()?;
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the client handle lives as long as `self.consumer`;
        // librdkafka only reads its own cache and writes the two
        // out-parameters, which outlive the call.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then_some(high)
    }

    fn on_event(&mut self, ev: &ConsumerEvent) {
        match ev {
            ConsumerEvent::Revoked(parts) => {
                self.revoking = true;
                for p in parts {
                    self.next.remove(p);
                    self.assigned.remove(p);
                }
            }
            ConsumerEvent::Assigned(parts) => self.assigned.extend(parts.iter().copied()),
            _ => {}
        }
    }

    /// Commits what was stored, synchronously (for shutdown).
    pub fn commit_stored(&self) -> Result<(), LogError> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The next event or batch of records (at most `max`), waiting up to
    /// `wait` for the first record.
    ///
    /// Events and records come out in the order librdkafka served them.
    /// rdkafka runs the rebalance callback (which queues our event) inside
    /// `recv()`, on the same queue as the fetched messages, and a `recv()`
    /// poll that served a rebalance returns without a message. So events
    /// queued while waiting for the first record came before it, and an
    /// event queued while draining the ready records came after all of
    /// them. Getting this wrong loses data: a partition revoked and assigned
    /// back during the wait is fetched again from its committed offset, and
    /// dropping those records as "revoked" would let later offsets be
    /// committed over them.
    async fn receive(&mut self, max: usize, wait: Duration) -> Result<ConsumerEvent, LogError> {
        if let Ok(ev) = self.events.try_recv() {
            return Ok(ev);
        }
        if !self.held.is_empty() {
            return Ok(ConsumerEvent::Records(std::mem::take(&mut self.held)));
        }
        let consumer = self.consumer.clone();
        let first = match tokio::time::timeout(wait, consumer.recv()).await {
            Err(_) => {
                return Ok(match self.events.try_recv() {
                    Ok(ev) => ev,
                    Err(_) => ConsumerEvent::Idle,
                });
            }
            Ok(Err(e)) => return Err(unavailable(e)),
            Ok(Ok(m)) => self.convert(&m),
        };
        if let Ok(ev) = self.events.try_recv() {
            // A rebalance was served while waiting: it precedes `first`
            // (and any further events still queued precede it too).
            self.held = vec![first];
            return Ok(ev);
        }
        let mut out = vec![first];
        while out.len() < max {
            // `None` also when a rebalance was served: its event then
            // follows every record in `out` and is returned next time.
            match futures::FutureExt::now_or_never(consumer.recv()) {
                Some(Ok(m)) => out.push(self.convert(&m)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    break;
                }
                None => break,
            }
        }
        Ok(ConsumerEvent::Records(out))
    }

    fn convert(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        to_record(&self.topic, m)
    }
}

impl LogConsumer for KafkaConsumer {
    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<ConsumerEvent, LogError>> {
        Box::pin(async move {
            let mut polled = self.receive(max, wait).await;
            match &mut polled {
                Ok(ConsumerEvent::Records(rs)) => {
                    rs.retain(|r| self.assigned.contains(&r.partition));
                    self.update_lag(rs);
                }
                Ok(ev) => {
                    self.on_event(ev);
                    self.update_lag(&[]);
                }
                Err(_) => {}
            }
            polled
        })
    }

    fn commit(&mut self, offsets: Vec<(i32, i64)>) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            let mut tpl = TopicPartitionList::new();
            for (p, next) in offsets {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(next))
                    .map_err(unavailable)?;
            }
            self.consumer.store_offsets(&tpl).map_err(|e| match e {
                KafkaError::StoreOffset(RDKafkaErrorCode::State) => {
                    LogError::Refused("partition no longer assigned".into())
                }
                e => unavailable(e),
            })
        })
    }

    fn release(&mut self, _partitions: Vec<i32>) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            if std::mem::take(&mut self.revoking) {
                hand_back(self.consumer.as_ref());
            }
            Ok(())
        })
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // From here on nobody answers a revocation: librdkafka's close
        // gets its partitions back at once.
        self.closing.store(true, Ordering::SeqCst);
        // Make what was stored durable before leaving the group (hand_back
        // commits too, and gives up a pending revocation).
        if std::mem::take(&mut self.revoking) {
            hand_back(self.consumer.as_ref());
        } else {
            let _ = self.commit_stored();
        }
    }
}

/// A producer to any topic.
#[derive(Clone)]
pub struct KafkaProducer {
    producer: FutureProducer,
    max_bytes: usize,
    /// Partition counts per topic, looked up once.
    partitions: Arc<Mutex<BTreeMap<Arc<str>, i32>>>,
}

impl KafkaProducer {
    /// A producer with `acks=all` and idempotence.
    pub fn new(settings: &KafkaSettings) -> Result<Self, LogError> {
        let producer: FutureProducer = settings
            .base()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", &settings.compression)
            .set("message.max.bytes", settings.max_message_bytes.to_string())
            .set("linger.ms", "2")
            .create()
            .map_err(|e| LogError::Refused(format!("kafka producer: {e}")))?;
        Ok(Self {
            producer,
            max_bytes: settings.max_message_bytes,
            partitions: Arc::default(),
        })
    }

    /// Partitions of `topic`, from the broker's metadata (cached).
    async fn partition_count(&self, topic: &Arc<str>) -> Result<i32, LogError> {
        if let Some(n) = self.partitions.lock().get(topic) {
            return Ok(*n);
        }
        let client = self.producer.clone();
        let name = topic.to_string();
        let n = tokio::task::spawn_blocking(move || {
            let md = client
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(10))?;
            Ok::<i32, KafkaError>(
                md.topics()
                    .first()
                    .map(|t| t.partitions().len() as i32)
                    .unwrap_or(0),
            )
        })
        .await
        .map_err(|e| LogError::Unavailable(e.to_string()))?
        .map_err(unavailable)?;
        if n <= 0 {
            return Err(LogError::Unavailable(format!(
                "topic {topic} has no partitions yet"
            )));
        }
        self.partitions.lock().insert(topic.clone(), n);
        Ok(n)
    }

    /// Flushes queued records (for shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        self.producer.flush(timeout).map_err(unavailable)
    }
}

impl KafkaProducer {
    /// Looks up the partition counts of `topics` now, so that later sends
    /// to them are enqueued in call order (see [`Self::enqueue`]) and a
    /// missing topic shows at start-up.
    pub async fn warm(&self, topics: &[Arc<str>]) -> Result<(), LogError> {
        let clock = crate::ports::clock::SystemClock::new();
        for t in topics {
            // A topic the broker creates on first mention has no partitions
            // for a moment.
            let mut attempts = 0;
            while let Err(e) = self.partition_count(t).await {
                attempts += 1;
                if attempts >= 20 {
                    return Err(e);
                }
                crate::ports::Clock::sleep(&clock, Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }

    /// Enqueues `record` now, in call order, if its topic's partition count
    /// is known (else `None`: use [`LogProducer::send`]); the future
    /// resolves with the acknowledgement.
    #[allow(clippy::result_large_err)]
    pub fn enqueue(
        &self,
        record: &OutRecord,
    ) -> Option<
        Result<impl std::future::Future<Output = Result<Delivered, LogError>> + use<>, LogError>,
    > {
        let n = *self.partitions.lock().get(&record.topic)?;
        let partition = sarama_partition(&record.key, n);
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (k, v) in record.headers.iter() {
            headers = headers.insert(KHeader {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        let fr = FutureRecord::to(&record.topic)
            .partition(partition)
            .key(record.key.as_ref())
            .payload(record.value.as_ref())
            .headers(headers);
        let (size, limit) = (record.size(), self.max_bytes);
        Some(match self.producer.send_result(fr) {
            Ok(delivery) => Ok(async move {
                match delivery.await {
                    Ok(Ok(d)) => Ok(Delivered {
                        partition: d.partition,
                        offset: d.offset,
                    }),
                    Ok(Err((e, _))) => Err(produce_error(e, size, limit)),
                    Err(_) => Err(LogError::Unavailable("producer closed".into())),
                }
            }),
            Err((e, _)) => Err(produce_error(e, size, limit)),
        })
    }
}

fn produce_error(e: KafkaError, size: usize, limit: usize) -> LogError {
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
            LogError::TooLarge { size, limit }
        }
        e => unavailable(e),
    }
}

impl LogProducer for KafkaProducer {
    fn send(&self, record: OutRecord) -> Ack {
        // Enqueue during this call when the partition count is cached, so
        // that records sent one after another keep their order even when
        // their acknowledgements are awaited together.
        let queued = self.enqueue(&record);
        let this = self.clone();
        Box::pin(async move {
            let mut queued = queued;
            loop {
                match queued {
                    Some(Ok(ack)) => return ack.await,
                    Some(Err(LogError::Unavailable(e))) if e.contains("Queue full") => {
                        let clock = crate::ports::clock::SystemClock::new();
                        crate::ports::Clock::sleep(&clock, Duration::from_millis(5)).await;
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        this.partition_count(&record.topic).await?;
                    }
                }
                queued = this.enqueue(&record);
            }
        })
    }

    fn max_record_bytes(&self) -> usize {
        self.max_bytes
    }
}

/// A received message as a [`Record`] of `topic`.
fn to_record(topic: &Arc<str>, m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let headers: Vec<Header> = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic: topic.clone(),
        partition: m.partition(),
        offset: m.offset(),
        key: Bytes::copy_from_slice(m.key().unwrap_or_default()),
        value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        headers: headers.into(),
        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
    }
}

/// Reads every record of `topic` that was in it when the call began, per
/// partition in offset order, without joining a consumer group (nothing is
/// committed). For `audit` and tests; `progress` is called with the count
/// read so far.
pub async fn read_topic_to_end(
    settings: &KafkaSettings,
    topic: &str,
    mut progress: impl FnMut(u64),
) -> Result<BTreeMap<i32, Vec<Record>>, LogError> {
    let consumer: StreamConsumer = settings
        .base()
        .set("group.id", "msgtransfer-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .map_err(|e| LogError::Refused(format!("kafka reader: {e}")))?;
    let consumer = Arc::new(consumer);
    let name = topic.to_string();
    let c = consumer.clone();
    // Partitions and their high watermarks now: where reading stops.
    let ends = tokio::task::spawn_blocking(move || {
        let md = c
            .client()
            .fetch_metadata(Some(&name), Duration::from_secs(10))?;
        let mut ends = BTreeMap::new();
        for t in md.topics() {
            for p in t.partitions() {
                let (low, high) = c.fetch_watermarks(&name, p.id(), Duration::from_secs(10))?;
                ends.insert(p.id(), (low, high));
            }
        }
        Ok::<_, KafkaError>(ends)
    })
    .await
    .map_err(|e| LogError::Unavailable(e.to_string()))?
    .map_err(unavailable)?;
    if ends.is_empty() {
        return Err(LogError::Refused(format!("topic {topic} does not exist")));
    }
    let mut tpl = TopicPartitionList::new();
    let mut out: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    let mut left = 0u64;
    for (p, (low, high)) in &ends {
        out.insert(*p, Vec::new());
        if high > low {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*low))
                .map_err(unavailable)?;
            left += (high - low) as u64;
        }
    }
    if left == 0 {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(unavailable)?;
    let topic_name: Arc<str> = topic.into();
    let mut read = 0u64;
    let mut done: BTreeMap<i32, bool> = ends.iter().map(|(p, (l, h))| (*p, h <= l)).collect();
    while done.values().any(|d| !d) {
        let m = match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Err(_) => {
                return Err(LogError::Unavailable(format!(
                    "{topic}: no record for 30 s with {read} of {left} read"
                )));
            }
            Ok(Err(e)) => return Err(unavailable(e)),
            Ok(Ok(m)) => m,
        };
        let p = m.partition();
        let end = ends.get(&p).map_or(0, |(_, h)| *h);
        if m.offset() < end {
            out.entry(p).or_default().push(to_record(&topic_name, &m));
            read += 1;
            if read % 10_000 == 0 {
                progress(read);
            }
        }
        if m.offset() + 1 >= end {
            done.insert(p, true);
        }
    }
    progress(read);
    Ok(out)
}
