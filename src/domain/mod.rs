//! Pure rules of OpenIM's message transfer: no IO, no clock, no randomness.
//!
//! Everything here is a function of its arguments, so the pipeline, the
//! simulator and the checker all apply exactly the same rules. The constants
//! are OpenIM's (reference §3.1); the rules are reference §4–§8.

pub mod bucket;
pub mod cache_json;
pub mod categorise;
pub mod context;
pub mod conversation;
pub mod limits;
pub mod model;
pub mod options;
pub mod receipt;

/// Session types (`MsgData.sessionType`).
pub mod session {
    /// One-to-one chat.
    pub const SINGLE: i32 = 1;
    /// Legacy "write" group; conversation `g_<groupID>`.
    pub const WRITE_GROUP: i32 = 2;
    /// The group type in use ("super group"); conversation `sg_<groupID>`.
    pub const READ_GROUP: i32 = 3;
    /// System notification chat; conversation `sn_<a>_<b>`.
    pub const NOTIFICATION: i32 = 4;
}

/// Content types MsgTransfer gives meaning to.
pub mod content {
    /// Plain text.
    pub const TEXT: i32 = 101;
    /// Picture.
    pub const PICTURE: i32 = 102;
    /// Typing indicator; sent with `history=false`, so pushed but not stored.
    pub const TYPING: i32 = 113;
    /// First content type of the notification range.
    pub const NOTIFICATION_BEGIN: i32 = 1000;
    /// Friend application approved (a common notification).
    pub const FRIEND_APPLICATION_APPROVED: i32 = 1201;
    /// Group member enter (a common group notification).
    pub const MEMBER_ENTER: i32 = 1510;
    /// Read receipt: the content carries `MarkAsReadTips`.
    pub const HAS_READ_RECEIPT: i32 = 2200;
    /// Last content type of the notification range.
    pub const NOTIFICATION_END: i32 = 5000;
}

/// Message status values (`MsgData.status`).
pub mod status {
    /// Being sent; the Mongo path rewrites it to [`SEND_SUCCESS`].
    pub const SENDING: i32 = 1;
    /// Sent.
    pub const SEND_SUCCESS: i32 = 2;
}

/// `MsgData.msgFrom` values.
pub mod msg_from {
    /// Sent by a user.
    pub const USER: i32 = 100;
    /// Sent by the system.
    pub const SYSTEM: i32 = 200;
}
