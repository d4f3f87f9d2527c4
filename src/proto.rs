//! Protobuf types generated from `proto/` by prost at build time.
//!
//! The `.proto` files are our own, written from OpenIM's field numbers, and
//! `tests/vectors.rs` proves they are wire-identical to OpenIM's schema using
//! records encoded by a reference protobuf runtime.

#![allow(missing_docs)] // generated code

/// `openim.sdkws`: the message itself and the JSON payloads we parse.
pub mod sdkws {
    include!(concat!(env!("OUT_DIR"), "/openim.sdkws.rs"));
}

/// `openim.msg`: the Kafka record envelopes.
pub mod msg {
    include!(concat!(env!("OUT_DIR"), "/openim.msg.rs"));
}

pub use msg::{MsgDataToMongoByMq, MsgDataToMq, PushMsgDataToMq};
pub use sdkws::{MarkAsReadTips, MsgData, NotificationElem, OfflinePushInfo};

pub mod scan;
