//! The keyspace and the command interpreter of the embedded Redis model.
//!
//! [`Engine`] holds one database (db 0) of strings and hashes with optional
//! per-key expiry, a Lua script cache, and runs Redis commands against them
//! with Redis 7 semantics and error texts for the commands this project uses.
//! It is a pure state machine: time arrives as `now_ms` from the caller's
//! injected clock, nothing here reads a clock, spawns a thread or draws
//! unseeded randomness, and every observable order (KEYS, SCAN, HGETALL) is
//! deterministic, so a run can be replayed from its seed.
//!
//! It assumes a single caller at a time (the connection layer wraps it in a
//! mutex) and that argument slices are binary-safe. It must never panic on
//! client input: every malformed request becomes an error [`Reply`].
//!
//! Expiry is lazy: a key whose deadline has passed is treated as absent and
//! reclaimed when a command touches it; [`Engine::expire_sweep`] reclaims
//! untouched ones. As in Redis, a key is expired once `now_ms > deadline`.

use std::io::Write as _;

use rustc_hash::FxHashMap;

use super::lua::Scripting;
use super::resp::parse_i64;

/// A reply to one command, in RESP2 terms.
///
/// `Error` strings start with the Redis error code (`ERR`, `WRONGTYPE`,
/// `NOSCRIPT`, `EXECABORT`, ...) exactly as Redis sends them, without the
/// leading `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A simple string such as `OK` or `PONG`.
    Status(String),
    /// An error reply: code, space, message.
    Error(String),
    /// An integer.
    Int(i64),
    /// A binary-safe bulk string.
    Bulk(Vec<u8>),
    /// The null bulk string (`$-1`).
    Nil,
    /// An array of replies.
    Array(Vec<Reply>),
    /// The null array (`*-1`).
    NilArray,
}

impl Reply {
    /// The `+OK` status.
    pub fn ok() -> Self {
        Reply::Status("OK".to_owned())
    }

    /// An error reply from a message that already carries its code.
    pub fn error(msg: impl Into<String>) -> Self {
        Reply::Error(msg.into())
    }

    /// True for [`Reply::Error`].
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

pub(crate) const WRONGTYPE: &str =
    "WRONGTYPE Operation against a key holding the wrong kind of value";
pub(crate) const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";
const OVERFLOW: &str = "ERR increment or decrement would overflow";
const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";
pub(crate) const NOSCRIPT: &str = "NOSCRIPT No matching script. Please use EVAL.";

fn err(msg: &str) -> Reply {
    Reply::Error(msg.to_owned())
}

pub(crate) fn arity_error(name: &str) -> Reply {
    Reply::Error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

fn int_arg(arg: &[u8]) -> Result<i64, Reply> {
    parse_i64(arg).ok_or_else(|| err(NOT_INTEGER))
}

fn int_to_bytes(n: i64, out: &mut Vec<u8>) {
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{n}");
}

/// Upper-cases a short token into a stack buffer for case-insensitive
/// matching; tokens longer than the buffer match nothing we know.
fn upper<const N: usize>(arg: &[u8], buf: &mut [u8; N]) -> Option<usize> {
    if arg.len() > N {
        return None;
    }
    for (d, s) in buf.iter_mut().zip(arg) {
        *d = s.to_ascii_uppercase();
    }
    Some(arg.len())
}

fn eq_ic(arg: &[u8], upper_name: &[u8]) -> bool {
    arg.eq_ignore_ascii_case(upper_name)
}

/// Fields a hash keeps in a plain vector before it becomes a hash table.
const SMALL_HASH_MAX: usize = 16;

/// The fields of a hash value.
///
/// Small hashes — nearly all of them: a cached message is one field — are a
/// vector searched linearly, the way Redis keeps them in a listpack; past
/// [`SMALL_HASH_MAX`] fields they become a hash table. A table costs a few
/// hundred bytes even for one field, which on a million cached messages is
/// the largest part of the keyspace.
#[derive(Debug, Clone, Default)]
pub struct HashFields(Fields);

#[derive(Debug, Clone)]
enum Fields {
    Small(Vec<(Vec<u8>, Vec<u8>)>),
    // Boxed, so that a small hash (nearly every one) costs the keyspace
    // 24 bytes, not the 32 of an inline table.
    Large(Box<FxHashMap<Vec<u8>, Vec<u8>>>),
}

impl Default for Fields {
    fn default() -> Self {
        Fields::Small(Vec::new())
    }
}

impl HashFields {
    /// The number of fields.
    pub fn len(&self) -> usize {
        match &self.0 {
            Fields::Small(v) => v.len(),
            Fields::Large(m) => m.len(),
        }
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `field`.
    pub fn get(&self, field: &[u8]) -> Option<&Vec<u8>> {
        match &self.0 {
            Fields::Small(v) => v.iter().find(|(f, _)| f == field).map(|(_, x)| x),
            Fields::Large(m) => m.get(field),
        }
    }

    /// Whether `field` exists.
    pub fn contains_key(&self, field: &[u8]) -> bool {
        self.get(field).is_some()
    }

    /// Sets `field` to `value`; returns the old value.
    pub fn insert(&mut self, field: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        match &mut self.0 {
            Fields::Small(v) => {
                if let Some((_, x)) = v.iter_mut().find(|(f, _)| *f == field) {
                    return Some(std::mem::replace(x, value));
                }
                if v.len() < SMALL_HASH_MAX {
                    if v.capacity() == 0 {
                        v.reserve_exact(1);
                    }
                    v.push((field, value));
                } else {
                    let mut m: FxHashMap<Vec<u8>, Vec<u8>> =
                        std::mem::take(v).into_iter().collect();
                    m.insert(field, value);
                    self.0 = Fields::Large(Box::new(m));
                }
                None
            }
            Fields::Large(m) => m.insert(field, value),
        }
    }

    /// The value of `field`, to change in place.
    pub fn get_mut(&mut self, field: &[u8]) -> Option<&mut Vec<u8>> {
        match &mut self.0 {
            Fields::Small(v) => v.iter_mut().find(|(f, _)| f == field).map(|(_, x)| x),
            Fields::Large(m) => m.get_mut(field),
        }
    }

    /// The value of `field`, created empty if missing.
    pub fn value_mut(&mut self, field: &[u8]) -> &mut Vec<u8> {
        if !self.contains_key(field) {
            self.insert(field.to_vec(), Vec::new());
        }
        self.get_mut(field).expect("inserted above")
    }

    /// Removes `field`; returns its value.
    pub fn remove(&mut self, field: &[u8]) -> Option<Vec<u8>> {
        match &mut self.0 {
            Fields::Small(v) => {
                let i = v.iter().position(|(f, _)| f == field)?;
                Some(v.remove(i).1)
            }
            Fields::Large(m) => m.remove(field),
        }
    }

    /// The fields and values, small hashes in insertion order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)> + '_> {
        match &self.0 {
            Fields::Small(v) => Box::new(v.iter().map(|(f, x)| (f, x))),
            Fields::Large(m) => Box::new(m.iter()),
        }
    }
}

impl IntoIterator for HashFields {
    type Item = (Vec<u8>, Vec<u8>);
    type IntoIter = Box<dyn Iterator<Item = (Vec<u8>, Vec<u8>)>>;

    fn into_iter(self) -> Self::IntoIter {
        match self.0 {
            Fields::Small(v) => Box::new(v.into_iter()),
            Fields::Large(m) => Box::new((*m).into_iter()),
        }
    }
}

impl FromIterator<(Vec<u8>, Vec<u8>)> for HashFields {
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(iter: I) -> Self {
        let mut h = HashFields::default();
        for (f, v) in iter {
            h.insert(f, v);
        }
        h
    }
}

/// Equal when they hold the same fields and values, in any order.
impl PartialEq for HashFields {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(f, v)| other.get(f) == Some(v))
    }
}

impl Eq for HashFields {}

/// A stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A binary-safe string (also integers, stored as their decimal text).
    Str(Vec<u8>),
    /// A hash of field to value.
    Hash(HashFields),
}

impl Value {
    /// The name `TYPE` reports for this value.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Hash(_) => "hash",
        }
    }
}

/// A key's value and its absolute expiry deadline in Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Value,
    /// Deadline after which the key no longer exists; `None` = persistent.
    pub expire_at_ms: Option<i64>,
}

impl Entry {
    fn persistent(value: Value) -> Self {
        Entry {
            value,
            expire_at_ms: None,
        }
    }

    /// True once `now_ms` is past the deadline.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        matches!(self.expire_at_ms, Some(at) if now_ms > at)
    }
}

/// The data of the database: a clonable copy of it is what
/// [`Engine::snapshot`] hands out and [`Engine::restore`] takes back.
///
/// Keys live in an `FxHashMap` (fast, deterministic). SCAN needs a cursor
/// that stays valid while keys come and go, which a hash table's slot order
/// cannot give, so SCAN walks keys in order of a fixed 64-bit hash of the key
/// and the cursor is simply the next hash to visit. That order is kept as a
/// sorted side index built on first SCAN and dropped whenever a key is added
/// or removed, so SCAN costs O(n log n) after a change and O(log n + COUNT)
/// otherwise; every key present for the whole iteration is returned exactly
/// once.
#[derive(Debug, Default)]
pub struct Keyspace {
    map: FxHashMap<Box<[u8]>, Entry>,
    scan_order: Option<Vec<(u64, Vec<u8>)>>,
}

impl Clone for Keyspace {
    fn clone(&self) -> Self {
        // The SCAN index is a cache; the copy rebuilds it if it needs it.
        Keyspace {
            map: self.map.clone(),
            scan_order: None,
        }
    }
}

impl PartialEq for Keyspace {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl Keyspace {
    /// An empty keyspace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes room for `additional` more keys, so the table does not grow
    /// while they arrive. Growing rehashes every key at once (Redis spreads
    /// that over later commands; this table does it in one go, under the
    /// engine's lock), which a caller that knows its load can avoid.
    pub fn reserve(&mut self, additional: usize) {
        self.map.reserve(additional);
    }

    /// Number of stored keys, including expired ones not yet reclaimed
    /// (what Redis' DBSIZE reports).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The live entry for `key`, without reclaiming anything.
    pub fn get(&self, now_ms: i64, key: &[u8]) -> Option<&Entry> {
        self.map.get(key).filter(|e| !e.is_expired(now_ms))
    }

    /// Stores `entry` under `key`, replacing any previous value. For building
    /// fixtures and simulator state; commands do not go through here.
    pub fn insert(&mut self, key: Vec<u8>, entry: Entry) {
        self.put(&key, entry);
    }

    /// Live keys and entries in byte order of the key.
    pub fn live_sorted(&self, now_ms: i64) -> Vec<(&[u8], &Entry)> {
        let mut out: Vec<(&[u8], &Entry)> = self
            .map
            .iter()
            .filter(|(_, e)| !e.is_expired(now_ms))
            .map(|(k, e)| (&**k, e))
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(b.0));
        out
    }

    /// Live entry, reclaiming the key if its deadline has passed.
    fn live(&mut self, now_ms: i64, key: &[u8]) -> Option<&Entry> {
        self.live_mut(now_ms, key).map(|e| &*e)
    }

