//! The Mongo document model of a stored message (reference §8.1).
//!
//! `MsgDataModel` is what a slot of a `msg` bucket holds under `msgs.N.msg`,
//! with OpenIM's BSON field names. Converting from `MsgData` applies the two
//! rules of OpenIM's persistence path: status "sending" becomes "sent", and
//! `content` becomes a string (each invalid UTF-8 byte a U+FFFD, as Go does).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::cache_json::go_lossy_string;
use super::status;
use crate::proto::MsgData;

/// `offline_push` of a stored message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflinePushModel {
    /// Notification title.
    pub title: String,
    /// Notification body.
    pub desc: String,
    /// Extra data for the push provider.
    pub ex: String,
    /// iOS sound name.
    pub ios_push_sound: String,
    /// Whether iOS should bump the badge.
    pub ios_badge_count: bool,
}

/// One stored message as a Mongo slot holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgDataModel {
    /// Sender user ID.
    pub send_id: String,
    /// Receiver user ID (single and notification chats).
    pub recv_id: String,
    /// Group ID (group chats).
    pub group_id: String,
    /// The sender's message ID: with the conversation, the message identity.
    pub client_msg_id: String,
    /// The msg RPC's message ID.
    pub server_msg_id: String,
    /// Sender platform.
    pub sender_platform_id: i32,
    /// Sender nickname at send time.
    pub sender_nickname: String,
    /// Sender avatar URL at send time.
    pub sender_face_url: String,
    /// Session type (1–4).
    pub session_type: i32,
    /// 100 user, 200 system.
    pub msg_from: i32,
    /// Content type.
    pub content_type: i32,
    /// Content as text.
    pub content: String,
    /// The seq this slot holds.
    pub seq: i64,
    /// Send time, ms.
    pub send_time: i64,
    /// Creation time, ms.
    pub create_time: i64,
    /// Status; never "sending" once stored.
    pub status: i32,
    /// Always false in storage.
    pub is_read: bool,
    /// Option switches, or null.
    pub options: Option<BTreeMap<String, bool>>,
    /// Offline push info, or null.
    pub offline_push: Option<OfflinePushModel>,
    /// Mentioned users, or null.
    pub at_user_id_list: Option<Vec<String>>,
    /// Attached info.
    pub attached_info: String,
    /// Extension field.
    pub ex: String,
}

impl MsgDataModel {
    /// The stored form of `msg` (which must carry its seq), reusing its
    /// strings.
    pub fn from_owned(msg: MsgData) -> Self {
        Self {
            send_id: msg.send_id,
            recv_id: msg.recv_id,
            group_id: msg.group_id,
            client_msg_id: msg.client_msg_id,
            server_msg_id: msg.server_msg_id,
            sender_platform_id: msg.sender_platform_id,
            sender_nickname: msg.sender_nickname,
            sender_face_url: msg.sender_face_url,
            session_type: msg.session_type,
            msg_from: msg.msg_from,
            content_type: msg.content_type,
            content: match String::from_utf8(msg.content) {
                Ok(text) => text,
                Err(e) => go_lossy_string(e.as_bytes()),
            },
            seq: msg.seq,
            send_time: msg.send_time,
            create_time: msg.create_time,
            status: if msg.status == status::SENDING {
                status::SEND_SUCCESS
            } else {
                msg.status
            },
            is_read: false,
            options: (!msg.options.is_empty()).then_some(msg.options),
            offline_push: msg.offline_push_info.map(|o| OfflinePushModel {
                title: o.title,
                desc: o.desc,
                ex: o.ex,
                ios_push_sound: o.i_os_push_sound,
                ios_badge_count: o.i_os_badge_count,
            }),
            at_user_id_list: (!msg.at_user_id_list.is_empty()).then_some(msg.at_user_id_list),
            attached_info: msg.attached_info,
            ex: msg.ex,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sending_becomes_sent_and_content_becomes_text() {
        let m = MsgData {
            status: status::SENDING,
            content: b"hi\xff".to_vec(),
            seq: 3,
            ..Default::default()
        };
        let d = MsgDataModel::from_owned(m);
        assert_eq!(d.status, status::SEND_SUCCESS);
        assert_eq!(d.content, "hi\u{fffd}");
        assert_eq!(d.seq, 3);
        assert_eq!(d.options, None);
        let m5 = MsgData {
            status: 5,
            ..Default::default()
        };
        assert_eq!(MsgDataModel::from_owned(m5).status, 5);
    }
}
