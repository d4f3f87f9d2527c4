//! `msgtransfer dlq list` and `msgtransfer dlq replay`: what the service
//! refused, and putting it back once the cause is fixed.
//!
//! A dead letter is the refused record whole — key, value, headers — plus
//! `x-dlq-*` headers saying why, where it was read and when (see
//! [`dlq_header`]). Replaying one produces the original key, value and
//! headers again into the topic it was read from (`toRedis`, or `toMongo`
//! for a refused persistence record), so the service processes it as if it
//! had just arrived. A message that was in fact processed before keeps its
//! seq: the service's dedup gives a redelivered `clientMsgID` its first seq
//! back, so replaying twice stores it once.

use std::sync::Arc;

use bytes::Bytes;

use crate::domain::context::Header;
use crate::pipeline::consumer::dlq_header;
use crate::ports::{LogProducer, OutRecord, Record};

/// The prefix of the headers the dead-letter step adds.
const DLQ_PREFIX: &str = "x-dlq-";

/// One record of the dead-letter topic, taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where it is in the dead-letter topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The refused record's key.
    pub key: Bytes,
    /// The refused record's value.
    pub value: Bytes,
    /// The refused record's own headers (the `x-dlq-*` ones removed).
    pub headers: Vec<Header>,
    /// Why it was refused (empty if the header is missing).
    pub reason: String,
    /// The topic it was read from (empty if unknown).
    pub source_topic: String,
    /// The partition it was read from.
    pub source_partition: Option<i32>,
    /// The offset it was read from.
    pub source_offset: Option<i64>,
    /// When it was refused, ms since the epoch.
    pub time_ms: Option<i64>,
}

impl DeadLetter {
    /// Takes a record of the dead-letter topic apart.
    pub fn from_record(r: &Record) -> Self {
        let text = |name: &str| {
            r.headers
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        DeadLetter {
            partition: r.partition,
            offset: r.offset,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .filter(|(k, _)| !k.starts_with(DLQ_PREFIX))
                .cloned()
                .collect(),
            reason: text(dlq_header::REASON).unwrap_or_default(),
            source_topic: text(dlq_header::SOURCE_TOPIC).unwrap_or_default(),
            source_partition: text(dlq_header::SOURCE_PARTITION).and_then(|s| s.parse().ok()),
            source_offset: text(dlq_header::SOURCE_OFFSET).and_then(|s| s.parse().ok()),
            time_ms: text(dlq_header::TIME_MS).and_then(|s| s.parse().ok()),
        }
    }

    /// The record that puts it back into `topic`.
    pub fn replay_into(&self, topic: &Arc<str>) -> OutRecord {
        OutRecord {
            topic: topic.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            headers: self.headers.clone().into(),
        }
    }

    /// One line for `dlq list`.
    pub fn line(&self) -> String {
        let opt = |v: Option<i64>| v.map_or("?".to_string(), |v| v.to_string());
        format!(
            "{}:{}  from {}[{}]@{}  at {} ms  {} bytes  key {:?}  reason: {}",
            self.partition,
            self.offset,
            if self.source_topic.is_empty() {
                "?"
            } else {
                &self.source_topic
            },
            opt(self.source_partition.map(i64::from)),
            opt(self.source_offset),
            opt(self.time_ms),
            self.value.len(),
            String::from_utf8_lossy(&self.key),
            self.reason
        )
    }

    /// One JSON object for `dlq list --json`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "partition": self.partition,
            "offset": self.offset,
            "key": String::from_utf8_lossy(&self.key),
            "value_bytes": self.value.len(),
            "headers": self.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            "reason": self.reason,
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "time_ms": self.time_ms,
        })
    }
}

/// Which dead letters a command acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// These positions in the dead-letter topic (`partition:offset`); empty
    /// means every record.
    pub at: Vec<(i32, i64)>,
    /// Only those whose reason contains this text.
    pub reason_contains: Option<String>,
}

impl Selection {
    /// Whether `d` is selected.
    pub fn matches(&self, d: &DeadLetter) -> bool {
        (self.at.is_empty() || self.at.contains(&(d.partition, d.offset)))
            && self
                .reason_contains
                .as_ref()
                .is_none_or(|s| d.reason.contains(s.as_str()))
    }
}

/// Parses `partition:offset`.
pub fn parse_position(s: &str) -> Result<(i32, i64), String> {
    let (p, o) = s
        .split_once(':')
        .ok_or_else(|| format!("expected PARTITION:OFFSET, got {s:?}"))?;
    let p = p
        .trim()
        .parse()
        .map_err(|_| format!("bad partition in {s:?}"))?;
    let o = o
        .trim()
        .parse()
        .map_err(|_| format!("bad offset in {s:?}"))?;
    Ok((p, o))
}

/// The dead letters of `records` that `sel` selects, in topic order.
pub fn select(records: &[Record], sel: &Selection) -> Vec<DeadLetter> {
    records
        .iter()
        .map(DeadLetter::from_record)
        .filter(|d| sel.matches(d))
        .collect()
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A dead letter came from a topic the service does not read.
    #[error(
        "dead letter {0}:{1} came from topic {2:?}, which is neither toRedis nor toMongo; not replayed"
    )]
    UnknownSource(i32, i64, String),
    /// A produce failed; the ones before it were put back.
    #[error("replaying dead letter {0}:{1}: {2} ({3} put back before it)")]
    Produce(i32, i64, String, usize),
}