    /// Mutable live entry, reclaiming the key if its deadline has passed.
    /// One hash lookup on the common (live) path.
    fn live_mut(&mut self, now_ms: i64, key: &[u8]) -> Option<&mut Entry> {
        let entry: *mut Entry = self.map.get_mut(key)?;
        // SAFETY: `entry` points at a value inside `self.map`, derived from
        // the exclusive borrow of `self` this function holds. On the expired
        // path it is read once and then never used again, before `remove`
        // mutates the map. On the live path nothing touches the map between
        // the lookup and the return, and the returned borrow is tied to
        // `&mut self`, so the value cannot move or be freed while it lives.
        // (This is the conditional return of a borrow, with a mutation on
        // the other branch, that the borrow checker cannot express yet.)
        if unsafe { (*entry).is_expired(now_ms) } {
            self.remove(key);
            return None;
        }
        // SAFETY: see above.
        Some(unsafe { &mut *entry })
    }

    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let old = self.map.remove(key);
        if old.is_some() {
            self.scan_order = None;
        }
        old
    }

    fn put(&mut self, key: &[u8], entry: Entry) {
        if let Some(slot) = self.map.get_mut(key) {
            *slot = entry;
        } else {
            self.map.insert(Box::from(key), entry);
            self.scan_order = None;
        }
    }

    /// Stores `entry` under `key`, which the caller has just found absent
    /// (or expired and reclaimed): one hash lookup, no probe for an
    /// existing value.
    fn put_new(&mut self, key: &[u8], entry: Entry) -> &mut Entry {
        self.scan_order = None;
        self.map
            .entry(Box::from(key))
            .insert_entry(entry)
            .into_mut()
    }

    fn clear(&mut self) {
        self.map.clear();
        self.scan_order = None;
    }

    /// The live hash at `key`, created empty if absent; `Err` if the key
    /// holds another type.
    fn hash_for_write(&mut self, now_ms: i64, key: &[u8]) -> Result<&mut HashFields, Reply> {
        let entry: *mut Entry = match self.live_mut(now_ms, key) {
            Some(e) => e,
            None => self.put_new(key, Entry::persistent(Value::Hash(HashFields::default()))),
        };
        // SAFETY: `entry` points at a value inside `self.map`, obtained
        // from one of the two exclusive borrows of `self` above, the last
        // use of `self` in this function; the returned borrow is tied to
        // `&mut self`, so the value cannot move or be freed while it lives.
        match unsafe { &mut (*entry).value } {
            Value::Hash(h) => Ok(h),
            Value::Str(_) => Err(err(WRONGTYPE)),
        }
    }

    /// The live hash at `key` if any; `Err` on another type.
    fn hash_for_read(&mut self, now_ms: i64, key: &[u8]) -> Result<Option<&HashFields>, Reply> {
        match self.live(now_ms, key).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Hash(h)) => Ok(Some(h)),
            Some(Value::Str(_)) => Err(err(WRONGTYPE)),
        }
    }

    /// The live string at `key` if any; `Err` on another type.
    fn str_for_read(&mut self, now_ms: i64, key: &[u8]) -> Result<Option<&Vec<u8>>, Reply> {
        match self.live(now_ms, key).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(Value::Hash(_)) => Err(err(WRONGTYPE)),
        }
    }

    fn ensure_scan_index(&mut self) {
        if self.scan_order.is_none() {
            let mut order: Vec<(u64, Vec<u8>)> = self
                .map
                .keys()
                .map(|k| (scan_hash(k), k.to_vec()))
                .collect();
            order.sort_unstable();
            self.scan_order = Some(order);
        }
    }
}

/// A fixed, platform-independent 64-bit hash (FNV-1a, then a 64-bit
/// finaliser so that short keys spread over the whole range). It defines the
/// SCAN order, so it must never depend on process state.
fn scan_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Redis-style glob match: `*`, `?`, `[abc]`, `[^a-z]`, and `\x` escapes.
///
/// Every token but `*` consumes exactly one byte, so remembering only the
/// most recent `*` is enough to backtrack correctly, which keeps the match
/// O(pattern × subject) instead of exponential.
pub fn glob_match(pattern: &[u8], subject: &[u8]) -> bool {
    let (mut p, mut s) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while s < subject.len() {
        if let Some(&tok) = pattern.get(p) {
            let c = subject[s];
            let step = match tok {
                b'*' => {
                    while pattern.get(p) == Some(&b'*') {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, s));
                    continue;
                }
                b'?' => Some(p + 1),
                b'[' => {
                    let (hit, next) = class_match(pattern, p, c);
                    hit.then_some(next)
                }
                b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == c).then_some(p + 2),
                lit => (lit == c).then_some(p + 1),
            };
            if let Some(next) = step {
                p = next;
                s += 1;
                continue;
            }
        }
        match star {
            Some((sp, ss)) => {
                p = sp;
                s = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    while pattern.get(p) == Some(&b'*') {
        p += 1;
    }
    p == pattern.len()
}

/// Matches `c` against the class opening at `pattern[open] == b'['`. Returns
/// whether it matched and where the pattern continues. An unterminated class
/// runs to the end of the pattern, as in Redis.
fn class_match(pattern: &[u8], open: usize, c: u8) -> (bool, usize) {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    loop {
        match pattern.get(i) {
            None => break,
            Some(b']') => {
                i += 1;
                break;
            }
            Some(b'\\') if i + 1 < pattern.len() => {
                hit |= pattern[i + 1] == c;
                i += 2;
            }
            Some(&lo) if pattern.get(i + 1) == Some(&b'-') && i + 2 < pattern.len() => {
                let hi = pattern[i + 2];
                let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                hit |= (a..=b).contains(&c);
                i += 3;
            }
            Some(&x) => {
                hit |= x == c;
                i += 1;
            }
        }
    }
    (hit != negate, i)
}

macro_rules! commands {
    ($( $id:ident $upper:literal $lower:literal $arity:literal $noscript:literal; )*) => {
        /// Every command the model knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum CmdId { $($id,)* }

        /// Finds a command by its upper-cased name.
        fn lookup_upper(name: &[u8]) -> Option<CmdSpec> {
            match name {
                $( $upper => Some(CmdSpec {
                    id: CmdId::$id,
                    name: $lower,
                    arity: $arity,
                    noscript: $noscript,
                }), )*
                _ => None,
            }
        }
    };
}

// Arity follows Redis: positive = exact argument count including the name,
// negative = at least that many. `noscript` commands are refused inside Lua.
commands! {
    Ping b"PING" "ping" -1 false;
    Echo b"ECHO" "echo" 2 false;
    Select b"SELECT" "select" 2 false;
    Client b"CLIENT" "client" -2 true;
    Hello b"HELLO" "hello" -1 true;
    Quit b"QUIT" "quit" -1 true;
    Info b"INFO" "info" -1 false;
    Role b"ROLE" "role" 1 true;
    Time b"TIME" "time" 1 false;
    Dbsize b"DBSIZE" "dbsize" 1 false;
    Flushall b"FLUSHALL" "flushall" -1 false;
    Flushdb b"FLUSHDB" "flushdb" -1 false;
    Keys b"KEYS" "keys" 2 false;
    Scan b"SCAN" "scan" -2 false;
    Exists b"EXISTS" "exists" -2 false;
    Del b"DEL" "del" -2 false;
    Unlink b"UNLINK" "unlink" -2 false;
    Type b"TYPE" "type" 2 false;
    Get b"GET" "get" 2 false;
    Getdel b"GETDEL" "getdel" 2 false;
    Set b"SET" "set" -3 false;
    Setnx b"SETNX" "setnx" 3 false;
    Setex b"SETEX" "setex" 4 false;
    Psetex b"PSETEX" "psetex" 4 false;
    Mget b"MGET" "mget" -2 false;
    Mset b"MSET" "mset" -3 false;
    Strlen b"STRLEN" "strlen" 2 false;
    Append b"APPEND" "append" 3 false;
    Incr b"INCR" "incr" 2 false;
    Incrby b"INCRBY" "incrby" 3 false;
    Decr b"DECR" "decr" 2 false;
    Decrby b"DECRBY" "decrby" 3 false;
    Expire b"EXPIRE" "expire" -3 false;
    Pexpire b"PEXPIRE" "pexpire" -3 false;
    Expireat b"EXPIREAT" "expireat" -3 false;
    Pexpireat b"PEXPIREAT" "pexpireat" -3 false;
    Persist b"PERSIST" "persist" 2 false;
    Ttl b"TTL" "ttl" 2 false;
    Pttl b"PTTL" "pttl" 2 false;
    Hget b"HGET" "hget" 3 false;
    Hset b"HSET" "hset" -4 false;
    Hsetnx b"HSETNX" "hsetnx" 4 false;
    Hmset b"HMSET" "hmset" -4 false;
    Hmget b"HMGET" "hmget" -3 false;
    Hdel b"HDEL" "hdel" -3 false;
    Hgetall b"HGETALL" "hgetall" 2 false;
    Hexists b"HEXISTS" "hexists" 3 false;
    Hlen b"HLEN" "hlen" 2 false;
    Hkeys b"HKEYS" "hkeys" 2 false;
    Hvals b"HVALS" "hvals" 2 false;
    Hincrby b"HINCRBY" "hincrby" 4 false;
    Wait b"WAIT" "wait" 3 true;
    Multi b"MULTI" "multi" 1 true;
    Exec b"EXEC" "exec" 1 true;
    Discard b"DISCARD" "discard" 1 true;
    Watch b"WATCH" "watch" -2 true;
    Eval b"EVAL" "eval" -3 true;
    Evalsha b"EVALSHA" "evalsha" -3 true;
    Script b"SCRIPT" "script" -2 true;
}

/// Static facts about a command.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CmdSpec {
    pub(crate) id: CmdId,
    pub(crate) name: &'static str,
    pub(crate) arity: i32,
    pub(crate) noscript: bool,
}

impl CmdSpec {
    pub(crate) fn arity_ok(&self, argc: usize) -> bool {
        let argc = i64::try_from(argc).unwrap_or(i64::MAX);
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }
}

/// Finds a command by name, case-insensitively.
pub(crate) fn lookup(name: &[u8]) -> Option<CmdSpec> {
    let mut buf = [0u8; 16];
    let n = upper(name, &mut buf)?;
    lookup_upper(&buf[..n])
}

/// `ERR unknown command` in Redis 7's wording, quoting the first arguments.
fn unknown_command(args: &[&[u8]]) -> Reply {
    let name = String::from_utf8_lossy(args.first().copied().unwrap_or_default());
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        truncate(&name, 128)
    );
    for a in args.iter().skip(1).take(16) {
        let a = String::from_utf8_lossy(a);
        msg.push_str(&format!("'{}' ", truncate(&a, 128)));
    }
    Reply::Error(msg)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Derives a 40-hex-digit identifier from the seed and a label, the same
/// on every run with that seed.
fn derived_id(seed: u64, label: &str) -> String {
    sha1_smol::Sha1::from(format!("emredis:{label}:{seed}"))
        .digest()
        .to_string()
}

/// Keyspace plus the server facts that commands report. This is what a Lua
/// script's `redis.call` operates on while the script runs.
#[derive(Debug, Default)]
pub(crate) struct Db {
    pub(crate) ks: Keyspace,
    replid: String,
    run_id: String,
}

/// Flags of EXPIRE and friends.
#[derive(Default)]
struct ExpireFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

