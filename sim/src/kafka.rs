//! The simulated Kafka: a broker host serving the embedded log over turmoil
//! TCP, and the service-side producer and consumer that talk to it.
//!
//! The broker keeps its partitions, consumer groups (generations, range
//! assignment, committed offsets) in an [`EmbeddedLog`] that outlives the
//! host's software, like a disk. A consumer is a group member for as long as
//! its connection lives: a connection that breaks or stays silent for the
//! session timeout leaves the group, which rebalances, and its uncommitted
//! records are delivered again to the next owner.
//!
//! The producer behaves like an idempotent librdkafka producer: batches go
//! out one at a time in order, a batch whose answer was lost is sent again
//! with the same sequence number and the broker answers it from memory
//! instead of appending twice; only when a batch cannot be delivered within
//! the delivery timeout does it fail, together with everything queued
//! behind it, so per partition the delivered records stay in send order.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use msgtransfer::embedded::log::{EmbeddedConsumer, EmbeddedLog};
use msgtransfer::ports::log::{Ack, Delivered};
use msgtransfer::ports::{
    BoxFuture, ConsumerEvent, LogConsumer, LogError, LogProducer, OutRecord, Record,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::common::{Faults, sleep};
use crate::rpc::{self, CallError, Client, Served, Session};

/// The broker's port.
pub const PORT: u16 = 9092;
/// Largest record the broker accepts (sarama's default).
pub const MAX_RECORD_BYTES: usize = 1_000_000;

/// A record to append.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireOut {
    topic: String,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

impl From<&OutRecord> for WireOut {
    fn from(r: &OutRecord) -> Self {
        Self {
            topic: r.topic.to_string(),
            key: r.key.to_vec(),
            value: r.value.to_vec(),
            headers: r.headers.to_vec(),
        }
    }
}

impl From<WireOut> for OutRecord {
    fn from(r: WireOut) -> Self {
        Self {
            topic: Arc::from(r.topic),
            key: Bytes::from(r.key),
            value: Bytes::from(r.value),
            headers: Arc::from(r.headers),
        }
    }
}

/// A record read from a partition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireRecord {
    topic: String,
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp_ms: i64,
}

impl From<&Record> for WireRecord {
    fn from(r: &Record) -> Self {
        Self {
            topic: r.topic.to_string(),
            partition: r.partition,
            offset: r.offset,
            key: r.key.to_vec(),
            value: r.value.to_vec(),
            headers: r.headers.to_vec(),
            timestamp_ms: r.timestamp_ms,
        }
    }
}

impl From<WireRecord> for Record {
    fn from(r: WireRecord) -> Self {
        Self {
            topic: Arc::from(r.topic),
            partition: r.partition,
            offset: r.offset,
            key: Bytes::from(r.key),
            value: Bytes::from(r.value),
            headers: Arc::from(r.headers),
            timestamp_ms: r.timestamp_ms,
        }
    }
}

/// A broker error.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WireError {
    /// Record over the size limit.
    TooLarge(usize, usize),
    /// Refused (not our partition, stale generation, no membership).
    Refused(String),
}

impl From<WireError> for LogError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::TooLarge(size, limit) => LogError::TooLarge { size, limit },
            WireError::Refused(m) => LogError::Refused(m),
        }
    }
}

fn to_wire_error(e: LogError) -> WireError {
    match e {
        LogError::TooLarge { size, limit } => WireError::TooLarge(size, limit),
        other => WireError::Refused(other.to_string()),
    }
}

/// What a poll returned.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WireEvent {
    /// Records.
    Records(Vec<WireRecord>),
    /// Partitions assigned.
    Assigned(Vec<i32>),
    /// Partitions revoked.
    Revoked(Vec<i32>),
    /// Nothing within the wait.
    Idle,
}

/// Requests to the broker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum KafkaReq {
    /// Join `group` reading `topic` (the first request of a consumer's
    /// connection).
    Join {
        /// Group.
        group: String,
        /// Topic.
        topic: String,
    },
    /// Append a batch; `(producer, seq)` makes a resent batch idempotent.
    Produce {
        /// Producer id.
        producer: u64,
        /// Batch sequence number of that producer.
        seq: u64,
        /// Records in order.
        records: Vec<WireOut>,
    },
    /// Poll the membership of this connection.
    Poll {
        /// Most records.
        max: usize,
        /// Longest wait, ms.
        wait_ms: u64,
    },
    /// Commit offsets of this connection's membership.
    Commit(Vec<(i32, i64)>),
}

/// Broker answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum KafkaResp {
    /// Done.
    Ok,
    /// Per record: where it went, or why not.
    Produced(BatchAnswer),
    /// A poll's result.
    Event(WireEvent),
    /// Refused.
    Err(WireError),
}

/// Where each record of a batch went, or why not.
type BatchAnswer = Vec<Result<(i32, i64), WireError>>;

/// Broker state shared by all connections (and kept across restarts).
pub struct Broker {
    /// Partitions, groups and offsets.
    pub log: EmbeddedLog,
    /// Last batch per producer: its sequence number and answer.
    producers: Mutex<BTreeMap<u64, (u64, BatchAnswer)>>,
    faults: Arc<Faults>,
}

