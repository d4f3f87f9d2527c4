//! The whole service on the embedded backends, driven by a structured input.
//!
//! The input is a short script (at most 64 records): valid OpenIM messages
//! built from arbitrary fields (single, group and notification chats,
//! history on or off, notifications with and without `isSendMsg`, typing
//! indicators, read receipts), arbitrary bytes, producer duplicates of
//! earlier records, pauses that let the service run, and crashes that kill
//! it with its uncommitted work and start a fresh instance; optionally the
//! backends fail at seeded rates. After a drain and a graceful shutdown the
//! shared checker (the one `demo`, the simulator and `audit` use) must find
//! no anomaly and nothing misplaced, every refused record must be in the
//! dead-letter topic, and the service must have drained at all.
//!
//! Two environment variables help when working on the target itself:
//! `MSGTRANSFER_FUZZ_VERBOSE=1` prints one line per input (records,
//! accepted messages, refusals, crashes, the checker's counts), and
//! `MSGTRANSFER_FUZZ_MUTANT=no_dedup|give_up_on_failure|drop_over_100` puts
//! one of OpenIM's weaknesses back (`pipeline::transfer::Weaknesses`), which
//! the target must then catch: a check of the oracle, not of the service.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use msgtransfer::check;
use msgtransfer::domain::context::MsgContext;
use msgtransfer::domain::options::key;
use msgtransfer::domain::{content, conversation, session, status};
use msgtransfer::embedded::hook::EmbeddedHook;
use msgtransfer::embedded::log::EmbeddedLog;
use msgtransfer::embedded::redis::{EmbeddedRedis, FaultHook, shared_engine};
use msgtransfer::embedded::store::EmbeddedStore;
use msgtransfer::embedded::{FaultPlan, history};
use msgtransfer::metrics::Metrics;
use msgtransfer::pipeline::consumer::dlq_header;
use msgtransfer::pipeline::transfer::Weaknesses;
use msgtransfer::ports::{LogConsumer, OutRecord, SeededRng, SharedClock};
use msgtransfer::proto::{MsgData, OfflinePushInfo};
use msgtransfer::service::{self, ServiceConfig, Wiring};
use msgtransfer_fuzz::{START_MS, accepted_to_redis, categorise_checked, clock, runtime};
use prost::Message;
use tokio::sync::watch;

const MAX_RECORDS: usize = 64;
const MAX_PAUSES: usize = 8;
/// Simulated 10 ms ticks the final drain may take before it counts as a hang.
const DRAIN_TICKS: u32 = 60_000;

const USERS: [&str; 8] = ["u0", "u1", "u2", "u3", "imAdmin", "ü-7", "a b", "x\"<y>"];
const GROUPS: [&str; 4] = ["g0", "g1", "g2", "g 3&"];
const OPTION_KEYS: [&str; 6] = [
    key::HISTORY,
    key::PERSISTENT,
    key::OFFLINE_PUSH,
    key::UNREAD_COUNT,
    key::NOT_NOTIFICATION,
    key::SEND_MSG,
];

#[derive(Arbitrary, Debug)]
struct Msg {
    session: u8,
    from: u8,
    to: u8,
    group: u8,
    content_type: u8,
    /// Two bits per option key: absent, true, false, absent.
    options: u16,
    status: u8,
    send_offset_ms: i32,
    text: String,
    at_users: u8,
    offline_push: Option<(String, bool)>,
    /// Which conversation a receipt reads in, and how far.
    receipt: (u8, u8),
}

#[derive(Arbitrary, Debug)]
enum Event {
    Msg(Msg),
    Raw(Vec<u8>),
    Dup(u8),
    /// Let the service run for 1..=16 ticks of 10 ms.
    Run(u8),
    /// Let it run, then kill it and start a fresh instance.
    Crash(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    partitions: u8,
    two_loops: bool,
    /// Produce, store and Redis failure rates in percent (each 0..=10).
    faults: Option<(u8, u8, u8)>,
    seed: u64,
    events: Vec<Event>,
}

static VERBOSE: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("MSGTRANSFER_FUZZ_VERBOSE").is_some());

static MUTANT: LazyLock<Weaknesses> = LazyLock::new(|| {
    let name = std::env::var("MSGTRANSFER_FUZZ_MUTANT").unwrap_or_default();
    let mut w = Weaknesses::default();
    match name.as_str() {
        "" => {}
        "no_dedup" => w.no_dedup = true,
        "give_up_on_failure" => w.give_up_on_failure = true,
        "drop_over_100" => w.drop_over_100 = true,
        other => panic!("unknown MSGTRANSFER_FUZZ_MUTANT {other:?}"),
    }
    w
});

