//! The log adapter (`backends::kafka`) on a real Kafka broker: sarama's
//! partitioning, headers kept in order, assignment events before records,
//! and redelivery from the committed offset after a restart or a
//! rebalance.
//!
//! Needs `KAFKA_BROKERS` (see `tests/support`); each test uses topics and
//! groups of its own.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use msgtransfer::backends::kafka::{KafkaConsumer, KafkaProducer, KafkaSettings};
use msgtransfer::embedded::log::sarama_partition;
use msgtransfer::ports::{ConsumerEvent, LogConsumer, LogProducer, OutRecord, Record};

fn settings() -> KafkaSettings {
    KafkaSettings {
        brokers: vec![support::kafka_brokers()],
        session_timeout: Duration::from_secs(6),
        ..KafkaSettings::default()
    }
}

async fn produce(topic: &str, n: usize) -> Vec<(i32, i64)> {
    let producer = KafkaProducer::new(&settings()).unwrap();
    let topic: Arc<str> = topic.into();
    let acks: Vec<_> = (0..n)
        .map(|i| {
            producer.send(OutRecord {
                topic: topic.clone(),
                key: Bytes::from(format!("key{}", i % 10)),
                value: Bytes::from(format!("value{i}")),
                headers: vec![
                    ("operationID".to_string(), format!("op{i}").into_bytes()),
                    ("opUserID".to_string(), b"u".to_vec()),
                    ("platform".to_string(), b"2".to_vec()),
                    ("connID".to_string(), Vec::new()),
                ]
                .into(),
            })
        })
        .collect();
    let mut out = Vec::new();
    for ack in acks {
        let d = ack.await.unwrap();
        out.push((d.partition, d.offset));
    }
    out
}

