//! An in-process partitioned log with consumer groups: the embedded Kafka.
//!
//! Topics are created on first use with a fixed partition count. Producers
//! pick the partition the way OpenIM's sarama producer does (FNV-1a of the
//! key), so per-key order holds exactly as in production. Each consumer group
//! keeps committed offsets per partition and a generation. Whenever a member
//! joins or leaves (a dropped consumer leaves, as after a crash once its
//! session expires), the generation moves on and the partitions are split
//! again over the members by range; every member's next poll reports the
//! revocation of what it had, the one after reports its new assignment, and
//! delivery resumes at the committed offsets — so anything not committed is
//! delivered again, just as in Kafka. Commits from an old generation, or for
//! partitions a member does not own, are refused.
//!
//! Everything is deterministic given the order of calls. Acknowledgements
//! are immediate unless a [`FaultPlan`](super::FaultPlan) says otherwise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::FaultPlan;
use crate::domain::context::Header;
use crate::ports::log::{Ack, Delivered};
use crate::ports::{
    BoxFuture, ConsumerEvent, LogConsumer, LogError, LogProducer, OutRecord, Record, SharedClock,
};

/// Partition of `key` among `partitions`, as sarama's hash partitioner
/// computes it: FNV-1a 32-bit, read as a signed number, remainder made
/// non-negative.
pub fn sarama_partition(key: &[u8], partitions: i32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let p = (h as i32) % partitions;
    if p < 0 { -p } else { p }
}

/// Membership of one group on one topic.
#[derive(Default)]
struct Membership {
    /// Bumped on every join and leave.
    generation: u64,
    /// Member → partitions it owns in this generation.
    assignment: BTreeMap<u64, Vec<i32>>,
}

impl Membership {
    /// Splits `partitions` over the members by range, in member order.
    fn rebalance(&mut self, partitions: i32) {
        self.generation += 1;
        let members: Vec<u64> = self.assignment.keys().copied().collect();
        let n = members.len().max(1) as i32;
        for (i, m) in members.iter().enumerate() {
            let i = i as i32;
            let (per, extra) = (partitions / n, partitions % n);
            let start = i * per + i.min(extra);
            let len = per + i32::from(i < extra);
            self.assignment.insert(*m, (start..start + len).collect());
        }
    }
}

#[derive(Default)]
struct Group {
    committed: BTreeMap<(Arc<str>, i32), i64>,
    members: BTreeMap<Arc<str>, Membership>,
}

/// Records per segment of a partition.
const SEGMENT: usize = 4096;

/// A record as its partition keeps it. Topic, partition and offset are
/// where it sits, so they are not stored per record (a million records
/// would carry 32 MB of them); [`Kept::record`] puts them back.
#[derive(Debug)]
struct Kept {
    key: Bytes,
    value: Bytes,
    headers: Arc<[Header]>,
    timestamp_ms: i64,
}

