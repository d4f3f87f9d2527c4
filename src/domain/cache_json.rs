//! The JSON OpenIM keeps in `MSG_CACHE:<conv>:<seq>` (reference §6).
//!
//! The document is Go's `encoding/json` rendering of `MsgInfoModel`, with Go
//! field names, Go's escaping (HTML characters, U+2028/9, `\ufffd` for each
//! invalid UTF-8 byte of `content`) and sorted option keys, so the Go msg RPC
//! reads our entries as its own. The seq is only learnt inside Redis, so the
//! transfer writes the document with the seq it predicts and says where its
//! digits are ([`encode_at`]); the allocator stores it as it is when the
//! prediction holds and replaces the digits when it does not, all in the
//! same round trip.

use std::fmt::Write as _;

use crate::proto::MsgData;

/// Whether Go's encoder would write `b` (an ASCII byte) as itself.
fn plain_ascii(b: u8) -> bool {
    (0x20..0x80).contains(&b) && !matches!(b, b'"' | b'\\' | b'<' | b'>' | b'&')
}

/// Appends the characters of `s` escaped the way Go's encoder does, copying
/// runs that need no escaping in one go (most IDs and texts are one run).
fn push_go_escaped(out: &mut String, s: &str) {
    let mut rest = s;
    while !rest.is_empty() {
        let plain = rest
            .bytes()
            .position(|b| !plain_ascii(b))
            .unwrap_or(rest.len());
        out.push_str(&rest[..plain]);
        rest = &rest[plain..];
        if let Some(c) = rest.chars().next() {
            push_go_char(out, c);
            rest = &rest[c.len_utf8()..];
        }
    }
}

/// Appends `s` as a JSON string the way Go's encoder does.
fn push_go_str(out: &mut String, s: &str) {
    out.push('"');
    push_go_escaped(out, s);
    out.push('"');
}

fn push_go_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c if (c as u32) < 0x20 => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => out.push(c),
    }
}

/// Appends raw bytes as a JSON string the way Go renders `string(bytes)`:
/// valid UTF-8 sequences as text, every byte that does not start a valid
/// sequence as the escape `\ufffd`.
fn push_go_bytes(out: &mut String, bytes: &[u8]) {
    out.push('"');
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                push_go_escaped(out, valid);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // `good` is valid by construction of valid_up_to.
                push_go_escaped(out, std::str::from_utf8(good).unwrap_or_default());
                // Go replaces one byte at a time, even inside a truncated
                // multi-byte sequence.
                out.push_str("\\ufffd");
                rest = &bad[1..];
            }
        }
    }
    out.push('"');
}

/// Content bytes as Go would turn them into a string for BSON/JSON: invalid
/// UTF-8 bytes each become U+FFFD.
pub fn go_lossy_string(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len() + 8);
            let mut rest = bytes;
            while !rest.is_empty() {
                match std::str::from_utf8(rest) {
                    Ok(valid) => {
                        out.push_str(valid);
                        break;
                    }
                    Err(e) => {
                        let (good, bad) = rest.split_at(e.valid_up_to());
                        out.push_str(std::str::from_utf8(good).unwrap_or_default());
                        out.push('\u{fffd}');
                        rest = &bad[1..];
                    }
                }
            }
            out
        }
    }
}

/// Bytes of a cache document that do not depend on the message: field
/// names, punctuation and the longest numbers.
const FIXED_LEN: usize = 560;

/// An upper bound on the length of `msg`'s cache document, unless
/// escaping lengthens one of its strings (numbers are counted at their
/// longest), so it can be written into one allocation.
fn estimated_len(msg: &MsgData) -> usize {
    let strings = [
        &msg.send_id,
        &msg.recv_id,
        &msg.group_id,
        &msg.client_msg_id,
        &msg.server_msg_id,
        &msg.sender_nickname,
        &msg.sender_face_url,
        &msg.attached_info,
        &msg.ex,
    ];
    let push = msg.offline_push_info.as_ref().map_or(0, |o| {
        o.title.len() + o.desc.len() + o.ex.len() + o.i_os_push_sound.len()
    });
    FIXED_LEN
        + strings.iter().map(|s| s.len()).sum::<usize>()
        + msg.content.len()
        + msg.options.keys().map(|k| k.len() + 9).sum::<usize>()
        + msg
            .at_user_id_list
            .iter()
            .map(|u| u.len() + 3)
            .sum::<usize>()
        + push
}

/// The cache document of `msg` split around its seq: the full document is
/// `prefix + seq.to_string() + suffix`.
pub fn encode_split(msg: &MsgData) -> (String, String) {
    let mut p = String::with_capacity(384 + msg.content.len());
    push_head(&mut p, msg);
    let mut s = String::with_capacity(192);
    push_tail(&mut s, msg);
    (p, s)
}

