//! A `toRedis` record value, as the transfer stage reads it.
//!
//! The msg RPC produces a bare `sdkws.MsgData` on `toRedis` (the
//! `msg.MsgDataToMQ` wrapper exists in OpenIM's schema but is not what the
//! topic carries; see `Transfer::decode`). The target decodes the bytes both
//! ways, checks that whatever decoded re-encodes canonically and decodes to
//! the same value, categorises the message and checks the categorisation
//! rules, and runs the service's own `Handler::decode` on the record and
//! checks it agrees: the same units in the same conversations (the message
//! each item decodes to at batch time is the unit's), or a refusal
//! exactly when the message does not decode, has no conversation, or is
//! over the size limit. Stored units also go through the hand-written
//! `toPush`/`toMongo` encoders, which must match prost byte for byte.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use msgtransfer::domain::limits::Limits;
use msgtransfer::domain::{cache_json, content, receipt};
use msgtransfer::embedded::redis::EmbeddedRedis;
use msgtransfer::pipeline::consumer::Handler;
use msgtransfer::pipeline::transfer::{Transfer, encode_mongo_record, encode_push_record};
use msgtransfer::proto::{MsgData, MsgDataToMongoByMq, MsgDataToMq, PushMsgDataToMq};
use msgtransfer_fuzz::{assert_roundtrip, categorise_checked, record, transfer_handler};
use prost::Message;

/// Producer limit; with the default 4096-byte envelope margin a record
/// value may be up to 2048 bytes, so the size check is reachable.
const MAX_RECORD_BYTES: usize = 6144;
const VALUE_LIMIT: usize = MAX_RECORD_BYTES - 4096;

static TRANSFER: LazyLock<Transfer<EmbeddedRedis>> =
    LazyLock::new(|| transfer_handler(MAX_RECORD_BYTES));

fuzz_target!(|data: &[u8]| {
    // The wrapper type: whatever decodes must round-trip.
    if let Ok(wrapper) = MsgDataToMq::decode(data) {
        assert_roundtrip(&wrapper);
        if let Some(m) = &wrapper.msg_data {
            assert_roundtrip(m);
        }
    }

    let decoded = MsgData::decode(data);
    let units = match &decoded {
        Ok(msg) => {
            assert_roundtrip(msg);
            if msg.content_type == content::HAS_READ_RECEIPT {
                // The service tolerates an unusable receipt; it must not panic.
                let _ = receipt::parse(&msg.content);
            }
            categorise_checked(msg)
        }
        Err(_) => Vec::new(),
    };

    let key = b"k";
    let rec = record("toRedis", key, data, Vec::new());
    let refused_for_size = data.len() > VALUE_LIMIT;
    let over_limits = decoded
        .as_ref()
        .is_ok_and(|m| Limits::default().check_msg(m).is_err());
    match TRANSFER.decode(&rec) {
        Ok(items) => {
            assert!(
                !refused_for_size,
                "a {} byte value was accepted",
                data.len()
            );
            assert!(decoded.is_ok(), "undecodable value accepted");
            assert!(!over_limits, "a message over the limits was accepted");
            assert_eq!(items.len(), units.len());
            let mut receipts = 0;
            for ((conv, item), unit) in items.iter().zip(&units) {
                assert_eq!(&**conv, unit.conversation_id.as_str());
                // What waits for the batch makes the same unit again.
                assert_eq!((item.stored, item.chat), (unit.stored, unit.chat));
                assert_eq!(&item.message(), &unit.msg);
                assert_eq!(&item.value[..], data);
                assert_eq!(&item.key[..], key);
                // No headers came in: the four positional ones go out, empty.
                assert_eq!(item.headers.len(), 4);
                assert!(item.headers.iter().all(|(_, v)| v.is_empty()));
                receipts += usize::from(item.receipt.is_some());
                if let Some(r) = &item.receipt {
                    assert!(!r.conversation_id.is_empty() && r.read_seq >= 0, "{r:?}");
                }
            }
            assert!(receipts <= 1, "a receipt attached to {receipts} units");
        }
        Err(rejection) => {
            assert!(
                refused_for_size || decoded.is_err() || over_limits || units.is_empty(),
                "refused a categorisable message: {rejection:?}"
            );
        }
    }

    // What the stage produces from each unit: the hand-written encoders
    // must be prost's encoding of the same record, byte for byte.
    for (i, unit) in units.iter().enumerate() {
        let mut msg: MsgData = unit.msg.clone();
        if unit.stored {
            msg.seq = i as i64 + 1;
        }
        let body = msg.encode_to_vec();
        let push = encode_push_record(&body, &unit.conversation_id);
        let want = PushMsgDataToMq {
            msg_data: Some(msg.clone()),
            conversation_id: unit.conversation_id.clone(),
        };
        assert_eq!(
            push,
            want.encode_to_vec(),
            "toPush encoding differs from prost"
        );
        if unit.stored {
            let mongo = encode_mongo_record(
                msg.seq - 1,
                &unit.conversation_id,
                [body.as_slice()].into_iter(),
            );
            let want = MsgDataToMongoByMq {
                last_seq: msg.seq - 1,
                conversation_id: unit.conversation_id.clone(),
                msg_data: vec![msg.clone()],
            };
            assert_eq!(
                mongo,
                want.encode_to_vec(),
                "toMongo encoding differs from prost"
            );
            // And the cache entry names the message and its seq.
            let doc = cache_json::encode(&msg);
            let id = cache_json::decode_identity(doc.as_bytes()).expect("cache JSON reads back");
            assert_eq!(id.client_msg_id, msg.client_msg_id);
            assert_eq!(id.seq, msg.seq);
        }
    }
});