impl Kept {
    fn record(&self, topic: &Arc<str>, partition: i32, offset: usize) -> Record {
        Record {
            topic: topic.clone(),
            partition,
            offset: offset as i64,
            key: self.key.clone(),
            value: self.value.clone(),
            headers: self.headers.clone(),
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// One partition's records, in fixed-size segments: appending never moves
/// what is already there (one growing `Vec` would copy the whole partition
/// at every doubling and briefly hold it twice).
#[derive(Default)]
struct Partition {
    segments: Vec<Vec<Kept>>,
    len: usize,
}

impl Partition {
    fn len(&self) -> usize {
        self.len
    }

    /// Appends `rec` and returns its offset.
    fn push(&mut self, rec: Kept) -> usize {
        match self.segments.last_mut() {
            Some(seg) if seg.len() < SEGMENT => seg.push(rec),
            _ => {
                let mut seg = Vec::with_capacity(SEGMENT);
                seg.push(rec);
                self.segments.push(seg);
            }
        }
        self.len += 1;
        self.len - 1
    }

    /// The records at offsets `from..to` (clamped to what exists), each
    /// with its offset.
    fn range(&self, from: usize, to: usize) -> impl Iterator<Item = (usize, &Kept)> {
        let to = to.min(self.len);
        let from = from.min(to);
        self.segments[from / SEGMENT..to.div_ceil(SEGMENT)]
            .iter()
            .flatten()
            .skip(from % SEGMENT)
            .take(to - from)
            .enumerate()
            .map(move |(i, r)| (from + i, r))
    }

    fn iter(&self) -> impl Iterator<Item = (usize, &Kept)> {
        self.range(0, self.len)
    }
}

struct State {
    partitions: i32,
    topics: BTreeMap<Arc<str>, Vec<Partition>>,
    groups: BTreeMap<String, Group>,
    next_member: u64,
    round_robin: u64,
}

impl State {
    fn topic(&mut self, name: &str) -> &mut Vec<Partition> {
        if !self.topics.contains_key(name) {
            let parts = (0..self.partitions).map(|_| Partition::default()).collect();
            self.topics.insert(Arc::from(name), parts);
        }
        // Inserted just above when missing.
        self.topics.get_mut(name).expect("topic exists")
    }
}

/// The embedded log. Cloning gives another handle to the same log.
#[derive(Clone)]
pub struct EmbeddedLog {
    state: Arc<Mutex<State>>,
    arrivals: Arc<Notify>,
    clock: SharedClock,
    faults: Option<Arc<FaultPlan>>,
    /// Fixed at creation; kept outside the lock because the transfer stage
    /// asks for it once per record.
    max_record_bytes: usize,
}

impl EmbeddedLog {
    /// A log whose topics have `partitions` partitions and which refuses
    /// records above `max_record_bytes` (sarama's default is 1,000,000).
    pub fn new(partitions: i32, max_record_bytes: usize, clock: SharedClock) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                partitions: partitions.max(1),
                topics: BTreeMap::new(),
                groups: BTreeMap::new(),
                next_member: 1,
                round_robin: 0,
            })),
            arrivals: Arc::new(Notify::new()),
            clock,
            faults: None,
            max_record_bytes,
        }
    }

    /// The same log, with produce faults injected by `plan`.
    pub fn with_faults(mut self, plan: Arc<FaultPlan>) -> Self {
        self.faults = Some(plan);
        self
    }

    /// Appends a record and returns where it went.
    pub fn append(&self, rec: OutRecord) -> Result<Delivered, LogError> {
        let now = self.clock.now_ms();
        let size = rec.size();
        if size > self.max_record_bytes {
            return Err(LogError::TooLarge {
                size,
                limit: self.max_record_bytes,
            });
        }
        let mut st = self.state.lock();
        let n = st.partitions;
        let partition = if rec.key.is_empty() {
            st.round_robin += 1;
            (st.round_robin % n as u64) as i32
        } else {
            sarama_partition(&rec.key, n)
        };
        let topic_name: Arc<str> = rec.topic.clone();
        let parts = st.topic(&topic_name);
        let log = &mut parts[partition as usize];
        let offset = log.push(Kept {
            key: rec.key,
            value: rec.value,
            headers: rec.headers,
            timestamp_ms: now,
        }) as i64;
        drop(st);
        self.arrivals.notify_waiters();
        Ok(Delivered { partition, offset })
    }

    /// A new member of `group` reading `topic`. Joining rebalances the
    /// group; dropping the consumer leaves it.
    pub fn consumer(&self, group: &str, topic: &str) -> EmbeddedConsumer {
        let mut st = self.state.lock();
        let id = st.next_member;
        st.next_member += 1;
        let partitions = st.partitions;
        let topic: Arc<str> = Arc::from(topic);
        let m = st
            .groups
            .entry(group.to_string())
            .or_default()
            .members
            .entry(topic.clone())
            .or_default();
        m.assignment.insert(id, Vec::new());
        m.rebalance(partitions);
        EmbeddedConsumer {
            log: self.clone(),
            group: group.to_string(),
            topic,
            member: id,
            generation: 0,
            owned: Vec::new(),
            revoking: Vec::new(),
            positions: BTreeMap::new(),
        }
    }

    /// A producer handle.
    pub fn producer(&self) -> EmbeddedProducer {
        EmbeddedProducer { log: self.clone() }
    }

    /// Every record of `topic`, partition by partition, in offset order.
    pub fn records(&self, topic: &str) -> Vec<Record> {
        let st = self.state.lock();
        st.topics
            .get_key_value(topic)
            .map(|(name, parts)| {
                let mut out = Vec::with_capacity(parts.iter().map(Partition::len).sum());
                for (p, part) in parts.iter().enumerate() {
                    out.extend(part.iter().map(|(at, k)| k.record(name, p as i32, at)));
                }
                out
            })
            .unwrap_or_default()
    }

    /// The number of records in `topic`.
    pub fn len(&self, topic: &str) -> usize {
        let st = self.state.lock();
        st.topics
            .get(topic)
            .map(|parts| parts.iter().map(Partition::len).sum())
            .unwrap_or(0)
    }

    /// Whether `topic` has no records.
    pub fn is_empty(&self, topic: &str) -> bool {
        self.len(topic) == 0
    }

    /// How many records of `topic` lie beyond `group`'s committed offsets.
    pub fn lag(&self, group: &str, topic: &str) -> u64 {
        let st = self.state.lock();
        let Some(parts) = st.topics.get(topic) else {
            return 0;
        };
        let g = st.groups.get(group);
        parts
            .iter()
            .enumerate()
            .map(|(p, recs)| {
                let committed = g
                    .and_then(|g| g.committed.get(&(Arc::from(topic), p as i32)).copied())
                    .unwrap_or(0);
                (recs.len() as i64 - committed).max(0) as u64
            })
            .sum()
    }
}