fn pick<'a>(pool: &[&'a str], i: u8) -> &'a str {
    pool[usize::from(i) % pool.len()]
}

/// What was produced so far: stored chat messages per chat conversation
/// (receipts may read up to that many) and distinct accepted messages.
#[derive(Default)]
struct Model {
    stored_in_chat: BTreeMap<String, i64>,
    messages: u64,
}

impl Model {
    /// Records what `msg` will do once accepted (its first delivery).
    fn note(&mut self, msg: &MsgData) {
        self.messages += 1;
        for u in categorise_checked(msg) {
            if u.chat && u.stored {
                *self.stored_in_chat.entry(u.conversation_id).or_insert(0) += 1;
            }
        }
    }
}

fn build(m: &Msg, n: usize, model: &Model) -> MsgData {
    let session_type = match m.session % 5 {
        0 => session::SINGLE,
        1 => session::WRITE_GROUP,
        2 => session::READ_GROUP,
        3 => session::NOTIFICATION,
        // Refused: no conversation.
        _ => [0, 5, 7, -1][usize::from(m.session / 5 % 4)],
    };
    let mut options = BTreeMap::new();
    for (i, k) in OPTION_KEYS.iter().enumerate() {
        match (m.options >> (2 * i)) & 3 {
            1 => {
                options.insert(k.to_string(), true);
            }
            2 => {
                options.insert(k.to_string(), false);
            }
            _ => {}
        }
    }
    let mut msg = MsgData {
        send_id: pick(&USERS, m.from).into(),
        recv_id: pick(&USERS, m.to).into(),
        group_id: if matches!(session_type, session::WRITE_GROUP | session::READ_GROUP) {
            pick(&GROUPS, m.group).into()
        } else {
            String::new()
        },
        client_msg_id: format!("c{n}"),
        server_msg_id: format!("s{n}"),
        sender_platform_id: i32::from(m.from % 6),
        sender_nickname: format!("nick {}", pick(&USERS, m.from)),
        session_type,
        msg_from: 100,
        content_type: content::TEXT,
        content: m.text.as_bytes().iter().copied().take(256).collect(),
        send_time: START_MS + i64::from(m.send_offset_ms),
        create_time: START_MS + i64::from(m.send_offset_ms),
        status: [status::SENDING, status::SEND_SUCCESS, 3, 0][usize::from(m.status % 4)],
        options,
        offline_push_info: m.offline_push.as_ref().map(|(t, b)| OfflinePushInfo {
            title: t.chars().take(32).collect(),
            i_os_badge_count: *b,
            ..Default::default()
        }),
        at_user_id_list: (0..m.at_users % 3)
            .map(|i| pick(&USERS, m.at_users.wrapping_add(i)).to_string())
            .collect(),
        ..Default::default()
    };
    match m.content_type % 6 {
        0 => {}
        1 => msg.content_type = content::PICTURE,
        2 => {
            msg.content_type = content::TYPING;
            msg.options.insert(key::HISTORY.into(), false);
        }
        3 => {
            msg.content_type = content::FRIEND_APPLICATION_APPROVED;
            msg.msg_from = 200;
            msg.options.insert(key::NOT_NOTIFICATION.into(), false);
        }
        4 => {
            msg.content_type = content::MEMBER_ENTER;
            msg.msg_from = 200;
        }
        _ => {
            // A read receipt, reading no further than was stored so far in
            // a chat conversation (OpenIM's clients read what they saw).
            let convs: Vec<(&String, &i64)> = model.stored_in_chat.iter().collect();
            if !convs.is_empty() {
                let (conv, stored) = convs[usize::from(m.receipt.0) % convs.len()];
                let read_to = 1 + i64::from(m.receipt.1) % stored;
                let tips = serde_json::json!({
                    "markAsReadUserID": msg.send_id,
                    "conversationID": conv,
                    "seqs": [read_to],
                    "hasReadSeq": read_to - 1,
                });
                msg.content_type = content::HAS_READ_RECEIPT;
                msg.msg_from = 200;
                // NotificationElem JSON whose detail is MarkAsReadTips JSON.
                msg.content =
                    serde_json::to_vec(&serde_json::json!({ "detail": tips.to_string() }))
                        .expect("JSON encodes");
            }
        }
    }
    msg
}