impl Db {
    fn new(seed: u64) -> Self {
        Db {
            ks: Keyspace::new(),
            replid: derived_id(seed, "replid"),
            run_id: derived_id(seed, "run_id"),
        }
    }

    /// Runs a data command whose name and arity the caller has checked.
    /// Connection-level commands (CLIENT, MULTI, EVAL, ...) are the
    /// engine's business and are refused here.
    pub(crate) fn run(&mut self, spec: CmdSpec, now: i64, a: &[&[u8]]) -> Reply {
        match self.run_inner(spec, now, a) {
            Ok(r) | Err(r) => r,
        }
    }

    fn run_inner(&mut self, spec: CmdSpec, now: i64, a: &[&[u8]]) -> Result<Reply, Reply> {
        let ks = &mut self.ks;
        Ok(match spec.id {
            CmdId::Ping => match a.len() {
                1 => Reply::Status("PONG".to_owned()),
                2 => Reply::Bulk(a[1].to_vec()),
                _ => return Err(arity_error(spec.name)),
            },
            CmdId::Echo => Reply::Bulk(a[1].to_vec()),
            CmdId::Select => match int_arg(a[1])? {
                0 => Reply::ok(),
                _ => err("ERR DB index is out of range"),
            },
            CmdId::Info => self.info(now, &a[1..]),
            CmdId::Time => {
                let secs = now.div_euclid(1000);
                let micros = now.rem_euclid(1000) * 1000;
                Reply::Array(vec![
                    Reply::Bulk(secs.to_string().into_bytes()),
                    Reply::Bulk(micros.to_string().into_bytes()),
                ])
            }
            CmdId::Dbsize => Reply::Int(len_i64(ks.len())),
            CmdId::Flushall | CmdId::Flushdb => {
                match a.get(1) {
                    None => {}
                    Some(m) if a.len() == 2 && (eq_ic(m, b"ASYNC") || eq_ic(m, b"SYNC")) => {}
                    Some(_) => return Err(err(SYNTAX)),
                }
                ks.clear();
                Reply::ok()
            }
            CmdId::Keys => {
                let mut keys: Vec<&[u8]> = ks
                    .map
                    .iter()
                    .filter(|(k, e)| !e.is_expired(now) && glob_match(a[1], k))
                    .map(|(k, _)| &**k)
                    .collect();
                keys.sort_unstable();
                Reply::Array(keys.into_iter().map(|k| Reply::Bulk(k.to_vec())).collect())
            }
            CmdId::Scan => scan(ks, now, a)?,
            CmdId::Exists => {
                Reply::Int(a[1..].iter().filter(|k| ks.live(now, k).is_some()).count() as i64)
            }
            CmdId::Del | CmdId::Unlink => {
                let mut n = 0;
                for k in &a[1..] {
                    if ks.live(now, k).is_some() {
                        ks.remove(k);
                        n += 1;
                    }
                }
                Reply::Int(n)
            }
            CmdId::Type => Reply::Status(
                ks.live(now, a[1])
                    .map_or("none", |e| e.value.type_name())
                    .to_owned(),
            ),
            CmdId::Get => match ks.str_for_read(now, a[1])? {
                Some(s) => Reply::Bulk(s.clone()),
                None => Reply::Nil,
            },
            CmdId::Getdel => match ks.str_for_read(now, a[1])? {
                Some(_) => match ks.remove(a[1]) {
                    Some(Entry {
                        value: Value::Str(s),
                        ..
                    }) => Reply::Bulk(s),
                    _ => Reply::Nil,
                },
                None => Reply::Nil,
            },
            CmdId::Strlen => {
                Reply::Int(ks.str_for_read(now, a[1])?.map_or(0, |s| len_i64(s.len())))
            }
            CmdId::Append => {
                let len = match ks.live_mut(now, a[1]).map(|e| &mut e.value) {
                    Some(Value::Str(s)) => {
                        s.extend_from_slice(a[2]);
                        s.len()
                    }
                    Some(Value::Hash(_)) => return Err(err(WRONGTYPE)),
                    None => {
                        ks.put_new(a[1], Entry::persistent(Value::Str(a[2].to_vec())));
                        a[2].len()
                    }
                };
                Reply::Int(len_i64(len))
            }
            CmdId::Set => set(ks, now, a)?,
            CmdId::Setnx => {
                if ks.live(now, a[1]).is_some() {
                    Reply::Int(0)
                } else {
                    ks.put_new(a[1], Entry::persistent(Value::Str(a[2].to_vec())));
                    Reply::Int(1)
                }
            }
            CmdId::Setex | CmdId::Psetex => {
                let n = int_arg(a[2])?;
                let invalid = || {
                    Reply::Error(format!(
                        "ERR invalid expire time in '{}' command",
                        spec.name
                    ))
                };
                let ms = if spec.id == CmdId::Setex {
                    n.checked_mul(1000)
                } else {
                    Some(n)
                };
                let at = ms
                    .filter(|ms| *ms > 0)
                    .and_then(|ms| ms.checked_add(now))
                    .ok_or_else(invalid)?;
                ks.put(
                    a[1],
                    Entry {
                        value: Value::Str(a[3].to_vec()),
                        expire_at_ms: Some(at),
                    },
                );
                Reply::ok()
            }
            CmdId::Mget => Reply::Array(
                a[1..]
                    .iter()
                    .map(|k| match ks.live(now, k).map(|e| &e.value) {
                        Some(Value::Str(s)) => Reply::Bulk(s.clone()),
                        _ => Reply::Nil,
                    })
                    .collect(),
            ),
            CmdId::Mset => {
                if a.len() % 2 != 1 {
                    return Err(arity_error(spec.name));
                }
                for kv in a[1..].chunks_exact(2) {
                    ks.put(kv[0], Entry::persistent(Value::Str(kv[1].to_vec())));
                }
                Reply::ok()
            }
            CmdId::Incr => incr_by(ks, now, a[1], 1)?,
            CmdId::Decr => incr_by(ks, now, a[1], -1)?,
            CmdId::Incrby => incr_by(ks, now, a[1], int_arg(a[2])?)?,
            CmdId::Decrby => {
                let d = int_arg(a[2])?;
                let by = d
                    .checked_neg()
                    .ok_or_else(|| err("ERR decrement would overflow"))?;
                incr_by(ks, now, a[1], by)?
            }
            CmdId::Expire | CmdId::Pexpire | CmdId::Expireat | CmdId::Pexpireat => {
                expire(ks, now, spec, a)?
            }
            CmdId::Persist => match ks.live_mut(now, a[1]) {
                Some(e) if e.expire_at_ms.is_some() => {
                    e.expire_at_ms = None;
                    Reply::Int(1)
                }
                _ => Reply::Int(0),
            },
            CmdId::Ttl | CmdId::Pttl => Reply::Int(match ks.live(now, a[1]) {
                None => -2,
                Some(Entry {
                    expire_at_ms: None, ..
                }) => -1,
                Some(Entry {
                    expire_at_ms: Some(at),
                    ..
                }) => {
                    // Live means now <= at, so this is never negative.
                    let ms = at.saturating_sub(now);
                    if spec.id == CmdId::Ttl {
                        ms.saturating_add(500) / 1000
                    } else {
                        ms
                    }
                }
            }),
            CmdId::Hget => match ks.hash_for_read(now, a[1])?.and_then(|h| h.get(a[2])) {
                Some(v) => Reply::Bulk(v.clone()),
                None => Reply::Nil,
            },
            CmdId::Hset | CmdId::Hmset => {
                if a.len() % 2 != 0 {
                    return Err(arity_error(spec.name));
                }
                let h = ks.hash_for_write(now, a[1])?;
                let mut added = 0;
                for fv in a[2..].chunks_exact(2) {
                    if let Some(v) = h.get_mut(fv[0]) {
                        v.clear();
                        v.extend_from_slice(fv[1]);
                    } else {
                        h.insert(fv[0].to_vec(), fv[1].to_vec());
                        added += 1;
                    }
                }
                if spec.id == CmdId::Hset {
                    Reply::Int(added)
                } else {
                    Reply::ok()
                }
            }
            CmdId::Hsetnx => {
                let h = ks.hash_for_write(now, a[1])?;
                if h.contains_key(a[2]) {
                    Reply::Int(0)
                } else {
                    h.insert(a[2].to_vec(), a[3].to_vec());
                    Reply::Int(1)
                }
            }
            CmdId::Hmget => {
                let h = ks.hash_for_read(now, a[1])?;
                Reply::Array(
                    a[2..]
                        .iter()
                        .map(|f| match h.and_then(|h| h.get(f)) {
                            Some(v) => Reply::Bulk(v.clone()),
                            None => Reply::Nil,
                        })
                        .collect(),
                )
            }
            CmdId::Hdel => {
                let (removed, now_empty) = match ks.live_mut(now, a[1]).map(|e| &mut e.value) {
                    None => (0, false),
                    Some(Value::Str(_)) => return Err(err(WRONGTYPE)),
                    Some(Value::Hash(h)) => {
                        let n = a[2..].iter().filter(|f| h.remove(f).is_some()).count();
                        (n, h.is_empty())
                    }
                };
                if now_empty {
                    ks.remove(a[1]);
                }
                Reply::Int(len_i64(removed))
            }
            CmdId::Hgetall | CmdId::Hkeys | CmdId::Hvals => {
                let Some(h) = ks.hash_for_read(now, a[1])? else {
                    return Ok(Reply::Array(Vec::new()));
                };
                // Field order is by field bytes, so that replies are
                // reproducible regardless of the table's internal layout.
                let mut fields: Vec<(&Vec<u8>, &Vec<u8>)> = h.iter().collect();
                fields.sort_unstable();
                let mut out = Vec::with_capacity(fields.len() * 2);
                for (f, v) in fields {
                    if spec.id != CmdId::Hvals {
                        out.push(Reply::Bulk(f.clone()));
                    }
                    if spec.id != CmdId::Hkeys {
                        out.push(Reply::Bulk(v.clone()));
                    }
                }
                Reply::Array(out)
            }
            CmdId::Hexists => Reply::Int(i64::from(
                ks.hash_for_read(now, a[1])?
                    .is_some_and(|h| h.contains_key(a[2])),
            )),
            CmdId::Hlen => Reply::Int(ks.hash_for_read(now, a[1])?.map_or(0, |h| len_i64(h.len()))),
            CmdId::Hincrby => {
                let by = int_arg(a[3])?;
                let h = ks.hash_for_write(now, a[1])?;
                let cur = match h.get(a[2]) {
                    Some(v) => {
                        parse_i64(v).ok_or_else(|| err("ERR hash value is not an integer"))?
                    }
                    None => 0,
                };
                let new = cur.checked_add(by).ok_or_else(|| err(OVERFLOW))?;
                let slot = h.value_mut(a[2]);
                int_to_bytes(new, slot);
                Reply::Int(new)
            }
            CmdId::Wait => {
                int_arg(a[1])?;
                if int_arg(a[2])? < 0 {
                    return Err(err("ERR timeout is negative"));
                }
                // No replicas exist, so none can acknowledge anything.
                Reply::Int(0)
            }
            CmdId::Role => Reply::Array(vec![
                Reply::Bulk(b"master".to_vec()),
                Reply::Int(0),
                Reply::Array(Vec::new()),
            ]),
            CmdId::Client
            | CmdId::Hello
            | CmdId::Quit
            | CmdId::Multi
            | CmdId::Exec
            | CmdId::Discard
            | CmdId::Watch
            | CmdId::Eval
            | CmdId::Evalsha
            | CmdId::Script => err("ERR This Redis command is not allowed from script"),
        })
    }