impl Broker {
    /// A broker over `log`.
    pub fn new(log: EmbeddedLog, faults: Arc<Faults>) -> Arc<Self> {
        Arc::new(Self {
            log,
            producers: Mutex::new(BTreeMap::new()),
            faults,
        })
    }

    fn produce(&self, producer: u64, seq: u64, records: Vec<WireOut>) -> KafkaResp {
        let mut producers = self.producers.lock();
        if let Some((last, answer)) = producers.get(&producer) {
            if *last == seq {
                return KafkaResp::Produced(answer.clone());
            }
            if *last > seq {
                return KafkaResp::Err(WireError::Refused(format!(
                    "batch {seq} of producer {producer} is older than {last}"
                )));
            }
        }
        let answer: Vec<_> = records
            .into_iter()
            .map(|r| {
                self.log
                    .append(r.into())
                    .map(|d| (d.partition, d.offset))
                    .map_err(to_wire_error)
            })
            .collect();
        producers.insert(producer, (seq, answer.clone()));
        KafkaResp::Produced(answer)
    }

    /// Serves the broker on [`PORT`] until the host is crashed.
    pub async fn serve(self: Arc<Self>, session_timeout: Duration) -> std::io::Result<()> {
        rpc::serve(PORT, session_timeout, move || BrokerSession {
            broker: self.clone(),
            member: None,
        })
        .await
    }
}

/// One connection: a producer, or one consumer-group member.
struct BrokerSession {
    broker: Arc<Broker>,
    member: Option<EmbeddedConsumer>,
}

impl Session for BrokerSession {
    type Q = KafkaReq;
    type A = KafkaResp;

    fn handle(&mut self, req: KafkaReq) -> Pin<Box<dyn Future<Output = Served<KafkaResp>> + '_>> {
        Box::pin(async move {
            match req {
                KafkaReq::Join { group, topic } => {
                    self.member = Some(self.broker.log.consumer(&group, &topic));
                    Served::Answer(KafkaResp::Ok)
                }
                KafkaReq::Produce {
                    producer,
                    seq,
                    records,
                } => {
                    let answer = self.broker.produce(producer, seq, records);
                    if self
                        .broker
                        .faults
                        .roll("kafka_lost_ack", |r| r.kafka_lost_ack)
                    {
                        Served::Drop
                    } else {
                        Served::Answer(answer)
                    }
                }
                KafkaReq::Poll { max, wait_ms } => {
                    let Some(m) = self.member.as_mut() else {
                        return Served::Answer(KafkaResp::Err(WireError::Refused(
                            "not a member".into(),
                        )));
                    };
                    let ev = match m.poll(max, Duration::from_millis(wait_ms)).await {
                        Ok(ConsumerEvent::Records(r)) => {
                            WireEvent::Records(r.iter().map(WireRecord::from).collect())
                        }
                        Ok(ConsumerEvent::Assigned(p)) => WireEvent::Assigned(p),
                        Ok(ConsumerEvent::Revoked(p)) => WireEvent::Revoked(p),
                        Ok(ConsumerEvent::Idle) => WireEvent::Idle,
                        Err(e) => return Served::Answer(KafkaResp::Err(to_wire_error(e))),
                    };
                    Served::Answer(KafkaResp::Event(ev))
                }
                KafkaReq::Commit(offsets) => {
                    let Some(m) = self.member.as_mut() else {
                        return Served::Answer(KafkaResp::Err(WireError::Refused(
                            "not a member".into(),
                        )));
                    };
                    match m.commit(offsets).await {
                        Ok(()) => Served::Answer(KafkaResp::Ok),
                        Err(e) => Served::Answer(KafkaResp::Err(to_wire_error(e))),
                    }
                }
            }
        })
    }
}

/// How the service-side clients reach the broker.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Broker address, `host:port`.
    pub addr: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Answer timeout on top of a poll's wait.
    pub request_timeout: Duration,
    /// How long the producer keeps resending a batch before failing it.
    pub delivery_timeout: Duration,
}

type Queued = (OutRecord, oneshot::Sender<Result<Delivered, LogError>>);

/// An idempotent, ordered producer (see the module comment).
pub struct RemoteProducer {
    tx: mpsc::UnboundedSender<Queued>,
}

impl RemoteProducer {
    /// Starts a producer with the unique id `id` (unique per process
    /// incarnation, like a Kafka producer id).
    pub fn spawn(cfg: ClientConfig, id: u64) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = Client::spawn(cfg.addr.clone(), None, cfg.connect_timeout);
        tokio::spawn(produce_loop(client, cfg, id, rx));
        Self { tx }
    }
}

