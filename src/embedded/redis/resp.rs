//! RESP2 wire codec: client requests in, server replies out.
//!
//! This is the byte-level edge of the embedded Redis model. It is used by the
//! simulated Redis server (a socket in front of [`Engine`](super::Engine)) and
//! is meant to be fuzzed, so it treats every input as hostile: it never
//! panics, never trusts a length before the bytes behind it have arrived, and
//! rejects anything beyond fixed limits with a typed [`RespError`] instead of
//! buffering without bound.
//!
//! It assumes nothing about the commands themselves: a request is just a list
//! of binary-safe arguments. It must never allocate memory in proportion to a
//! length the peer merely *claims*.

use super::engine::Reply;

/// Most elements a request array may claim (same limit as Redis).
pub const MAX_ARRAY_LEN: i64 = 1024 * 1024;

/// Largest bulk string a request may carry (Redis' `proto-max-bulk-len`).
pub const MAX_BULK_LEN: i64 = 512 * 1024 * 1024;

/// Longest inline command line, newline included (Redis' `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE_LEN: usize = 64 * 1024;

/// Longest `*N` / `$N` header line before its CRLF. A valid header is at most
/// a sign and 19 digits; anything longer is garbage and is rejected early so
/// that a peer cannot make us buffer an endless header.
const MAX_HEADER_LEN: usize = 32;

/// Why a request could not be parsed. The connection that produced it should
/// be answered with `-ERR <message>` and closed, as Redis does; the buffer
/// cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// The `*N` header was not a number in `-1..=MAX_ARRAY_LEN`.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A `$N` header was not a number in `0..=MAX_BULK_LEN`.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// An element of a request array was not a bulk string.
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// A header line ran on without a CRLF, or had a CR not followed by LF.
    #[error("Protocol error: malformed header line")]
    MalformedHeader,
    /// Bulk data was not followed by CRLF.
    #[error("Protocol error: expected CRLF after bulk data")]
    MissingCrlf,
    /// An inline command line was longer than [`MAX_INLINE_LEN`].
    #[error("Protocol error: too big inline request")]
    InlineTooLong,
    /// An inline command line had an unterminated or badly closed quote.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// A parsed request: its arguments and how many bytes of the buffer it used.
pub type Parsed = (Vec<Vec<u8>>, usize);

/// Parses one client request from the front of `buf`.
///
/// Accepts a RESP array of bulk strings or an inline command (a line of
/// space-separated, optionally quoted words). Returns `Ok(None)` when `buf`
/// holds only a prefix of a request, `Ok(Some((args, consumed)))` when a whole
/// request is there. Call it again on `&buf[consumed..]` for pipelined
/// requests. An empty `args` (from `*0`, `*-1` or a blank inline line) is a
/// request the caller should skip without replying, as Redis does.
pub fn parse_command(buf: &[u8]) -> Result<Option<Parsed>, RespError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf),
        Some(_) => parse_inline(buf),
    }
}

/// Finds the CRLF ending a header that starts at `start`. Returns the header
/// text (without CRLF) and the position after the CRLF, or `None` if the line
/// is not complete yet.
fn header_line(buf: &[u8], start: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = buf.get(start..).unwrap_or_default();
    let window = &rest[..rest.len().min(MAX_HEADER_LEN + 2)];
    match window.iter().position(|&b| b == b'\r') {
        Some(cr) => match window.get(cr + 1) {
            Some(b'\n') => Ok(Some((&rest[..cr], start + cr + 2))),
            Some(_) => Err(RespError::MalformedHeader),
            None if cr < MAX_HEADER_LEN + 1 => Ok(None),
            None => Err(RespError::MalformedHeader),
        },
        None if rest.len() > MAX_HEADER_LEN => Err(RespError::MalformedHeader),
        None => Ok(None),
    }
}

/// Strict decimal parse in Redis' `string2ll` style: optional minus, no plus,
/// no leading zeros, no whitespace, must fit in `i64`.
pub(crate) fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] => return if neg { None } else { Some(0) },
        [b'0', ..] => return None,
        _ => {}
    }
    // Accumulate as a negative number so that i64::MIN parses.
    let mut acc: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        acc = acc.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if neg { Some(acc) } else { acc.checked_neg() }
}

