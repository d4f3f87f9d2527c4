//! `msgtransfer audit`: reads the real Redis, MongoDB and (with a load
//! record) Kafka back and checks them with the demo's checker.
//!
//! With a record from `load`, every message it sent must be pushed once,
//! cached and persisted at one seq, in order; other traffic in the same
//! backends is counted but not judged missing. Without one, the outputs
//! alone are checked: seq conflicts, one `clientMsgID` at two seqs,
//! buckets and cache keys whose position disagrees with the seq inside,
//! read seqs above the conversation's max seq.

use std::collections::BTreeMap;

use anyhow::Context as _;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};

use crate::backends::kafka::read_topic_to_end;
use crate::backends::mongo::as_i64;
use crate::check::{self, History, Input, Report, Seen};
use crate::config::Config;
use crate::domain::bucket;
use crate::embedded::history;

use super::load::LoadRecord;

/// The audit's findings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditReport {
    /// The checker's report.
    pub check: Report,
    /// Mongo slots and cache keys whose position disagrees with the seq
    /// they hold, or that do not parse.
    pub misplaced: u64,
    /// Whether a load record was checked against.
    pub with_record: bool,
    /// Buckets, cache entries and Kafka records read.
    pub buckets: u64,
    /// Cache entries read.
    pub cache_entries: u64,
    /// `toPush` records read.
    pub push_records: u64,
    /// `toMongo` records read.
    pub mongo_records: u64,
}

impl AuditReport {
    /// Anomalies of every kind, misplaced entries included.
    pub fn anomalies(&self) -> u64 {
        self.check.anomalies() + self.misplaced
    }
}

/// Reads the `msg` and `seq_user` collections into `h`; returns buckets
/// read and misplaced slots.
async fn add_mongo(cfg: &Config, h: &mut History) -> anyhow::Result<(u64, u64)> {
    let client = mongodb::Client::with_uri_str(&cfg.mongo.uri)
        .await
        .context("mongodb.yml: uri")?;
    let db = client.database(&cfg.mongo.database);
    let mut cursor = db
        .collection::<Document>("msg")
        .find(doc! {})
        .await
        .context("reading msg")?;
    let (mut buckets, mut misplaced) = (0u64, 0u64);
    let mut highest: BTreeMap<String, i64> = BTreeMap::new();
    while let Some(b) = cursor.try_next().await.context("reading msg")? {
        buckets += 1;
        let doc_id = b.get_str("doc_id").unwrap_or_default().to_string();
        let Some((conv, index)) = bucket::parse_doc_id(&doc_id) else {
            misplaced += 1;
            continue;
        };
        let Ok(slots) = b.get_array("msgs") else {
            misplaced += 1;
            continue;
        };
        for (slot, s) in slots.iter().enumerate() {
            let Some(m) = s.as_document().and_then(|d| d.get_document("msg").ok()) else {
                continue;
            };
            let seq = as_i64(m.get("seq")).unwrap_or(0);
            if history::misplaced_slot(index, slot, seq) {
                misplaced += 1;
            }
            let e = highest.entry(conv.to_string()).or_insert(0);
            *e = (*e).max(seq);
            h.persisted.push(Seen {
                conversation_id: conv.to_string(),
                client_msg_id: m.get_str("client_msg_id").unwrap_or_default().to_string(),
                seq,
            });
        }
    }
    for (conv, seq) in highest {
        let e = h.max_seqs.entry(conv).or_insert(0);
        *e = (*e).max(seq);
    }
    let mut cursor = db
        .collection::<Document>("seq_user")
        .find(doc! {})
        .await
        .context("reading seq_user")?;
    while let Some(d) = cursor.try_next().await.context("reading seq_user")? {
        let read = as_i64(d.get("read_seq")).unwrap_or(0);
        h.read_seqs.push((
            d.get_str("user_id").unwrap_or_default().to_string(),
            d.get_str("conversation_id").unwrap_or_default().to_string(),
            read,
            "mongo",
        ));
    }
    Ok((buckets, misplaced))
}

/// The input messages of a load record's traffic, in log order.
fn inputs(record: &LoadRecord) -> Vec<Input> {
    let work = record.workload();
    let sent = work.records.iter().take(record.records_sent as usize);
    history::inputs(sent.map(|r| r.value.as_ref()))
}