    fn info(&self, now: i64, sections: &[&[u8]]) -> Reply {
        let all = sections.is_empty()
            || sections
                .iter()
                .any(|s| eq_ic(s, b"ALL") || eq_ic(s, b"DEFAULT") || eq_ic(s, b"EVERYTHING"));
        let want = |name: &[u8]| all || sections.iter().any(|s| eq_ic(s, name));
        let mut parts: Vec<String> = Vec::new();
        if want(b"SERVER") {
            parts.push(format!(
                "# Server\r\nredis_version:7.2.4\r\nredis_mode:standalone\r\nos:embedded-model\r\n\
                 arch_bits:64\r\nrun_id:{}\r\nserver_time_usec:{}\r\n",
                self.run_id,
                now.saturating_mul(1000)
            ));
        }
        if want(b"REPLICATION") {
            parts.push(format!(
                "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_replid:{}\r\n\
                 master_replid2:0000000000000000000000000000000000000000\r\n\
                 master_repl_offset:0\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:0\r\n",
                self.replid
            ));
        }
        if want(b"KEYSPACE") {
            let mut s = "# Keyspace\r\n".to_owned();
            let live: Vec<&Entry> = self
                .ks
                .map
                .values()
                .filter(|e| !e.is_expired(now))
                .collect();
            if !live.is_empty() {
                let expires = live.iter().filter(|e| e.expire_at_ms.is_some()).count();
                s.push_str(&format!(
                    "db0:keys={},expires={},avg_ttl=0\r\n",
                    live.len(),
                    expires
                ));
            }
            parts.push(s);
        }
        Reply::Bulk(parts.join("\r\n").into_bytes())
    }
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn incr_by(ks: &mut Keyspace, now: i64, key: &[u8], by: i64) -> Result<Reply, Reply> {
    match ks.live_mut(now, key).map(|e| &mut e.value) {
        Some(Value::Str(s)) => {
            let cur = parse_i64(s).ok_or_else(|| err(NOT_INTEGER))?;
            let new = cur.checked_add(by).ok_or_else(|| err(OVERFLOW))?;
            // Rewrites in place: INCR keeps the key's TTL, as in Redis.
            int_to_bytes(new, s);
            Ok(Reply::Int(new))
        }
        Some(Value::Hash(_)) => Err(err(WRONGTYPE)),
        None => {
            let mut s = Vec::new();
            int_to_bytes(by, &mut s);
            ks.put_new(key, Entry::persistent(Value::Str(s)));
            Ok(Reply::Int(by))
        }
    }
}

fn set(ks: &mut Keyspace, now: i64, a: &[&[u8]]) -> Result<Reply, Reply> {
    enum Ttl {
        Clear,
        Keep,
        At(i64),
    }
    let (mut nx, mut xx, mut get) = (false, false, false);
    let mut keep = false;
    // (amount, unit in ms, absolute?)
    let mut expiry: Option<(&[u8], i64, bool)> = None;
    let mut i = 3;
    while i < a.len() {
        let mut buf = [0u8; 8];
        let opt = upper(a[i], &mut buf).map(|n| &buf[..n]);
        let has_next = i + 1 < a.len();
        match opt {
            Some(b"NX") if !xx => nx = true,
            Some(b"XX") if !nx => xx = true,
            Some(b"GET") => get = true,
            Some(b"KEEPTTL") if expiry.is_none() => keep = true,
            Some(o @ (b"EX" | b"PX" | b"EXAT" | b"PXAT"))
                if !keep && expiry.is_none() && has_next =>
            {
                let unit = if o[0] == b'E' { 1000 } else { 1 };
                expiry = Some((a[i + 1], unit, o.len() == 4));
                i += 1;
            }
            _ => return Err(err(SYNTAX)),
        }
        i += 1;
    }
    let ttl = match expiry {
        None if keep => Ttl::Keep,
        None => Ttl::Clear,
        Some((raw, unit, absolute)) => {
            let n = int_arg(raw)?;
            let invalid = || err("ERR invalid expire time in 'set' command");
            if n <= 0 {
                return Err(invalid());
            }
            let ms = n.checked_mul(unit).ok_or_else(invalid)?;
            let at = if absolute {
                ms
            } else {
                ms.checked_add(now).ok_or_else(invalid)?
            };
            Ttl::At(at)
        }
    };
    let old = if get {
        Some(match ks.str_for_read(now, a[1])? {
            Some(s) => Reply::Bulk(s.clone()),
            None => Reply::Nil,
        })
    } else {
        None
    };
    let found = ks.live(now, a[1]).is_some();
    if (nx && found) || (xx && !found) {
        return Ok(old.unwrap_or(Reply::Nil));
    }
    let (expire_at_ms, already_past) = match ttl {
        Ttl::Clear => (None, false),
        Ttl::Keep => (ks.live(now, a[1]).and_then(|e| e.expire_at_ms), false),
        Ttl::At(at) => (Some(at), at <= now),
    };
    if already_past {
        // An absolute deadline already in the past: the write happens and
        // is immediately gone, as Redis does it.
        ks.remove(a[1]);
    } else {
        let value = Value::Str(a[2].to_vec());
        ks.put(
            a[1],
            Entry {
                value,
                expire_at_ms,
            },
        );
    }
    Ok(old.unwrap_or_else(Reply::ok))
}

fn expire(ks: &mut Keyspace, now: i64, spec: CmdSpec, a: &[&[u8]]) -> Result<Reply, Reply> {
    let mut f = ExpireFlags::default();
    for opt in &a[3..] {
        let mut buf = [0u8; 2];
        match upper(opt, &mut buf).map(|n| &buf[..n]) {
            Some(b"NX") => f.nx = true,
            Some(b"XX") => f.xx = true,
            Some(b"GT") => f.gt = true,
            Some(b"LT") => f.lt = true,
            _ => {
                return Err(Reply::Error(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(opt)
                )));
            }
        }
    }
    if f.nx && (f.xx || f.gt || f.lt) {
        return Err(err(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if f.gt && f.lt {
        return Err(err(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    let n = int_arg(a[2])?;
    let invalid = || {
        Reply::Error(format!(
            "ERR invalid expire time in '{}' command",
            spec.name
        ))
    };
    let seconds = matches!(spec.id, CmdId::Expire | CmdId::Expireat);
    let absolute = matches!(spec.id, CmdId::Expireat | CmdId::Pexpireat);
    let ms = if seconds {
        n.checked_mul(1000).ok_or_else(invalid)?
    } else {
        n
    };
    let at = if absolute {
        ms
    } else {
        ms.checked_add(now).ok_or_else(invalid)?
    };
    let Some(entry) = ks.live_mut(now, a[1]) else {
        return Ok(Reply::Int(0));
    };
    let cur = entry.expire_at_ms;
    let refused = (f.nx && cur.is_some())
        || (f.xx && cur.is_none())
        // A persistent key counts as an infinite TTL for GT and LT.
        || (f.gt && cur.is_none_or(|c| at <= c))
        || (f.lt && cur.is_some_and(|c| at >= c));
    if refused {
        return Ok(Reply::Int(0));
    }
    if at <= now {
        ks.remove(a[1]);
    } else {
        entry.expire_at_ms = Some(at);
    }
    Ok(Reply::Int(1))
}

fn scan(ks: &mut Keyspace, now: i64, a: &[&[u8]]) -> Result<Reply, Reply> {
    let cursor: u64 = std::str::from_utf8(a[1])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err("ERR invalid cursor"))?;
    let mut pattern: Option<&[u8]> = None;
    let mut type_filter: Option<&[u8]> = None;
    let mut count: usize = 10;
    let mut i = 2;
    while i < a.len() {
        let Some(&val) = a.get(i + 1) else {
            return Err(err(SYNTAX));
        };
        if eq_ic(a[i], b"MATCH") {
            pattern = Some(val);
        } else if eq_ic(a[i], b"COUNT") {
            let n = int_arg(val)?;
            if n < 1 {
                return Err(err(SYNTAX));
            }
            count = usize::try_from(n).unwrap_or(usize::MAX);
        } else if eq_ic(a[i], b"TYPE") {
            type_filter = Some(val);
        } else {
            return Err(err(SYNTAX));
        }
        i += 2;
    }
    ks.ensure_scan_index();
    let order = ks.scan_order.as_deref().unwrap_or_default();
    let mut at = order.partition_point(|(h, _)| *h < cursor);
    let mut visited = 0usize;
    let mut keys = Vec::new();
    while at < order.len() && visited < count {
        // Never split a run of equal hashes: the cursor could not point
        // into the middle of it.
        let h = order[at].0;
        while at < order.len() && order[at].0 == h {
            let key = &order[at].1;
            // Expired keys are skipped, not reclaimed: removing them here
            // would invalidate the index being walked.
            let wanted = ks.map.get(key.as_slice()).is_some_and(|e| {
                !e.is_expired(now)
                    && type_filter
                        .is_none_or(|t| t.eq_ignore_ascii_case(e.value.type_name().as_bytes()))
            }) && pattern.is_none_or(|p| glob_match(p, key));
            if wanted {
                keys.push(Reply::Bulk(key.clone()));
            }
            at += 1;
            visited += 1;
        }
    }
    let next = order.get(at).map_or(0, |(h, _)| *h);
    Ok(Reply::Array(vec![
        Reply::Bulk(next.to_string().into_bytes()),
        Reply::Array(keys),
    ]))
}

/// Per-connection state: client identity and an open MULTI block.
/// Only database 0 exists, so there is no selected-db field to track.
#[derive(Debug, Default)]
pub struct Session {
    id: u64,
    name: Option<Vec<u8>>,
    multi: Option<MultiState>,
}

#[derive(Debug, Default)]
struct MultiState {
    queue: Vec<Vec<Vec<u8>>>,
    /// A command was refused while queueing, so EXEC must abort.
    dirty: bool,
}

impl Session {
    /// A session with the given client id (what `CLIENT ID` reports).
    pub fn new(id: u64) -> Self {
        Session {
            id,
            ..Session::default()
        }
    }

    /// The client id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// True between MULTI and EXEC/DISCARD.
    pub fn in_multi(&self) -> bool {
        self.multi.is_some()
    }

    /// Forgets connection state, as a reconnect would (drops any MULTI).
    pub fn reset(&mut self) {
        self.name = None;
        self.multi = None;
    }
}

/// The embedded Redis server state: one keyspace, a script cache, and the
/// command interpreter.
pub struct Engine {
    db: Db,
    scripting: Scripting,
    client_ids: ClientIds,
}

/// Hands out client ids (what `CLIENT ID` reports). Shared by the engine and
/// every connection to it, so opening a connection never waits for the
/// engine's lock while another connection runs a script.
#[derive(Clone, Debug)]
pub struct ClientIds(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl ClientIds {
    /// A session with the next client id.
    pub fn new_session(&self) -> Session {
        Session::new(self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("keys", &self.db.ks.len())
            .field("scripts", &self.scripting.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A fresh, empty server whose identifiers (replication id, run id) are
    /// derived from `seed`.
    pub fn new(seed: u64) -> Self {
        Engine {
            db: Db::new(seed),
            scripting: Scripting::new(),
            client_ids: ClientIds(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1))),
        }
    }

    /// A new connection's state with a fresh client id.
    pub fn new_session(&self) -> Session {
        self.client_ids.new_session()
    }

    /// Makes room for `additional` more keys (see [`Keyspace::reserve`]).
    pub fn reserve_keys(&mut self, additional: usize) {
        self.db.ks.reserve(additional);
    }

    /// The engine's client id counter, for opening sessions without the
    /// engine at hand.
    pub fn client_ids(&self) -> ClientIds {
        self.client_ids.clone()
    }

    /// Caps the number of Lua VM instructions one script may execute before
    /// it is aborted with an error (`None` = unlimited). A runaway script
    /// would otherwise hang the whole simulation, since nothing can preempt
    /// it. Default: 1,000,000,000.
    pub fn set_script_instruction_limit(&mut self, limit: Option<u64>) {
        self.scripting.set_instruction_limit(limit);
    }

    /// Runs one command for `session` at time `now_ms`.
    ///
    /// Arguments are borrowed slices, the command name first; nothing is
    /// copied unless a value is stored or a command is queued in MULTI.
    /// [`Engine::execute_owned`] adapts owned argument vectors.
    pub fn execute(&mut self, session: &mut Session, now_ms: i64, args: &[&[u8]]) -> Reply {
        let Some(&name) = args.first() else {
            return err("ERR empty command");
        };
        let spec = lookup(name);
        if let Some(multi) = session.multi.as_mut() {
            let immediate = matches!(
                spec.map(|s| s.id),
                Some(CmdId::Exec | CmdId::Discard | CmdId::Multi | CmdId::Watch)
            );
            if !immediate {
                let refusal = match spec {
                    None => Some(unknown_command(args)),
                    Some(s) if !s.arity_ok(args.len()) => Some(arity_error(s.name)),
                    Some(_) => None,
                };
                return match refusal {
                    Some(r) => {
                        multi.dirty = true;
                        r
                    }
                    None => {
                        multi.queue.push(args.iter().map(|a| a.to_vec()).collect());
                        Reply::Status("QUEUED".to_owned())
                    }
                };
            }
        }
        let Some(spec) = spec else {
            return unknown_command(args);
        };
        if !spec.arity_ok(args.len()) {
            return arity_error(spec.name);
        }
        match spec.id {
            CmdId::Multi => {
                if session.multi.is_some() {
                    return err("ERR MULTI calls can not be nested");
                }
                session.multi = Some(MultiState::default());
                Reply::ok()
            }
            CmdId::Discard => match session.multi.take() {
                Some(_) => Reply::ok(),
                None => err("ERR DISCARD without MULTI"),
            },
            CmdId::Exec => {
                let Some(multi) = session.multi.take() else {
                    return err("ERR EXEC without MULTI");
                };
                if multi.dirty {
                    return err(EXECABORT);
                }
                // The whole queue runs inside this one call, so nothing can
                // interleave with it: that is MULTI's atomicity.
                let replies = multi
                    .queue
                    .iter()
                    .map(|cmd| {
                        let refs: Vec<&[u8]> = cmd.iter().map(Vec::as_slice).collect();
                        self.execute(session, now_ms, &refs)
                    })
                    .collect();
                Reply::Array(replies)
            }
            CmdId::Watch => {
                if session.multi.is_some() {
                    err("ERR WATCH inside MULTI is not allowed")
                } else {
                    err("ERR WATCH is not supported by the embedded Redis model")
                }
            }
            CmdId::Client => self.client(session, args),
            CmdId::Hello => self.hello(session, args),
            CmdId::Quit => Reply::ok(),
            CmdId::Eval | CmdId::Evalsha => {
                let (keys, argv) = match split_keys(args) {
                    Ok(split) => split,
                    Err(r) => return r,
                };
                if spec.id == CmdId::Eval {
                    self.scripting
                        .eval(&mut self.db, now_ms, args[1], keys, argv)
                } else {
                    self.scripting
                        .evalsha(&mut self.db, now_ms, args[1], keys, argv)
                }
            }
            CmdId::Script => self.script(args),
            _ => self.db.run(spec, now_ms, args),
        }
    }

    /// [`Engine::execute`] for owned arguments (e.g. from
    /// [`parse_command`](super::resp::parse_command)).
    pub fn execute_owned(&mut self, session: &mut Session, now_ms: i64, args: &[Vec<u8>]) -> Reply {
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        self.execute(session, now_ms, &refs)
    }

    fn client(&mut self, session: &mut Session, a: &[&[u8]]) -> Reply {
        let mut buf = [0u8; 8];
        let sub = upper(a[1], &mut buf).map(|n| &buf[..n]);
        let sub_arity = |name: &str| {
            Reply::Error(format!(
                "ERR wrong number of arguments for 'client|{name}' command"
            ))
        };
        match sub {
            Some(b"SETINFO") => {
                if a.len() != 4 {
                    return sub_arity("setinfo");
                }
                if eq_ic(a[2], b"LIB-NAME") || eq_ic(a[2], b"LIB-VER") {
                    Reply::ok()
                } else {
                    Reply::Error(format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(a[2])
                    ))
                }
            }
            Some(b"SETNAME") => {
                if a.len() != 3 {
                    return sub_arity("setname");
                }
                if a[2].iter().any(|&b| b <= b' ' || b > b'~') {
                    return err(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                session.name = (!a[2].is_empty()).then(|| a[2].to_vec());
                Reply::ok()
            }
            Some(b"GETNAME") => match &session.name {
                Some(n) => Reply::Bulk(n.clone()),
                None => Reply::Nil,
            },
            Some(b"ID") => Reply::Int(i64::try_from(session.id).unwrap_or(i64::MAX)),
            _ => Reply::Error(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(a[1])
            )),
        }
    }

    fn hello(&mut self, session: &mut Session, a: &[&[u8]]) -> Reply {
        if let Some(v) = a.get(1) {
            match parse_i64(v) {
                Some(2) => {}
                Some(_) => return err("NOPROTO sorry, this protocol version is not supported"),
                None => return err("ERR Protocol version is not an integer or out of range"),
            }
        }
        let mut i = 2;
        while i < a.len() {
            if eq_ic(a[i], b"SETNAME") && i + 1 < a.len() {
                session.name = Some(a[i + 1].to_vec());
                i += 2;
            } else if eq_ic(a[i], b"AUTH") && i + 2 < a.len() {
                // No ACLs in the model: any credentials are accepted.
                i += 3;
            } else {
                return Reply::Error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(a[i])
                ));
            }
        }
        let pair = |k: &str, v: Reply| [Reply::Bulk(k.as_bytes().to_vec()), v];
        let mut out = Vec::new();
        out.extend(pair("server", Reply::Bulk(b"redis".to_vec())));
        out.extend(pair("version", Reply::Bulk(b"7.2.4".to_vec())));
        out.extend(pair("proto", Reply::Int(2)));
        out.extend(pair(
            "id",
            Reply::Int(i64::try_from(session.id).unwrap_or(i64::MAX)),
        ));
        out.extend(pair("mode", Reply::Bulk(b"standalone".to_vec())));
        out.extend(pair("role", Reply::Bulk(b"master".to_vec())));
        out.extend(pair("modules", Reply::Array(Vec::new())));
        Reply::Array(out)
    }

    fn script(&mut self, a: &[&[u8]]) -> Reply {
        let mut buf = [0u8; 8];
        let sub = upper(a[1], &mut buf).map(|n| &buf[..n]);
        let sub_arity = |name: &str| {
            Reply::Error(format!(
                "ERR wrong number of arguments for 'script|{name}' command"
            ))
        };
        match sub {
            Some(b"LOAD") => {
                if a.len() != 3 {
                    return sub_arity("load");
                }
                match self.scripting.load(a[2]) {
                    Ok(sha) => Reply::Bulk(sha.into_bytes()),
                    Err(r) => r,
                }
            }
            Some(b"EXISTS") => {
                if a.len() < 3 {
                    return sub_arity("exists");
                }
                Reply::Array(
                    a[2..]
                        .iter()
                        .map(|sha| Reply::Int(i64::from(self.scripting.exists(sha))))
                        .collect(),
                )
            }
            Some(b"FLUSH") => {
                match a.get(2) {
                    None => {}
                    Some(m) if a.len() == 3 && (eq_ic(m, b"ASYNC") || eq_ic(m, b"SYNC")) => {}
                    Some(_) => return err("ERR SCRIPT FLUSH only support SYNC|ASYNC option"),
                }
                self.scripting.flush();
                Reply::ok()
            }
            Some(b"KILL") => err("NOTBUSY No scripts in execution right now."),
            _ => Reply::Error(format!(
                "ERR unknown subcommand '{}'. Try SCRIPT HELP.",
                String::from_utf8_lossy(a[1])
            )),
        }
    }

    /// Reclaims up to `max` keys whose deadline has passed, returning how
    /// many were removed. Visits keys in the table's (deterministic) order
    /// and may touch every key to find them, so call it with a bound that
    /// suits the caller's pacing.
    pub fn expire_sweep(&mut self, now_ms: i64, max: usize) -> usize {
        let doomed: Vec<Vec<u8>> = self
            .db
            .ks
            .map
            .iter()
            .filter(|(_, e)| e.is_expired(now_ms))
            .take(max)
            .map(|(k, _)| k.to_vec())
            .collect();
        for k in &doomed {
            self.db.ks.remove(k);
        }
        doomed.len()
    }

    /// The value of `field` in the hash at `key`, if the key is live and a
    /// hash holding that field.
    pub fn get_hash_field(&mut self, now_ms: i64, key: &[u8], field: &[u8]) -> Option<Vec<u8>> {
        match self.db.ks.hash_for_read(now_ms, key) {
            Ok(Some(h)) => h.get(field).cloned(),
            _ => None,
        }
    }

    /// The value at `key` if it is live.
    pub fn get_value(&mut self, now_ms: i64, key: &[u8]) -> Option<Value> {
        self.db.ks.live(now_ms, key).map(|e| e.value.clone())
    }

    /// Live keys starting with `prefix` and their values, sorted by key.
    pub fn scan_prefix(&mut self, now_ms: i64, prefix: &[u8]) -> Vec<(Vec<u8>, Value)> {
        let mut out: Vec<(Vec<u8>, Value)> = self
            .db
            .ks
            .map
            .iter()
            .filter(|(k, e)| k.starts_with(prefix) && !e.is_expired(now_ms))
            .map(|(k, e)| (k.to_vec(), e.value.clone()))
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Number of stored keys, including expired ones not yet reclaimed.
    pub fn key_count(&self) -> usize {
        self.db.ks.len()
    }

    /// Read-only view of the data.
    pub fn keyspace(&self) -> &Keyspace {
        &self.db.ks
    }

    /// A copy of the data, e.g. to model a lagging replica.
    pub fn snapshot(&self) -> Keyspace {
        self.db.ks.clone()
    }

    /// Replaces the data with `ks` (e.g. a replica being promoted). The
    /// script cache is kept; call [`Engine::flush_scripts`] too to model a
    /// server that never saw the scripts.
    pub fn restore(&mut self, ks: Keyspace) {
        self.db.ks = ks;
    }

    /// Total loss: every key and every cached script, as after a restart
    /// without persistence.
    pub fn flush(&mut self) {
        self.db.ks.clear();
        self.scripting.flush();
    }

    /// Forgets every cached script (SCRIPT FLUSH).
    pub fn flush_scripts(&mut self) {
        self.scripting.flush();
    }
}

/// The `KEYS` and `ARGV` parts of an EVAL.
type KeysAndArgs<'a, 'b> = (&'a [&'b [u8]], &'a [&'b [u8]]);

/// Splits `EVAL body numkeys k.. a..` into keys and arguments.
fn split_keys<'a, 'b>(args: &'a [&'b [u8]]) -> Result<KeysAndArgs<'a, 'b>, Reply> {
    let numkeys = int_arg(args[2])?;
    let rest = &args[3..];
    if numkeys < 0 {
        return Err(err("ERR Number of keys can't be negative"));
    }
    match usize::try_from(numkeys) {
        Ok(n) if n <= rest.len() => Ok(rest.split_at(n)),
        _ => Err(err(
            "ERR Number of keys can't be greater than number of args",
        )),
    }
}

/// The outcome of a command run for a Lua script.
pub(crate) enum ScriptReply<'a> {
    /// Any reply.
    Reply(Reply),
    /// HGET (`multi` false) or HMGET: the values of fields `args[2..]` in
    /// this hash (`None`: no such key). Lua copies the values into its own
    /// strings anyway, so they are not first copied into a [`Reply`].
    HashFields {
        hash: Option<&'a HashFields>,
        multi: bool,
    },
}

/// Runs a command on behalf of a Lua script: lookup, script permission and
/// arity are checked with the messages Redis uses inside scripts.
pub(crate) fn run_from_script<'a>(db: &'a mut Db, now_ms: i64, args: &[&[u8]]) -> ScriptReply<'a> {
    let Some(spec) = args.first().and_then(|n| lookup(n)) else {
        return ScriptReply::Reply(err("ERR Unknown Redis command called from script"));
    };
    if spec.noscript {
        return ScriptReply::Reply(err("ERR This Redis command is not allowed from script"));
    }
    if !spec.arity_ok(args.len()) {
        return ScriptReply::Reply(err(
            "ERR Wrong number of args calling Redis command from script",
        ));
    }
    match spec.id {
        CmdId::Hget | CmdId::Hmget => match db.ks.hash_for_read(now_ms, args[1]) {
            Ok(hash) => ScriptReply::HashFields {
                hash,
                multi: spec.id == CmdId::Hmget,
            },
            Err(r) => ScriptReply::Reply(r),
        },
        _ => ScriptReply::Reply(db.run(spec, now_ms, args)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn run(e: &mut Engine, s: &mut Session, now: i64, args: &[&str]) -> Reply {
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        e.execute(s, now, &refs)
    }

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(s.as_bytes().to_vec())
    }

    fn setup() -> (Engine, Session) {
        let e = Engine::new(7);
        let s = e.new_session();
        (e, s)
    }

    proptest! {
        /// Whatever sequence of sets and deletes, small or grown into a
        /// table, a hash holds exactly what a map given the same operations
        /// holds.
        #[test]
        fn hash_fields_behave_as_a_map(ops in proptest::collection::vec((0u8..40, any::<bool>(), 0u8..4), 0..200)) {
            let mut h = HashFields::default();
            let mut model = std::collections::BTreeMap::new();
            for (field, set, value) in ops {
                let f = vec![field];
                if set {
                    prop_assert_eq!(h.insert(f.clone(), vec![value]), model.insert(f, vec![value]));
                } else {
                    prop_assert_eq!(h.remove(&f), model.remove(&f));
                }
                prop_assert_eq!(h.len(), model.len());
            }
            for (f, v) in &model {
                prop_assert_eq!(h.get(f), Some(v));
            }
            let back: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = h.clone().into_iter().collect();
            prop_assert_eq!(&back, &model);
            let rebuilt: HashFields = model.into_iter().rev().collect();
            prop_assert_eq!(rebuilt, h);
        }
    }

    #[test]
    fn engine_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Engine>();
    }