fn parse_multibulk(buf: &[u8]) -> Result<Option<Parsed>, RespError> {
    let Some((line, mut pos)) = header_line(buf, 1)? else {
        return Ok(None);
    };
    let count = parse_i64(line).ok_or(RespError::InvalidMultibulkLength)?;
    if count > MAX_ARRAY_LEN {
        return Err(RespError::InvalidMultibulkLength);
    }
    if count <= 0 {
        return Ok(Some((Vec::new(), pos)));
    }
    // `count` is bounded by MAX_ARRAY_LEN, so the cast is lossless. Each
    // element needs at least 6 bytes (`$0\r\n\r\n`), which bounds the initial
    // allocation by what has actually arrived.
    let count = count as usize;
    let mut args = Vec::with_capacity(count.min(buf.len().saturating_sub(pos) / 6 + 1));
    for _ in 0..count {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => return Err(RespError::ExpectedBulk(char::from(other))),
        }
        let Some((line, data_start)) = header_line(buf, pos + 1)? else {
            return Ok(None);
        };
        let len = parse_i64(line)
            .filter(|n| (0..=MAX_BULK_LEN).contains(n))
            .ok_or(RespError::InvalidBulkLength)?;
        // Bounded by MAX_BULK_LEN (512 MiB), which fits any 64-bit usize.
        let data_end = data_start + len as usize;
        let Some(after) = buf.get(data_end..data_end + 2) else {
            return Ok(None);
        };
        if after != b"\r\n" {
            return Err(RespError::MissingCrlf);
        }
        args.push(buf[data_start..data_end].to_vec());
        pos = data_end + 2;
    }
    Ok(Some((args, pos)))
}

fn parse_inline(buf: &[u8]) -> Result<Option<Parsed>, RespError> {
    let window = &buf[..buf.len().min(MAX_INLINE_LEN)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_INLINE_LEN {
            Err(RespError::InlineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = match &buf[..nl] {
        [head @ .., b'\r'] => head,
        whole => whole,
    };
    Ok(Some((split_inline(line)?, nl + 1)))
}

fn is_inline_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline line into words. Double quotes allow `\n`, `\r`, `\t`,
/// `\b`, `\a`, `\\`, `\"` and `\xHH` escapes; single quotes allow only `\'`.
/// A closing quote must be followed by a space or the end of the line.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, RespError> {
    #[derive(PartialEq)]
    enum Mode {
        Plain,
        Double,
        Single,
    }
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && is_inline_space(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(args);
        }
        let mut word = Vec::new();
        let mut mode = Mode::Plain;
        loop {
            let Some(&c) = line.get(i) else {
                if mode != Mode::Plain {
                    return Err(RespError::UnbalancedQuotes);
                }
                break;
            };
            match mode {
                Mode::Plain => {
                    if is_inline_space(c) {
                        break;
                    }
                    match c {
                        b'"' => mode = Mode::Double,
                        b'\'' => mode = Mode::Single,
                        _ => word.push(c),
                    }
                    i += 1;
                }
                Mode::Double => {
                    if c == b'\\' && i + 1 < line.len() {
                        let e = line[i + 1];
                        let hex = (e == b'x')
                            .then(|| {
                                let hi = hex_val(*line.get(i + 2)?)?;
                                let lo = hex_val(*line.get(i + 3)?)?;
                                Some(hi * 16 + lo)
                            })
                            .flatten();
                        if let Some(byte) = hex {
                            word.push(byte);
                            i += 4;
                        } else {
                            word.push(match e {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 0x08,
                                b'a' => 0x07,
                                other => other,
                            });
                            i += 2;
                        }
                    } else if c == b'"' {
                        if line.get(i + 1).is_some_and(|&n| !is_inline_space(n)) {
                            return Err(RespError::UnbalancedQuotes);
                        }
                        i += 1;
                        break;
                    } else {
                        word.push(c);
                        i += 1;
                    }
                }
                Mode::Single => {
                    if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                        word.push(b'\'');
                        i += 2;
                    } else if c == b'\'' {
                        if line.get(i + 1).is_some_and(|&n| !is_inline_space(n)) {
                            return Err(RespError::UnbalancedQuotes);
                        }
                        i += 1;
                        break;
                    } else {
                        word.push(c);
                        i += 1;
                    }
                }
            }
        }
        args.push(word);
    }
}

