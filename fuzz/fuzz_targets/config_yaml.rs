//! OpenIM's configuration folder, as `msgtransfer run -c <folder>` reads it.
//!
//! The crate has no public function that parses one file's text (the YAML
//! reader is `config::tree::read`, private, and takes a folder), so the
//! target keeps a copy of the shipped `config/` folder in a temporary
//! directory and, per input, replaces one file with the fuzzer's bytes and
//! calls the public `config::load`. The first byte picks what is fuzzed:
//!
//! - `b % 9` in 0..=6: the file `FILES[b % 9]` (instance index `b / 9 % 3`
//!   for `openim-msgtransfer.yml`, else 0);
//! - 7: one environment override, `IMENV_<rest>` as `NAME=value`;
//! - 8: `config::parse_duration` on the rest, as text.
//!
//! `load` must never panic; an error must name one of the seven files (the
//! fuzzed one, except for the few rules that compare two files); a loaded
//! config must give a service config. A parsed duration must read back from
//! its nanoseconds and double when written twice.

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use msgtransfer::config::{self, parse_duration};

/// The files `load` reads, with the shipped text of each.
const FILES: [(&str, &str); 7] = [
    (
        "openim-msgtransfer.yml",
        include_str!("../../config/openim-msgtransfer.yml"),
    ),
    ("kafka.yml", include_str!("../../config/kafka.yml")),
    ("redis.yml", include_str!("../../config/redis.yml")),
    ("mongodb.yml", include_str!("../../config/mongodb.yml")),
    ("share.yml", include_str!("../../config/share.yml")),
    ("webhooks.yml", include_str!("../../config/webhooks.yml")),
    ("log.yml", include_str!("../../config/log.yml")),
];

/// A private copy of the shipped folder (one per fuzzing process).
static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("msgtransfer-fuzz-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the config copy");
    for (name, text) in FILES {
        std::fs::write(dir.join(name), text).expect("write the config copy");
    }
    // The shipped folder loads as it is.
    config::load(&dir, 0, &BTreeMap::new()).expect("the shipped config/ loads");
    dir
});

fn check_load(fuzzed: Option<&str>, index: usize, env: &BTreeMap<String, String>) {
    match config::load(&DIR, index, env) {
        Ok(cfg) => {
            assert_eq!(cfg.dir, *DIR);
            assert_eq!(cfg.index, index);
            assert!(!cfg.kafka.addresses.is_empty(), "no Kafka address");
            let _ = cfg.service_config();
        }
        Err(e) => {
            let names: Vec<&str> = FILES.iter().map(|(n, _)| *n).collect();
            assert!(
                names.contains(&e.file.as_str()),
                "error names no file: {e:?}"
            );
            let text = e.to_string();
            assert!(text.starts_with(&format!("{}: ", e.file)), "{text}");
            if let Some(f) = fuzzed {
                // kafka.yml's topics are compared with rustTransfer's
                // dead-letter topic, so that error may name kafka.yml.
                let cross = f == "openim-msgtransfer.yml" && e.file == "kafka.yml";
                assert!(e.file == f || cross, "fuzzing {f}, the error names {e}");
            }
        }
    }
}

fn check_duration(text: &str) {
    let Ok(d) = parse_duration(text) else {
        return;
    };
    assert_eq!(
        parse_duration(&format!("{}ns", d.as_nanos())),
        Ok(d),
        "{text:?}"
    );
    if text == text.trim() && text != "0" && !text.starts_with('+') {
        let twice = parse_duration(&format!("{text}{text}"));
        match d.checked_mul(2) {
            Some(dd) => assert_eq!(twice, Ok(dd), "{text:?} twice"),
            None => assert!(twice.is_err(), "{text:?} twice overflows: {twice:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 9 {
        i @ 0..=6 => {
            let (name, original) = FILES[usize::from(i)];
            let path = DIR.join(name);
            std::fs::write(&path, rest).expect("write the fuzzed file");
            // The instance index picks a port of openim-msgtransfer.yml's
            // list, so it varies only when that file is the fuzzed one.
            let index = if i == 0 { usize::from(sel / 9 % 3) } else { 0 };
            check_load(Some(name), index, &BTreeMap::new());
            std::fs::write(&path, original).expect("restore the file");
        }
        7 => {
            let text = String::from_utf8_lossy(rest);
            let (name, value) = text.split_once('=').unwrap_or((&text, ""));
            let env = BTreeMap::from([(format!("IMENV_{name}"), value.to_string())]);
            check_load(None, 0, &env);
        }
        _ => check_duration(&String::from_utf8_lossy(rest)),
    }
});
