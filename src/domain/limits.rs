//! Hard limits on what one input record may carry.
//!
//! The service reads records it did not write. Before a record is processed
//! at all, it is held to these limits; a record over any of them is refused
//! whole (it goes to the dead-letter topic with the limit named in the
//! reason), never processed in part. The defaults are far above anything
//! OpenIM's own clients produce and low enough that one hostile record
//! cannot make a batch, a Redis script or a Mongo document unreasonably
//! large.

use crate::domain::context::Header;
use crate::proto::MsgData;
use crate::proto::scan::MsgSizes;

/// The limits. Every field is configurable under `rustTransfer` (see
/// `config`); the names there are given with each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `maxRecordBytes`: an input record's value, in bytes.
    pub record_bytes: usize,
    /// `maxMessagesPerRecord`: messages in one `toMongo` record.
    pub messages_per_record: usize,
    /// `maxContentBytes`: a message's `content`, and its other free-form
    /// payloads (`ex`, `attachedInfo`, the offline push `ex`).
    pub content_bytes: usize,
    /// `maxFieldBytes`: any other string field: IDs, nickname, face URL,
    /// push title and description, each option key, each `atUserIDList`
    /// entry.
    pub field_bytes: usize,
    /// `maxOptions`: entries of a message's `options` map.
    pub options: usize,
    /// `maxAtUsers`: entries of a message's `atUserIDList`.
    pub at_users: usize,
    /// `maxHeaders`: headers of an input record.
    pub headers: usize,
    /// `maxHeaderBytes`: one header's key plus value.
    pub header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            record_bytes: 1_000_000,
            messages_per_record: 10_000,
            content_bytes: 1_000_000,
            field_bytes: 4096,
            options: 64,
            at_users: 10_000,
            headers: 64,
            header_bytes: 16 * 1024,
        }
    }
}

/// A limit a record exceeds: which, by how much. Its text is the
/// dead-letter reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("over limit: {what} is {got}, limit {limit} ({setting})")]
pub struct OverLimit {
    /// What was measured, e.g. `content of message "c1"`.
    pub what: String,
    /// The measured size or count.
    pub got: usize,
    /// The limit.
    pub limit: usize,
    /// The configuration key that sets the limit.
    pub setting: &'static str,
}

fn at_most(
    what: impl Fn() -> String,
    got: usize,
    limit: usize,
    setting: &'static str,
) -> Result<(), OverLimit> {
    if got > limit {
        return Err(OverLimit {
            what: what(),
            got,
            limit,
            setting,
        });
    }
    Ok(())
}

impl Limits {
    /// Checks an input record's value size and headers.
    pub fn check_record(&self, value_len: usize, headers: &[Header]) -> Result<(), OverLimit> {
        at_most(
            || "the record value (bytes)".into(),
            value_len,
            self.record_bytes,
            "maxRecordBytes",
        )?;
        self.check_headers(headers)
    }

    /// Checks an input record's headers: how many, and each one's size.
    pub fn check_headers(&self, headers: &[Header]) -> Result<(), OverLimit> {
        at_most(
            || "the number of headers".into(),
            headers.len(),
            self.headers,
            "maxHeaders",
        )?;
        for (k, v) in headers {
            at_most(
                || format!("header {:?} (bytes)", truncated(k)),
                k.len() + v.len(),
                self.header_bytes,
                "maxHeaderBytes",
            )?;
        }
        Ok(())
    }

    /// Checks the number of messages in one record.
    pub fn check_count(&self, messages: usize) -> Result<(), OverLimit> {
        at_most(
            || "the number of messages in the record".into(),
            messages,
            self.messages_per_record,
            "maxMessagesPerRecord",
        )
    }

    /// Checks one message's fields.
    pub fn check_msg(&self, m: &MsgData) -> Result<(), OverLimit> {
        self.check_sizes(&MsgSizes::of(m), &m.client_msg_id)
    }