/// Appends the decimal form of `n`.
fn push_int(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends a one-line reply (`+` or `-`). CR and LF would break the framing,
/// so they are replaced by spaces, which is what Redis does for errors.
fn push_line(out: &mut Vec<u8>, prefix: u8, text: &str) {
    out.push(prefix);
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// Appends the RESP2 encoding of `reply` to `out`.
pub fn encode_reply(reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Reply::Status(s) => push_line(out, b'+', s),
        Reply::Error(s) => push_line(out, b'-', s),
        Reply::Int(n) => {
            out.push(b':');
            push_int(out, *n);
            out.extend_from_slice(b"\r\n");
        }
        Reply::Bulk(b) => {
            out.push(b'$');
            push_int(out, b.len() as i64);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
        Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
        Reply::Array(items) => {
            out.push(b'*');
            push_int(out, items.len() as i64);
            out.extend_from_slice(b"\r\n");
            for item in items {
                encode_reply(item, out);
            }
        }
    }
}

/// Appends a request in the form clients send: a RESP array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    out.push(b'*');
    push_int(out, args.len() as i64);
    out.extend_from_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.push(b'$');
        push_int(out, a.len() as i64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cmd(args: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_command(args, &mut out);
        out
    }

    fn owned(args: &[&[u8]]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.to_vec()).collect()
    }

    #[test]
    fn parses_a_simple_array() {
        let buf = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let (args, used) = parse_command(buf).unwrap().unwrap();
        assert_eq!(args, owned(&[b"GET", b"k"]));
        assert_eq!(used, buf.len());
    }

    #[test]
    fn parses_binary_payloads() {
        let payload: &[u8] = b"a\r\nb\0\xff";
        let buf = cmd(&[b"SET", b"k", payload]);
        let (args, used) = parse_command(&buf).unwrap().unwrap();
        assert_eq!(args[2], payload);
        assert_eq!(used, buf.len());
    }

    #[test]
    fn parses_pipelined_requests_one_by_one() {
        let mut buf = cmd(&[b"CLIENT", b"SETINFO", b"LIB-NAME", b"redis-rs"]);
        buf.extend(cmd(&[b"CLIENT", b"SETINFO", b"LIB-VER", b"1.8.1"]));
        buf.extend_from_slice(b"PING\r\n");
        let mut rest = &buf[..];
        let mut seen = Vec::new();
        while let Some((args, used)) = parse_command(rest).unwrap() {
            seen.push(args);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[1][2], b"LIB-VER");
        assert_eq!(seen[2], owned(&[b"PING"]));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let buf = cmd(&[b"HSET", b"h", b"f", b"value with spaces", b""]);
        for cut in 0..buf.len() {
            assert_eq!(parse_command(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse_command(&buf).unwrap().is_some());
        let inline = b"SET k \"v 1\"\r\n";
        for cut in 0..inline.len() - 1 {
            assert_eq!(parse_command(&inline[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn inline_commands_and_quotes() {
        let parse = |s: &[u8]| parse_command(s).unwrap().unwrap().0;
        assert_eq!(parse(b"PING\r\n"), owned(&[b"PING"]));
        assert_eq!(parse(b"  set  k   v \n"), owned(&[b"set", b"k", b"v"]));
        assert_eq!(
            parse(b"SET k \"a b\\n\\x41\"\r\n"),
            owned(&[b"SET", b"k", b"a b\nA"])
        );
        assert_eq!(parse(b"ECHO 'it\\'s'\r\n"), owned(&[b"ECHO", b"it's"]));
        assert_eq!(parse(b"\r\n"), Vec::<Vec<u8>>::new());
        assert_eq!(
            parse_command(b"ECHO \"open\r\n"),
            Err(RespError::UnbalancedQuotes)
        );
        assert_eq!(
            parse_command(b"ECHO \"a\"b\r\n"),
            Err(RespError::UnbalancedQuotes)
        );
    }

    #[test]
    fn empty_arrays_are_skippable() {
        assert_eq!(parse_command(b"*0\r\n"), Ok(Some((vec![], 4))));
        assert_eq!(parse_command(b"*-1\r\n"), Ok(Some((vec![], 5))));
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert_eq!(
            parse_command(b"*x\r\n"),
            Err(RespError::InvalidMultibulkLength)
        );
        assert_eq!(
            parse_command(b"*01\r\n"),
            Err(RespError::InvalidMultibulkLength)
        );
        assert_eq!(
            parse_command(b"*1048577\r\n"),
            Err(RespError::InvalidMultibulkLength)
        );
        assert_eq!(
            parse_command(b"*1\r\n:1\r\n"),
            Err(RespError::ExpectedBulk(':'))
        );
        assert_eq!(
            parse_command(b"*1\r\n$-1\r\n"),
            Err(RespError::InvalidBulkLength)
        );
        assert_eq!(
            parse_command(b"*1\r\n$536870913\r\n"),
            Err(RespError::InvalidBulkLength)
        );
        assert_eq!(
            parse_command(b"*1\r\n$1\r\nab\r\n"),
            Err(RespError::MissingCrlf)
        );
        assert_eq!(parse_command(b"*1\rx"), Err(RespError::MalformedHeader));
        let long_header = [b"*".as_slice(), &[b'1'; 40]].concat();
        assert_eq!(parse_command(&long_header), Err(RespError::MalformedHeader));
        let long_inline = vec![b'a'; MAX_INLINE_LEN + 1];
        assert_eq!(parse_command(&long_inline), Err(RespError::InlineTooLong));
    }

    #[test]
    fn huge_claims_do_not_allocate() {
        // Claims 512 MiB but sends nothing: must simply wait for more bytes.
        assert_eq!(parse_command(b"*1\r\n$536870912\r\nab"), Ok(None));
        assert_eq!(parse_command(b"*1048576\r\n"), Ok(None));
    }

    #[test]
    fn strict_integers() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"+1",
            b"01",
            b" 1",
            b"1 ",
            b"9223372036854775808",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn encodes_replies() {
        let reply = Reply::Array(vec![
            Reply::Status("OK".into()),
            Reply::Error("ERR bad\r\nthing".into()),
            Reply::Int(-42),
            Reply::Bulk(b"hi".to_vec()),
            Reply::Nil,
            Reply::NilArray,
            Reply::Array(vec![]),
        ]);
        let mut out = Vec::new();
        encode_reply(&reply, &mut out);
        assert_eq!(
            out,
            b"*7\r\n+OK\r\n-ERR bad  thing\r\n:-42\r\n$2\r\nhi\r\n$-1\r\n*-1\r\n*0\r\n"
        );
        // The redis crate's own parser agrees with the framing.
        let parsed = redis::parse_redis_value(&out).unwrap();
        assert!(matches!(parsed, redis::Value::Array(ref v) if v.len() == 7));
    }

    proptest! {
        #[test]
        fn round_trip_split_anywhere(
            cmds in prop::collection::vec(
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6),
                1..4,
            ),
            chunks in prop::collection::vec(1usize..24, 1..8),
        ) {
            let mut wire = Vec::new();
            for c in &cmds {
                encode_command(c, &mut wire);
            }
            // Whole buffer: every command comes back, in order.
            let mut rest = &wire[..];
            let mut back = Vec::new();
            while let Some((args, used)) = parse_command(rest).unwrap() {
                back.push(args);
                rest = &rest[used..];
            }
            prop_assert!(rest.is_empty());
            prop_assert_eq!(&back, &cmds);

            // Delivered in pieces of arbitrary sizes: each arrival yields
            // complete commands only, and the stream ends fully consumed.
            let mut buffer = Vec::new();
            let mut got = Vec::new();
            let mut fed = 0;
            let mut sizes = chunks.iter().cycle();
            while fed < wire.len() {
                let n = (*sizes.next().unwrap()).min(wire.len() - fed);
                buffer.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
                while let Some((args, used)) = parse_command(&buffer).unwrap() {
                    got.push(args);
                    buffer.drain(..used);
                }
            }
            prop_assert!(buffer.is_empty());
            prop_assert_eq!(&got, &cmds);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut rest = &bytes[..];
            // Each successful parse consumes at least one byte, so this ends.
            while let Ok(Some((_, used))) = parse_command(rest) {
                prop_assert!(used > 0 && used <= rest.len());
                rest = &rest[used..];
            }
        }

        #[test]
        fn arbitrary_bytes_after_a_header_never_panic(
            n in -3i64..2_000_000,
            tail in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut buf = format!("*{n}\r\n").into_bytes();
            buf.extend(tail);
            let _ = parse_command(&buf);
        }
    }
}
