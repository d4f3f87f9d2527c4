//! A `toMongo` record value, as the persistence stage reads and writes it.
//!
//! Bytes → `msg.MsgDataToMongoByMQ` (round trip, and the transfer stage's
//! hand-written encoder must produce prost's bytes for it) → the
//! persistence handler's own `Handler::decode` (which must accept exactly
//! the records within the limits with a conversation, messages, and every
//! seq ≥ 1) → its
//! `process` on an embedded store → the buckets read back, each slot checked
//! against the arithmetic of reference §8.1: doc id `<conv>:<(seq-1)/100>`,
//! slot `(seq-1)%100`, `parse_doc_id` and `seq_at` inverting both, and the
//! slot holding `MsgDataModel::from_owned` of the last copy of its seq.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use msgtransfer::domain::bucket;
use msgtransfer::domain::cache_json::go_lossy_string;
use msgtransfer::domain::limits::Limits;
use msgtransfer::domain::model::MsgDataModel;
use msgtransfer::domain::status;
use msgtransfer::pipeline::consumer::{ConvKey, Handler};
use msgtransfer::pipeline::transfer::encode_mongo_record;
use msgtransfer::ports::store::SlotMsg;
use msgtransfer::proto::{MsgData, MsgDataToMongoByMq};
use msgtransfer_fuzz::{assert_roundtrip, persist_handler, record, runtime};
use prost::Message;

thread_local! {
    static RT: tokio::runtime::Runtime = runtime();
}

/// The arithmetic of one seq, checked on its own.
fn check_seq(conv: &str, seq: i64) {
    if seq < 1 {
        return;
    }
    let index = bucket::doc_index(seq);
    let slot = bucket::slot(seq);
    assert_eq!(index, (seq - 1) / 100);
    assert!(slot < 100);
    assert_eq!(slot as i64, (seq - 1) % 100);
    assert_eq!(bucket::seq_at(index, slot), seq);
    let id = bucket::doc_id(conv, seq);
    assert_eq!(id, format!("{conv}:{index}"));
    assert_eq!(bucket::parse_doc_id(&id), Some((conv, index)));
}

fn check_model(msg: &MsgData, model: &MsgDataModel) {
    assert_eq!(model, &MsgDataModel::from_owned(msg.clone()));
    assert_eq!(model.seq, msg.seq);
    assert_eq!(model.client_msg_id, msg.client_msg_id);
    assert_ne!(
        model.status,
        status::SENDING,
        "a stored message is never 'sending'"
    );
    assert_eq!(model.content, go_lossy_string(&msg.content));
    if let Ok(text) = std::str::from_utf8(&msg.content) {
        assert_eq!(model.content, text);
    }
    assert_eq!(model.options.is_none(), msg.options.is_empty());
    assert_eq!(
        model.at_user_id_list.is_none(),
        msg.at_user_id_list.is_empty()
    );
    assert_eq!(
        model.offline_push.is_none(),
        msg.offline_push_info.is_none()
    );
    assert!(!model.is_read);
}

fuzz_target!(|data: &[u8]| {
    let decoded = MsgDataToMongoByMq::decode(data);
    if let Ok(rec) = &decoded {
        assert_roundtrip(rec);
        let bodies: Vec<Vec<u8>> = rec.msg_data.iter().map(Message::encode_to_vec).collect();
        let hand = encode_mongo_record(
            rec.last_seq,
            &rec.conversation_id,
            bodies.iter().map(Vec::as_slice),
        );
        assert_eq!(
            hand,
            rec.encode_to_vec(),
            "encode_mongo_record differs from prost"
        );
        for m in &rec.msg_data {
            check_seq(&rec.conversation_id, m.seq);
        }
    }
    // Doc ids of any conversation (':' included) and any seq, and
    // parse_doc_id on any text.
    if let Some((seq, conv)) = data.split_first_chunk::<8>() {
        let conv = String::from_utf8_lossy(conv);
        check_seq(&conv, i64::from_le_bytes(*seq));
        if let Some((c, index)) = bucket::parse_doc_id(&conv) {
            let (head, tail) = conv.rsplit_once(':').expect("a parsed doc id has a ':'");
            assert_eq!(c, head);
            assert!(index >= 0);
            assert_eq!(tail.parse::<i64>(), Ok(index));
        }
    }

    let (persist, store) = persist_handler();
    let result = persist.decode(&record("toMongo", b"k", data, Vec::new()));
    let limits = Limits::default();
    let acceptable = limits.check_record(data.len(), &[]).is_ok()
        && decoded.as_ref().is_ok_and(|r| {
            limits.check_count(r.msg_data.len()).is_ok()
                && r.msg_data.iter().all(|m| limits.check_msg(m).is_ok())
                && !r.conversation_id.is_empty()
                && !r.msg_data.is_empty()
                && r.msg_data.iter().all(|m| m.seq >= 1)
        });
    let items = match result {
        Ok(items) => {
            assert!(acceptable, "accepted a record it must refuse: {decoded:?}");
            items
        }
        Err(_) => {
            assert!(!acceptable, "refused a valid record: {decoded:?}");
            return;
        }
    };
    let rec = decoded.expect("accepted, so decoded");
    assert_eq!(items.len(), rec.msg_data.len());
    for ((conv, m), want) in items.iter().zip(&rec.msg_data) {
        assert_eq!(&**conv, rec.conversation_id.as_str());
        // The message's own bytes, and the document made from them.
        assert_eq!(
            &MsgData::decode(m.encoded().clone()).expect("its bytes decode"),
            want
        );
        check_model(want, &m.model());
        assert_eq!(
            (m.seq(), m.send_time(), m.client_msg_id()),
            (want.seq, want.send_time, want.client_msg_id.as_str())
        );
    }
    let conv: ConvKey = items[0].0.clone();
    let msgs: Vec<Box<SlotMsg>> = items.into_iter().map(|(_, m)| m).collect();

    RT.with(|rt| rt.block_on(persist.process(conv.clone(), msgs)));

    // Later copies of a seq win.
    let mut last: BTreeMap<i64, &MsgData> = BTreeMap::new();
    for m in &rec.msg_data {
        last.insert(m.seq, m);
    }
    let mut seen = 0usize;
    store.for_each_msg(|doc_id, slot, model| {
        seen += 1;
        let (c, index) = bucket::parse_doc_id(doc_id).expect("a bucket's doc id parses");
        assert_eq!(c, &*conv, "bucket {doc_id} of another conversation");
        assert_eq!(doc_id, bucket::doc_id(&conv, model.seq));
        assert_eq!(
            bucket::seq_at(index, slot),
            model.seq,
            "{doc_id} slot {slot}"
        );
        assert_eq!(bucket::slot(model.seq), slot);
        let msg = last
            .get(&model.seq)
            .expect("a persisted seq was in the record");
        check_model(msg, model);
    });
    assert_eq!(seen, last.len(), "every distinct seq has exactly one slot");
});
