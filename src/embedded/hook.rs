//! A conversation hook that remembers what it was told.

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::ports::hook::HookError;
use crate::ports::{BoxFuture, ConversationHook, NewConversation};

/// Records every new-conversation announcement (duplicates collapse, as the
/// conversation service's creation is idempotent).
#[derive(Clone, Default)]
pub struct EmbeddedHook {
    seen: Arc<Mutex<BTreeSet<NewConversation>>>,
    calls: Arc<Mutex<u64>>,
}

impl EmbeddedHook {
    /// The conversation IDs announced so far, sorted.
    pub fn conversations(&self) -> BTreeSet<String> {
        self.seen
            .lock()
            .iter()
            .map(|c| c.conversation_id.clone())
            .collect()
    }

    /// How many calls were made, repeats included.
    pub fn calls(&self) -> u64 {
        *self.calls.lock()
    }
}

impl ConversationHook for EmbeddedHook {
    fn created(&self, conv: NewConversation) -> BoxFuture<'_, Result<(), HookError>> {
        *self.calls.lock() += 1;
        self.seen.lock().insert(conv);
        Box::pin(std::future::ready(Ok(())))
    }
}