/// A producer writing into an [`EmbeddedLog`].
#[derive(Clone)]
pub struct EmbeddedProducer {
    log: EmbeddedLog,
}

impl LogProducer for EmbeddedProducer {
    fn send(&self, record: OutRecord) -> Ack {
        // Only acknowledgements are lost, never requests: Kafka's idempotent
        // producer never lets a later record of a partition land while an
        // earlier one is missing (no gaps), and per-conversation order relies
        // on that. (Losing requests here makes the checker report push-order
        // violations, which is how this rule was confirmed.)
        let fault = self.log.faults.as_ref().and_then(|f| f.produce());
        let result = match fault {
            Some(_) => self
                .log
                .append(record)
                .and(Err(LogError::Unavailable("injected: ack lost".into()))),
            None => self.log.append(record),
        };
        Box::pin(std::future::ready(result))
    }

    fn max_record_bytes(&self) -> usize {
        self.log.max_record_bytes
    }
}

/// One member of a consumer group on one topic.
pub struct EmbeddedConsumer {
    log: EmbeddedLog,
    group: String,
    topic: Arc<str>,
    member: u64,
    /// The generation our assignment belongs to (0: none yet).
    generation: u64,
    /// Partitions we own in `generation`.
    owned: Vec<i32>,
    /// Partitions just revoked: like Kafka's revocation callback, we may
    /// still commit them until our next poll.
    revoking: Vec<i32>,
    /// Next offset to hand out per owned partition.
    positions: BTreeMap<i32, i64>,
}

impl EmbeddedConsumer {
    /// The clock of the log this consumer reads.
    pub fn log_clock(&self) -> &SharedClock {
        &self.log.clock
    }

