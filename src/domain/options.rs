//! Reading `MsgData.options`, OpenIM's map of boolean switches.
//!
//! The rule (reference §4.1) is that a switch is on unless it is present and
//! false, so a message without options is a stored, pushed, counted, normal
//! (non-notification) message.

use std::collections::BTreeMap;

/// Option keys (OpenIM's constant names in comments).
pub mod key {
    /// `IsHistory`: the message is stored (gets a seq).
    pub const HISTORY: &str = "history";
    /// `IsPersistent`.
    pub const PERSISTENT: &str = "persistent";
    /// `IsOfflinePush`.
    pub const OFFLINE_PUSH: &str = "offlinePush";
    /// `IsUnreadCount`.
    pub const UNREAD_COUNT: &str = "unreadCount";
    /// `IsNotNotification`: false marks a notification.
    pub const NOT_NOTIFICATION: &str = "isNotNotification";
    /// `IsSendMsg`: a notification also appears as a chat message.
    pub const SEND_MSG: &str = "isSendMsg";
}

/// True unless `key` is present with the value false.
pub fn is_on(options: &BTreeMap<String, bool>, key: &str) -> bool {
    options.get(key).copied().unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_reads_as_true_and_only_explicit_false_is_false() {
        let mut o = BTreeMap::new();
        assert!(is_on(&o, key::HISTORY));
        o.insert(key::HISTORY.to_string(), true);
        assert!(is_on(&o, key::HISTORY));
        o.insert(key::HISTORY.to_string(), false);
        assert!(!is_on(&o, key::HISTORY));
        assert!(is_on(&o, key::OFFLINE_PUSH));
    }
}
