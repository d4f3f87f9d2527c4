//! The new-conversation hook (reference §5.5).
//!
//! When a chat conversation receives its very first stored message (seq 1),
//! OpenIM asks the conversation service to create the conversation rows.
//! Production wires this to the RPC; the embedded and simulated hooks record
//! the calls. Creation is idempotent on the conversation service's side, so
//! calling again after a redelivery is harmless, and we call it until it
//! succeeds instead of logging and forgetting like OpenIM.

use super::BoxFuture;

/// The facts the conversation service needs to create a conversation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NewConversation {
    /// The chat conversation ID (`si_…`, `sg_…`, `sn_…`, `g_…`).
    pub conversation_id: String,
    /// Session type of the first message.
    pub session_type: i32,
    /// Sender of the first message.
    pub send_id: String,
    /// Receiver of the first message (single and notification chats).
    pub recv_id: String,
    /// Group of the first message (group chats).
    pub group_id: String,
    /// Operation ID to send with the call.
    pub operation_id: String,
}

/// Why the hook failed; always worth retrying.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("conversation hook failed: {0}")]
pub struct HookError(pub String);

/// Announces new conversations.
pub trait ConversationHook: Send + Sync + 'static {
    /// Creates the conversation rows for `conv`.
    fn created(&self, conv: NewConversation) -> BoxFuture<'_, Result<(), HookError>>;
}
