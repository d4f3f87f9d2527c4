//! Conversation IDs and Kafka keys (reference §2.2 and §4.3).
//!
//! A message belongs to its *chat* conversation (`si_`, `g_`, `sg_`, `sn_`)
//! or, when it is a notification, to its *notification* conversation (`n_`).
//! The Kafka key is a different thing (the bare group ID or the sorted user
//! pair) and is never used to decide the conversation: OpenIM's habit of
//! taking the conversation of a whole key-batch from its first message files
//! messages in the wrong conversation when keys collide.

use super::session;
use crate::proto::MsgData;

/// The two user IDs in byte order, joined with `_`.
fn sorted_pair(a: &str, b: &str) -> String {
    prefixed_pair("", a, b)
}

/// `prefix` then `a` and `b` joined by `_`, the smaller first, built in one
/// allocation (conversation IDs are made for every message).
fn prefixed_pair(prefix: &str, a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut id = String::with_capacity(prefix.len() + lo.len() + 1 + hi.len());
    id.push_str(prefix);
    id.push_str(lo);
    id.push('_');
    id.push_str(hi);
    id
}

/// `prefix` then `s`, in one allocation.
fn prefixed(prefix: &str, s: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + s.len());
    id.push_str(prefix);
    id.push_str(s);
    id
}

/// The Kafka record key the msg RPC uses for `msg` (and we reuse for the
/// records we produce): the group ID for group chats, the sorted user pair
/// otherwise. `None` for unknown session types.
pub fn kafka_key(msg: &MsgData) -> Option<String> {
    match msg.session_type {
        session::WRITE_GROUP | session::READ_GROUP => Some(msg.group_id.clone()),
        session::SINGLE | session::NOTIFICATION => Some(sorted_pair(&msg.send_id, &msg.recv_id)),
        _ => None,
    }
}

/// Who a message is between: what its conversation IDs are computed from.
/// Borrowed from a decoded message ([`Parties::of`]) or straight from its
/// bytes (see [`scan`](crate::proto::scan::scan)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parties<'a> {
    /// `sessionType`.
    pub session_type: i32,
    /// `sendID`.
    pub send_id: &'a str,
    /// `recvID`.
    pub recv_id: &'a str,
    /// `groupID`.
    pub group_id: &'a str,
}

impl<'a> Parties<'a> {
    /// The parties of a decoded message.
    pub fn of(msg: &'a MsgData) -> Self {
        Self {
            session_type: msg.session_type,
            send_id: &msg.send_id,
            recv_id: &msg.recv_id,
            group_id: &msg.group_id,
        }
    }

    /// The chat conversation, or `None` for an unknown session type.
    pub fn chat_conversation_id(&self) -> Option<String> {
        match self.session_type {
            session::SINGLE => Some(prefixed_pair("si_", self.send_id, self.recv_id)),
            session::WRITE_GROUP => Some(prefixed("g_", self.group_id)),
            session::READ_GROUP => Some(prefixed("sg_", self.group_id)),
            session::NOTIFICATION => Some(prefixed_pair("sn_", self.send_id, self.recv_id)),
            _ => None,
        }
    }

    /// The notification conversation, or `None` for an unknown session
    /// type.
    pub fn notification_conversation_id(&self) -> Option<String> {
        match self.session_type {
            session::SINGLE | session::NOTIFICATION => {
                Some(prefixed_pair("n_", self.send_id, self.recv_id))
            }
            session::WRITE_GROUP | session::READ_GROUP => Some(prefixed("n_", self.group_id)),
            _ => None,
        }
    }
}

/// The chat conversation of `msg`, or `None` for an unknown session type.
pub fn chat_conversation_id(msg: &MsgData) -> Option<String> {
    Parties::of(msg).chat_conversation_id()
}

/// The notification conversation of `msg`, or `None` for an unknown session
/// type.
pub fn notification_conversation_id(msg: &MsgData) -> Option<String> {
    Parties::of(msg).notification_conversation_id()
}

/// Whether a conversation is a group conversation, which decides the size
/// of the seq block reserved in Mongo (+100 for groups, +50 otherwise).
pub fn is_group(conversation_id: &str) -> bool {
    conversation_id.starts_with("g_") || conversation_id.starts_with("sg_")
}

/// Seqs reserved in Mongo when the cached block of `conversation_id` cannot
/// hold `size` more messages (reference §5.1).
pub fn block_size(conversation_id: &str, size: i64) -> i64 {
    if size == 0 {
        0
    } else if is_group(conversation_id) {
        size + 100
    } else {
        size + 50
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(session_type: i32, send: &str, recv: &str, group: &str) -> MsgData {
        MsgData {
            session_type,
            send_id: send.into(),
            recv_id: recv.into(),
            group_id: group.into(),
            ..Default::default()
        }
    }

    #[test]
    fn single_chat_ids_sort_the_pair() {
        let m = msg(session::SINGLE, "u200", "u100", "");
        assert_eq!(chat_conversation_id(&m).unwrap(), "si_u100_u200");
        assert_eq!(notification_conversation_id(&m).unwrap(), "n_u100_u200");
        assert_eq!(kafka_key(&m).unwrap(), "u100_u200");
    }

    #[test]
    fn group_and_notification_chat_ids() {
        let g = msg(session::READ_GROUP, "u1", "", "g42");
        assert_eq!(chat_conversation_id(&g).unwrap(), "sg_g42");
        assert_eq!(notification_conversation_id(&g).unwrap(), "n_g42");
        assert_eq!(kafka_key(&g).unwrap(), "g42");
        let w = msg(session::WRITE_GROUP, "u1", "", "g7");
        assert_eq!(chat_conversation_id(&w).unwrap(), "g_g7");
        let n = msg(session::NOTIFICATION, "imAdmin", "u200", "");
        assert_eq!(chat_conversation_id(&n).unwrap(), "sn_imAdmin_u200");
        assert_eq!(notification_conversation_id(&n).unwrap(), "n_imAdmin_u200");
    }

    #[test]
    fn unknown_session_type_has_no_conversation() {
        let m = msg(9, "a", "b", "");
        assert!(chat_conversation_id(&m).is_none());
        assert!(notification_conversation_id(&m).is_none());
        assert!(kafka_key(&m).is_none());
    }

    #[test]
    fn block_sizes_follow_openim() {
        assert_eq!(block_size("sg_g1", 3), 103);
        assert_eq!(block_size("g_g1", 1), 101);
        assert_eq!(block_size("si_a_b", 3), 53);
        assert_eq!(block_size("n_a_b", 1), 51);
        assert_eq!(block_size("sg_g1", 0), 0);
    }
}
