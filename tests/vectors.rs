//! Our `.proto` files against records encoded from OpenIM's own schema by a
//! reference protobuf runtime (`tests/data/openim/`, see its README).
//!
//! Each vector must decode with our types to exactly the values listed in
//! `vectors.json`, and our encoding must reproduce the bytes: exactly where
//! the record has no map, and up to map-entry order where it has one.

use std::collections::BTreeMap;

use base64::Engine as _;
use msgtransfer::domain::{categorise, conversation, receipt};
use msgtransfer::proto::{
    MsgData, MsgDataToMongoByMq, MsgDataToMq, OfflinePushInfo, PushMsgDataToMq,
};
use prost::Message;
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/openim");

struct Case {
    file: String,
    ty: String,
    hex: String,
    fields: Value,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(format!("{DIR}/vectors.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            file: c["file"].as_str().unwrap().to_string(),
            ty: c["type"].as_str().unwrap().to_string(),
            hex: c["hex"].as_str().unwrap().to_string(),
            fields: c["fields"].clone(),
        })
        .collect()
}

fn bytes_of(case: &Case) -> Vec<u8> {
    let file = std::fs::read(format!("{DIR}/{}", case.file)).unwrap();
    assert_eq!(
        hex::encode(&file),
        case.hex,
        "{} differs from its hex",
        case.file
    );
    file
}

fn s(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}
fn i32_(v: &Value, k: &str) -> i32 {
    v.get(k).and_then(Value::as_i64).unwrap_or(0) as i32
}
// Protobuf JSON writes int64 as a string.
fn i64_(v: &Value, k: &str) -> i64 {
    v.get(k)
        .and_then(Value::as_str)
        .map(|x| x.parse().unwrap())
        .unwrap_or(0)
}
fn b(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

/// Builds a `MsgData` from its protobuf-JSON form, field by field.
fn msg_from_json(v: &Value) -> MsgData {
    let options: BTreeMap<String, bool> = v
        .get("options")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, x)| (k.clone(), x.as_bool().unwrap()))
                .collect()
        })
        .unwrap_or_default();
    MsgData {
        send_id: s(v, "sendID"),
        recv_id: s(v, "recvID"),
        group_id: s(v, "groupID"),
        client_msg_id: s(v, "clientMsgID"),
        server_msg_id: s(v, "serverMsgID"),
        sender_platform_id: i32_(v, "senderPlatformID"),
        sender_nickname: s(v, "senderNickname"),
        sender_face_url: s(v, "senderFaceURL"),
        session_type: i32_(v, "sessionType"),
        msg_from: i32_(v, "msgFrom"),
        content_type: i32_(v, "contentType"),
        content: base64::engine::general_purpose::STANDARD
            .decode(s(v, "content"))
            .unwrap(),
        seq: i64_(v, "seq"),
        send_time: i64_(v, "sendTime"),
        create_time: i64_(v, "createTime"),
        status: i32_(v, "status"),
        is_read: b(v, "isRead"),
        options,
        offline_push_info: v.get("offlinePushInfo").map(|o| OfflinePushInfo {
            title: s(o, "title"),
            desc: s(o, "desc"),
            ex: s(o, "ex"),
            i_os_push_sound: s(o, "iOSPushSound"),
            i_os_badge_count: b(o, "iOSBadgeCount"),
            signal_info: s(o, "signalInfo"),
        }),
        at_user_id_list: v
            .get("atUserIDList")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default(),
        attached_info: s(v, "attachedInfo"),
        ex: s(v, "ex"),
    }
}

/// Encoded bytes must match exactly, or — when the record carries an
/// options map — decode to the same value with a length that differs only by
/// the map entries whose value is `false`: the reference runtime writes such
/// a value out (2 bytes), prost leaves the default out, and the entry order
/// of a map is free. Both forms decode identically everywhere.
fn assert_encoding<M: Message + Default + PartialEq + std::fmt::Debug>(
    ours: &M,
    theirs: &[u8],
    false_map_values: Option<usize>,
    file: &str,
) {
    let enc = ours.encode_to_vec();
    if let Some(falses) = false_map_values {
        assert_eq!(enc.len() + 2 * falses, theirs.len(), "{file}: length");
        assert_eq!(
            &M::decode(enc.as_slice()).unwrap(),
            ours,
            "{file}: round trip"
        );
    } else {
        assert_eq!(hex::encode(&enc), hex::encode(theirs), "{file}: bytes");
    }
}

/// `None` when no message has options, else how many option values are false.
fn map_falses<'a>(msgs: impl IntoIterator<Item = &'a MsgData>) -> Option<usize> {
    let mut any = false;
    let mut falses = 0;
    for m in msgs {
        any |= !m.options.is_empty();
        falses += m.options.values().filter(|v| !**v).count();
    }
    any.then_some(falses)
}