/// Puts `letters` back, each into the topic it came from, which must be one
/// of `inputs`; every produce is acknowledged before the next is sent, so
/// on failure exactly the ones reported were put back.
pub async fn replay(
    producer: &dyn LogProducer,
    letters: &[DeadLetter],
    inputs: &[Arc<str>],
) -> Result<usize, ReplayError> {
    // Check everything first: a selection with one bad record puts back
    // nothing rather than half.
    let mut targets = Vec::with_capacity(letters.len());
    for d in letters {
        let topic = inputs
            .iter()
            .find(|t| t.as_ref() == d.source_topic)
            .ok_or_else(|| {
                ReplayError::UnknownSource(d.partition, d.offset, d.source_topic.clone())
            })?;
        targets.push(topic.clone());
    }
    for (n, (d, topic)) in letters.iter().zip(targets).enumerate() {
        producer
            .send(d.replay_into(&topic))
            .await
            .map_err(|e| ReplayError::Produce(d.partition, d.offset, e.to_string(), n))?;
    }
    Ok(letters.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::consumer::dead_letter;

    fn refused() -> Record {
        let original = Record {
            topic: Arc::from("toRedis"),
            partition: 3,
            offset: 41,
            key: Bytes::from_static(b"si_a_b"),
            value: Bytes::from_static(b"\x0a\x05trunc"),
            headers: vec![("operationID".to_string(), b"op".to_vec())].into(),
            timestamp_ms: 5,
        };
        let out = dead_letter(
            &original,
            "value is not an sdkws.MsgData",
            &Arc::from("dlq"),
            1234,
        );
        Record {
            topic: out.topic,
            partition: 0,
            offset: 7,
            key: out.key,
            value: out.value,
            headers: out.headers,
            timestamp_ms: 1234,
        }
    }

    #[test]
    fn a_dead_letter_reads_back_what_was_refused_and_why() {
        let d = DeadLetter::from_record(&refused());
        assert_eq!((d.partition, d.offset), (0, 7));
        assert_eq!(&d.key[..], b"si_a_b");
        assert_eq!(&d.value[..], b"\x0a\x05trunc");
        assert_eq!(d.headers, vec![("operationID".to_string(), b"op".to_vec())]);
        assert_eq!(d.reason, "value is not an sdkws.MsgData");
        assert_eq!(d.source_topic, "toRedis");
        assert_eq!(
            (d.source_partition, d.source_offset, d.time_ms),
            (Some(3), Some(41), Some(1234))
        );
        let line = d.line();
        assert!(
            line.starts_with("0:7  from toRedis[3]@41  at 1234 ms  7 bytes"),
            "{line}"
        );
        assert!(
            line.ends_with("reason: value is not an sdkws.MsgData"),
            "{line}"
        );
        let back = d.replay_into(&Arc::from("toRedis"));
        assert_eq!((&back.key, &back.value), (&d.key, &d.value));
        assert_eq!(back.headers.to_vec(), d.headers);
    }

    #[test]
    fn selections_pick_by_position_and_reason() {
        let d = DeadLetter::from_record(&refused());
        assert!(Selection::default().matches(&d));
        let at = |p, o| Selection {
            at: vec![(p, o)],
            ..Default::default()
        };
        assert!(at(0, 7).matches(&d));
        assert!(!at(0, 8).matches(&d));
        let reason = |s: &str| Selection {
            reason_contains: Some(s.into()),
            ..Default::default()
        };
        assert!(reason("sdkws").matches(&d));
        assert!(!reason("over limit").matches(&d));
        assert_eq!(parse_position("2:15"), Ok((2, 15)));
        assert!(parse_position("2").is_err());
        assert!(parse_position("x:1").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn replay_refuses_a_selection_with_an_unknown_source_whole() {
        let clock = Arc::new(crate::ports::clock::ManualClock::new(0));
        let log = crate::embedded::log::EmbeddedLog::new(1, 1_000_000, clock);
        let good = DeadLetter::from_record(&refused());
        let alien = DeadLetter {
            source_topic: "elsewhere".into(),
            ..good.clone()
        };
        let inputs = [Arc::from("toRedis")];
        let err = replay(&log.producer(), &[good.clone(), alien], &inputs)
            .await
            .unwrap_err();
        assert!(matches!(err, ReplayError::UnknownSource(0, 7, _)), "{err}");
        assert_eq!(log.len("toRedis"), 0, "nothing put back");
        assert_eq!(replay(&log.producer(), &[good], &inputs).await.unwrap(), 1);
        let back = log.records("toRedis");
        assert_eq!(back.len(), 1);
        assert_eq!(&back[0].value[..], b"\x0a\x05trunc");
        assert_eq!(back[0].headers.len(), 1, "x-dlq-* headers are not put back");
    }
}