/// Appends the document up to where the seq's digits go.
fn push_head(p: &mut String, msg: &MsgData) {
    p.push_str("{\"Msg\":{\"SendID\":");
    push_go_str(p, &msg.send_id);
    p.push_str(",\"RecvID\":");
    push_go_str(p, &msg.recv_id);
    p.push_str(",\"GroupID\":");
    push_go_str(p, &msg.group_id);
    p.push_str(",\"ClientMsgID\":");
    push_go_str(p, &msg.client_msg_id);
    p.push_str(",\"ServerMsgID\":");
    push_go_str(p, &msg.server_msg_id);
    let _ = write!(p, ",\"SenderPlatformID\":{}", msg.sender_platform_id);
    p.push_str(",\"SenderNickname\":");
    push_go_str(p, &msg.sender_nickname);
    p.push_str(",\"SenderFaceURL\":");
    push_go_str(p, &msg.sender_face_url);
    let _ = write!(
        p,
        ",\"SessionType\":{},\"MsgFrom\":{},\"ContentType\":{},\"Content\":",
        msg.session_type, msg.msg_from, msg.content_type
    );
    push_go_bytes(p, &msg.content);
    p.push_str(",\"Seq\":");
}

/// Appends the document from just after the seq's digits to its end.
fn push_tail(s: &mut String, msg: &MsgData) {
    let _ = write!(
        s,
        ",\"SendTime\":{},\"CreateTime\":{},\"Status\":{},\"IsRead\":false,\"Options\":",
        msg.send_time, msg.create_time, msg.status
    );
    if msg.options.is_empty() {
        s.push_str("null");
    } else {
        s.push('{');
        for (i, (k, v)) in msg.options.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            push_go_str(s, k);
            s.push(':');
            s.push_str(if *v { "true" } else { "false" });
        }
        s.push('}');
    }
    s.push_str(",\"OfflinePush\":");
    match &msg.offline_push_info {
        None => s.push_str("null"),
        Some(o) => {
            s.push_str("{\"Title\":");
            push_go_str(s, &o.title);
            s.push_str(",\"Desc\":");
            push_go_str(s, &o.desc);
            s.push_str(",\"Ex\":");
            push_go_str(s, &o.ex);
            s.push_str(",\"IOSPushSound\":");
            push_go_str(s, &o.i_os_push_sound);
            let _ = write!(s, ",\"IOSBadgeCount\":{}}}", o.i_os_badge_count);
        }
    }
    s.push_str(",\"AtUserIDList\":");
    if msg.at_user_id_list.is_empty() {
        s.push_str("null");
    } else {
        s.push('[');
        for (i, u) in msg.at_user_id_list.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            push_go_str(s, u);
        }
        s.push(']');
    }
    s.push_str(",\"AttachedInfo\":");
    push_go_str(s, &msg.attached_info);
    s.push_str(",\"Ex\":");
    push_go_str(s, &msg.ex);
    s.push_str("},\"Revoke\":null,\"DelList\":null,\"IsRead\":false}");
}

/// The full cache document of `msg`, using `msg.seq`.
pub fn encode(msg: &MsgData) -> String {
    encode_at(msg, msg.seq).0
}

/// The full cache document of `msg` with `seq` as its seq, and the byte
/// offset where the seq's digits start.
pub fn encode_at(msg: &MsgData, seq: i64) -> (String, usize) {
    let mut doc = String::with_capacity(estimated_len(msg));
    push_head(&mut doc, msg);
    let at = doc.len();
    let _ = write!(doc, "{seq}");
    push_tail(&mut doc, msg);
    (doc, at)
}

/// The fields of a cache entry the checker compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedIdentity {
    /// `Msg.ClientMsgID`.
    pub client_msg_id: String,
    /// `Msg.Seq`.
    pub seq: i64,
}

