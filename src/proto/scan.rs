//! Reading an encoded `sdkws.MsgData` without building it.
//!
//! The persistence stage stores each message as the bytes it arrived in and
//! needs only its seq and send time, plus the sizes the input limits check.
//! Decoding it into a [`MsgData`](super::MsgData) for that costs a dozen
//! string allocations and a hash map per message. [`scan`] walks the bytes
//! instead and accepts exactly what `MsgData::decode` accepts — same wire
//! type checks, UTF-8 checks on string fields, nested `offlinePushInfo` and
//! `options` entries, unknown fields skipped with the same group-nesting
//! limit — so a record is refused (and dead-lettered) in the same cases as
//! before. What it reports is what the decoded message would hold: a field
//! given twice counts with its last value, `options` counts distinct keys.

use bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};

/// Why bytes are not an `sdkws.MsgData`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// A key, varint or length that prost's decoding rejects.
    #[error("{0}")]
    Prost(#[from] prost::DecodeError),
    /// A field's wire type is not its declared type's.
    #[error("invalid wire type for field {tag}: {got:?}")]
    WireType {
        /// The field number.
        tag: u32,
        /// The wire type found.
        got: WireType,
    },
    /// A length runs past the end of the bytes.
    #[error("buffer underflow")]
    Underflow,
    /// A nested message's fields run past its declared length.
    #[error("delimited length exceeded")]
    LengthExceeded,
    /// A string field is not UTF-8.
    #[error("invalid string value: data is not UTF-8 encoded")]
    NotUtf8,
    /// An end-group key that closes no group.
    #[error("unexpected end group tag")]
    EndGroup,
    /// Groups nested deeper than prost's recursion limit.
    #[error("recursion limit reached")]
    TooDeep,
}

/// prost's recursion limit (`prost::RECURSION_LIMIT`): how deep decoding
/// may nest messages and unknown groups.
const RECURSION_LIMIT: u32 = 100;

/// The sizes of one message's fields that the input limits check, as the
/// decoded message would have them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MsgSizes {
    /// Bytes of `sendID`, `recvID`, `groupID`, `clientMsgID`,
    /// `serverMsgID`, `senderNickname`, `senderFaceURL`, in that order.
    pub ids: [usize; 7],
    /// Bytes of `content`, `attachedInfo`, `ex`.
    pub payloads: [usize; 3],
    /// Distinct `options` keys.
    pub options: usize,
    /// Bytes of the longest `options` key.
    pub longest_option_key: usize,
    /// Entries of `atUserIDList`.
    pub at_users: usize,
    /// Bytes of the longest `atUserIDList` entry.
    pub longest_at_user: usize,
    /// Bytes of `offlinePushInfo`'s `title`, `desc`, `iOSPushSound`, `ex`,
    /// `signalInfo`, when the message has one.
    pub push: Option<[usize; 5]>,
}

impl MsgSizes {
    /// The sizes of a decoded message.
    pub fn of(m: &super::MsgData) -> Self {
        MsgSizes {
            ids: [
                m.send_id.len(),
                m.recv_id.len(),
                m.group_id.len(),
                m.client_msg_id.len(),
                m.server_msg_id.len(),
                m.sender_nickname.len(),
                m.sender_face_url.len(),
            ],
            payloads: [m.content.len(), m.attached_info.len(), m.ex.len()],
            options: m.options.len(),
            longest_option_key: m.options.keys().map(String::len).max().unwrap_or(0),
            at_users: m.at_user_id_list.len(),
            longest_at_user: m.at_user_id_list.iter().map(String::len).max().unwrap_or(0),
            push: m.offline_push_info.as_ref().map(|p| {
                [
                    p.title.len(),
                    p.desc.len(),
                    p.i_os_push_sound.len(),
                    p.ex.len(),
                    p.signal_info.len(),
                ]
            }),
        }
    }
}