/// Arbitrary bytes as a record value. Bytes that happen to decode into a
/// message with a conversation are made into a realistic one: a fresh
/// `clientMsgID` (the client SDK's are unique), IDs from the pools (the
/// history reader splits keys at ':'), and no receipt (it could claim any
/// read seq); everything else is kept.
fn raw(bytes: &[u8], n: usize) -> (Vec<u8>, Option<MsgData>) {
    let Ok(mut msg) = MsgData::decode(bytes) else {
        return (bytes.to_vec(), None);
    };
    if conversation::chat_conversation_id(&msg).is_none() {
        return (bytes.to_vec(), None);
    }
    let len = |s: &str| u8::try_from(s.len() % 256).unwrap_or(0);
    msg.send_id = pick(&USERS, len(&msg.send_id)).into();
    msg.recv_id = pick(&USERS, len(&msg.recv_id)).into();
    msg.group_id = pick(&GROUPS, len(&msg.group_id)).into();
    msg.client_msg_id = format!("r{n}");
    if msg.content_type == content::HAS_READ_RECEIPT {
        msg.content_type = content::TEXT;
    }
    (msg.encode_to_vec(), Some(msg))
}

struct World {
    log: EmbeddedLog,
    engine: Arc<msgtransfer::embedded::redis::SharedEngine>,
    store: EmbeddedStore,
    hook: EmbeddedHook,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    cfg: ServiceConfig,
    redis_faults: Option<FaultHook>,
    loops: usize,
    seed: u64,
}

type Running = (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), msgtransfer::pipeline::consumer::LoopError>>,
);

impl World {
    fn start(&self, instance: u64) -> Running {
        let (tx, rx) = watch::channel(false);
        let mut redis = EmbeddedRedis::new(self.engine.clone(), self.clock.clone());
        if let Some(hook) = &self.redis_faults {
            redis = redis.with_fault_hook(hook.clone());
        }
        let wiring = Wiring {
            redis,
            store: Arc::new(self.store.clone()),
            producer: Arc::new(self.log.producer()),
            hook: Arc::new(self.hook.clone()),
            clock: self.clock.clone(),
            rng: Arc::new(SeededRng::new(self.seed.wrapping_add(instance))),
            metrics: self.metrics.clone(),
        };
        let t = &self.cfg.transfer.topics;
        let g = &self.cfg.groups;
        let transfer: Vec<Box<dyn LogConsumer>> = (0..self.loops)
            .map(|_| Box::new(self.log.consumer(&g.to_redis, &t.to_redis)) as Box<dyn LogConsumer>)
            .collect();
        let persist = Box::new(self.log.consumer(&g.to_mongo, &t.to_mongo));
        let cfg = self.cfg.clone();
        let handle =
            tokio::spawn(async move { service::run(wiring, transfer, persist, &cfg, rx).await });
        (tx, handle)
    }

    fn drained(&self) -> bool {
        let t = &self.cfg.transfer.topics;
        let g = &self.cfg.groups;
        self.log.lag(&g.to_redis, &t.to_redis) == 0 && self.log.lag(&g.to_mongo, &t.to_mongo) == 0
    }
}

async fn tick(clock: &SharedClock, n: u32) {
    for _ in 0..n {
        clock.sleep(Duration::from_millis(10)).await;
    }
}