/// Reads the identity fields back out of a cache document.
pub fn decode_identity(json: &[u8]) -> Option<CachedIdentity> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let m = v.get("Msg")?;
    Some(CachedIdentity {
        client_msg_id: m.get("ClientMsgID")?.as_str()?.to_string(),
        seq: m.get("Seq")?.as_i64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::OfflinePushInfo;

    #[test]
    fn estimate_fits_documents_without_escapes() {
        // The longest numbers and every optional part present: the
        // estimate must still cover the document, so it is written into
        // one allocation.
        let mut longest = MsgData {
            send_id: "user-1".into(),
            client_msg_id: "0123456789abcdef0123456789abcdef".into(),
            content: br#"{"content":"hello"}"#.to_vec(),
            sender_platform_id: i32::MIN,
            session_type: i32::MIN,
            msg_from: i32::MIN,
            content_type: i32::MIN,
            send_time: i64::MIN,
            create_time: i64::MIN,
            status: i32::MIN,
            at_user_id_list: vec!["u3".into(), "u4".into()],
            offline_push_info: Some(OfflinePushInfo {
                title: "title".into(),
                i_os_badge_count: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        longest.options.insert("history".into(), false);
        let (doc, _) = encode_at(&longest, i64::MIN);
        assert!(
            estimated_len(&longest) >= doc.len(),
            "{} < {}",
            estimated_len(&longest),
            doc.len()
        );
        // ...and without wasting much on a small one.
        let small = MsgData {
            send_id: "u1".into(),
            ..Default::default()
        };
        let (doc, _) = encode_at(&small, 1);
        assert!(estimated_len(&small) >= doc.len());
        assert!(
            estimated_len(&small) - doc.len() < 192,
            "{} vs {}",
            estimated_len(&small),
            doc.len()
        );
    }

    #[test]
    fn document_matches_go_encoding() {
        let mut m = MsgData {
            send_id: "u1".into(),
            recv_id: "u2".into(),
            client_msg_id: "c1".into(),
            session_type: 1,
            msg_from: 100,
            content_type: 101,
            content: b"<a&b>\"\n\x08\x01\xe2\x80\xa8".to_vec(),
            seq: 7,
            send_time: 11,
            create_time: 10,
            status: 1,
            ..Default::default()
        };
        m.options.insert("z".into(), true);
        m.options.insert("a".into(), false);
        m.offline_push_info = Some(OfflinePushInfo {
            title: "t".into(),
            i_os_badge_count: true,
            ..Default::default()
        });
        m.at_user_id_list = vec!["u3".into()];
        let expected = concat!(
            r#"{"Msg":{"SendID":"u1","RecvID":"u2","GroupID":"","ClientMsgID":"c1","ServerMsgID":"","#,
            r#""SenderPlatformID":0,"SenderNickname":"","SenderFaceURL":"","SessionType":1,"MsgFrom":100,"#,
            r#""ContentType":101,"Content":"\u003ca\u0026b\u003e\"\n\b\u0001\u2028","Seq":7,"SendTime":11,"#,
            r#""CreateTime":10,"Status":1,"IsRead":false,"Options":{"a":false,"z":true},"#,
            r#""OfflinePush":{"Title":"t","Desc":"","Ex":"","IOSPushSound":"","IOSBadgeCount":true},"#,
            r#""AtUserIDList":["u3"],"AttachedInfo":"","Ex":""},"Revoke":null,"DelList":null,"IsRead":false}"#
        );
        assert_eq!(encode(&m), expected);
        let id = decode_identity(expected.as_bytes()).unwrap();
        assert_eq!(id.client_msg_id, "c1");
        assert_eq!(id.seq, 7);
    }

    #[test]
    fn nil_collections_render_as_null() {
        let json = encode(&MsgData::default());
        assert!(json.contains(r#""Options":null,"OfflinePush":null,"AtUserIDList":null"#));
        serde_json::from_str::<serde_json::Value>(&json).unwrap();
    }

    #[test]
    fn invalid_utf8_bytes_each_become_a_replacement() {
        let mut out = String::new();
        // A truncated 3-byte sequence is two invalid bytes for Go.
        push_go_bytes(&mut out, b"a\xe4\xb8b\xff");
        assert_eq!(out, r#""a\ufffd\ufffdb\ufffd""#);
        assert_eq!(go_lossy_string(b"a\xe4\xb8b"), "a\u{fffd}\u{fffd}b");
        assert_eq!(go_lossy_string("é中".as_bytes()), "é中");
    }

    #[test]
    fn fast_path_escapes_exactly_like_the_per_character_path() {
        for s in [
            "plain text 123",
            "",
            "<>&\"\\",
            "é中 \u{2028}x\u{2029}",
            "a\u{1}b\tc\u{7f}",
            "mixed <b>é</b> ok",
        ] {
            let mut fast = String::new();
            push_go_escaped(&mut fast, s);
            let mut slow = String::new();
            for c in s.chars() {
                push_go_char(&mut slow, c);
            }
            assert_eq!(fast, slow, "{s:?}");
        }
    }

    #[test]
    fn split_halves_join_to_the_full_document() {
        let m = MsgData {
            client_msg_id: "x".into(),
            seq: 123,
            ..Default::default()
        };
        let (p, s) = encode_split(&m);
        assert_eq!(format!("{p}123{s}"), encode(&m));
    }
}