/// What [`scan`] reads from a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MsgScan<'a> {
    /// `sendID`.
    pub send_id: &'a str,
    /// `recvID`.
    pub recv_id: &'a str,
    /// `groupID`.
    pub group_id: &'a str,
    /// `sessionType`.
    pub session_type: i32,
    /// `contentType`.
    pub content_type: i32,
    /// `content`.
    pub content: &'a [u8],
    /// `options` entries in the order they came, a key given twice included
    /// twice (see [`MsgScan::option`]).
    pub options: Vec<(&'a str, bool)>,
    /// `clientMsgID`.
    pub client_msg_id: &'a str,
    /// Where `client_msg_id` starts in the scanned bytes (0 when absent).
    pub client_msg_id_at: usize,
    /// `seq`.
    pub seq: i64,
    /// `sendTime`.
    pub send_time: i64,
    /// The sizes the limits check.
    pub sizes: MsgSizes,
}

impl MsgScan<'_> {
    /// The value the decoded message's `options` map holds for `key`: the
    /// last entry with that key wins, as it does when prost fills the map.
    pub fn option(&self, key: &str) -> Option<bool> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    /// How many distinct keys `options` has.
    fn distinct_options(&self) -> usize {
        let keys = &self.options;
        if keys.len() <= 16 {
            // Count each key at its last occurrence; no allocation.
            (0..keys.len())
                .filter(|i| !keys[i + 1..].iter().any(|(k, _)| *k == keys[*i].0))
                .count()
        } else {
            let mut sorted: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
            sorted.sort_unstable();
            sorted.dedup();
            sorted.len()
        }
    }
}

/// Reads `bytes` as an `sdkws.MsgData`; fails exactly when
/// `MsgData::decode(bytes)` fails.
pub fn scan(bytes: &[u8]) -> Result<MsgScan<'_>, ScanError> {
    let mut buf = bytes;
    let mut out = MsgScan::default();
    while buf.has_remaining() {
        let (tag, wt) = decode_key(&mut buf)?;
        match tag {
            1..=5 | 7 | 8 => {
                let s = string(tag, wt, &mut buf)?;
                let i = match tag {
                    6.. => tag as usize - 2,
                    _ => tag as usize - 1,
                };
                out.sizes.ids[i] = s.len();
                match tag {
                    1 => out.send_id = s,
                    2 => out.recv_id = s,
                    3 => out.group_id = s,
                    4 => {
                        out.client_msg_id = s;
                        out.client_msg_id_at = bytes.len() - buf.len() - s.len();
                    }
                    _ => {}
                }
            }
            12 => {
                out.content = delimited(tag, wt, &mut buf)?;
                out.sizes.payloads[0] = out.content.len();
            }
            22 => out.sizes.payloads[1] = string(tag, wt, &mut buf)?.len(),
            23 => out.sizes.payloads[2] = string(tag, wt, &mut buf)?.len(),
            21 => {
                let s = string(tag, wt, &mut buf)?;
                out.sizes.at_users += 1;
                out.sizes.longest_at_user = out.sizes.longest_at_user.max(s.len());
            }
            14 => out.seq = varint(tag, wt, &mut buf)? as i64,
            15 => out.send_time = varint(tag, wt, &mut buf)? as i64,
            // int32 fields take the low 32 bits, as prost does.
            9 => out.session_type = varint(tag, wt, &mut buf)? as i32,
            11 => out.content_type = varint(tag, wt, &mut buf)? as i32,
            6 | 10 | 16 | 17 | 18 => {
                varint(tag, wt, &mut buf)?;
            }
            19 => {
                expect(tag, wt, WireType::LengthDelimited)?;
                // A missing key is the empty one, a missing value false;
                // a part given twice keeps its last value.
                let (mut key, mut value) = ("", false);
                nested(&mut buf, RECURSION_LIMIT, |tag, wt, buf, depth| {
                    match tag {
                        1 => key = string(tag, wt, buf)?,
                        // A bool is any varint, true unless zero.
                        2 => value = varint(tag, wt, buf)? != 0,
                        _ => skip(wt, tag, buf, depth)?,
                    }
                    Ok(None::<()>)
                })?;
                out.sizes.longest_option_key = out.sizes.longest_option_key.max(key.len());
                out.options.push((key, value));
            }
            20 => {
                expect(tag, wt, WireType::LengthDelimited)?;
                // Occurrences merge: a field keeps its last value.
                let mut push = out.sizes.push.unwrap_or_default();
                nested(&mut buf, RECURSION_LIMIT, |tag, wt, buf, depth| {
                    let at = match tag {
                        1 => Some(0),
                        2 => Some(1),
                        4 => Some(2),
                        3 => Some(3),
                        6 => Some(4),
                        _ => None,
                    };
                    match (at, tag) {
                        (Some(i), _) => push[i] = string(tag, wt, buf)?.len(),
                        (None, 5) => {
                            varint(tag, wt, buf)?;
                        }
                        (None, _) => skip(wt, tag, buf, depth)?,
                    }
                    Ok(None::<()>)
                })?;
                out.sizes.push = Some(push);
            }
            _ => skip(wt, tag, &mut buf, RECURSION_LIMIT)?,
        }
    }
    out.sizes.options = out.distinct_options();
    Ok(out)
}

