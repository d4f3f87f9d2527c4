//! RESP2 requests, as the embedded Redis server reads them off a socket.
//!
//! `parse_command` must never panic; a parsed request must consume at least
//! one byte and no more than the buffer; every strict prefix of a parsed
//! request must be "incomplete" (a server waits for the rest); the same
//! request followed by anything must parse the same; the arguments, encoded
//! back with `encode_command`, must parse to themselves using the whole
//! encoding; and the remainder (pipelining) is fed again until the buffer
//! is used up, incomplete or refused.

#![no_main]

use libfuzzer_sys::fuzz_target;
use msgtransfer::embedded::redis::{encode_command, parse_command};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // Each round consumes at least one byte, so this ends.
    while !rest.is_empty() {
        let parsed = parse_command(rest);
        let Ok(Some((args, used))) = parsed else {
            // Incomplete or refused: the server stops here either way.
            break;
        };
        assert!(used >= 1, "a request consumed nothing");
        assert!(
            used <= rest.len(),
            "consumed {used} of {} bytes",
            rest.len()
        );

        // The request alone parses the same, and none of its strict
        // prefixes is complete (checked at a few cut points; all of them
        // for short requests).
        assert_eq!(parse_command(&rest[..used]), Ok(Some((args.clone(), used))));
        let cuts: Vec<usize> = if used <= 64 {
            (0..used).collect()
        } else {
            vec![0, 1, used / 2, used - 2, used - 1]
        };
        for cut in cuts {
            assert_eq!(
                parse_command(&rest[..cut]),
                Ok(None),
                "a prefix of {cut} of a {used} byte request is not incomplete"
            );
        }

        // Encoded back as a multibulk request, the arguments parse to
        // themselves, using exactly the encoding.
        let mut enc = Vec::new();
        encode_command(&args, &mut enc);
        if args.is_empty() {
            // `*0\r\n` is the empty request.
            assert_eq!(parse_command(&enc), Ok(Some((Vec::new(), enc.len()))));
        } else {
            assert_eq!(parse_command(&enc), Ok(Some((args.clone(), enc.len()))));
        }

        rest = &rest[used..];
    }
});