    /// Takes whatever is available right now, or an assignment/revocation.
    fn take(&mut self, max: usize) -> Option<ConsumerEvent> {
        let mut st = self.log.state.lock();
        st.topic(&self.topic);
        let group = st.groups.entry(self.group.clone()).or_default();
        let m = group.members.entry(self.topic.clone()).or_default();
        self.revoking.clear();
        if m.generation != self.generation {
            if !self.owned.is_empty() {
                // First give up what we had; the new assignment comes next.
                let revoked = std::mem::take(&mut self.owned);
                self.revoking = revoked.clone();
                self.positions.clear();
                return Some(ConsumerEvent::Revoked(revoked));
            }
            self.generation = m.generation;
            self.owned = m.assignment.get(&self.member).cloned().unwrap_or_default();
            self.positions = self
                .owned
                .iter()
                .map(|p| {
                    let at = group
                        .committed
                        .get(&(self.topic.clone(), *p))
                        .copied()
                        .unwrap_or(0);
                    (*p, at)
                })
                .collect();
            return Some(ConsumerEvent::Assigned(self.owned.clone()));
        }
        let parts = st.topics.get(&self.topic)?;
        // Share `max` across partitions so none starves.
        let per_partition = (max / self.positions.len().max(1)).max(1);
        // What each partition hands out, counted first: the batch is
        // allocated at its exact size. Most polls find little or nothing
        // new, and a buffer sized for `max` records (over 100 KB) on every
        // poll was the largest allocation traffic of the whole service.
        let mut ranges = Vec::with_capacity(self.positions.len());
        let mut total = 0;
        for (p, pos) in self.positions.iter_mut() {
            if total >= max {
                break;
            }
            let from = *pos as usize;
            let to = parts[*p as usize].len().min(from + per_partition);
            if from < to {
                ranges.push((*p, from, to));
                total += to - from;
                *pos = to as i64;
            }
        }
        if total == 0 {
            return None;
        }
        let mut out = Vec::with_capacity(total);
        for (p, from, to) in ranges {
            out.extend(
                parts[p as usize]
                    .range(from, to)
                    .map(|(at, k)| k.record(&self.topic, p, at)),
            );
        }
        Some(ConsumerEvent::Records(out))
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        let mut st = self.log.state.lock();
        let partitions = st.partitions;
        if let Some(m) = st
            .groups
            .get_mut(&self.group)
            .and_then(|g| g.members.get_mut(&self.topic))
            && m.assignment.remove(&self.member).is_some()
        {
            m.rebalance(partitions);
        }
    }
}

impl LogConsumer for EmbeddedConsumer {
    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<ConsumerEvent, LogError>> {
        Box::pin(async move {
            let arrivals = self.log.arrivals.clone();
            let notified = arrivals.notified();
            tokio::pin!(notified);
            // Register interest before looking, so an append between the look
            // and the wait still wakes us.
            notified.as_mut().enable();
            if let Some(ev) = self.take(max) {
                return Ok(ev);
            }
            let sleep = self.log.clock.sleep(wait);
            tokio::select! {
                _ = notified => {}
                _ = sleep => {}
            }
            Ok(self.take(max).unwrap_or(ConsumerEvent::Idle))
        })
    }

    fn commit(&mut self, offsets: Vec<(i32, i64)>) -> BoxFuture<'_, Result<(), LogError>> {
        let result = (|| {
            let mut st = self.log.state.lock();
            let group = st.groups.entry(self.group.clone()).or_default();
            let current = group
                .members
                .get(&self.topic)
                .map(|m| m.generation)
                .unwrap_or(0);
            let ours = |p: &i32| {
                (current == self.generation && self.owned.contains(p)) || self.revoking.contains(p)
            };
            if let Some((p, _)) = offsets.iter().find(|(p, _)| !ours(p)) {
                return Err(LogError::Refused(format!(
                    "partition {p} is not ours in generation {current}"
                )));
            }
            for (p, off) in offsets {
                let e = group.committed.entry((self.topic.clone(), p)).or_insert(0);
                *e = (*e).max(off);
            }
            Ok(())
        })();
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::clock::ManualClock;
    use bytes::Bytes;

    #[test]
    fn partition_ranges_cross_segment_boundaries() {
        let mut part = Partition::default();
        let n = 2 * SEGMENT + 7;
        for i in 0..n {
            let at = part.push(Kept {
                key: Bytes::new(),
                value: Bytes::from(i.to_string()),
                headers: Arc::from(Vec::new()),
                timestamp_ms: i as i64,
            });
            assert_eq!(at, i);
        }
        assert_eq!(part.len(), n);
        // Each record is found at the offset it was given, with its own data.
        let offsets = |from, to| {
            part.range(from, to)
                .map(|(at, r)| {
                    assert_eq!(r.value, at.to_string().as_bytes());
                    assert_eq!(r.timestamp_ms, at as i64);
                    at as i64
                })
                .collect::<Vec<_>>()
        };
        let s = SEGMENT as i64;
        assert_eq!(
            offsets(SEGMENT - 2, SEGMENT + 2),
            vec![s - 2, s - 1, s, s + 1]
        );
        assert_eq!(
            offsets(n - 3, n + 10),
            vec![n as i64 - 3, n as i64 - 2, n as i64 - 1]
        );
        assert_eq!(offsets(5, 5), Vec::<i64>::new());
        assert_eq!(offsets(n + 1, n + 5), Vec::<i64>::new());
        assert_eq!(part.iter().count(), n);
        assert!(part.iter().enumerate().all(|(i, (at, _))| at == i));
    }

