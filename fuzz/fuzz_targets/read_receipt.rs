//! A read receipt's content (`MsgData.content` of content type 2200):
//! `NotificationElem` JSON whose `detail` is `MarkAsReadTips` JSON.
//!
//! `receipt::parse` must never panic; what it accepts must be a usable
//! receipt (a conversation, a read seq ≥ 0, at least `hasReadSeq` and every
//! entry of `seqs`); writing the receipt back as the msg RPC would must
//! parse to the same receipt; and the same tips, wrapped the way the
//! service receives them, must parse the same whether the fields use Go's
//! names or another case.

#![no_main]

use libfuzzer_sys::fuzz_target;
use msgtransfer::domain::receipt::{self, ReadReceipt, ReceiptError};
use serde_json::{Value, json};

fn content(tips: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "detail": tips.to_string() })).expect("JSON encodes")
}

fn check(result: &Result<Option<ReadReceipt>, ReceiptError>) {
    if let Ok(Some(r)) = result {
        assert!(!r.conversation_id.is_empty(), "{r:?}");
        assert!(r.read_seq >= 0, "{r:?}");
        // Written back as the msg RPC writes it, it reads the same.
        let tips = json!({
            "markAsReadUserID": r.user_id,
            "conversationID": r.conversation_id,
            "hasReadSeq": r.read_seq,
        });
        assert_eq!(
            receipt::parse(&content(&tips)).as_ref(),
            Ok(&Some(r.clone()))
        );
        let tips = json!({
            "MARKASREADUSERID": r.user_id,
            "conversationid": r.conversation_id,
            "seqs": [r.read_seq],
        });
        assert_eq!(
            receipt::parse(&content(&tips)).as_ref(),
            Ok(&Some(r.clone()))
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // The bytes as the whole content.
    let whole = receipt::parse(data);
    check(&whole);

    // The bytes as the `detail` text, so the fuzzer reaches the tips parser
    // without having to learn JSON string escaping first.
    let detail = String::from_utf8_lossy(data);
    let wrapped = serde_json::to_vec(&json!({ "detail": detail })).expect("JSON encodes");
    let inner = receipt::parse(&wrapped);
    check(&inner);
    if let Ok(Some(r)) = &inner {
        // The effective seq is the max of hasReadSeq and seqs, when the
        // tips use Go's exact field names.
        if let Ok(Value::Object(tips)) = serde_json::from_str::<Value>(&detail) {
            let has = tips.get("hasReadSeq").and_then(Value::as_i64);
            let seqs = tips.get("seqs").and_then(Value::as_array);
            if let Some(has) = has {
                assert!(r.read_seq >= has, "{r:?} below hasReadSeq {has}");
            }
            for s in seqs.into_iter().flatten().filter_map(Value::as_i64) {
                assert!(r.read_seq >= s, "{r:?} below seq {s}");
            }
        }
    }
});