    /// Checks one message's fields by their sizes (see
    /// [`scan`](crate::proto::scan::scan), which reads them without decoding
    /// the message); `client_msg_id` names the message in the reason.
    pub fn check_sizes(&self, s: &MsgSizes, client_msg_id: &str) -> Result<(), OverLimit> {
        let id = || truncated(client_msg_id);
        let sized = |name: &str, len, limit, setting| {
            at_most(
                || format!("{name} of message {:?} (bytes)", id()),
                len,
                limit,
                setting,
            )
        };
        let field = |name, len| sized(name, len, self.field_bytes, "maxFieldBytes");
        let payload = |name, len| sized(name, len, self.content_bytes, "maxContentBytes");
        const IDS: [&str; 7] = [
            "sendID",
            "recvID",
            "groupID",
            "clientMsgID",
            "serverMsgID",
            "senderNickname",
            "senderFaceURL",
        ];
        for (name, len) in IDS.iter().zip(s.ids) {
            field(name, len)?;
        }
        for (name, len) in ["content", "attachedInfo", "ex"].iter().zip(s.payloads) {
            payload(name, len)?;
        }
        at_most(
            || format!("options of message {:?} (entries)", id()),
            s.options,
            self.options,
            "maxOptions",
        )?;
        field("an option key", s.longest_option_key)?;
        at_most(
            || format!("atUserIDList of message {:?} (entries)", id()),
            s.at_users,
            self.at_users,
            "maxAtUsers",
        )?;
        field("an atUserIDList entry", s.longest_at_user)?;
        if let Some([title, desc, sound, ex, signal]) = s.push {
            field("offlinePushInfo.title", title)?;
            field("offlinePushInfo.desc", desc)?;
            field("offlinePushInfo.iOSPushSound", sound)?;
            payload("offlinePushInfo.ex", ex)?;
            payload("offlinePushInfo.signalInfo", signal)?;
        }
        Ok(())
    }
}

/// At most 64 characters of `s`, for reasons that stay readable.
fn truncated(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::OfflinePushInfo;

    fn msg() -> MsgData {
        MsgData {
            send_id: "u1".into(),
            recv_id: "u2".into(),
            client_msg_id: "c1".into(),
            session_type: 1,
            content: b"{\"content\":\"hi\"}".to_vec(),
            ..Default::default()
        }
    }

    fn small() -> Limits {
        Limits {
            record_bytes: 100,
            messages_per_record: 3,
            content_bytes: 20,
            field_bytes: 8,
            options: 2,
            at_users: 2,
            headers: 2,
            header_bytes: 10,
        }
    }

    #[test]
    fn a_message_within_the_limits_passes() {
        assert_eq!(small().check_msg(&msg()), Ok(()));
        assert_eq!(Limits::default().check_msg(&msg()), Ok(()));
    }

    #[test]
    fn each_limit_names_its_setting() {
        let l = small();
        let over = |m: MsgData| l.check_msg(&m).unwrap_err().setting;
        assert_eq!(
            over(MsgData {
                content: vec![b'x'; 21],
                ..msg()
            }),
            "maxContentBytes"
        );
        assert_eq!(
            over(MsgData {
                ex: "x".repeat(21),
                ..msg()
            }),
            "maxContentBytes"
        );
        assert_eq!(
            over(MsgData {
                send_id: "x".repeat(9),
                ..msg()
            }),
            "maxFieldBytes"
        );
        assert_eq!(
            over(MsgData {
                client_msg_id: "x".repeat(9),
                ..msg()
            }),
            "maxFieldBytes"
        );
        let mut m = msg();
        for k in ["a", "b", "c"] {
            m.options.insert(k.into(), true);
        }
        assert_eq!(over(m), "maxOptions");
        let mut m = msg();
        m.options.insert("x".repeat(9), true);
        assert_eq!(over(m), "maxFieldBytes");
        assert_eq!(
            over(MsgData {
                at_user_id_list: vec!["a".into(); 3],
                ..msg()
            }),
            "maxAtUsers"
        );
        let push = OfflinePushInfo {
            title: "x".repeat(9),
            ..Default::default()
        };
        assert_eq!(
            over(MsgData {
                offline_push_info: Some(push),
                ..msg()
            }),
            "maxFieldBytes"
        );
    }

    #[test]
    fn records_are_held_to_size_count_and_header_limits() {
        let l = small();
        assert_eq!(l.check_record(100, &[]), Ok(()));
        assert_eq!(
            l.check_record(101, &[]).unwrap_err().setting,
            "maxRecordBytes"
        );
        let h = |k: &str, v: &str| (k.to_string(), v.as_bytes().to_vec());
        assert_eq!(l.check_record(1, &[h("a", "b"), h("c", "d")]), Ok(()));
        let three = [h("a", "b"), h("c", "d"), h("e", "f")];
        assert_eq!(l.check_record(1, &three).unwrap_err().setting, "maxHeaders");
        let big = l.check_record(1, &[h("key", "12345678")]).unwrap_err();
        assert_eq!(
            (big.setting, big.got, big.limit),
            ("maxHeaderBytes", 11, 10)
        );
        assert_eq!(l.check_count(3), Ok(()));
        assert_eq!(
            l.check_count(4).unwrap_err().setting,
            "maxMessagesPerRecord"
        );
    }

    #[test]
    fn the_reason_says_what_and_how_much() {
        let e = small()
            .check_msg(&MsgData {
                content: vec![b'x'; 25],
                ..msg()
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "over limit: content of message \"c1\" (bytes) is 25, limit 20 (maxContentBytes)"
        );
        assert_eq!(truncated(&"é".repeat(70)).chars().count(), 65);
    }
}
