//! Kafka headers of a `toRedis` record → the message context.
//!
//! `MsgContext::from_headers` reads values by position (OpenIM's rule) and
//! must never panic; `to_headers` writes exactly OpenIM's four keys in order
//! and reads back to the same context; and the transfer stage forwards a
//! record's headers untouched exactly when they are OpenIM's four keys in
//! order, else writes the four afresh from the context; headers over the
//! limits (`Limits::check_record`) refuse the record, and only they do.

#![no_main]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use msgtransfer::domain::context::{HEADER_KEYS, Header, MsgContext};
use msgtransfer::domain::limits::Limits;
use msgtransfer::embedded::redis::EmbeddedRedis;
use msgtransfer::pipeline::consumer::Handler;
use msgtransfer::pipeline::transfer::Transfer;
use msgtransfer::proto::MsgData;
use msgtransfer_fuzz::{record, transfer_handler};
use prost::Message;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Headers; a key index below 4 picks OpenIM's key (so canonical sets
    /// are reachable), anything else uses `key` as it is.
    headers: Vec<(u8, String, Vec<u8>)>,
}

static TRANSFER: LazyLock<Transfer<EmbeddedRedis>> = LazyLock::new(|| transfer_handler(1_000_000));

static VALUE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    MsgData {
        send_id: "u1".into(),
        recv_id: "u2".into(),
        client_msg_id: "c1".into(),
        session_type: 1,
        content_type: 101,
        content: b"{\"content\":\"hi\"}".to_vec(),
        ..Default::default()
    }
    .encode_to_vec()
});

fn lossy(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

fuzz_target!(|input: Input| {
    let headers: Vec<Header> = input
        .headers
        .into_iter()
        .map(|(k, key, value)| match HEADER_KEYS.get(usize::from(k)) {
            Some(known) => (known.to_string(), value),
            None => (key, value),
        })
        .collect();

    let ctx = MsgContext::from_headers(&headers);
    let at = |i: usize| headers.get(i).map(|(_, v)| lossy(v)).unwrap_or_default();
    assert_eq!(ctx.operation_id, at(0));
    assert_eq!(ctx.op_user_id, at(1));
    assert_eq!(ctx.platform, at(2));
    assert_eq!(ctx.conn_id, at(3));

    let out = ctx.to_headers();
    assert_eq!(out.len(), 4);
    for ((k, v), (want_key, i)) in out.iter().zip(HEADER_KEYS.iter().zip(0..)) {
        assert_eq!(k, want_key);
        assert_eq!(v, at(i).as_bytes());
    }
    assert_eq!(MsgContext::from_headers(&out), ctx);
    let op = ctx.operation_id.as_str();
    assert_eq!(MsgContext::aggregate([op]).operation_id, ctx.operation_id);
    let agg = MsgContext::aggregate([op, op]);
    assert_eq!(agg.operation_id, format!("{0}${0}", ctx.operation_id));
    assert!(agg.op_user_id.is_empty() && agg.platform.is_empty() && agg.conn_id.is_empty());

    // The transfer stage on a valid message with these headers.
    let canonical = headers.len() == 4 && headers.iter().zip(HEADER_KEYS).all(|((k, _), w)| k == w);
    let decoded = TRANSFER.decode(&record("toRedis", b"u1_u2", &VALUE, headers.clone()));
    let within = Limits::default()
        .check_record(VALUE.len(), &headers)
        .is_ok();
    let items = match decoded {
        Ok(items) => {
            assert!(within, "headers over the limits accepted");
            items
        }
        Err(rejection) => {
            assert!(
                !within,
                "a valid message refused for its headers: {rejection:?}"
            );
            return;
        }
    };
    assert_eq!(items.len(), 1);
    let item = &items[0].1;
    assert_eq!(item.context(), ctx);
    assert_eq!(item.operation_id(), ctx.operation_id);
    if canonical {
        assert_eq!(
            &item.headers[..],
            &headers[..],
            "canonical headers not forwarded as they are"
        );
    } else {
        assert_eq!(&item.headers[..], &out[..]);
    }
});