#[test]
fn every_vector_decodes_to_its_fields_and_reencodes() {
    let all = cases();
    assert_eq!(all.len(), 8, "vector set changed");
    for case in &all {
        let bytes = bytes_of(case);
        match case.ty.as_str() {
            "openim.sdkws.MsgData" => {
                let ours = MsgData::decode(bytes.as_slice()).unwrap();
                assert_eq!(ours, msg_from_json(&case.fields), "{}", case.file);
                assert_encoding(&ours, &bytes, map_falses([&ours]), &case.file);
            }
            "openim.msg.MsgDataToMongoByMQ" => {
                let ours = MsgDataToMongoByMq::decode(bytes.as_slice()).unwrap();
                let f = &case.fields;
                let expected = MsgDataToMongoByMq {
                    last_seq: i64_(f, "lastSeq"),
                    conversation_id: s(f, "conversationID"),
                    msg_data: f["msgData"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(msg_from_json)
                        .collect(),
                };
                assert_eq!(ours, expected, "{}", case.file);
                assert_encoding(&ours, &bytes, map_falses(&ours.msg_data), &case.file);
            }
            "openim.msg.PushMsgDataToMQ" => {
                let ours = PushMsgDataToMq::decode(bytes.as_slice()).unwrap();
                let f = &case.fields;
                let expected = PushMsgDataToMq {
                    msg_data: Some(msg_from_json(&f["msgData"])),
                    conversation_id: s(f, "conversationID"),
                };
                assert_eq!(ours, expected, "{}", case.file);
                assert_encoding(&ours, &bytes, map_falses(&ours.msg_data), &case.file);
            }
            "openim.msg.MsgDataToMQ" => {
                let ours = MsgDataToMq::decode(bytes.as_slice()).unwrap();
                let f = &case.fields;
                let expected = MsgDataToMq {
                    token: s(f, "token"),
                    msg_data: Some(msg_from_json(&f["msgData"])),
                };
                assert_eq!(ours, expected, "{}", case.file);
                assert_encoding(&ours, &bytes, map_falses(&ours.msg_data), &case.file);
            }
            other => panic!("unknown vector type {other}"),
        }
    }
}

fn vector_msg(file: &str) -> MsgData {
    MsgData::decode(std::fs::read(format!("{DIR}/{file}")).unwrap().as_slice()).unwrap()
}

#[test]
fn vectors_categorise_as_their_notes_say() {
    let single = vector_msg("msgdata_single_all_fields.bin");
    assert_eq!(conversation::kafka_key(&single).unwrap(), "u100_u200");
    let u = categorise::categorise(single).unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].conversation_id, "si_u100_u200");
    assert!(u[0].stored);

    let group = vector_msg("msgdata_group_text.bin");
    assert_eq!(conversation::kafka_key(&group).unwrap(), "g42");
    let u = categorise::categorise(group).unwrap();
    assert_eq!(
        (u.len(), u[0].conversation_id.as_str(), u[0].stored),
        (1, "sg_g42", true)
    );

    let typing = categorise::categorise(vector_msg("msgdata_typing_not_stored.bin")).unwrap();
    assert_eq!(typing.len(), 1);
    assert!(!typing[0].stored);

    let ntf = categorise::categorise(vector_msg("msgdata_notification_sendmsg.bin")).unwrap();
    assert_eq!(ntf.len(), 2);
    assert_eq!(ntf[0].conversation_id, "sn_imAdmin_u200");
    assert!(ntf[0].stored);
    let clone_keys: Vec<&str> = ntf[0].msg.options.keys().map(String::as_str).collect();
    assert_eq!(clone_keys, ["offlinePush", "unreadCount"]);
    assert_eq!(ntf[1].conversation_id, "n_imAdmin_u200");
    assert!(ntf[1].stored);

    let read = vector_msg("msgdata_has_read_receipt.bin");
    let r = receipt::parse(&read.content).unwrap().unwrap();
    assert_eq!(
        (r.user_id.as_str(), r.conversation_id.as_str(), r.read_seq),
        ("u200", "si_u100_u200", 9)
    );
}

#[test]
fn mongo_vector_crosses_a_bucket_boundary() {
    use msgtransfer::domain::bucket;
    let rec = MsgDataToMongoByMq::decode(
        std::fs::read(format!("{DIR}/mongo_record_two_msgs.bin"))
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    let places: Vec<(String, usize)> = rec
        .msg_data
        .iter()
        .map(|m| {
            (
                bucket::doc_id(&rec.conversation_id, m.seq),
                bucket::slot(m.seq),
            )
        })
        .collect();
    assert_eq!(
        places,
        [("sg_g42:0".to_string(), 99), ("sg_g42:1".to_string(), 0)]
    );
}

/// The transfer stage reads a `toRedis` record without decoding it and
/// decodes each unit's message when its batch runs; on every `MsgData`
/// vector that must come to the units `categorise` makes of the decoded
/// message, in the same conversations and order.
#[test]
fn the_transfer_stage_makes_the_units_categorise_makes() {
    use std::sync::Arc;

    use msgtransfer::pipeline::consumer::Handler;
    use msgtransfer::pipeline::transfer::{Transfer, TransferConfig};
    use msgtransfer::ports::Record;
    use msgtransfer::ports::clock::ManualClock;

    let clock = Arc::new(ManualClock::new(1_764_000_000_000));
    let deps = msgtransfer::embedded::transfer_deps(clock, 1, 1 << 20);
    let transfer = Transfer::new(deps, TransferConfig::default());
    let mut checked = 0;
    for case in cases().iter().filter(|c| c.ty == "openim.sdkws.MsgData") {
        let bytes = bytes_of(case);
        let record = Record {
            topic: Arc::from("toRedis"),
            partition: 0,
            offset: 0,
            key: bytes::Bytes::from_static(b"k"),
            value: bytes::Bytes::from(bytes.clone()),
            headers: Vec::new().into(),
            timestamp_ms: 0,
        };
        let units = categorise::categorise(MsgData::decode(bytes.as_slice()).unwrap()).unwrap();
        let items = transfer.decode(&record).unwrap();
        assert_eq!(items.len(), units.len(), "{}", case.file);
        for ((conv, item), unit) in items.iter().zip(&units) {
            assert_eq!(&**conv, unit.conversation_id, "{}", case.file);
            assert_eq!((item.stored, item.chat), (unit.stored, unit.chat));
            assert_eq!(item.message(), unit.msg, "{}", case.file);
        }
        checked += units.len();
    }
    // The single, group, typing, receipt and isSendMsg notification vectors
    // at least (the notification makes two units).
    assert!(checked >= 6, "only {checked} units checked");
}