fn expect(tag: u32, got: WireType, want: WireType) -> Result<(), ScanError> {
    if got == want {
        Ok(())
    } else {
        Err(ScanError::WireType { tag, got })
    }
}

fn varint(tag: u32, wt: WireType, buf: &mut &[u8]) -> Result<u64, ScanError> {
    expect(tag, wt, WireType::Varint)?;
    Ok(decode_varint(buf)?)
}

/// A length-delimited field's body.
fn delimited<'a>(tag: u32, wt: WireType, buf: &mut &'a [u8]) -> Result<&'a [u8], ScanError> {
    expect(tag, wt, WireType::LengthDelimited)?;
    body(buf)
}

fn body<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ScanError> {
    let len = decode_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(ScanError::Underflow);
    }
    let (head, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(head)
}

fn string<'a>(tag: u32, wt: WireType, buf: &mut &'a [u8]) -> Result<&'a str, ScanError> {
    std::str::from_utf8(delimited(tag, wt, buf)?).map_err(|_| ScanError::NotUtf8)
}

/// Walks a nested message at `depth` (its wire type already accepted) the
/// way prost's `merge_loop` does, handing each field to `field` with the
/// depth inside it; returns the last value `field` gave.
fn nested<'a, T>(
    buf: &mut &'a [u8],
    depth: u32,
    mut field: impl FnMut(u32, WireType, &mut &'a [u8], u32) -> Result<Option<T>, ScanError>,
) -> Result<Option<T>, ScanError> {
    if depth == 0 {
        return Err(ScanError::TooDeep);
    }
    let len = decode_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(ScanError::Underflow);
    }
    let limit = buf.len() - len as usize;
    let mut last = None;
    while buf.len() > limit {
        let (tag, wt) = decode_key(buf)?;
        if let Some(v) = field(tag, wt, buf, depth - 1)? {
            last = Some(v);
        }
    }
    if buf.len() != limit {
        return Err(ScanError::LengthExceeded);
    }
    Ok(last)
}