fuzz_target!(|input: Input| {
    let clock: SharedClock = clock();
    let plan = input.faults.map(|(p, s, r)| {
        let rate = |x: u8| f64::from(x % 11) / 100.0;
        Arc::new(FaultPlan::new(input.seed, rate(p), rate(s), rate(r)))
    });
    let mut log = EmbeddedLog::new(
        i32::from(input.partitions % 4) + 1,
        1_000_000,
        clock.clone(),
    );
    let mut store = EmbeddedStore::new();
    if let Some(plan) = &plan {
        log = log.with_faults(plan.clone());
        store = store.with_faults(plan.clone());
    }
    let redis_faults: Option<FaultHook> = plan.as_ref().map(FaultPlan::redis_hook);
    let w = World {
        log,
        engine: shared_engine(input.seed),
        store,
        hook: EmbeddedHook::default(),
        clock: clock.clone(),
        metrics: Arc::new(Metrics::default()),
        cfg: {
            let mut cfg = ServiceConfig::default();
            cfg.transfer.weaknesses = *MUTANT;
            cfg
        },
        redis_faults,
        loops: if input.two_loops { 2 } else { 1 },
        seed: input.seed,
    };
    let topics = w.cfg.transfer.topics.clone();

    let rt = runtime();
    rt.block_on(async {
        let mut model = Model::default();
        let mut produced: Vec<OutRecord> = Vec::new();
        let mut refused: BTreeSet<(i32, i64)> = BTreeSet::new();
        let mut pauses = 0;
        let mut instance = 0u64;
        let mut running = w.start(instance);
        for (n, ev) in input.events.iter().enumerate() {
            let value_and_msg = match ev {
                Event::Msg(m) if produced.len() < MAX_RECORDS => {
                    let msg = build(m, n, &model);
                    Some((msg.encode_to_vec(), Some(msg)))
                }
                Event::Raw(bytes) if produced.len() < MAX_RECORDS => Some(raw(bytes, n)),
                Event::Dup(i) if !produced.is_empty() && produced.len() < MAX_RECORDS => {
                    let rec = produced[usize::from(*i) % produced.len()].clone();
                    let d = w
                        .log
                        .append(rec.clone())
                        .expect("the embedded log takes the record");
                    if accepted_to_redis(&rec.value).is_none() {
                        refused.insert((d.partition, d.offset));
                    }
                    produced.push(rec);
                    None
                }
                Event::Run(t) if pauses < MAX_PAUSES => {
                    pauses += 1;
                    tick(&clock, u32::from(t % 16) + 1).await;
                    None
                }
                Event::Crash(t) if pauses < MAX_PAUSES => {
                    pauses += 1;
                    tick(&clock, u32::from(t % 16)).await;
                    running.1.abort();
                    let _ = running.1.await;
                    instance += 1;
                    running = w.start(instance);
                    None
                }
                _ => None,
            };
            let Some((value, msg)) = value_and_msg else {
                continue;
            };
            // Only a message within the limits and with a conversation is
            // accepted; the msg RPC keys it by group or user pair.
            let msg = msg.filter(|_| accepted_to_redis(&value).is_some());
            let key = msg
                .as_ref()
                .and_then(conversation::kafka_key)
                .unwrap_or_default();
            let ctx = MsgContext {
                operation_id: format!("op{n}"),
                op_user_id: "opu".into(),
                platform: "2".into(),
                conn_id: "conn".into(),
            };
            let rec = OutRecord {
                topic: topics.to_redis.clone(),
                key: Bytes::from(key.into_bytes()),
                value: Bytes::from(value),
                headers: ctx.to_headers().into(),
            };
            // The embedded log's append never fails (faults hit produces
            // from the service, not this upstream).
            let d = w
                .log
                .append(rec.clone())
                .expect("the embedded log takes the record");
            match &msg {
                Some(m) => model.note(m),
                None => {
                    refused.insert((d.partition, d.offset));
                }
            }
            produced.push(rec);
        }

        let mut ticks = 0;
        while !w.drained() {
            assert!(
                ticks < DRAIN_TICKS,
                "not drained after {ticks} ticks: lag toRedis {}, toMongo {}",
                w.log.lag(&w.cfg.groups.to_redis, &topics.to_redis),
                w.log.lag(&w.cfg.groups.to_mongo, &topics.to_mongo)
            );
            if running.1.is_finished() {
                panic!("the service stopped on its own: {:?}", running.1.await);
            }
            tick(&clock, 1).await;
            ticks += 1;
        }
        running
            .0
            .send(true)
            .expect("the service listens for shutdown");
        running
            .1
            .await
            .expect("the service task completes")
            .expect("the service stops cleanly");

        // The checker finds nothing.
        let (h, misplaced) = {
            let dump = history::dump(&mut w.engine.lock(), clock.now_ms());
            history::collect(&w.log, &topics, &w.store, &dump)
        };
        let r = check::check(&h);
        if *VERBOSE {
            eprintln!(
                "pipeline: records {} accepted {} refused {} restarts {} pauses {} faults {:?} \
                 drain ticks {} | stored {} persisted {} pushed {} receipts {} dlq {} anomalies {} misplaced {}",
                produced.len(),
                model.messages,
                refused.len(),
                instance,
                pauses,
                input.faults,
                ticks,
                r.stored,
                r.persisted,
                r.pushed,
                h.inputs.iter().filter(|i| i.receipt.is_some()).count(),
                w.log.len(&topics.dlq),
                r.anomalies(),
                misplaced,
            );
        }
        assert_eq!(
            (r.anomalies(), misplaced),
            (0, 0),
            "{:?}\n{r:?}",
            r.examples
        );
        assert_eq!(r.messages, model.messages, "{r:?}");
        assert_eq!(r.persisted, r.stored, "{r:?}");

        // Every refused record is in the dead-letter topic, and nothing else.
        let dead: BTreeSet<(i32, i64)> = w
            .log
            .records(&topics.dlq)
            .iter()
            .map(|d| {
                let h = |name: &str| -> i64 {
                    let v = d
                        .headers
                        .iter()
                        .find(|(k, _)| k == name)
                        .expect("dlq header");
                    String::from_utf8_lossy(&v.1).parse().expect("a number")
                };
                (
                    h(dlq_header::SOURCE_PARTITION) as i32,
                    h(dlq_header::SOURCE_OFFSET),
                )
            })
            .collect();
        assert_eq!(dead, refused, "dead letters");
    });
});
