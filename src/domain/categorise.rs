//! The four-way categorisation of reference §4.2, applied per message.
//!
//! A message becomes one or two *units* of work, each bound to exactly one
//! conversation:
//! - a normal message goes to its chat conversation, stored (gets a seq) when
//!   `history` is on, pushed only otherwise;
//! - a notification (`isNotNotification` present and false) goes to its
//!   notification conversation (`n_…`), stored when `history` is on; when
//!   `isSendMsg` is on it *also* yields a stored clone in the chat
//!   conversation, whose options keep only `offlinePush`/`unreadCount`, while
//!   the original loses both.
//!
//! Unlike OpenIM, the conversation is computed per message, never per Kafka
//! key-batch.

use std::collections::BTreeMap;

use super::conversation;
use super::options::{is_on, key};
use crate::proto::MsgData;

/// One message bound for one conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Unit {
    /// The conversation the message is sequenced, cached and persisted in.
    pub conversation_id: String,
    /// The message as it will be cached, pushed and persisted (its `seq` is
    /// filled in by the allocator when `stored`).
    pub msg: MsgData,
    /// Whether the message gets a seq, a cache entry and a Mongo slot.
    pub stored: bool,
    /// Whether this is a chat conversation (not `n_…`). Only chat
    /// conversations update the sender's read seq and announce new
    /// conversations.
    pub chat: bool,
}

/// Why a message could not be categorised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CategoriseError {
    /// The session type is none of 1–4, so no conversation ID exists.
    #[error("unknown session type {0}")]
    UnknownSessionType(i32),
}

/// Categorises one decoded message into its units, in processing order:
/// the chat clone (if any) before the notification itself.
pub fn categorise(msg: MsgData) -> Result<Vec<Unit>, CategoriseError> {
    let chat_id = conversation::chat_conversation_id(&msg)
        .ok_or(CategoriseError::UnknownSessionType(msg.session_type))?;
    let is_notification = !is_on(&msg.options, key::NOT_NOTIFICATION);
    if !is_notification {
        let stored = is_on(&msg.options, key::HISTORY);
        return Ok(vec![Unit {
            conversation_id: chat_id,
            msg,
            stored,
            chat: true,
        }]);
    }

    let notification_id = conversation::notification_conversation_id(&msg)
        .ok_or(CategoriseError::UnknownSessionType(msg.session_type))?;
    let mut original = msg;
    let mut units = Vec::with_capacity(2);
    if is_on(&original.options, key::SEND_MSG) {
        let mut clone = original.clone();
        // A notification always has an options map (it carries
        // isNotNotification=false), so the clone's map is replaced, not kept.
        let mut clone_options = BTreeMap::new();
        clone_options.insert(
            key::OFFLINE_PUSH.to_string(),
            is_on(&original.options, key::OFFLINE_PUSH),
        );
        clone_options.insert(
            key::UNREAD_COUNT.to_string(),
            is_on(&original.options, key::UNREAD_COUNT),
        );
        clone.options = clone_options;
        original
            .options
            .insert(key::OFFLINE_PUSH.to_string(), false);
        original
            .options
            .insert(key::UNREAD_COUNT.to_string(), false);
        units.push(Unit {
            conversation_id: chat_id,
            msg: clone,
            stored: true,
            chat: true,
        });
    }
    let stored = is_on(&original.options, key::HISTORY);
    units.push(Unit {
        conversation_id: notification_id,
        msg: original,
        stored,
        chat: false,
    });
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::session;

    fn opts(pairs: &[(&str, bool)]) -> BTreeMap<String, bool> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn single(options: BTreeMap<String, bool>) -> MsgData {
        MsgData {
            send_id: "u2".into(),
            recv_id: "u1".into(),
            session_type: session::SINGLE,
            options,
            ..Default::default()
        }
    }

    #[test]
    fn message_without_options_is_a_stored_chat_message() {
        let units = categorise(single(BTreeMap::new())).unwrap();
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].conversation_id, "si_u1_u2");
        assert!(units[0].stored && units[0].chat);
    }

    #[test]
    fn history_false_is_pushed_only() {
        let units = categorise(single(opts(&[(key::HISTORY, false)]))).unwrap();
        assert_eq!(units.len(), 1);
        assert!(!units[0].stored);
    }

    #[test]
    fn notification_without_send_msg_goes_to_n_conversation_only() {
        let units = categorise(single(opts(&[
            (key::NOT_NOTIFICATION, false),
            (key::SEND_MSG, false),
        ])))
        .unwrap();
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].conversation_id, "n_u1_u2");
        assert!(units[0].stored && !units[0].chat);
    }

    #[test]
    fn notification_with_send_msg_is_cloned_into_the_chat() {
        let units = categorise(single(opts(&[
            (key::NOT_NOTIFICATION, false),
            (key::OFFLINE_PUSH, true),
            (key::HISTORY, false),
        ])))
        .unwrap();
        assert_eq!(units.len(), 2);
        let (clone, orig) = (&units[0], &units[1]);
        assert_eq!(clone.conversation_id, "si_u1_u2");
        assert!(clone.stored && clone.chat);
        assert_eq!(
            clone.msg.options,
            opts(&[(key::OFFLINE_PUSH, true), (key::UNREAD_COUNT, true)])
        );
        assert_eq!(orig.conversation_id, "n_u1_u2");
        assert!(!orig.stored, "history=false keeps the original unstored");
        assert_eq!(orig.msg.options.get(key::OFFLINE_PUSH), Some(&false));
        assert_eq!(orig.msg.options.get(key::UNREAD_COUNT), Some(&false));
    }

    #[test]
    fn unknown_session_type_is_an_error() {
        let mut m = single(BTreeMap::new());
        m.session_type = 7;
        assert_eq!(categorise(m), Err(CategoriseError::UnknownSessionType(7)));
    }
}