/// Audits the backends of `cfg`, against `record` when given.
pub async fn run(
    cfg: &Config,
    record: Option<&LoadRecord>,
    progress: impl FnMut(&str),
) -> anyhow::Result<AuditReport> {
    run_with(cfg, record, &Options::default(), progress).await
}

/// How forgiving an audit is.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Redis lost data since the load (restart without persistence,
    /// failover): stored messages missing from `MSG_CACHE` are not lost
    /// messages. See [`History::cache_partial`].
    pub cache_partial: bool,
}

/// [`run`] with [`Options`].
pub async fn run_with(
    cfg: &Config,
    record: Option<&LoadRecord>,
    options: &Options,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<AuditReport> {
    let mut h = History {
        open: true,
        cache_partial: options.cache_partial,
        ..History::default()
    };
    let mut report = AuditReport {
        check: Report::default(),
        misplaced: 0,
        with_record: record.is_some(),
        buckets: 0,
        cache_entries: 0,
        push_records: 0,
        mongo_records: 0,
    };
    if let Some(r) = record {
        h.inputs = inputs(r);
        let kafka = crate::daemon::kafka_settings(cfg)?;
        progress("reading toPush");
        let pushes = read_topic_to_end(&kafka, &cfg.kafka.to_push_topic, |_| {})
            .await
            .map_err(|e| anyhow::anyhow!("kafka.yml: toPushTopic: {e}"))?;
        // Outputs of this load were produced after it began; older records
        // in the topics are earlier traffic (perhaps over since-reset
        // stores) and not this audit's business.
        let since = r.first_produce_ms - 1000;
        h.pushes = pushes
            .into_values()
            .map(|rs| {
                rs.iter()
                    .filter(|r| r.timestamp_ms >= since)
                    .filter_map(|r| history::pushed(&r.value))
                    .collect()
            })
            .collect();
        report.push_records = h.pushes.iter().map(|p| p.len() as u64).sum();
        progress("reading toMongo");
        let records = read_topic_to_end(&kafka, &cfg.kafka.to_mongo_topic, |_| {})
            .await
            .map_err(|e| anyhow::anyhow!("kafka.yml: toMongoTopic: {e}"))?;
        report.mongo_records = records.values().map(|v| v.len() as u64).sum();
        h.persistence_records = records
            .into_values()
            .map(|rs| {
                rs.iter()
                    .filter(|r| r.timestamp_ms >= since)
                    .flat_map(|r| history::persistence_record(&r.value))
                    .collect()
            })
            .collect();
    }
    // Mongo before Redis: read seqs only grow after their seq was
    // allocated, so a max seq read later is never below a read seq read
    // earlier, even while the service runs.
    progress("reading MongoDB");
    let (buckets, misplaced) = add_mongo(cfg, &mut h).await?;
    report.buckets = buckets;
    report.misplaced += misplaced;
    progress("reading Redis");
    let mut redis = crate::daemon::connect_redis(cfg).await?;
    let dump = redis.dump().await.context("reading Redis")?;
    report.cache_entries = dump.with_prefix("MSG_CACHE:").count() as u64;
    report.misplaced += history::add_redis(&mut h, &dump);
    progress("checking");
    report.check = check::check(&h);
    Ok(report)
}

/// The human-readable report.
pub fn summary(r: &AuditReport) -> String {
    let c = &r.check;
    let mut s = String::new();
    if r.with_record {
        s.push_str(&format!(
            "audit: {} messages sent; {} pushed; {} stored: {} persisted, {} cached\n",
            c.messages, c.pushed, c.stored, c.persisted, c.cached
        ));
    } else {
        s.push_str("audit: no load record; checking what the backends hold\n");
    }
    s.push_str(&format!(
        "read: {} buckets, {} cache entries, {} toPush and {} toMongo records; {} other messages\n",
        r.buckets, r.cache_entries, r.push_records, r.mongo_records, c.others
    ));
    s.push_str(&format!(
        "anomalies: {} (lost {}, duplicates {}, seq conflicts {}, order violations {}, \
         read seq above max {}, read seq behind {}, misplaced {})",
        r.anomalies(),
        c.lost,
        c.duplicates,
        c.seq_conflicts,
        c.order_violations,
        c.read_seq_above_max,
        c.read_seq_behind,
        r.misplaced
    ));
    for e in &c.examples {
        s.push_str(&format!("\n  {e}"));
    }
    s
}