    fn rec(key: &str, value: &str) -> OutRecord {
        OutRecord {
            topic: Arc::from("t"),
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            headers: Arc::from(Vec::new()),
        }
    }

    fn log() -> EmbeddedLog {
        EmbeddedLog::new(4, 1000, Arc::new(ManualClock::new(0)))
    }

    #[test]
    fn sarama_partition_matches_fnv1a() {
        // FNV-1a("") is the offset basis 0x811c9dc5, negative as i32.
        assert_eq!(
            sarama_partition(b"", 8),
            ((0x811c_9dc5u32 as i32) % 8).abs()
        );
        let p = sarama_partition(b"u100_u200", 8);
        assert!((0..8).contains(&p));
        assert_eq!(p, sarama_partition(b"u100_u200", 8));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn uncommitted_records_are_redelivered_to_the_next_member() {
        let log = log();
        for i in 0..10 {
            log.append(rec("k", &i.to_string())).unwrap();
        }
        let mut c1 = log.consumer("g", "t");
        assert!(matches!(
            c1.poll(100, Duration::ZERO).await.unwrap(),
            ConsumerEvent::Assigned(_)
        ));
        let ConsumerEvent::Records(r) = c1.poll(100, Duration::ZERO).await.unwrap() else {
            panic!("expected records")
        };
        assert_eq!(r.len(), 10);
        let p = r[0].partition;
        c1.commit(vec![(p, 4)]).await.unwrap();
        drop(c1);
        let mut c2 = log.consumer("g", "t");
        c2.poll(100, Duration::ZERO).await.unwrap();
        let ConsumerEvent::Records(r) = c2.poll(100, Duration::ZERO).await.unwrap() else {
            panic!("expected records")
        };
        let values: Vec<&[u8]> = r.iter().map(|x| &x.value[..]).collect();
        assert_eq!(values.first().copied(), Some(&b"4"[..]));
        assert_eq!(r.len(), 6);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn members_split_partitions_and_rebalance_on_join_and_leave() {
        let log = log();
        let mut c1 = log.consumer("g", "t");
        assert_eq!(
            c1.poll(10, Duration::ZERO).await.unwrap(),
            ConsumerEvent::Assigned(vec![0, 1, 2, 3])
        );
        let mut c2 = log.consumer("g", "t");
        // c1 learns of the new generation: first a revocation...
        assert_eq!(
            c1.poll(10, Duration::ZERO).await.unwrap(),
            ConsumerEvent::Revoked(vec![0, 1, 2, 3])
        );
        assert!(
            c1.commit(vec![(3, 1)]).await.is_ok(),
            "a revoked partition may be committed until the next poll"
        );
        // ...then its share.
        assert_eq!(
            c1.poll(10, Duration::ZERO).await.unwrap(),
            ConsumerEvent::Assigned(vec![0, 1])
        );
        assert_eq!(
            c2.poll(10, Duration::ZERO).await.unwrap(),
            ConsumerEvent::Assigned(vec![2, 3])
        );
        assert!(
            c1.commit(vec![(2, 1)]).await.is_err(),
            "not c1's partition any more"
        );
        assert!(c2.commit(vec![(2, 1)]).await.is_ok());
        drop(c2);
        assert_eq!(
            c1.poll(10, Duration::ZERO).await.unwrap(),
            ConsumerEvent::Revoked(vec![0, 1])
        );
        assert_eq!(
            c1.poll(10, Duration::ZERO).await.unwrap(),
            ConsumerEvent::Assigned(vec![0, 1, 2, 3])
        );
    }

    #[test]
    fn oversized_records_are_refused() {
        let log = log();
        let big = "x".repeat(2000);
        assert!(matches!(
            log.append(rec("k", &big)),
            Err(LogError::TooLarge { .. })
        ));
    }
}