/// Skips an unknown field as prost's `skip_field` does, groups included.
fn skip(wt: WireType, tag: u32, buf: &mut &[u8], depth: u32) -> Result<(), ScanError> {
    if depth == 0 {
        return Err(ScanError::TooDeep);
    }
    let len = match wt {
        WireType::Varint => {
            decode_varint(buf)?;
            0
        }
        WireType::ThirtyTwoBit => 4,
        WireType::SixtyFourBit => 8,
        WireType::LengthDelimited => decode_varint(buf)?,
        WireType::StartGroup => loop {
            let (inner_tag, inner_wt) = decode_key(buf)?;
            match inner_wt {
                WireType::EndGroup if inner_tag == tag => break 0,
                WireType::EndGroup => return Err(ScanError::EndGroup),
                _ => skip(inner_wt, inner_tag, buf, depth - 1)?,
            }
        },
        WireType::EndGroup => return Err(ScanError::EndGroup),
    };
    if len > buf.len() as u64 {
        return Err(ScanError::Underflow);
    }
    buf.advance(len as usize);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{MsgData, OfflinePushInfo};
    use proptest::prelude::*;
    use prost::Message;

    fn full() -> MsgData {
        let mut m = MsgData {
            send_id: "u1".into(),
            recv_id: "u22".into(),
            group_id: "g333".into(),
            client_msg_id: "c4444".into(),
            server_msg_id: "s55555".into(),
            sender_platform_id: 5,
            sender_nickname: "nick".into(),
            sender_face_url: "https://f".into(),
            session_type: 3,
            msg_from: 100,
            content_type: 101,
            content: b"{\"content\":\"hi\"}".to_vec(),
            seq: 77,
            send_time: 1_700_000_000_123,
            create_time: 1_700_000_000_000,
            status: 2,
            is_read: true,
            at_user_id_list: vec!["a".into(), "bbbb".into()],
            attached_info: "att".into(),
            ex: "exex".into(),
            offline_push_info: Some(OfflinePushInfo {
                title: "t".into(),
                desc: "dd".into(),
                ex: "eee".into(),
                i_os_push_sound: "ssss".into(),
                i_os_badge_count: true,
                signal_info: "sig".into(),
            }),
            ..Default::default()
        };
        m.options.insert("history".into(), true);
        m.options.insert("unreadCount".into(), false);
        m
    }

    /// `scan` and prost agree on acceptance, and on what is read.
    fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
        let decoded = MsgData::decode(bytes);
        let scanned = scan(bytes);
        prop_assert_eq!(
            decoded.is_ok(),
            scanned.is_ok(),
            "{:?} / {:?}",
            decoded,
            scanned
        );
        if let (Ok(m), Ok(s)) = (decoded, scanned) {
            prop_assert_eq!(s.client_msg_id, m.client_msg_id.as_str());
            let at = s.client_msg_id_at;
            prop_assert_eq!(
                &bytes[at..at + s.client_msg_id.len()],
                m.client_msg_id.as_bytes()
            );
            prop_assert_eq!(s.seq, m.seq);
            prop_assert_eq!(s.send_time, m.send_time);
            prop_assert_eq!(&s.sizes, &MsgSizes::of(&m));
            prop_assert_eq!(
                (s.send_id, s.recv_id, s.group_id),
                (m.send_id.as_str(), m.recv_id.as_str(), m.group_id.as_str())
            );
            prop_assert_eq!(
                (s.session_type, s.content_type),
                (m.session_type, m.content_type)
            );
            prop_assert_eq!(s.content, m.content.as_slice());
            for k in m.options.keys() {
                prop_assert_eq!(s.option(k), m.options.get(k).copied());
            }
            // Only keys the map holds are found.
            for (k, _) in &s.options {
                prop_assert!(m.options.contains_key(*k));
            }
        }
        Ok(())
    }

    #[test]
    fn reads_what_decoding_gives() {
        let m = full();
        let bytes = m.encode_to_vec();
        let s = scan(&bytes).unwrap();
        assert_eq!(s.client_msg_id, "c4444");
        assert_eq!((s.seq, s.send_time), (77, 1_700_000_000_123));
        assert_eq!(s.sizes.ids, [2, 3, 4, 5, 6, 4, 9]);
        assert_eq!(s.sizes.payloads, [16, 3, 4]);
        assert_eq!((s.sizes.options, s.sizes.longest_option_key), (2, 11));
        assert_eq!((s.sizes.at_users, s.sizes.longest_at_user), (2, 4));
        assert_eq!(s.sizes.push, Some([1, 2, 4, 3, 3]));
        assert_eq!((s.send_id, s.recv_id, s.group_id), ("u1", "u22", "g333"));
        assert_eq!((s.session_type, s.content_type), (3, 101));
        assert_eq!(s.content, b"{\"content\":\"hi\"}");
        for (k, v) in &m.options {
            assert_eq!(s.option(k), Some(*v));
        }
        assert_eq!(s.option("absent"), None);
        assert_eq!(scan(&[]).unwrap(), MsgScan::default());
    }

    #[test]
    fn repeated_fields_count_as_decoding_merges_them() {
        let mut bytes = full().encode_to_vec();
        // The same option key again, a second push info setting only the
        // title, and a later clientMsgID.
        let mut again = MsgData::default();
        again.options.insert("history".into(), false);
        again.offline_push_info = Some(OfflinePushInfo {
            title: "longer title".into(),
            ..Default::default()
        });
        again.client_msg_id = "z".into();
        bytes.extend(again.encode_to_vec());
        let s = scan(&bytes).unwrap();
        assert_eq!(s.sizes.options, 2);
        assert_eq!(s.option("history"), Some(false), "the later entry wins");
        assert_eq!(s.sizes.push, Some([12, 2, 4, 3, 3]));
        assert_eq!(s.client_msg_id, "z");
        let first = full().encode_to_vec().len();
        assert!(s.client_msg_id_at > first, "the later ID's offset");
        assert_eq!(&bytes[s.client_msg_id_at..][..1], b"z");
        agree(&bytes).unwrap();
    }

    #[test]
    fn refuses_what_decoding_refuses() {
        let good = full().encode_to_vec();
        let cases: Vec<Vec<u8>> = vec![
            good[..good.len() - 1].to_vec(),
            vec![0x0a, 0x01, 0xff],                   // sendID not UTF-8
            vec![0x08, 0x01],                         // sendID as a varint
            vec![0x70, 0x80],                         // seq: truncated varint
            vec![0x00],                               // tag 0
            vec![0xa2, 0x01, 0x02, 0x0a],             // push info runs past the end
            vec![0x9a, 0x01, 0x03, 0x0a, 0x01, 0xff], // option key not UTF-8
            vec![0xa2, 0x01, 0x01, 0x0a, 0x01, 0x61], // push field past its length
            vec![0xfc, 0x07],                         // end group with no group
            vec![0xfb, 0x07, 0xfc, 0x08],             // group closed by another tag
        ];
        for bad in cases {
            assert!(MsgData::decode(bad.as_slice()).is_err(), "{bad:?}");
            assert!(scan(&bad).is_err(), "{bad:?}");
        }
        // Groups nested past the recursion limit, inside an unknown field.
        let deep = |n: usize| {
            let mut v = Vec::new();
            for _ in 0..n {
                v.extend([0xfb, 0x07]);
            }
            for _ in 0..n {
                v.extend([0xfc, 0x07]);
            }
            v
        };
        for n in [99, 100, 101] {
            agree(&deep(n)).unwrap();
        }
        // The same inside a push info and an options entry, one level down.
        for (tag, n) in [(0xa2u8, 98usize), (0xa2, 99), (0x9a, 98), (0x9a, 99)] {
            let inner = deep(n);
            let mut v = vec![tag, 0x01];
            prost::encoding::encode_varint(inner.len() as u64, &mut v);
            v.extend(inner);
            agree(&v).unwrap();
        }
        // A map field given with another wire type.
        agree(&[0x98, 0x01, 0x00]).unwrap();
    }

    proptest! {
        #[test]
        fn agrees_with_prost_on_any_bytes(
            junk in proptest::collection::vec(any::<u8>(), 0..48),
            cut in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
        ) {
            agree(&junk)?;
            let good = full().encode_to_vec();
            agree(&good[..cut.index(good.len() + 1)])?;
            // Junk spliced in anywhere.
            let mut spliced = good.clone();
            let i = at.index(good.len() + 1);
            spliced.splice(i..i, junk.iter().copied());
            agree(&spliced)?;
            let mut tail = good;
            tail.extend(&junk);
            agree(&tail)?;
        }

        #[test]
        fn agrees_with_prost_on_messages(
            ids in proptest::collection::vec(".{0,6}", 7),
            content in proptest::collection::vec(any::<u8>(), 0..20),
            keys in proptest::collection::vec("[a-c]{0,3}", 0..5),
            users in proptest::collection::vec(".{0,4}", 0..4),
            seq in any::<i64>(),
            push in any::<bool>(),
        ) {
            let m = MsgData {
                send_id: ids[0].clone(),
                recv_id: ids[1].clone(),
                group_id: ids[2].clone(),
                client_msg_id: ids[3].clone(),
                server_msg_id: ids[4].clone(),
                sender_nickname: ids[5].clone(),
                sender_face_url: ids[6].clone(),
                content,
                seq,
                send_time: seq.wrapping_mul(3),
                // Negative values too: ten-byte varints cut to 32 bits.
                session_type: (seq >> 32) as i32,
                content_type: seq as i32,
                options: keys.iter().map(|k| (k.clone(), k.len() % 2 == 0)).collect(),
                at_user_id_list: users,
                offline_push_info: push.then(|| OfflinePushInfo {
                    title: ids[0].clone(),
                    signal_info: ids[1].clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            agree(&m.encode_to_vec())?;
        }
    }
}