/// Polls until `want` records arrived (or a minute passed), committing
/// nothing; returns the records and the events seen.
async fn consume(c: &mut KafkaConsumer, want: usize) -> (Vec<Record>, Vec<ConsumerEvent>) {
    let mut records = Vec::new();
    let mut events = Vec::new();
    for _ in 0..600 {
        if records.len() >= want {
            break;
        }
        match c.poll(500, Duration::from_millis(100)).await.unwrap() {
            ConsumerEvent::Records(rs) => records.extend(rs),
            ConsumerEvent::Idle => {}
            ev => events.push(ev),
        }
    }
    (records, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_keep_key_partition_headers_and_order() {
    let topic = support::unique("t");
    support::kafka_topic(&topic, 8).await;
    let delivered = produce(&topic, 200).await;
    for (i, (p, _)) in delivered.iter().enumerate() {
        let key = format!("key{}", i % 10);
        assert_eq!(
            *p,
            sarama_partition(key.as_bytes(), 8),
            "partition of {key}"
        );
    }
    let mut c = KafkaConsumer::new(&settings(), &support::unique("g"), &topic).unwrap();
    let (records, events) = consume(&mut c, 200).await;
    assert_eq!(records.len(), 200);
    assert!(
        matches!(events.first(), Some(ConsumerEvent::Assigned(p)) if p.len() == 8),
        "{events:?}"
    );
    // Per partition, offsets increase and values come in produce order.
    let mut last: BTreeMap<i32, (i64, usize)> = BTreeMap::new();
    for r in &records {
        let i: usize = std::str::from_utf8(&r.value).unwrap()[5..].parse().unwrap();
        assert_eq!(r.key, Bytes::from(format!("key{}", i % 10)));
        assert_eq!(r.partition, delivered[i].0);
        assert_eq!(r.offset, delivered[i].1);
        assert_eq!(r.headers.len(), 4);
        assert_eq!(
            r.headers[0],
            ("operationID".to_string(), format!("op{i}").into_bytes())
        );
        assert_eq!(r.headers[3].0, "connID");
        if let Some((o, j)) = last.get(&r.partition) {
            assert!(
                r.offset > *o && i > *j,
                "partition {} out of order",
                r.partition
            );
        }
        last.insert(r.partition, (r.offset, i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_resumes_at_the_committed_offset() {
    let topic = support::unique("t");
    let group = support::unique("g");
    support::kafka_topic(&topic, 2).await;
    produce(&topic, 60).await;
    let mut first = KafkaConsumer::new(&settings(), &group, &topic).unwrap();
    let (records, _) = consume(&mut first, 60).await;
    assert_eq!(records.len(), 60);
    // Commit the first 10 of each partition only, then leave.
    let mut per_part: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &records {
        per_part.entry(r.partition).or_default().push(r.offset);
    }
    let commits: Vec<(i32, i64)> = per_part.iter().map(|(p, o)| (*p, o[9] + 1)).collect();
    first.commit(commits.clone()).await.unwrap();
    drop(first);

    let mut second = KafkaConsumer::new(&settings(), &group, &topic).unwrap();
    let (again, _) = consume(&mut second, 40).await;
    assert_eq!(again.len(), 40, "exactly the uncommitted records come back");
    for r in &again {
        let from = commits.iter().find(|(p, _)| *p == r.partition).unwrap().1;
        assert!(
            r.offset >= from,
            "offset {} below the commit {from}",
            r.offset
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_member_takes_partitions_once_the_first_releases_them() {
    let topic = support::unique("t");
    let group = support::unique("g");
    support::kafka_topic(&topic, 4).await;
    produce(&topic, 40).await;
    let mut a = KafkaConsumer::new(&settings(), &group, &topic).unwrap();
    let (got, events) = consume(&mut a, 40).await;
    assert_eq!(got.len(), 40);
    assert!(matches!(events.first(), Some(ConsumerEvent::Assigned(p)) if p.len() == 4));
    let all: Vec<(i32, i64)> = {
        let mut m: BTreeMap<i32, i64> = BTreeMap::new();
        for r in &got {
            let e = m.entry(r.partition).or_default();
            *e = (*e).max(r.offset + 1);
        }
        m.into_iter().collect()
    };
    a.commit(all).await.unwrap();

    let mut b = KafkaConsumer::new(&settings(), &group, &topic).unwrap();
    // Both members must keep polling for the group to settle.
    let mut a_events = Vec::new();
    let mut b_parts: Vec<i32> = Vec::new();
    let mut released = false;
    for _ in 0..300 {
        let ev = a.poll(100, Duration::from_millis(50)).await.unwrap();
        if let ConsumerEvent::Revoked(parts) = &ev {
            // Until a hands its partitions back, the group waits: b gets
            // nothing, however long a takes to finish its running work.
            for _ in 0..20 {
                let ev = b.poll(100, Duration::from_millis(50)).await.unwrap();
                assert!(
                    !matches!(ev, ConsumerEvent::Assigned(_)),
                    "b was assigned before a released its partitions"
                );
                assert!(matches!(
                    a.poll(100, Duration::from_millis(10)).await.unwrap(),
                    ConsumerEvent::Idle
                ));
            }
            a.release(parts.clone()).await.unwrap();
            released = true;
        }
        if let ConsumerEvent::Revoked(_) | ConsumerEvent::Assigned(_) = ev {
            a_events.push(ev);
        }
        if let ConsumerEvent::Assigned(p) = b.poll(100, Duration::from_millis(50)).await.unwrap() {
            b_parts = p;
        }
        if !b_parts.is_empty()
            && a_events
                .iter()
                .any(|e| matches!(e, ConsumerEvent::Assigned(_)))
        {
            break;
        }
    }
    assert!(released);
    assert_eq!(b_parts.len(), 2, "range assignment gives the newcomer half");
    assert!(
        a_events
            .iter()
            .any(|e| matches!(e, ConsumerEvent::Revoked(p) if p.len() == 4)),
        "{a_events:?}"
    );
    let a_now: Vec<i32> = a_events
        .iter()
        .rev()
        .find_map(|e| match e {
            ConsumerEvent::Assigned(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(a_now.len(), 2);
    assert!(a_now.iter().all(|p| !b_parts.contains(p)));
}

/// kafka.yml's `tls` section on a real TLS listener that requires a client
/// certificate: records go out and come back over TLS, with the CA, the
/// client certificate and the password-protected client key as configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_with_client_certificate_carries_records() {
    let topic = support::unique("tls");
    support::kafka_topic(&topic, 2).await;
    let (brokers, files) = support::kafka_tls();
    let tls = KafkaSettings {
        brokers: vec![brokers],
        session_timeout: Duration::from_secs(6),
        tls: Some(files),
        ..KafkaSettings::default()
    };
    let producer = KafkaProducer::new(&tls).unwrap();
    let t: Arc<str> = topic.as_str().into();
    for i in 0..20 {
        producer
            .send(OutRecord {
                topic: t.clone(),
                key: Bytes::from(format!("k{i}")),
                value: Bytes::from(format!("over tls {i}")),
                headers: Vec::new().into(),
            })
            .await
            .unwrap_or_else(|e| panic!("produce over TLS: {e}"));
    }
    let mut c = KafkaConsumer::new(&tls, &support::unique("g"), &topic).unwrap();
    let (records, _) = consume(&mut c, 20).await;
    let mut values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
        .collect();
    values.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("over tls {i}")).collect();
    want.sort();
    assert_eq!(values, want);
}