async fn produce_loop(
    client: Client<KafkaReq, KafkaResp>,
    cfg: ClientConfig,
    id: u64,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    let mut seq = 0u64;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 64 {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        seq += 1;
        let records: Vec<WireOut> = batch.iter().map(|(r, _)| WireOut::from(r)).collect();
        let mut waited = Duration::ZERO;
        let answer = loop {
            let req = KafkaReq::Produce {
                producer: id,
                seq,
                records: records.clone(),
            };
            match rpc::answer(client.call(req, cfg.request_timeout)).await {
                Ok(KafkaResp::Produced(a)) if a.len() == batch.len() => break Ok(a),
                Ok(KafkaResp::Err(e)) => break Err(LogError::from(e)),
                Ok(other) => break Err(LogError::Refused(format!("unexpected {other:?}"))),
                Err(CallError(e)) => {
                    if waited >= cfg.delivery_timeout {
                        break Err(LogError::Unavailable(e));
                    }
                    let pause = Duration::from_millis(50);
                    sleep(pause).await;
                    waited += pause + cfg.request_timeout.min(Duration::from_millis(100));
                }
            }
        };
        match answer {
            Ok(results) => {
                for ((_, reply), r) in batch.into_iter().zip(results) {
                    let _ = reply.send(
                        r.map(|(partition, offset)| Delivered { partition, offset })
                            .map_err(LogError::from),
                    );
                }
            }
            Err(e) => {
                // Like librdkafka's idempotent producer: what is queued
                // behind a failed batch fails too, so no later record of a
                // partition overtakes it.
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
                while let Ok((_, reply)) = rx.try_recv() {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl LogProducer for RemoteProducer {
    fn send(&self, record: OutRecord) -> Ack {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((record, tx)).is_err() {
            return Box::pin(async { Err(LogError::Unavailable("producer stopped".into())) });
        }
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(LogError::Unavailable("producer stopped".into())))
        })
    }

    fn max_record_bytes(&self) -> usize {
        MAX_RECORD_BYTES
    }
}

type Answer = oneshot::Receiver<Result<KafkaResp, CallError>>;

/// A consumer-group member over one broker connection.
pub struct RemoteConsumer {
    client: Client<KafkaReq, KafkaResp>,
    request_timeout: Duration,
    /// A poll whose caller went away: its answer is picked up next time.
    inflight: Option<Answer>,
    /// Partitions we were told are ours.
    owned: Vec<i32>,
    /// Connection losses already turned into a revocation.
    losses_seen: u64,
}

impl RemoteConsumer {
    /// Joins `group` on `topic`.
    pub fn spawn(cfg: &ClientConfig, group: &str, topic: &str) -> Self {
        let hello = KafkaReq::Join {
            group: group.into(),
            topic: topic.into(),
        };
        Self {
            client: Client::spawn(cfg.addr.clone(), Some(hello), cfg.connect_timeout),
            request_timeout: cfg.request_timeout,
            inflight: None,
            owned: Vec::new(),
            losses_seen: 0,
        }
    }
}

fn call_failed(e: CallError) -> LogError {
    LogError::Unavailable(e.0)
}

impl LogConsumer for RemoteConsumer {
    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<ConsumerEvent, LogError>> {
        Box::pin(async move {
            if self.inflight.is_none() {
                // A lost connection is a lost membership: the broker has
                // given our partitions away. Say so before anything else,
                // as librdkafka's "partitions lost" callback does.
                let losses = self.client.losses();
                if losses != self.losses_seen {
                    self.losses_seen = losses;
                    if !self.owned.is_empty() {
                        return Ok(ConsumerEvent::Revoked(std::mem::take(&mut self.owned)));
                    }
                }
                let req = KafkaReq::Poll {
                    max,
                    wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                };
                self.inflight = Some(self.client.call(req, wait + self.request_timeout));
            }
            let Some(rx) = self.inflight.as_mut() else {
                return Ok(ConsumerEvent::Idle);
            };
            let answer = rx
                .await
                .unwrap_or_else(|_| Err(CallError("connection task gone".into())));
            self.inflight = None;
            match answer {
                Ok(KafkaResp::Event(ev)) => Ok(match ev {
                    WireEvent::Records(r) => {
                        ConsumerEvent::Records(r.into_iter().map(Record::from).collect())
                    }
                    WireEvent::Assigned(p) => {
                        self.owned = p.clone();
                        ConsumerEvent::Assigned(p)
                    }
                    WireEvent::Revoked(p) => {
                        self.owned.retain(|x| !p.contains(x));
                        ConsumerEvent::Revoked(p)
                    }
                    WireEvent::Idle => ConsumerEvent::Idle,
                }),
                Ok(KafkaResp::Err(e)) => Err(e.into()),
                Ok(other) => Err(LogError::Refused(format!("unexpected {other:?}"))),
                Err(e) => Err(call_failed(e)),
            }
        })
    }

    fn commit(&mut self, offsets: Vec<(i32, i64)>) -> BoxFuture<'_, Result<(), LogError>> {
        let rx = self
            .client
            .call(KafkaReq::Commit(offsets), self.request_timeout);
        Box::pin(async move {
            match rpc::answer(rx).await {
                Ok(KafkaResp::Ok) => Ok(()),
                Ok(KafkaResp::Err(e)) => Err(e.into()),
                Ok(other) => Err(LogError::Refused(format!("unexpected {other:?}"))),
                Err(e) => Err(call_failed(e)),
            }
        })
    }
}
