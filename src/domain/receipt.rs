//! Read receipts (content type 2200, reference §7.1).
//!
//! The content is `NotificationElem` JSON (`{"detail": "<json>"}`) whose
//! `detail` is `MarkAsReadTips` JSON. The effective read seq is the larger of
//! `hasReadSeq` and the largest of `seqs`. Field names are matched the way
//! Go's `encoding/json` matches them (exact first, then case-insensitively),
//! because the Go msg RPC wrote them.

use serde_json::{Map, Value};

/// One user's read position in one conversation, from a receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadReceipt {
    /// The user who read.
    pub user_id: String,
    /// The conversation they read in.
    pub conversation_id: String,
    /// Everything up to and including this seq is read.
    pub read_seq: i64,
}

/// Why a receipt's content could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The content is not a `NotificationElem` JSON object.
    #[error("content is not NotificationElem JSON: {0}")]
    Envelope(String),
    /// `detail` is not `MarkAsReadTips` JSON.
    #[error("detail is not MarkAsReadTips JSON: {0}")]
    Tips(String),
}

/// Looks a field up the way Go does: exact name, else case-insensitive.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn string_field(obj: &Map<String, Value>, name: &str) -> Result<String, String> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{name} is {other}, not a string")),
    }
}

fn int_value(v: &Value, name: &str) -> Result<i64, String> {
    v.as_i64()
        .ok_or_else(|| format!("{name} is {v}, not an int64"))
}

/// Parses a receipt's content. `Ok(None)` means a well-formed receipt that
/// OpenIM ignores (empty conversation ID or negative `hasReadSeq`).
pub fn parse(content: &[u8]) -> Result<Option<ReadReceipt>, ReceiptError> {
    let envelope: Value =
        serde_json::from_slice(content).map_err(|e| ReceiptError::Envelope(e.to_string()))?;
    let Value::Object(envelope) = envelope else {
        return Err(ReceiptError::Envelope("not an object".into()));
    };
    let detail = string_field(&envelope, "detail").map_err(ReceiptError::Envelope)?;
    let tips: Value =
        serde_json::from_str(&detail).map_err(|e| ReceiptError::Tips(e.to_string()))?;
    let Value::Object(tips) = tips else {
        return Err(ReceiptError::Tips("not an object".into()));
    };
    let user_id = string_field(&tips, "markAsReadUserID").map_err(ReceiptError::Tips)?;
    let conversation_id = string_field(&tips, "conversationID").map_err(ReceiptError::Tips)?;
    let has_read_seq = match field(&tips, "hasReadSeq") {
        None | Some(Value::Null) => 0,
        Some(v) => int_value(v, "hasReadSeq").map_err(ReceiptError::Tips)?,
    };
    let mut max_seq = has_read_seq;
    match field(&tips, "seqs") {
        None | Some(Value::Null) => {}
        Some(Value::Array(seqs)) => {
            for s in seqs {
                max_seq = max_seq.max(int_value(s, "seqs[]").map_err(ReceiptError::Tips)?);
            }
        }
        Some(other) => return Err(ReceiptError::Tips(format!("seqs is {other}, not a list"))),
    }
    if conversation_id.is_empty() || has_read_seq < 0 {
        return Ok(None);
    }
    Ok(Some(ReadReceipt {
        user_id,
        conversation_id,
        read_seq: max_seq,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(tips: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "detail": tips })).unwrap()
    }

    #[test]
    fn effective_seq_is_the_max_of_has_read_and_seqs() {
        let c = content(
            r#"{"markAsReadUserID":"u200","conversationID":"si_u100_u200","seqs":[5,7,9],"hasReadSeq":8}"#,
        );
        let r = parse(&c).unwrap().unwrap();
        assert_eq!(r.user_id, "u200");
        assert_eq!(r.conversation_id, "si_u100_u200");
        assert_eq!(r.read_seq, 9);
    }

    #[test]
    fn field_names_match_case_insensitively_like_go() {
        let c = content(r#"{"markasreaduserid":"u1","CONVERSATIONID":"c","hasreadseq":3}"#);
        assert_eq!(parse(&c).unwrap().unwrap().read_seq, 3);
    }

    #[test]
    fn empty_conversation_or_negative_seq_is_ignored() {
        assert_eq!(parse(&content(r#"{"hasReadSeq":3}"#)).unwrap(), None);
        assert_eq!(
            parse(&content(r#"{"conversationID":"c","hasReadSeq":-1}"#)).unwrap(),
            None
        );
    }

    #[test]
    fn broken_json_is_an_error() {
        assert!(matches!(
            parse(b"{not json"),
            Err(ReceiptError::Envelope(_))
        ));
        assert!(matches!(
            parse(&content("[1,2")),
            Err(ReceiptError::Tips(_))
        ));
        assert!(matches!(
            parse(&content(r#"{"conversationID":"c","hasReadSeq":"7"}"#)),
            Err(ReceiptError::Tips(_))
        ));
        assert!(matches!(
            parse(&content(r#"{"conversationID":"c","seqs":[1.5]}"#)),
            Err(ReceiptError::Tips(_))
        ));
    }
}
