//! The per-message context OpenIM carries in Kafka headers.
//!
//! OpenIM's producer always writes four headers in this order —
//! `operationID`, `opUserID`, `platform`, `connID` — and its consumers rebuild
//! the context from header *values by position*, ignoring the keys
//! (reference §2.2). We read them the same way and always write all four.

use std::borrow::Cow;

/// A Kafka header: key and raw value.
pub type Header = (String, Vec<u8>);

/// The header keys OpenIM writes, in order.
pub const HEADER_KEYS: [&str; 4] = ["operationID", "opUserID", "platform", "connID"];

/// The request context of one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MsgContext {
    /// Trace ID of the request that sent the message.
    pub operation_id: String,
    /// The user on whose behalf it was sent.
    pub op_user_id: String,
    /// The sender's platform number, as text.
    pub platform: String,
    /// The gateway connection it came in on.
    pub conn_id: String,
}

/// The value of the header at position `i` as text: empty when there is
/// none, read lossily when it is not UTF-8 (Go would keep the bytes; these
/// are IDs, never binary). Read for every message, so valid text (nearly
/// always ASCII) is checked with `from_utf8`, several times faster than
/// `from_utf8_lossy`, which walks it chunk by chunk.
pub fn header_text(headers: &[Header], i: usize) -> Cow<'_, str> {
    headers
        .get(i)
        .map(|(_, v)| match std::str::from_utf8(v) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(v),
        })
        .unwrap_or_default()
}

impl MsgContext {
    /// Rebuilds a context from headers by position ([`header_text`]);
    /// missing positions are empty, extra headers are ignored.
    pub fn from_headers(headers: &[Header]) -> Self {
        let at = |i: usize| header_text(headers, i).into_owned();
        Self {
            operation_id: at(0),
            op_user_id: at(1),
            platform: at(2),
            conn_id: at(3),
        }
    }

    /// The four positional headers of this context.
    pub fn to_headers(&self) -> Vec<Header> {
        let values = [
            &self.operation_id,
            &self.op_user_id,
            &self.platform,
            &self.conn_id,
        ];
        HEADER_KEYS
            .iter()
            .zip(values)
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// The context of a record aggregating several messages (a `toMongo`
    /// record), given their operation IDs: the IDs joined with `$`, nothing
    /// else, as OpenIM does for a key-batch.
    pub fn aggregate<'a>(operation_ids: impl IntoIterator<Item = &'a str>) -> Self {
        let ids: Vec<&str> = operation_ids.into_iter().collect();
        Self {
            operation_id: ids.join("$"),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_by_position_not_key() {
        let h = vec![
            ("x".to_string(), b"op-1".to_vec()),
            ("y".to_string(), b"u9".to_vec()),
            ("platform".to_string(), b"5".to_vec()),
        ];
        let c = MsgContext::from_headers(&h);
        assert_eq!(c.operation_id, "op-1");
        assert_eq!(c.op_user_id, "u9");
        assert_eq!(c.platform, "5");
        assert_eq!(c.conn_id, "");
        let out = c.to_headers();
        assert_eq!(out.len(), 4);
        assert_eq!(out[0], ("operationID".to_string(), b"op-1".to_vec()));
        assert_eq!(out[3], ("connID".to_string(), Vec::new()));
        assert_eq!(MsgContext::from_headers(&out), c);
    }

    #[test]
    fn aggregate_joins_operation_ids() {
        let a = MsgContext {
            operation_id: "a".into(),
            op_user_id: "u".into(),
            ..Default::default()
        };
        let b = MsgContext {
            operation_id: "b".into(),
            ..Default::default()
        };
        let agg = MsgContext::aggregate([a.operation_id.as_str(), &b.operation_id]);
        assert_eq!(agg.operation_id, "a$b");
        assert_eq!(agg.op_user_id, "");
    }
}
