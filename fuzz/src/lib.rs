//! Helpers shared by the fuzz targets in `fuzz_targets/`: invariants of the
//! protobuf types and of categorisation, and the service's handlers wired
//! over the embedded backends (everything through `msgtransfer`'s public
//! API).

use std::fmt::Debug;
use std::sync::Arc;

use bytes::Bytes;
use msgtransfer::domain::categorise::{Unit, categorise};
use msgtransfer::domain::context::Header;
use msgtransfer::domain::conversation;
use msgtransfer::domain::limits::Limits;
use msgtransfer::domain::options::{is_on, key};
use msgtransfer::domain::session;
use msgtransfer::embedded::redis::EmbeddedRedis;
use msgtransfer::embedded::store::EmbeddedStore;
use msgtransfer::metrics::Metrics;
use msgtransfer::pipeline::persist::{Persist, PersistDeps};
use msgtransfer::pipeline::retry::Backoff;
use msgtransfer::pipeline::transfer::{Transfer, TransferConfig};
use msgtransfer::ports::clock::ManualClock;
use msgtransfer::ports::{Record, SeededRng};
use msgtransfer::proto::MsgData;
use prost::Message;

/// The wall time every fuzz clock starts at (late 2025, in ms).
pub const START_MS: i64 = 1_764_000_000_000;

/// A `toRedis`/`toMongo` record as the log would hand it to a handler.
pub fn record(topic: &str, key: &[u8], value: &[u8], headers: Vec<Header>) -> Record {
    Record {
        topic: Arc::from(topic),
        partition: 0,
        offset: 0,
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        headers: headers.into(),
        timestamp_ms: START_MS,
    }
}

/// Asserts that `m` survives an encode/decode round trip and that prost's
/// encoding is canonical: `encode(decode(encode(m))) == encode(m)`.
pub fn assert_roundtrip<M: Message + Default + PartialEq + Debug>(m: &M) -> Vec<u8> {
    let bytes = m.encode_to_vec();
    assert_eq!(bytes.len(), m.encoded_len(), "encoded_len disagrees");
    let back = M::decode(bytes.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(&back, m, "decode(encode(m)) != m");
    assert_eq!(back.encode_to_vec(), bytes, "encoding is not canonical");
    bytes
}

/// Categorises `msg` and asserts the rules of reference §4.2 on the result;
/// returns the units (empty for an unknown session type).
pub fn categorise_checked(msg: &MsgData) -> Vec<Unit> {
    let chat = conversation::chat_conversation_id(msg);
    let notif = conversation::notification_conversation_id(msg);
    let kafka_key = conversation::kafka_key(msg);
    let known = (session::SINGLE..=session::NOTIFICATION).contains(&msg.session_type);
    assert_eq!(chat.is_some(), known);
    assert_eq!(notif.is_some(), known);
    assert_eq!(kafka_key.is_some(), known);

    let result = categorise(msg.clone());
    let Ok(units) = result else {
        assert!(!known, "known session type {} refused", msg.session_type);
        return Vec::new();
    };
    assert!(known, "unknown session type {} accepted", msg.session_type);
    let (chat, notif) = (chat.unwrap_or_default(), notif.unwrap_or_default());

    // Conversation IDs: prefix by session type, symmetric in the user pair.
    let prefix = match msg.session_type {
        session::SINGLE => "si_",
        session::WRITE_GROUP => "g_",
        session::READ_GROUP => "sg_",
        _ => "sn_",
    };
    assert!(chat.starts_with(prefix), "{chat:?} lacks {prefix:?}");
    assert!(notif.starts_with("n_"), "{notif:?} lacks n_");
    let mut swapped = msg.clone();
    std::mem::swap(&mut swapped.send_id, &mut swapped.recv_id);
    assert_eq!(
        conversation::chat_conversation_id(&swapped),
        Some(chat.clone())
    );
    assert_eq!(
        conversation::notification_conversation_id(&swapped),
        Some(notif.clone())
    );
    assert_eq!(conversation::kafka_key(&swapped), kafka_key);
    assert_eq!(
        conversation::is_group(&chat),
        matches!(msg.session_type, session::WRITE_GROUP | session::READ_GROUP)
    );

    let notification = !is_on(&msg.options, key::NOT_NOTIFICATION);
    let send_msg = is_on(&msg.options, key::SEND_MSG);
    let history = is_on(&msg.options, key::HISTORY);
    let expected_len = if notification && send_msg { 2 } else { 1 };
    assert_eq!(units.len(), expected_len, "{units:?}");
    for u in &units {
        // Everything but the options is the input message, untouched.
        let mut m = u.msg.clone();
        m.options = msg.options.clone();
        assert_eq!(&m, msg, "categorise changed more than the options");
        assert_eq!(&u.conversation_id, if u.chat { &chat } else { &notif });
    }
    let last = &units[units.len() - 1];
    assert_eq!(last.stored, history);
    assert_eq!(last.chat, !notification);
    if notification {
        if send_msg {
            let clone = &units[0];
            assert!(clone.chat && clone.stored);
            assert_eq!(clone.msg.options.len(), 2, "{:?}", clone.msg.options);
            for k in [key::OFFLINE_PUSH, key::UNREAD_COUNT] {
                assert_eq!(clone.msg.options.get(k), Some(&is_on(&msg.options, k)));
                assert_eq!(last.msg.options.get(k), Some(&false));
            }
        } else {
            assert_eq!(last.msg.options, msg.options);
        }
    } else {
        assert_eq!(last.msg.options, msg.options);
    }
    units
}

/// Whether the transfer stage accepts `value` as a `toRedis` record value
/// (under the default limits, headers aside): it decodes, is within the
/// limits and has a conversation. Returns the message if so.
pub fn accepted_to_redis(value: &[u8]) -> Option<MsgData> {
    let msg = MsgData::decode(value).ok()?;
    Limits::default().check_msg(&msg).ok()?;
    conversation::chat_conversation_id(&msg)?;
    Some(msg)
}

/// A clock for one handler or world.
pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(START_MS))
}

/// The `toRedis` handler over fresh embedded backends, whose producer
/// refuses records above `max_record_bytes`.
pub fn transfer_handler(max_record_bytes: usize) -> Transfer<EmbeddedRedis> {
    let deps = msgtransfer::embedded::transfer_deps(clock(), 1, max_record_bytes);
    Transfer::new(deps, TransferConfig::default())
}

/// The `toMongo` handler over a fresh embedded store (returned with it).
pub fn persist_handler() -> (Arc<Persist>, EmbeddedStore) {
    let store = EmbeddedStore::new();
    let deps = PersistDeps {
        store: Arc::new(store.clone()),
        clock: clock(),
        rng: Arc::new(SeededRng::new(1)),
        metrics: Arc::new(Metrics::default()),
    };
    let persist = Persist::new(deps, Backoff::default(), Limits::default());
    (Arc::new(persist), store)
}

/// A current-thread runtime with time enabled, as the tests use.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}
