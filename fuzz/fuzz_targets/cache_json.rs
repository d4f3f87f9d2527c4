//! The `MSG_CACHE` JSON document.
//!
//! Bytes as a cache document → `cache_json::decode_identity` (the checker's
//! and `audit`'s reader of a real Redis) must never panic, and what it reads
//! must be what the document holds under `Msg`. The same bytes as an
//! `sdkws.MsgData` → `cache_json::encode` (the writer: Go's escaping, lossy
//! content) must give valid JSON whose fields are the message's, which
//! `decode_identity` reads back, and `encode_split` must split it around
//! the seq.

#![no_main]

use libfuzzer_sys::fuzz_target;
use msgtransfer::domain::cache_json::{self, go_lossy_string};
use msgtransfer::proto::MsgData;
use prost::Message;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let Some(id) = cache_json::decode_identity(data) {
        let v: Value = serde_json::from_slice(data).expect("decode_identity read JSON");
        assert_eq!(
            v["Msg"]["ClientMsgID"].as_str(),
            Some(id.client_msg_id.as_str())
        );
        assert_eq!(v["Msg"]["Seq"].as_i64(), Some(id.seq));
    }

    let Ok(msg) = MsgData::decode(data) else {
        return;
    };
    let doc = cache_json::encode(&msg);
    let (prefix, suffix) = cache_json::encode_split(&msg);
    assert_eq!(doc, format!("{prefix}{}{suffix}", msg.seq));
    // Go's encoder escapes these, so the text never holds them raw.
    for c in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
        assert!(!doc.contains(c), "unescaped {c:?} in {doc}");
    }
    let v: Value =
        serde_json::from_str(&doc).unwrap_or_else(|e| panic!("invalid JSON ({e}): {doc}"));
    let m = &v["Msg"];
    assert_eq!(m["SendID"].as_str(), Some(msg.send_id.as_str()));
    assert_eq!(m["RecvID"].as_str(), Some(msg.recv_id.as_str()));
    assert_eq!(m["GroupID"].as_str(), Some(msg.group_id.as_str()));
    assert_eq!(m["ClientMsgID"].as_str(), Some(msg.client_msg_id.as_str()));
    assert_eq!(
        m["SenderNickname"].as_str(),
        Some(msg.sender_nickname.as_str())
    );
    assert_eq!(
        m["Content"].as_str(),
        Some(go_lossy_string(&msg.content).as_str())
    );
    assert_eq!(m["Seq"].as_i64(), Some(msg.seq));
    assert_eq!(m["SendTime"].as_i64(), Some(msg.send_time));
    assert_eq!(m["SessionType"].as_i64(), Some(i64::from(msg.session_type)));
    assert_eq!(m["Ex"].as_str(), Some(msg.ex.as_str()));
    match &m["Options"] {
        Value::Null => assert!(msg.options.is_empty()),
        Value::Object(o) => {
            assert_eq!(o.len(), msg.options.len());
            for (k, want) in &msg.options {
                assert_eq!(
                    o.get(k).and_then(Value::as_bool),
                    Some(*want),
                    "option {k:?}"
                );
            }
        }
        other => panic!("Options is {other}"),
    }
    match &m["AtUserIDList"] {
        Value::Null => assert!(msg.at_user_id_list.is_empty()),
        Value::Array(a) => {
            let got: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
            assert_eq!(got, msg.at_user_id_list);
        }
        other => panic!("AtUserIDList is {other}"),
    }
    match (&m["OfflinePush"], &msg.offline_push_info) {
        (Value::Null, None) => {}
        (Value::Object(o), Some(p)) => {
            assert_eq!(o["Title"].as_str(), Some(p.title.as_str()));
            assert_eq!(o["IOSPushSound"].as_str(), Some(p.i_os_push_sound.as_str()));
            assert_eq!(o["IOSBadgeCount"].as_bool(), Some(p.i_os_badge_count));
        }
        (got, want) => panic!("OfflinePush {got} for {want:?}"),
    }
    let id = cache_json::decode_identity(doc.as_bytes()).expect("our own document reads back");
    assert_eq!(id.client_msg_id, msg.client_msg_id);
    assert_eq!(id.seq, msg.seq);
});
