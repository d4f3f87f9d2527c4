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

use super::conversation::Parties;
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

/// What a unit makes of the message it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The message as it came.
    Whole,
    /// The `isSendMsg` copy of a notification in the chat conversation: its
    /// options are only `offlinePush` and `unreadCount`, as the original had
    /// them.
    ChatCopy,
    /// A notification that has a chat copy: `offlinePush` and `unreadCount`
    /// are turned off.
    NotificationWithCopy,
}

impl Role {
    /// The message this unit carries, made from the message as it came.
    pub fn apply(self, mut msg: MsgData) -> MsgData {
        match self {
            Role::Whole => {}
            Role::ChatCopy => {
                // A notification always has an options map (it carries
                // isNotNotification=false), so the copy's map is replaced,
                // not kept.
                let mut options = BTreeMap::new();
                for k in [key::OFFLINE_PUSH, key::UNREAD_COUNT] {
                    options.insert(k.to_string(), is_on(&msg.options, k));
                }
                msg.options = options;
            }
            Role::NotificationWithCopy => {
                msg.options.insert(key::OFFLINE_PUSH.to_string(), false);
                msg.options.insert(key::UNREAD_COUNT.to_string(), false);
            }
        }
        msg
    }
}

/// A unit before its message is made: where it goes and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// See [`Unit::conversation_id`].
    pub conversation_id: String,
    /// How the unit's message is made from the original.
    pub role: Role,
    /// See [`Unit::stored`].
    pub stored: bool,
    /// See [`Unit::chat`].
    pub chat: bool,
}

/// Plans the units of a message from its parties and its `options` (given
/// as a lookup: `None` for an absent key), in processing order: the chat
/// copy (if any) before the notification itself. The plan reads only what
/// the original message says; [`Role::apply`] makes each unit's message.
pub fn plan(
    parties: Parties<'_>,
    option: impl Fn(&str) -> Option<bool>,
) -> Result<Vec<Plan>, CategoriseError> {
    let on = |k: &str| option(k).unwrap_or(true);
    let unknown = || CategoriseError::UnknownSessionType(parties.session_type);
    let chat_id = parties.chat_conversation_id().ok_or_else(unknown)?;
    if on(key::NOT_NOTIFICATION) {
        return Ok(vec![Plan {
            conversation_id: chat_id,
            role: Role::Whole,
            stored: on(key::HISTORY),
            chat: true,
        }]);
    }
    let notification_id = parties.notification_conversation_id().ok_or_else(unknown)?;
    let mut plans = Vec::with_capacity(2);
    let mut role = Role::Whole;
    if on(key::SEND_MSG) {
        plans.push(Plan {
            conversation_id: chat_id,
            role: Role::ChatCopy,
            stored: true,
            chat: true,
        });
        role = Role::NotificationWithCopy;
    }
    plans.push(Plan {
        conversation_id: notification_id,
        role,
        // Neither key the copy turns off decides storage.
        stored: on(key::HISTORY),
        chat: false,
    });
    Ok(plans)
}

/// Categorises one decoded message into its units, in processing order:
/// the chat copy (if any) before the notification itself.
pub fn categorise(msg: MsgData) -> Result<Vec<Unit>, CategoriseError> {
    let mut plans = plan(Parties::of(&msg), |k| msg.options.get(k).copied())?;
    let unit = |p: Plan, original: MsgData| Unit {
        conversation_id: p.conversation_id,
        msg: p.role.apply(original),
        stored: p.stored,
        chat: p.chat,
    };
    // Every plan has at least one unit; the last one takes the message.
    let last = plans.pop().expect("a plan has at least one unit");
    let mut units: Vec<Unit> = plans.into_iter().map(|p| unit(p, msg.clone())).collect();
    units.push(unit(last, msg));
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