    #[test]
    fn basics_and_errors() {
        let (mut e, mut s) = setup();
        assert_eq!(
            run(&mut e, &mut s, 0, &["ping"]),
            Reply::Status("PONG".into())
        );
        assert_eq!(run(&mut e, &mut s, 0, &["PING", "hi"]), bulk("hi"));
        assert_eq!(
            run(&mut e, &mut s, 0, &["PING", "a", "b"]),
            err("ERR wrong number of arguments for 'ping' command")
        );
        assert_eq!(run(&mut e, &mut s, 0, &["echo", "x"]), bulk("x"));
        assert_eq!(
            run(&mut e, &mut s, 0, &["foo", "bar"]),
            err("ERR unknown command 'foo', with args beginning with: 'bar' ")
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["GET"]),
            err("ERR wrong number of arguments for 'get' command")
        );
        assert_eq!(run(&mut e, &mut s, 0, &["SELECT", "0"]), Reply::ok());
        assert!(run(&mut e, &mut s, 0, &["SELECT", "1"]).is_error());
        assert_eq!(run(&mut e, &mut s, 0, &["SELECT", "x"]), err(NOT_INTEGER));
        assert_eq!(
            run(
                &mut e,
                &mut s,
                0,
                &["CLIENT", "SETINFO", "LIB-NAME", "redis-rs"]
            ),
            Reply::ok()
        );
        assert_eq!(run(&mut e, &mut s, 0, &["CLIENT", "GETNAME"]), Reply::Nil);
        assert_eq!(
            run(&mut e, &mut s, 0, &["CLIENT", "SETNAME", "w1"]),
            Reply::ok()
        );
        assert_eq!(run(&mut e, &mut s, 0, &["CLIENT", "GETNAME"]), bulk("w1"));
        assert_eq!(run(&mut e, &mut s, 0, &["CLIENT", "ID"]), Reply::Int(1));
        assert!(matches!(
            run(&mut e, &mut s, 0, &["HELLO"]),
            Reply::Array(_)
        ));
        assert!(
            matches!(run(&mut e, &mut s, 0, &["HELLO", "3"]), Reply::Error(m) if m.starts_with("NOPROTO"))
        );
        assert_eq!(
            run(&mut e, &mut s, 1_700_000_000_123, &["TIME"]),
            Reply::Array(vec![bulk("1700000000"), bulk("123000")])
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["ROLE"]),
            Reply::Array(vec![bulk("master"), Reply::Int(0), Reply::Array(vec![])])
        );
        assert_eq!(run(&mut e, &mut s, 0, &["WAIT", "1", "0"]), Reply::Int(0));
    }

    #[test]
    fn info_has_replication_section() {
        let (mut e, mut s) = setup();
        let Reply::Bulk(info) = run(&mut e, &mut s, 0, &["INFO", "replication"]) else {
            panic!("INFO must be bulk");
        };
        let info = String::from_utf8(info).unwrap();
        let replid = derived_id(7, "replid");
        assert_eq!(replid.len(), 40);
        assert!(info.starts_with(&format!(
            "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_replid:{replid}\r\n"
        )));
        let Reply::Bulk(all) = run(&mut e, &mut s, 0, &["INFO"]) else {
            panic!("INFO must be bulk");
        };
        let all = String::from_utf8(all).unwrap();
        assert!(all.contains("# Server\r\n") && all.contains("# Replication\r\n"));
        // A different seed gives a different replication id.
        assert_ne!(derived_id(8, "replid"), replid);
    }

    #[test]
    fn strings_set_options() {
        let (mut e, mut s) = setup();
        let r = |e: &mut Engine, s: &mut Session, now, a: &[&str]| run(e, s, now, a);
        assert_eq!(r(&mut e, &mut s, 0, &["SET", "k", "v"]), Reply::ok());
        assert_eq!(r(&mut e, &mut s, 0, &["GET", "k"]), bulk("v"));
        assert_eq!(r(&mut e, &mut s, 0, &["SET", "k", "w", "NX"]), Reply::Nil);
        assert_eq!(r(&mut e, &mut s, 0, &["SET", "k2", "w", "XX"]), Reply::Nil);
        assert_eq!(
            r(&mut e, &mut s, 0, &["SET", "k", "w", "XX", "GET"]),
            bulk("v")
        );
        assert_eq!(
            r(&mut e, &mut s, 0, &["SET", "k", "x", "NX", "GET"]),
            bulk("w")
        );
        assert_eq!(r(&mut e, &mut s, 0, &["GET", "k"]), bulk("w"));
        assert_eq!(
            r(&mut e, &mut s, 0, &["SET", "k", "v", "NX", "XX"]),
            err(SYNTAX)
        );
        assert_eq!(r(&mut e, &mut s, 0, &["SET", "k", "v", "EX"]), err(SYNTAX));
        assert_eq!(
            r(&mut e, &mut s, 0, &["SET", "k", "v", "EX", "1", "PX", "1"]),
            err(SYNTAX)
        );
        assert_eq!(
            r(&mut e, &mut s, 0, &["SET", "k", "v", "EX", "x"]),
            err(NOT_INTEGER)
        );
        assert_eq!(
            r(&mut e, &mut s, 0, &["SET", "k", "v", "EX", "0"]),
            err("ERR invalid expire time in 'set' command")
        );
        assert_eq!(
            r(&mut e, &mut s, 1000, &["SET", "t", "v", "EX", "10"]),
            Reply::ok()
        );
        assert_eq!(r(&mut e, &mut s, 1000, &["PTTL", "t"]), Reply::Int(10_000));
        assert_eq!(
            r(&mut e, &mut s, 2000, &["SET", "t", "v2", "KEEPTTL"]),
            Reply::ok()
        );
        assert_eq!(r(&mut e, &mut s, 2000, &["TTL", "t"]), Reply::Int(9));
        assert_eq!(r(&mut e, &mut s, 2000, &["SET", "t", "v3"]), Reply::ok());
        assert_eq!(r(&mut e, &mut s, 2000, &["TTL", "t"]), Reply::Int(-1));
        assert_eq!(
            r(&mut e, &mut s, 2000, &["SET", "p", "v", "PXAT", "1500"]),
            Reply::ok()
        );
        assert_eq!(r(&mut e, &mut s, 2000, &["EXISTS", "p"]), Reply::Int(0));
        assert_eq!(r(&mut e, &mut s, 0, &["SETNX", "n", "1"]), Reply::Int(1));
        assert_eq!(r(&mut e, &mut s, 0, &["SETNX", "n", "2"]), Reply::Int(0));
        assert_eq!(
            r(&mut e, &mut s, 0, &["MGET", "n", "nope", "k"]),
            Reply::Array(vec![bulk("1"), Reply::Nil, bulk("w")])
        );
        assert_eq!(
            r(&mut e, &mut s, 0, &["HSET", "h", "f", "v"]),
            Reply::Int(1)
        );
        assert_eq!(r(&mut e, &mut s, 0, &["GET", "h"]), err(WRONGTYPE));
        assert_eq!(
            r(&mut e, &mut s, 0, &["SET", "h", "v", "GET"]),
            err(WRONGTYPE)
        );
        assert_eq!(r(&mut e, &mut s, 0, &["SET", "h", "v"]), Reply::ok());
        assert_eq!(
            r(&mut e, &mut s, 0, &["TYPE", "h"]),
            Reply::Status("string".into())
        );
        assert_eq!(
            r(&mut e, &mut s, 0, &["TYPE", "zz"]),
            Reply::Status("none".into())
        );
    }

    #[test]
    fn counters() {
        let (mut e, mut s) = setup();
        assert_eq!(run(&mut e, &mut s, 0, &["INCR", "c"]), Reply::Int(1));
        assert_eq!(
            run(&mut e, &mut s, 0, &["INCRBY", "c", "41"]),
            Reply::Int(42)
        );
        assert_eq!(run(&mut e, &mut s, 0, &["DECR", "c"]), Reply::Int(41));
        assert_eq!(
            run(&mut e, &mut s, 0, &["DECRBY", "c", "-9"]),
            Reply::Int(50)
        );
        assert_eq!(run(&mut e, &mut s, 0, &["GET", "c"]), bulk("50"));
        assert_eq!(
            run(&mut e, &mut s, 0, &["INCRBY", "c", "x"]),
            err(NOT_INTEGER)
        );
        run(&mut e, &mut s, 0, &["SET", "s", "abc"]);
        assert_eq!(run(&mut e, &mut s, 0, &["INCR", "s"]), err(NOT_INTEGER));
        run(&mut e, &mut s, 0, &["SET", "m", &i64::MAX.to_string()]);
        assert_eq!(run(&mut e, &mut s, 0, &["INCR", "m"]), err(OVERFLOW));
        assert_eq!(
            run(&mut e, &mut s, 0, &["DECRBY", "m", &i64::MIN.to_string()]),
            err("ERR decrement would overflow")
        );
        // INCR keeps an existing TTL.
        run(&mut e, &mut s, 0, &["SET", "t", "1", "PX", "100"]);
        run(&mut e, &mut s, 0, &["INCR", "t"]);
        assert_eq!(run(&mut e, &mut s, 0, &["PTTL", "t"]), Reply::Int(100));
    }

    #[test]
    fn expiry_is_lazy_and_exact() {
        let (mut e, mut s) = setup();
        run(&mut e, &mut s, 1000, &["SET", "k", "v", "PX", "100"]);
        assert_eq!(run(&mut e, &mut s, 1100, &["GET", "k"]), bulk("v"));
        assert_eq!(run(&mut e, &mut s, 1101, &["GET", "k"]), Reply::Nil);
        assert_eq!(e.key_count(), 0, "touching the key reclaimed it");

        run(&mut e, &mut s, 0, &["SET", "a", "1"]);
        assert_eq!(run(&mut e, &mut s, 0, &["TTL", "a"]), Reply::Int(-1));
        assert_eq!(run(&mut e, &mut s, 0, &["TTL", "zz"]), Reply::Int(-2));
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXPIRE", "a", "10"]),
            Reply::Int(1)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXPIRE", "zz", "10"]),
            Reply::Int(0)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXPIRE", "a", "20", "NX"]),
            Reply::Int(0)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXPIRE", "a", "5", "GT"]),
            Reply::Int(0)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXPIRE", "a", "50", "GT"]),
            Reply::Int(1)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXPIRE", "a", "5", "LT"]),
            Reply::Int(1)
        );
        assert_eq!(run(&mut e, &mut s, 0, &["TTL", "a"]), Reply::Int(5));
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXPIRE", "a", "5", "NX", "XX"]),
            err("ERR NX and XX, GT or LT options at the same time are not compatible")
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXPIRE", "a", "5", "FOO"]),
            err("ERR Unsupported option FOO")
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXPIRE", "a", &i64::MAX.to_string()]),
            err("ERR invalid expire time in 'expire' command")
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["PEXPIRE", "a", "1500"]),
            Reply::Int(1)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["TTL", "a"]),
            Reply::Int(2),
            "rounded"
        );
        assert_eq!(run(&mut e, &mut s, 0, &["PERSIST", "a"]), Reply::Int(1));
        assert_eq!(run(&mut e, &mut s, 0, &["PERSIST", "a"]), Reply::Int(0));
        assert_eq!(
            run(&mut e, &mut s, 0, &["PEXPIREAT", "a", "5000"]),
            Reply::Int(1)
        );
        assert_eq!(run(&mut e, &mut s, 0, &["PTTL", "a"]), Reply::Int(5000));
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXPIREAT", "a", "10"]),
            Reply::Int(1)
        );
        assert_eq!(run(&mut e, &mut s, 0, &["PTTL", "a"]), Reply::Int(10_000));
        // A deadline in the past deletes at once.
        assert_eq!(
            run(&mut e, &mut s, 100, &["PEXPIREAT", "a", "100"]),
            Reply::Int(1)
        );
        assert_eq!(run(&mut e, &mut s, 100, &["EXISTS", "a"]), Reply::Int(0));
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXPIRE", "zz", "x"]),
            err(NOT_INTEGER)
        );
    }

    #[test]
    fn writes_to_expired_keys_start_fresh() {
        let (mut e, mut s) = setup();
        // An expired hash: HSET starts a new, persistent hash.
        run(&mut e, &mut s, 0, &["HSET", "h", "old", "1"]);
        run(&mut e, &mut s, 0, &["PEXPIRE", "h", "10"]);
        assert_eq!(
            run(&mut e, &mut s, 11, &["HSET", "h", "new", "2"]),
            Reply::Int(1)
        );
        assert_eq!(
            run(&mut e, &mut s, 11, &["HGETALL", "h"]),
            Reply::Array(vec![bulk("new"), bulk("2")])
        );
        assert_eq!(run(&mut e, &mut s, 11, &["PTTL", "h"]), Reply::Int(-1));
        // An expired string is no obstacle to a hash write, nor a hash to
        // a string write.
        run(&mut e, &mut s, 0, &["SET", "s", "x", "PX", "10"]);
        assert_eq!(
            run(&mut e, &mut s, 11, &["HINCRBY", "s", "f", "5"]),
            Reply::Int(5)
        );
        run(&mut e, &mut s, 11, &["PEXPIRE", "s", "10"]);
        assert_eq!(run(&mut e, &mut s, 22, &["INCR", "s"]), Reply::Int(1));
        assert_eq!(run(&mut e, &mut s, 22, &["PTTL", "s"]), Reply::Int(-1));
        run(&mut e, &mut s, 22, &["PEXPIRE", "s", "10"]);
        assert_eq!(run(&mut e, &mut s, 33, &["SETNX", "s", "y"]), Reply::Int(1));
        run(&mut e, &mut s, 33, &["PEXPIRE", "s", "10"]);
        assert_eq!(
            run(&mut e, &mut s, 44, &["APPEND", "s", "ab"]),
            Reply::Int(2)
        );
        assert_eq!(run(&mut e, &mut s, 44, &["GET", "s"]), bulk("ab"));
        // Reads reclaim: the expired key is gone from the count at once.
        run(&mut e, &mut s, 44, &["PEXPIRE", "s", "10"]);
        assert_eq!(e.key_count(), 2);
        assert_eq!(run(&mut e, &mut s, 55, &["HGET", "s", "f"]), Reply::Nil);
        assert_eq!(e.key_count(), 1);
        // And a live key of the other type is still refused.
        assert_eq!(run(&mut e, &mut s, 55, &["SET", "str", "v"]), Reply::ok());
        assert_eq!(
            run(&mut e, &mut s, 55, &["HSET", "str", "f", "v"]),
            err(WRONGTYPE)
        );
    }

    #[test]
    fn sweep_reclaims_expired_keys() {
        let (mut e, mut s) = setup();
        for i in 0..10 {
            run(
                &mut e,
                &mut s,
                0,
                &["SET", &format!("k{i}"), "v", "PX", "10"],
            );
        }
        run(&mut e, &mut s, 0, &["SET", "keep", "v"]);
        assert_eq!(e.key_count(), 11);
        assert_eq!(e.expire_sweep(5, 100), 0);
        assert_eq!(e.expire_sweep(11, 4), 4);
        assert_eq!(e.expire_sweep(11, 100), 6);
        assert_eq!(e.key_count(), 1);
        assert_eq!(run(&mut e, &mut s, 11, &["DBSIZE"]), Reply::Int(1));
    }

    #[test]
    fn hashes() {
        let (mut e, mut s) = setup();
        assert_eq!(
            run(&mut e, &mut s, 0, &["HSET", "h", "a", "1", "b", "2"]),
            Reply::Int(2)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HSET", "h", "a", "3", "c", "4"]),
            Reply::Int(1)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HSET", "h", "a"]),
            err("ERR wrong number of arguments for 'hset' command")
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HSET", "h", "a", "1", "b"]),
            err("ERR wrong number of arguments for 'hset' command")
        );
        assert_eq!(run(&mut e, &mut s, 0, &["HGET", "h", "a"]), bulk("3"));
        assert_eq!(run(&mut e, &mut s, 0, &["HGET", "h", "z"]), Reply::Nil);
        assert_eq!(run(&mut e, &mut s, 0, &["HGET", "nope", "z"]), Reply::Nil);
        assert_eq!(
            run(&mut e, &mut s, 0, &["HSETNX", "h", "a", "9"]),
            Reply::Int(0)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HSETNX", "h", "d", "9"]),
            Reply::Int(1)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HMSET", "h", "e", "5"]),
            Reply::ok()
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HMGET", "h", "a", "zz", "e"]),
            Reply::Array(vec![bulk("3"), Reply::Nil, bulk("5")])
        );
        assert_eq!(run(&mut e, &mut s, 0, &["HLEN", "h"]), Reply::Int(5));
        assert_eq!(
            run(&mut e, &mut s, 0, &["HEXISTS", "h", "a"]),
            Reply::Int(1)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HEXISTS", "h", "q"]),
            Reply::Int(0)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HKEYS", "h"]),
            Reply::Array(["a", "b", "c", "d", "e"].iter().map(|f| bulk(f)).collect())
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HVALS", "h"]),
            Reply::Array(["3", "2", "4", "9", "5"].iter().map(|f| bulk(f)).collect())
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HGETALL", "h"]),
            Reply::Array(
                ["a", "3", "b", "2", "c", "4", "d", "9", "e", "5"]
                    .iter()
                    .map(|f| bulk(f))
                    .collect()
            )
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HINCRBY", "h", "a", "10"]),
            Reply::Int(13)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HINCRBY", "h", "new", "-2"]),
            Reply::Int(-2)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HINCRBY", "h2", "x", "5"]),
            Reply::Int(5)
        );
        run(&mut e, &mut s, 0, &["HSET", "h", "txt", "abc"]);
        assert_eq!(
            run(&mut e, &mut s, 0, &["HINCRBY", "h", "txt", "1"]),
            err("ERR hash value is not an integer")
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HINCRBY", "h", "a", "z"]),
            err(NOT_INTEGER)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HDEL", "h2", "x", "y"]),
            Reply::Int(1)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXISTS", "h2"]),
            Reply::Int(0),
            "empty hash removed"
        );
        run(&mut e, &mut s, 0, &["SET", "str", "v"]);
        for cmd in [
            &["HGET", "str", "a"][..],
            &["HSET", "str", "a", "b"],
            &["HGETALL", "str"],
            &["HDEL", "str", "a"],
            &["HLEN", "str"],
            &["HINCRBY", "str", "a", "1"],
        ] {
            assert_eq!(run(&mut e, &mut s, 0, cmd), err(WRONGTYPE), "{cmd:?}");
        }
        assert_eq!(e.get_hash_field(0, b"h", b"a"), Some(b"13".to_vec()));
        assert_eq!(e.get_hash_field(0, b"str", b"a"), None);
    }

    #[test]
    fn keys_exists_del_and_prefix_scan() {
        let (mut e, mut s) = setup();
        for k in ["user:1", "user:2", "user:10", "other", "u[x]"] {
            run(&mut e, &mut s, 0, &["SET", k, "v"]);
        }
        run(&mut e, &mut s, 0, &["SET", "user:3", "v", "PX", "5"]);
        let keys = |e: &mut Engine, s: &mut Session, p: &str| match run(e, s, 10, &["KEYS", p]) {
            Reply::Array(v) => v
                .into_iter()
                .map(|r| match r {
                    Reply::Bulk(b) => String::from_utf8(b).unwrap(),
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            keys(&mut e, &mut s, "user:*"),
            ["user:1", "user:10", "user:2"]
        );
        assert_eq!(keys(&mut e, &mut s, "user:?"), ["user:1", "user:2"]);
        assert_eq!(keys(&mut e, &mut s, "user:[^2]*"), ["user:1", "user:10"]);
        assert_eq!(keys(&mut e, &mut s, "u\\[x\\]"), ["u[x]"]);
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXISTS", "user:1", "user:1", "no"]),
            Reply::Int(2)
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["DEL", "user:1", "no", "other"]),
            Reply::Int(2)
        );
        let found = e.scan_prefix(10, b"user:");
        let names: Vec<&[u8]> = found.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(names, [&b"user:10"[..], b"user:2"]);
        assert_eq!(found[0].1, Value::Str(b"v".to_vec()));
        assert_eq!(run(&mut e, &mut s, 0, &["FLUSHALL"]), Reply::ok());
        assert_eq!(e.key_count(), 0);
    }

    #[test]
    fn glob_patterns() {
        let m = |p: &str, s: &str| glob_match(p.as_bytes(), s.as_bytes());
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-c]llo", "hbllo"));
        assert!(m("h[c-a]llo", "hbllo"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "aXb"));
        assert!(m("a[\\]]b", "a]b"));
        assert!(m("**a", "bbba"));
        assert!(m("*a*", "xxaxx"));
        assert!(!m("abc", "abcd"));
        assert!(m("ab[c", "abc"), "an unterminated class runs to the end");
        // Pathological patterns stay fast.
        let s = "a".repeat(200);
        assert!(!m(&format!("{}b", "a*".repeat(50)), &s));
    }

    #[test]
    fn scan_visits_every_live_key_exactly_once() {
        let (mut e, mut s) = setup();
        for i in 0..1000 {
            run(&mut e, &mut s, 0, &["SET", &format!("msg:{i}"), "v"]);
            run(&mut e, &mut s, 0, &["SET", &format!("other:{i}"), "v"]);
        }
        for i in 0..50 {
            run(
                &mut e,
                &mut s,
                0,
                &["SET", &format!("msg:gone:{i}"), "v", "PX", "5"],
            );
        }
        let mut seen = std::collections::BTreeMap::<Vec<u8>, usize>::new();
        let mut cursor = "0".to_owned();
        let mut calls = 0;
        loop {
            calls += 1;
            let Reply::Array(parts) = run(
                &mut e,
                &mut s,
                10,
                &["SCAN", &cursor, "MATCH", "msg:*", "COUNT", "37"],
            ) else {
                panic!("SCAN reply must be an array");
            };
            let [Reply::Bulk(next), Reply::Array(keys)] = &parts[..] else {
                panic!("bad SCAN shape {parts:?}");
            };
            for k in keys {
                let Reply::Bulk(k) = k else { panic!() };
                *seen.entry(k.clone()).or_default() += 1;
            }
            cursor = String::from_utf8(next.clone()).unwrap();
            if cursor == "0" {
                break;
            }
        }
        assert_eq!(seen.len(), 1000);
        assert!(seen.values().all(|&n| n == 1));
        assert!(
            seen.keys()
                .all(|k| k.starts_with(b"msg:") && !k.starts_with(b"msg:gone"))
        );
        assert!(calls >= 2050 / 37, "COUNT bounds each step ({calls} calls)");
        assert_eq!(
            run(&mut e, &mut s, 0, &["SCAN", "x"]),
            err("ERR invalid cursor")
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["SCAN", "0", "COUNT", "0"]),
            err(SYNTAX)
        );
    }

    #[test]
    fn scan_is_stable_while_keys_change() {
        let (mut e, mut s) = setup();
        for i in 0..300 {
            run(&mut e, &mut s, 0, &["SET", &format!("k{i}"), "v"]);
        }
        let mut seen = std::collections::BTreeMap::<Vec<u8>, usize>::new();
        let mut cursor = "0".to_owned();
        let mut step = 0;
        loop {
            let Reply::Array(parts) = run(&mut e, &mut s, 0, &["SCAN", &cursor, "COUNT", "7"])
            else {
                panic!()
            };
            let [Reply::Bulk(next), Reply::Array(keys)] = &parts[..] else {
                panic!()
            };
            for k in keys {
                let Reply::Bulk(k) = k else { panic!() };
                *seen.entry(k.clone()).or_default() += 1;
            }
            // Churn: add and remove unrelated keys between calls.
            step += 1;
            run(&mut e, &mut s, 0, &["SET", &format!("new{step}"), "v"]);
            run(&mut e, &mut s, 0, &["DEL", &format!("new{}", step - 1)]);
            cursor = String::from_utf8(next.clone()).unwrap();
            if cursor == "0" {
                break;
            }
        }
        for i in 0..300 {
            assert_eq!(seen.get(format!("k{i}").as_bytes()), Some(&1), "k{i}");
        }
    }

    #[test]
    fn multi_exec_discard() {
        let (mut e, mut s) = setup();
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXEC"]),
            err("ERR EXEC without MULTI")
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["DISCARD"]),
            err("ERR DISCARD without MULTI")
        );
        assert_eq!(run(&mut e, &mut s, 0, &["MULTI"]), Reply::ok());
        assert_eq!(
            run(&mut e, &mut s, 0, &["MULTI"]),
            err("ERR MULTI calls can not be nested")
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["SET", "a", "1"]),
            Reply::Status("QUEUED".into())
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["INCR", "a"]),
            Reply::Status("QUEUED".into())
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["HGET", "a", "f"]),
            Reply::Status("QUEUED".into())
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["GET", "a"]),
            Reply::Status("QUEUED".into())
        );
        assert_eq!(e.key_count(), 0, "nothing runs before EXEC");
        assert_eq!(
            run(&mut e, &mut s, 0, &["EXEC"]),
            Reply::Array(vec![Reply::ok(), Reply::Int(2), err(WRONGTYPE), bulk("2")])
        );
        assert!(!s.in_multi());

        run(&mut e, &mut s, 0, &["MULTI"]);
        run(&mut e, &mut s, 0, &["SET", "b", "1"]);
        assert_eq!(run(&mut e, &mut s, 0, &["DISCARD"]), Reply::ok());
        assert_eq!(run(&mut e, &mut s, 0, &["EXISTS", "b"]), Reply::Int(0));

        run(&mut e, &mut s, 0, &["MULTI"]);
        run(&mut e, &mut s, 0, &["SET", "b", "1"]);
        assert!(run(&mut e, &mut s, 0, &["NOPE"]).is_error());
        assert!(run(&mut e, &mut s, 0, &["GET"]).is_error());
        assert_eq!(run(&mut e, &mut s, 0, &["EXEC"]), err(EXECABORT));
        assert_eq!(run(&mut e, &mut s, 0, &["EXISTS", "b"]), Reply::Int(0));
    }

    #[test]
    fn snapshot_restore_and_flush() {
        let (mut e, mut s) = setup();
        run(&mut e, &mut s, 0, &["SET", "a", "1"]);
        let snap = e.snapshot();
        run(&mut e, &mut s, 0, &["SET", "b", "2"]);
        e.restore(snap.clone());
        assert_eq!(run(&mut e, &mut s, 0, &["EXISTS", "a", "b"]), Reply::Int(1));
        assert_eq!(e.snapshot(), snap);
        let Reply::Bulk(sha) = run(&mut e, &mut s, 0, &["SCRIPT", "LOAD", "return 1"]) else {
            panic!()
        };
        let sha = String::from_utf8(sha).unwrap();
        e.flush();
        assert_eq!(e.key_count(), 0);
        assert_eq!(
            run(&mut e, &mut s, 0, &["EVALSHA", &sha, "0"]),
            err(NOSCRIPT)
        );
    }

    fn arg_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"k".to_vec()),
            Just(b"h".to_vec()),
            Just(b"0".to_vec()),
            Just(b"-1".to_vec()),
            Just(b"9223372036854775807".to_vec()),
            Just(b"EX".to_vec()),
            Just(b"PX".to_vec()),
            Just(b"NX".to_vec()),
            Just(b"GET".to_vec()),
            Just(b"MATCH".to_vec()),
            Just(b"COUNT".to_vec()),
            Just(b"*".to_vec()),
            (-5i64..100).prop_map(|n| n.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..6),
        ]
    }

    const NAMES: &[&str] = &[
        "PING",
        "ECHO",
        "SELECT",
        "CLIENT",
        "HELLO",
        "INFO",
        "ROLE",
        "TIME",
        "DBSIZE",
        "FLUSHDB",
        "KEYS",
        "SCAN",
        "EXISTS",
        "DEL",
        "TYPE",
        "GET",
        "GETDEL",
        "SET",
        "SETNX",
        "SETEX",
        "MGET",
        "MSET",
        "STRLEN",
        "APPEND",
        "INCR",
        "INCRBY",
        "DECR",
        "DECRBY",
        "EXPIRE",
        "PEXPIRE",
        "EXPIREAT",
        "PEXPIREAT",
        "PERSIST",
        "TTL",
        "PTTL",
        "HGET",
        "HSET",
        "HSETNX",
        "HMSET",
        "HMGET",
        "HDEL",
        "HGETALL",
        "HEXISTS",
        "HLEN",
        "HKEYS",
        "HVALS",
        "HINCRBY",
        "WAIT",
        "MULTI",
        "EXEC",
        "DISCARD",
        "WATCH",
        "EVAL",
        "EVALSHA",
        "SCRIPT",
        "nosuch",
    ];

    proptest! {
        #[test]
        fn arbitrary_commands_never_panic(
            cmds in prop::collection::vec(
                (0..NAMES.len(), prop::collection::vec(arg_strategy(), 0..6), 0i64..5000),
                1..40,
            ),
        ) {
            let mut e = Engine::new(5);
            let mut s = e.new_session();
            let mut now = 1_000;
            for (name, args, step) in cmds {
                now += step;
                let mut full: Vec<Vec<u8>> = vec![NAMES[name].as_bytes().to_vec()];
                full.extend(args);
                let _ = e.execute_owned(&mut s, now, &full);
            }
            e.expire_sweep(now + 1_000_000, usize::MAX);
            prop_assert_eq!(e.key_count(), e.scan_prefix(now + 1_000_000, b"").len());
        }
    }
}
