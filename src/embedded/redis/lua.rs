//! Lua scripting for the embedded Redis model (EVAL, EVALSHA, SCRIPT).
//!
//! One Lua 5.1 state per engine, set up the way Redis 7 sets up its own:
//! `KEYS`/`ARGV` globals, the `redis` library (`call`, `pcall`,
//! `error_reply`, `status_reply`, `sha1hex`, `log`, ...), a read-only global
//! table, `math.random` reseeded identically before every script, and no
//! `os`, `io`, `package`, `loadfile` or `dofile`. Scripts are compiled once
//! and cached under the lowercase hex SHA1 of their body.
//!
//! It assumes it is driven by [`Engine`](super::Engine) under the engine's
//! lock: while a script runs, the engine's keyspace is *moved* into the Lua
//! state's app data so that `redis.call` (a Rust callback created once at
//! start-up) can reach it synchronously without shared-ownership tricks, and
//! it is moved back when the script returns or unwinds.
//!
//! It must never let a script reach the host (files, clock, environment),
//! never roll back writes a failing script already made (Redis does not),
//! and never leave the engine unusable after a script error.

use std::ffi::c_int;
use std::io::Write as _;

use mlua::{
    Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value as LuaValue, VmState,
};
use rustc_hash::FxHashMap;

use super::engine::{Db, NOSCRIPT, Reply, run_from_script};

/// Chunk name of user scripts; Lua reports positions as `user_script:N`.
const USER_SCRIPT_CHUNK: &str = "@user_script";
/// Chunk name of the library code below, which error positions skip.
const LIB_CHUNK: &str = "=redis_lib";
/// The hook fires every this many VM instructions to enforce the limit.
const HOOK_EVERY: u32 = 100_000;
const DEFAULT_INSTRUCTION_LIMIT: u64 = 1_000_000_000;
/// Deepest table nesting converted from a script's return value; deeper
/// (or cyclic) tables get the error Redis gives when its stack runs out.
const MAX_REPLY_DEPTH: usize = 1000;

/// Library code that is easier to state in Lua. It receives the `redis`
/// table and the two global tables.
const LIB_SOURCE: &str = r#"
local redis, base, env = ...
local type, error, setmetatable, tostring = type, error, setmetatable, tostring

function redis.status_reply(s)
  if type(s) ~= 'string' then
    return {err = 'ERR wrong number or type of arguments'}
  end
  return {ok = s}
end

-- Same normalisation as Redis: a leading '-' is dropped, a message without
-- an error code gets 'ERR', and CR/LF around the message are trimmed.
function redis.error_reply(s)
  if type(s) ~= 'string' then
    return {err = 'ERR wrong number or type of arguments'}
  end
  if s:sub(1, 1) == '-' then s = s:sub(2) end
  local code, msg = 'ERR', s
  local sp = s:find(' ', 1, true)
  if sp then code, msg = s:sub(1, sp - 1), s:sub(sp + 1) end
  msg = msg:gsub('^[\r\n]+', ''):gsub('[\r\n]+$', '')
  return {err = code .. ' ' .. msg}
end

-- Globals are read-only and unknown names are errors, as in Redis 7, so a
-- script that forgets `local` fails here as it would in production.
setmetatable(base, {
  __index = function(_, k)
    error("Script attempted to access nonexistent global variable '" .. tostring(k) .. "'", 2)
  end,
})
setmetatable(env, {
  __index = base,
  __newindex = function()
    error('Attempt to modify a readonly table', 2)
  end,
  __metatable = false,
})
"#;

/// Calls a script function under a message handler and returns
/// `true, result` or `false, error-table`.
const RUNNER_SOURCE: &str = r#"
local xpcall, handler = xpcall, ...
return function(f) return xpcall(f, handler) end
"#;

/// The POSIX `lrand48` generator, which is what Redis uses for
/// `math.random`, so scripts see the sequence they would see in Redis.
#[derive(Debug, Clone, Copy)]
struct Rand48 {
    state: u64,
}

impl Rand48 {
    const MASK: u64 = (1 << 48) - 1;
    /// Redis divides by this (INT32_MAX) to map draws onto [0, 1).
    const MAX: u32 = i32::MAX as u32;

    fn seeded(seed: i64) -> Self {
        // srand48: the seed's low 32 bits become the high bits of the state.
        let high = u64::from(seed as u32);
        Rand48 {
            state: ((high << 16) | 0x330e) & Self::MASK,
        }
    }

    fn next31(&mut self) -> u32 {
        self.state = self.state.wrapping_mul(0x5_deec_e66d).wrapping_add(0xb) & Self::MASK;
        // The top 31 of 48 bits; the shift leaves at most 31 bits.
        (self.state >> 17) as u32
    }

    fn unit(&mut self) -> f64 {
        f64::from(self.next31() % Self::MAX) / f64::from(Self::MAX)
    }
}

/// What a running script can reach from its Rust callbacks.
struct ScriptCtx {
    /// The engine's keyspace while a script runs; an empty placeholder
    /// otherwise.
    db: Db,
    now_ms: i64,
    rng: Rand48,
    /// Reused buffers for `redis.call` arguments.
    arena: Vec<u8>,
    spans: Vec<(usize, usize)>,
    /// Hook firings during the current script.
    ticks: u64,
    /// Hook firings allowed per script (`None` = unlimited).
    max_ticks: Option<u64>,
}

/// The scripting half of the engine: Lua state and script cache.
pub(crate) struct Scripting {
    lua: Lua,
    /// The real global table, where `KEYS` and `ARGV` are stored.
    base: Table,
    /// The read-only view scripts see as their globals.
    env: Table,
    runner: Function,
    by_sha: FxHashMap<[u8; 40], Function>,
    /// EVAL sends the body every time; remembering its SHA avoids hashing
    /// the body again on each call.
    sha_by_body: FxHashMap<Vec<u8>, [u8; 40]>,
}

impl Scripting {
    /// A fresh Lua state with the Redis library installed.
    pub(crate) fn new() -> Self {
        // The set-up runs fixed code on a fresh state; it can only fail if
        // that code is wrong (which every test that touches the engine would
        // reveal) or if memory runs out, where aborting is all we can do.
        Self::build().expect("embedded Redis: Lua scripting set-up failed")
    }

    fn build() -> mlua::Result<Self> {
        let lua = Lua::new_with(
            StdLib::TABLE | StdLib::STRING | StdLib::MATH,
            LuaOptions::default(),
        )?;
        let base = lua.globals();
        for name in ["loadfile", "dofile"] {
            base.raw_set(name, LuaValue::Nil)?;
        }
        // Redis' print writes to the server's stdout; here it goes nowhere.
        base.raw_set("print", lua.create_function(|_, _: MultiValue| Ok(()))?)?;

        let redis = lua.create_table()?;
        let pcall = lua.create_function(redis_pcall)?;
        // SAFETY: `exec_raw` pushes `pcall` as the only argument, and
        // `lua_pushcclosure` turns it into the single upvalue that
        // `redis_call_trampoline` expects; the closure is left on the stack
        // as the one result.
        let call: Function = unsafe {
            lua.exec_raw(&pcall, |state| {
                mlua::ffi::lua_pushcclosure(state, redis_call_trampoline, 1);
            })
        }?;
        redis.raw_set("pcall", pcall)?;
        redis.raw_set("call", call)?;
        redis.raw_set("sha1hex", lua.create_function(redis_sha1hex)?)?;
        redis.raw_set("log", lua.create_function(redis_log)?)?;
        redis.raw_set("setresp", lua.create_function(redis_setresp)?)?;
        redis.raw_set("replicate_commands", lua.create_function(|_, ()| Ok(true))?)?;
        redis.raw_set("set_repl", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
        for (name, v) in [
            ("LOG_DEBUG", 0),
            ("LOG_VERBOSE", 1),
            ("LOG_NOTICE", 2),
            ("LOG_WARNING", 3),
            ("REPL_NONE", 0),
            ("REPL_AOF", 1),
            ("REPL_SLAVE", 2),
            ("REPL_REPLICA", 2),
            ("REPL_ALL", 3),
            ("REDIS_VERSION_NUM", 0x07_02_04),
        ] {
            redis.raw_set(name, v)?;
        }
        redis.raw_set("REDIS_VERSION", "7.2.4")?;
        base.raw_set("redis", redis.clone())?;

        let math: Table = base.raw_get("math")?;
        math.raw_set("random", lua.create_function(math_random)?)?;
        math.raw_set("randomseed", lua.create_function(math_randomseed)?)?;

        let env = lua.create_table()?;
        base.raw_set("_G", env.clone())?;
        lua.load(LIB_SOURCE)
            .set_name(LIB_CHUNK)
            .call::<()>((redis, base.clone(), env.clone()))?;
        let handler = lua.create_function(error_handler)?;
        let runner: Function = lua.load(RUNNER_SOURCE).set_name(LIB_CHUNK).call(handler)?;
        lua.set_globals(env.clone())?;

        lua.set_app_data(ScriptCtx {
            db: Db::default(),
            now_ms: 0,
            rng: Rand48::seeded(0),
            arena: Vec::new(),
            spans: Vec::new(),
            ticks: 0,
            max_ticks: Some(DEFAULT_INSTRUCTION_LIMIT / u64::from(HOOK_EVERY)),
        });
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            |lua, _| {
                if let Ok(Some(mut ctx)) = lua.try_app_data_mut::<ScriptCtx>() {
                    ctx.ticks += 1;
                    if ctx.max_ticks.is_some_and(|m| ctx.ticks > m) {
                        return Err(mlua::Error::runtime(
                            "Script killed: it exceeded the embedded instruction limit",
                        ));
                    }
                }
                Ok(VmState::Continue)
            },
        )?;

        Ok(Scripting {
            lua,
            base,
            env,
            runner,
            by_sha: FxHashMap::default(),
            sha_by_body: FxHashMap::default(),
        })
    }

    /// Number of cached scripts.
    pub(crate) fn len(&self) -> usize {
        self.by_sha.len()
    }

    pub(crate) fn set_instruction_limit(&mut self, limit: Option<u64>) {
        if let Ok(Some(mut ctx)) = self.lua.try_app_data_mut::<ScriptCtx>() {
            ctx.max_ticks = limit.map(|l| l.div_ceil(u64::from(HOOK_EVERY)));
        }
    }

    /// Compiles and caches `body` (SCRIPT LOAD). Returns its SHA1 in hex.
    pub(crate) fn load(&mut self, body: &[u8]) -> Result<String, Reply> {
        let sha = self.compile(body)?;
        Ok(sha_str(&sha))
    }

    fn compile(&mut self, body: &[u8]) -> Result<[u8; 40], Reply> {
        if let Some(sha) = self.sha_by_body.get(body) {
            return Ok(*sha);
        }
        let mut sha = [0u8; 40];
        sha.copy_from_slice(sha1_smol::Sha1::from(body).digest().to_string().as_bytes());
        if !self.by_sha.contains_key(&sha) {
            let source = strip_shebang(body)?;
            let func = self
                .lua
                .load(&*source)
                .set_name(USER_SCRIPT_CHUNK)
                .set_environment(self.env.clone())
                .into_function()
                .map_err(|e| {
                    let msg = match &e {
                        mlua::Error::SyntaxError { message, .. } => message.clone(),
                        other => error_text(other),
                    };
                    Reply::Error(format!("ERR Error compiling script (new function): {msg}"))
                })?;
            self.by_sha.insert(sha, func);
        }
        self.sha_by_body.insert(body.to_vec(), sha);
        Ok(sha)
    }

    /// SCRIPT EXISTS for one SHA (case-insensitive).
    pub(crate) fn exists(&self, sha: &[u8]) -> bool {
        normalize_sha(sha).is_some_and(|s| self.by_sha.contains_key(&s))
    }

    /// SCRIPT FLUSH.
    pub(crate) fn flush(&mut self) {
        self.by_sha.clear();
        self.sha_by_body.clear();
    }

    /// EVAL: compiles (or reuses) `body` and runs it.
    pub(crate) fn eval(
        &mut self,
        db: &mut Db,
        now_ms: i64,
        body: &[u8],
        keys: &[&[u8]],
        argv: &[&[u8]],
    ) -> Reply {
        match self.compile(body) {
            Ok(sha) => self.run(db, now_ms, &sha, keys, argv),
            Err(r) => r,
        }
    }

    /// EVALSHA: runs a cached script or answers NOSCRIPT.
    pub(crate) fn evalsha(
        &mut self,
        db: &mut Db,
        now_ms: i64,
        sha: &[u8],
        keys: &[&[u8]],
        argv: &[&[u8]],
    ) -> Reply {
        match normalize_sha(sha).filter(|s| self.by_sha.contains_key(s)) {
            Some(sha) => self.run(db, now_ms, &sha, keys, argv),
            None => Reply::Error(NOSCRIPT.to_owned()),
        }
    }

    fn run(
        &mut self,
        db: &mut Db,
        now_ms: i64,
        sha: &[u8; 40],
        keys: &[&[u8]],
        argv: &[&[u8]],
    ) -> Reply {
        let Some(func) = self.by_sha.get(sha) else {
            return Reply::Error(NOSCRIPT.to_owned());
        };
        let outcome = (|| -> mlua::Result<(bool, LuaValue)> {
            self.base.raw_set("KEYS", string_array(&self.lua, keys)?)?;
            self.base.raw_set("ARGV", string_array(&self.lua, argv)?)?;
            let _lent = LentDb::lend(&self.lua, db, now_ms);
            self.runner.call::<(bool, LuaValue)>(func)
        })();
        match outcome {
            Ok((true, value)) => lua_to_reply(&value, 0),
            Ok((false, err)) => script_error(&err, sha),
            Err(e) => Reply::Error(format!(
                "ERR Error running script (call to f_{}): {}",
                sha_str(sha),
                error_text(&e)
            )),
        }
    }
}

/// Moves the engine's keyspace into the Lua state for the duration of a
/// script and back on drop, so it returns even if a callback panics.
struct LentDb<'a> {
    lua: &'a Lua,
    db: &'a mut Db,
}

impl<'a> LentDb<'a> {
    fn lend(lua: &'a Lua, db: &'a mut Db, now_ms: i64) -> Self {
        if let Ok(Some(mut ctx)) = lua.try_app_data_mut::<ScriptCtx>() {
            std::mem::swap(&mut ctx.db, db);
            ctx.now_ms = now_ms;
            // Redis reseeds before every script, so math.random is a pure
            // function of the script and its inputs.
            ctx.rng = Rand48::seeded(0);
            ctx.ticks = 0;
        }
        LentDb { lua, db }
    }
}

impl Drop for LentDb<'_> {
    fn drop(&mut self) {
        if let Ok(Some(mut ctx)) = self.lua.try_app_data_mut::<ScriptCtx>() {
            std::mem::swap(&mut ctx.db, self.db);
        }
    }
}

/// Flags Redis 7 accepts in a `#!lua flags=...` first line. They govern
/// cluster, OOM and replica behaviour the model does not have, so they are
/// validated and otherwise ignored.
const KNOWN_SCRIPT_FLAGS: [&str; 5] = [
    "no-writes",
    "allow-oom",
    "allow-stale",
    "no-cluster",
    "allow-cross-slot-keys",
];

/// Validates and blanks a Redis 7 shebang line (`#!lua flags=...`), which
/// plain Lua cannot parse. The line is replaced by nothing but its newline
/// so that error line numbers still match the script as written.
fn strip_shebang(body: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, Reply> {
    if !body.starts_with(b"#!") {
        return Ok(std::borrow::Cow::Borrowed(body));
    }
    let line_end = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
    let line = String::from_utf8_lossy(&body[2..line_end]);
    let mut words = line.split_ascii_whitespace();
    let engine = words.next().unwrap_or("");
    if engine != "lua" {
        return Err(Reply::Error(format!(
            "ERR Unexpected engine in script shebang: {engine}"
        )));
    }
    for word in words {
        let Some(flags) = word.strip_prefix("flags=") else {
            return Err(Reply::Error(format!(
                "ERR Unknown lua shebang option: {word}"
            )));
        };
        for flag in flags.split(',').filter(|f| !f.is_empty()) {
            if !KNOWN_SCRIPT_FLAGS.contains(&flag) {
                return Err(Reply::Error(format!(
                    "ERR Unexpected flag in script shebang: {flag}"
                )));
            }
        }
    }
    Ok(std::borrow::Cow::Owned(body[line_end..].to_vec()))
}

fn sha_str(sha: &[u8; 40]) -> String {
    // The array only ever holds ASCII hex digits.
    String::from_utf8_lossy(sha).into_owned()
}

fn normalize_sha(sha: &[u8]) -> Option<[u8; 40]> {
    let mut out = [0u8; 40];
    if sha.len() != 40 {
        return None;
    }
    for (d, s) in out.iter_mut().zip(sha) {
        *d = s.to_ascii_lowercase();
    }
    Some(out)
}

fn string_array(lua: &Lua, items: &[&[u8]]) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(items.len(), 0)?;
    for (i, item) in items.iter().enumerate() {
        t.raw_set(i + 1, lua.create_string(item)?)?;
    }
    Ok(t)
}

/// The innermost message of an mlua error, without tracebacks.
fn error_text(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => error_text(cause),
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Lua's `tostring` for the values an error can carry.
fn value_text(v: &LuaValue) -> String {
    match v {
        LuaValue::String(s) => s.to_string_lossy(),
        LuaValue::Integer(i) => i.to_string(),
        LuaValue::Number(n) => n.to_string(),
        LuaValue::Boolean(b) => b.to_string(),
        LuaValue::Nil => "nil".to_owned(),
        LuaValue::Error(e) => error_text(e),
        other => other.type_name().to_owned(),
    }
}

/// Message handler for script calls: turns any error into Redis' error
/// table `{err=..., source=..., line=...}`, where source/line locate the
/// innermost frame of the user script (library frames are skipped).
fn error_handler(lua: &Lua, err: LuaValue) -> mlua::Result<Table> {
    let table = match err {
        LuaValue::Table(t) => t,
        other => {
            let t = lua.create_table()?;
            t.raw_set("err", format!("ERR {}", value_text(&other)))?;
            t
        }
    };
    for level in 0..64 {
        let frame = lua.inspect_stack(level, |d| {
            let src = d.source();
            let is_user = src.source.as_deref() == Some(USER_SCRIPT_CHUNK);
            (is_user, d.current_line())
        });
        match frame {
            None => break,
            Some((true, line)) => {
                table.raw_set("source", USER_SCRIPT_CHUNK)?;
                table.raw_set("line", line.unwrap_or(0))?;
                break;
            }
            Some(_) => {}
        }
    }
    Ok(table)
}

/// The error reply for a script that raised `err`, formatted as Redis 7
/// does: `<code> <message> script: <sha>, on @user_script:<line>.`
fn script_error(err: &LuaValue, sha: &[u8; 40]) -> Reply {
    let LuaValue::Table(t) = err else {
        return Reply::Error(format!("ERR {}", value_text(err)));
    };
    let msg = match t.raw_get::<LuaValue>("err") {
        Ok(LuaValue::String(s)) => s.to_string_lossy(),
        _ => "ERR unknown error".to_owned(),
    };
    let msg = msg.strip_prefix('-').unwrap_or(&msg).to_owned();
    let source = t.raw_get::<Option<mlua::String>>("source").ok().flatten();
    let line = t.raw_get::<Option<i64>>("line").ok().flatten();
    match (source, line) {
        (Some(src), Some(line)) => Reply::Error(format!(
            "{msg} script: {}, on {}:{line}.",
            sha_str(sha),
            src.to_string_lossy()
        )),
        _ => Reply::Error(msg),
    }
}

/// Appends a Lua number as a command argument: integral values print as
/// integers (Redis avoids exponent notation for them), others in the
/// shortest form that reads back exactly.
fn push_number(n: f64, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    if n.fract() == 0.0 && n >= i64::MIN as f64 && n < i64::MAX as f64 {
        let _ = write!(out, "{}", n as i64);
    } else {
        let _ = write!(out, "{n}");
    }
}

/// `redis.call`: `redis.pcall` (its upvalue 1), but an error reply is
/// raised as the error table instead of returned.
///
/// It is a C function rather than Lua code on purpose. Lua 5.1 discards the
/// caller's frame when it tail-calls a Lua function (`return redis.call(..)`
/// is the common case), which would lose the script line Redis puts in the
/// error; calls to C functions keep it. And only the C API can raise a table
/// as the error value, which is what `pcall(redis.call, ..)` must observe.
///
/// # Safety
/// Called by Lua only, with upvalue 1 set (see `Scripting::build`). It holds
/// no value with a destructor at the points where Lua may `longjmp` out of
/// it (`lua_call`, `lua_pushlstring`, `lua_error`), so unwinding through it
/// skips nothing.
unsafe extern "C-unwind" fn redis_call_trampoline(state: *mut mlua::ffi::lua_State) -> c_int {
    use mlua::ffi;
    // SAFETY: see the function's contract above; every index used below
    // was just pushed or is the upvalue slot.
    unsafe {
        let nargs = ffi::lua_gettop(state);
        ffi::luaL_checkstack(state, 3, c"redis.call".as_ptr());
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_insert(state, 1);
        ffi::lua_call(state, nargs, 1);
        if ffi::lua_type(state, -1) == ffi::LUA_TTABLE {
            ffi::lua_pushliteral(state, c"err");
            let err_type = ffi::lua_rawget(state, -2);
            ffi::lua_pop(state, 1);
            // Only an error reply is a table with an `err` key: arrays
            // have integer keys, status replies an `ok` key.
            if err_type != ffi::LUA_TNIL {
                ffi::lua_error(state);
            }
        }
        1
    }
}

/// `redis.pcall`: runs a command and returns its reply converted to Lua,
/// error replies included (as `{err=...}`).
fn redis_pcall(lua: &Lua, args: MultiValue) -> mlua::Result<LuaValue> {
    let reply = {
        let Ok(Some(mut ctx)) = lua.try_app_data_mut::<ScriptCtx>() else {
            return Err(mlua::Error::runtime("redis.call used outside a script"));
        };
        let ScriptCtx {
            db,
            now_ms,
            arena,
            spans,
            ..
        } = &mut *ctx;
        arena.clear();
        spans.clear();
        let mut bad_arg = args
            .is_empty()
            .then_some("ERR Please specify at least one argument for this redis lib call");
        for v in &args {
            let start = arena.len();
            match v {
                LuaValue::String(s) => arena.extend_from_slice(&s.as_bytes()),
                LuaValue::Integer(i) => {
                    let _ = write!(arena, "{i}");
                }
                LuaValue::Number(n) => push_number(*n, arena),
                _ => {
                    bad_arg =
                        Some("ERR Lua redis lib command arguments must be strings or integers");
                    break;
                }
            }
            spans.push((start, arena.len()));
        }
        match bad_arg {
            Some(msg) => Reply::Error(msg.to_owned()),
            None => {
                let argv: Vec<&[u8]> = spans.iter().map(|&(a, b)| &arena[a..b]).collect();
                run_from_script(db, *now_ms, &argv)
            }
        }
    };
    reply_to_lua(lua, reply)
}

/// Redis → Lua conversion, as Redis documents it.
fn reply_to_lua(lua: &Lua, reply: Reply) -> mlua::Result<LuaValue> {
    Ok(match reply {
        Reply::Int(i) => LuaValue::Integer(i),
        Reply::Bulk(b) => LuaValue::String(lua.create_string(b)?),
        Reply::Nil | Reply::NilArray => LuaValue::Boolean(false),
        Reply::Status(s) => {
            let t = lua.create_table_with_capacity(0, 1)?;
            t.raw_set("ok", s)?;
            LuaValue::Table(t)
        }
        Reply::Error(s) => {
            let t = lua.create_table_with_capacity(0, 1)?;
            t.raw_set("err", s)?;
            LuaValue::Table(t)
        }
        Reply::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.into_iter().enumerate() {
                t.raw_set(i + 1, reply_to_lua(lua, item)?)?;
            }
            LuaValue::Table(t)
        }
    })
}

/// Lua → Redis conversion, as Redis documents it.
fn lua_to_reply(v: &LuaValue, depth: usize) -> Reply {
    if depth > MAX_REPLY_DEPTH {
        return Reply::Error("ERR reached lua stack limit".to_owned());
    }
    match v {
        LuaValue::Boolean(true) => Reply::Int(1),
        LuaValue::Boolean(false) | LuaValue::Nil => Reply::Nil,
        LuaValue::Integer(i) => Reply::Int(*i),
        // Truncation toward zero, saturating, as a C cast would do for
        // in-range values.
        LuaValue::Number(n) => Reply::Int(*n as i64),
        LuaValue::String(s) => Reply::Bulk(s.as_bytes().to_vec()),
        LuaValue::Table(t) => {
            if let Ok(LuaValue::String(e)) = t.raw_get::<LuaValue>("err") {
                let e = e.to_string_lossy();
                return Reply::Error(e.strip_prefix('-').unwrap_or(&e).to_owned());
            }
            if let Ok(LuaValue::String(s)) = t.raw_get::<LuaValue>("ok") {
                return Reply::Status(s.to_string_lossy());
            }
            let mut items = Vec::new();
            for i in 1.. {
                match t.raw_get::<LuaValue>(i) {
                    Ok(LuaValue::Nil) | Err(_) => break,
                    Ok(item) => items.push(lua_to_reply(&item, depth + 1)),
                }
            }
            Reply::Array(items)
        }
        _ => Reply::Nil,
    }
}

fn redis_sha1hex(_: &Lua, args: MultiValue) -> mlua::Result<String> {
    if args.len() != 1 {
        return Err(mlua::Error::runtime("wrong number of arguments"));
    }
    let mut bytes = Vec::new();
    match args.front() {
        Some(LuaValue::String(s)) => bytes.extend_from_slice(&s.as_bytes()),
        Some(LuaValue::Integer(i)) => {
            let _ = write!(bytes, "{i}");
        }
        Some(LuaValue::Number(n)) => push_number(*n, &mut bytes),
        _ => {}
    }
    Ok(sha1_smol::Sha1::from(bytes).digest().to_string())
}

fn redis_log(_: &Lua, args: MultiValue) -> mlua::Result<()> {
    if args.len() < 2 {
        return Err(mlua::Error::runtime(
            "redis.log() requires two arguments or more.",
        ));
    }
    let level = match args.front() {
        Some(LuaValue::Integer(l)) => *l,
        Some(LuaValue::Number(l)) => *l as i64,
        _ => {
            return Err(mlua::Error::runtime(
                "First argument must be a number (log level).",
            ));
        }
    };
    if !(0..=3).contains(&level) {
        return Err(mlua::Error::runtime("Invalid debug level."));
    }
    let msg: Vec<String> = args.iter().skip(1).map(value_text).collect();
    let msg = msg.join(" ");
    match level {
        3 => tracing::warn!(target: "embedded_redis::script", "{msg}"),
        2 => tracing::info!(target: "embedded_redis::script", "{msg}"),
        _ => tracing::debug!(target: "embedded_redis::script", "{msg}"),
    }
    Ok(())
}

fn redis_setresp(_: &Lua, v: LuaValue) -> mlua::Result<()> {
    match v {
        LuaValue::Integer(2) => Ok(()),
        LuaValue::Number(2.0) => Ok(()),
        _ => Err(mlua::Error::runtime(
            "RESP version must be 2 (the embedded model speaks RESP2 only)",
        )),
    }
}

fn int_arg(v: Option<&LuaValue>, n: usize, fname: &str) -> mlua::Result<i64> {
    match v {
        Some(LuaValue::Integer(i)) => Ok(*i),
        Some(LuaValue::Number(f)) => Ok(*f as i64),
        _ => Err(mlua::Error::runtime(format!(
            "bad argument #{n} to '{fname}' (number expected)"
        ))),
    }
}

fn math_random(lua: &Lua, args: MultiValue) -> mlua::Result<f64> {
    let r = match lua.try_app_data_mut::<ScriptCtx>() {
        Ok(Some(mut ctx)) => ctx.rng.unit(),
        _ => return Err(mlua::Error::runtime("math.random is unavailable")),
    };
    let interval_empty =
        |n| mlua::Error::runtime(format!("bad argument #{n} to 'random' (interval is empty)"));
    match args.len() {
        0 => Ok(r),
        1 => {
            let u = int_arg(args.front(), 1, "random")?;
            if u < 1 {
                return Err(interval_empty(1));
            }
            Ok((r * u as f64).floor() + 1.0)
        }
        2 => {
            let l = int_arg(args.front(), 1, "random")?;
            let u = int_arg(args.get(1), 2, "random")?;
            if l > u {
                return Err(interval_empty(2));
            }
            Ok((r * (u as f64 - l as f64 + 1.0)).floor() + l as f64)
        }
        _ => Err(mlua::Error::runtime("wrong number of arguments")),
    }
}

fn math_randomseed(lua: &Lua, args: MultiValue) -> mlua::Result<()> {
    let seed = int_arg(args.front(), 1, "randomseed")?;
    if let Ok(Some(mut ctx)) = lua.try_app_data_mut::<ScriptCtx>() {
        ctx.rng = Rand48::seeded(seed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::engine::tests::run;
    use super::super::engine::{Engine, Reply, Session};
    use super::*;

    fn setup() -> (Engine, Session) {
        let mut e = Engine::new(1);
        let s = e.new_session();
        (e, s)
    }

    fn eval(e: &mut Engine, s: &mut Session, src: &str, keys: &[&str], argv: &[&str]) -> Reply {
        let n = keys.len().to_string();
        let mut args = vec!["EVAL", src, &n];
        args.extend_from_slice(keys);
        args.extend_from_slice(argv);
        run(e, s, 1_000, &args)
    }

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(s.as_bytes().to_vec())
    }

    fn error_text_of(r: Reply) -> String {
        match r {
            Reply::Error(m) => m,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn lua_to_redis_conversions() {
        let (mut e, mut s) = setup();
        let cases: &[(&str, Reply)] = &[
            ("return 42", Reply::Int(42)),
            ("return 3.99", Reply::Int(3)),
            ("return -3.99", Reply::Int(-3)),
            ("return 'hi'", bulk("hi")),
            ("return 'a\\0b'", Reply::Bulk(b"a\0b".to_vec())),
            ("return true", Reply::Int(1)),
            ("return false", Reply::Nil),
            ("return nil", Reply::Nil),
            ("return", Reply::Nil),
            (
                "return {1, 'two', {3}, false, 'after'}",
                Reply::Array(vec![
                    Reply::Int(1),
                    bulk("two"),
                    Reply::Array(vec![Reply::Int(3)]),
                    Reply::Nil,
                    bulk("after"),
                ]),
            ),
            ("return {1, nil, 3}", Reply::Array(vec![Reply::Int(1)])),
            ("return {}", Reply::Array(vec![])),
            ("return {ok='FINE'}", Reply::Status("FINE".into())),
            ("return {err='MYERR bad'}", Reply::Error("MYERR bad".into())),
            (
                "return redis.status_reply('DONE')",
                Reply::Status("DONE".into()),
            ),
            (
                "return redis.error_reply('MYERR custom failure')",
                Reply::Error("MYERR custom failure".into()),
            ),
            (
                "return redis.error_reply('boom')",
                Reply::Error("ERR boom".into()),
            ),
            (
                "return redis.error_reply('-WRONG stuff')",
                Reply::Error("WRONG stuff".into()),
            ),
            ("return 1, 2", Reply::Int(1)),
            (
                "return {1, {ok='x'}, {err='E y'}}",
                Reply::Array(vec![
                    Reply::Int(1),
                    Reply::Status("x".into()),
                    Reply::Error("E y".into()),
                ]),
            ),
        ];
        for (src, want) in cases {
            assert_eq!(&eval(&mut e, &mut s, src, &[], &[]), want, "{src}");
        }
    }

    #[test]
    fn redis_to_lua_conversions() {
        let (mut e, mut s) = setup();
        run(&mut e, &mut s, 0, &["SET", "str", "v"]);
        run(&mut e, &mut s, 0, &["HSET", "h", "a", "1", "b", "2"]);
        let src = r#"
            local out = {}
            local n = redis.call('INCR', 'ctr')
            out[#out+1] = type(n) .. ':' .. tostring(n)
            local b = redis.call('GET', 'str')
            out[#out+1] = type(b) .. ':' .. b
            local missing = redis.call('GET', 'nope')
            out[#out+1] = type(missing) .. ':' .. tostring(missing)
            local arr = redis.call('HMGET', 'h', 'a', 'zz', 'b')
            out[#out+1] = type(arr) .. ':' .. #arr .. ':' .. arr[1] .. ':' .. tostring(arr[2]) .. ':' .. arr[3]
            local st = redis.call('SET', 'x', '1')
            out[#out+1] = type(st) .. ':' .. st.ok
            local er = redis.pcall('INCR', 'str')
            out[#out+1] = type(er) .. ':' .. er.err
            local ping = redis.call('PING')
            out[#out+1] = ping.ok
            return out
        "#;
        assert_eq!(
            eval(&mut e, &mut s, src, &[], &[]),
            Reply::Array(vec![
                bulk("number:1"),
                bulk("string:v"),
                bulk("boolean:false"),
                bulk("table:3:1:false:2"),
                bulk("table:OK"),
                bulk("table:ERR value is not an integer or out of range"),
                bulk("PONG"),
            ])
        );
    }

    #[test]
    fn keys_and_argv_are_binary_safe() {
        let (mut e, mut s) = setup();
        let r = eval(
            &mut e,
            &mut s,
            "return {KEYS[1], KEYS[2], ARGV[1], #KEYS, #ARGV}",
            &["k1", "k\0x"],
            &["a\u{e9}"],
        );
        assert_eq!(
            r,
            Reply::Array(vec![
                bulk("k1"),
                Reply::Bulk(b"k\0x".to_vec()),
                bulk("a\u{e9}"),
                Reply::Int(2),
                Reply::Int(1)
            ])
        );
        // Numbers passed to redis.call become their decimal text.
        assert_eq!(
            eval(
                &mut e,
                &mut s,
                "redis.call('SET', 'n', 10); redis.call('INCRBY', 'n', 2.0); return redis.call('GET', 'n')",
                &[],
                &[]
            ),
            bulk("12")
        );
    }

    #[test]
    fn errors_from_redis_call_abort_the_script() {
        let (mut e, mut s) = setup();
        run(&mut e, &mut s, 0, &["HSET", "h", "f", "v"]);
        let msg = error_text_of(eval(
            &mut e,
            &mut s,
            "redis.call('SET', 'before', '1')\nreturn redis.call('INCR', KEYS[1])",
            &["h"],
            &[],
        ));
        assert!(
            msg.starts_with(
                "WRONGTYPE Operation against a key holding the wrong kind of value script: "
            ),
            "{msg}"
        );
        assert!(msg.ends_with(", on @user_script:2."), "{msg}");
        // Writes before the error stay: no rollback.
        assert_eq!(run(&mut e, &mut s, 0, &["GET", "before"]), bulk("1"));
        // And the engine keeps working.
        assert_eq!(
            eval(
                &mut e,
                &mut s,
                "return redis.call('GET', 'before')",
                &[],
                &[]
            ),
            bulk("1")
        );
    }

    #[test]
    fn pcall_catches_errors() {
        let (mut e, mut s) = setup();
        run(&mut e, &mut s, 0, &["SET", "s", "x"]);
        let src = r#"
            local r = redis.pcall('HGET', 's', 'f')
            if type(r) == 'table' and r.err then
                return 'caught: ' .. r.err
            end
            return 'no error'
        "#;
        assert_eq!(
            eval(&mut e, &mut s, src, &[], &[]),
            bulk("caught: WRONGTYPE Operation against a key holding the wrong kind of value")
        );
        // Lua's own pcall around redis.call sees the same error table.
        let src = "local ok, err = pcall(redis.call, 'INCR', 's') return {tostring(ok), err.err}";
        assert_eq!(
            eval(&mut e, &mut s, src, &[], &[]),
            Reply::Array(vec![
                bulk("false"),
                bulk("ERR value is not an integer or out of range")
            ])
        );
        // Returning the error table makes it the script's error reply.
        assert_eq!(
            eval(&mut e, &mut s, "return redis.pcall('INCR', 's')", &[], &[]),
            Reply::Error("ERR value is not an integer or out of range".into())
        );
    }

    #[test]
    fn runtime_and_compile_errors() {
        let (mut e, mut s) = setup();
        let msg = error_text_of(eval(&mut e, &mut s, "local x = 1\nerror('boom')", &[], &[]));
        assert!(msg.starts_with("ERR user_script:2: boom script: "), "{msg}");
        assert!(msg.ends_with("on @user_script:2."), "{msg}");
        let msg = error_text_of(eval(&mut e, &mut s, "return nil + 1", &[], &[]));
        assert!(
            msg.starts_with("ERR user_script:1: attempt to perform arithmetic"),
            "{msg}"
        );
        let msg = error_text_of(eval(
            &mut e,
            &mut s,
            "error({err='CUSTOM thing'})",
            &[],
            &[],
        ));
        assert!(msg.starts_with("CUSTOM thing script: "), "{msg}");
        let msg = error_text_of(eval(&mut e, &mut s, "return (", &[], &[]));
        assert!(
            msg.starts_with("ERR Error compiling script (new function): user_script:1:"),
            "{msg}"
        );
        let msg = error_text_of(eval(&mut e, &mut s, "return undefined_thing", &[], &[]));
        assert!(
            msg.contains(
                "Script attempted to access nonexistent global variable 'undefined_thing'"
            ),
            "{msg}"
        );
        let msg = error_text_of(eval(&mut e, &mut s, "x = 5", &[], &[]));
        assert!(msg.contains("Attempt to modify a readonly table"), "{msg}");
        let msg = error_text_of(eval(&mut e, &mut s, "redis = nil", &[], &[]));
        assert!(msg.contains("Attempt to modify a readonly table"), "{msg}");
        let msg = error_text_of(eval(&mut e, &mut s, "return redis.call()", &[], &[]));
        assert!(
            msg.starts_with("ERR Please specify at least one argument"),
            "{msg}"
        );
        let msg = error_text_of(eval(
            &mut e,
            &mut s,
            "return redis.call('GET', {})",
            &[],
            &[],
        ));
        assert!(
            msg.starts_with("ERR Lua redis lib command arguments must be strings or integers"),
            "{msg}"
        );
        let msg = error_text_of(eval(&mut e, &mut s, "return redis.call('NOPE')", &[], &[]));
        assert!(
            msg.starts_with("ERR Unknown Redis command called from script"),
            "{msg}"
        );
        let msg = error_text_of(eval(&mut e, &mut s, "return redis.call('GET')", &[], &[]));
        assert!(
            msg.starts_with("ERR Wrong number of args calling Redis command from script"),
            "{msg}"
        );
        let t = eval(&mut e, &mut s, "local t = {} t[1] = t return t", &[], &[]);
        assert!(format!("{t:?}").contains("reached lua stack limit"));
    }

    #[test]
    fn forbidden_commands_and_sandbox() {
        let (mut e, mut s) = setup();
        for cmd in [
            "EVAL", "EVALSHA", "MULTI", "EXEC", "SCRIPT", "CLIENT", "WAIT", "HELLO",
        ] {
            let src = format!("return redis.call('{cmd}', 'a', 'b', 'c')");
            let msg = error_text_of(eval(&mut e, &mut s, &src, &[], &[]));
            assert!(
                msg.starts_with("ERR This Redis command is not allowed from script"),
                "{cmd}: {msg}"
            );
        }
        for global in ["os", "io", "loadfile", "dofile", "package", "require"] {
            let src = format!("return type({global})");
            let msg = error_text_of(eval(&mut e, &mut s, &src, &[], &[]));
            assert!(
                msg.contains("nonexistent global variable"),
                "{global}: {msg}"
            );
        }
        assert_eq!(
            eval(
                &mut e,
                &mut s,
                "return {type(string.format), type(table.insert), type(math.floor), type(tonumber)}",
                &[],
                &[]
            ),
            Reply::Array(vec![bulk("function"); 4])
        );
    }

    #[test]
    fn math_random_is_reseeded_for_every_script() {
        let (mut e, mut s) = setup();
        let src = "return {math.random(1000000), math.random(1000000), math.random(5, 7)}";
        let a = eval(&mut e, &mut s, src, &[], &[]);
        let b = eval(&mut e, &mut s, src, &[], &[]);
        assert_eq!(a, b);
        let Reply::Array(v) = &a else { panic!() };
        assert_ne!(v[0], v[1]);
        assert!(matches!(v[2], Reply::Int(5..=7)));
        let c = eval(
            &mut e,
            &mut s,
            "math.randomseed(42) return math.random(1000000)",
            &[],
            &[],
        );
        assert_ne!(c, v[0]);
        // A different engine seed does not change script randomness.
        let (mut e2, mut s2) = (Engine::new(99), Session::new(1));
        assert_eq!(eval(&mut e2, &mut s2, src, &[], &[]), a);
    }

    #[test]
    fn sha1hex_log_and_helpers() {
        let (mut e, mut s) = setup();
        assert_eq!(
            eval(&mut e, &mut s, "return redis.sha1hex('')", &[], &[]),
            bulk("da39a3ee5e6b4b0d3255bfef95601890afd80709")
        );
        assert_eq!(
            eval(
                &mut e,
                &mut s,
                "redis.log(redis.LOG_WARNING, 'hello') return 1",
                &[],
                &[]
            ),
            Reply::Int(1)
        );
        assert_eq!(
            eval(
                &mut e,
                &mut s,
                "return redis.replicate_commands()",
                &[],
                &[]
            ),
            Reply::Int(1)
        );
    }

    #[test]
    fn script_cache_and_evalsha() {
        let (mut e, mut s) = setup();
        let body = "return ARGV[1] .. '!'";
        let Reply::Bulk(sha) = run(&mut e, &mut s, 0, &["SCRIPT", "LOAD", body]) else {
            panic!()
        };
        let sha = String::from_utf8(sha).unwrap();
        assert_eq!(sha, sha1_smol::Sha1::from(body).digest().to_string());
        assert_eq!(
            run(&mut e, &mut s, 0, &["EVALSHA", &sha, "0", "hey"]),
            bulk("hey!")
        );
        assert_eq!(
            run(
                &mut e,
                &mut s,
                0,
                &["EVALSHA", &sha.to_uppercase(), "0", "x"]
            ),
            bulk("x!")
        );
        let other = sha1_smol::Sha1::from("return 2").digest().to_string();
        assert_eq!(
            run(&mut e, &mut s, 0, &["SCRIPT", "EXISTS", &sha, &other]),
            Reply::Array(vec![Reply::Int(1), Reply::Int(0)])
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["EVALSHA", &other, "0"]),
            Reply::Error(NOSCRIPT.into())
        );
        // EVAL caches too.
        run(&mut e, &mut s, 0, &["EVAL", "return 2", "0"]);
        assert_eq!(
            run(&mut e, &mut s, 0, &["EVALSHA", &other, "0"]),
            Reply::Int(2)
        );
        assert_eq!(run(&mut e, &mut s, 0, &["SCRIPT", "FLUSH"]), Reply::ok());
        assert_eq!(
            run(&mut e, &mut s, 0, &["EVALSHA", &sha, "0"]),
            Reply::Error(NOSCRIPT.into())
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["EVAL", "return 1", "2", "a"]),
            Reply::Error("ERR Number of keys can't be greater than number of args".into())
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["EVAL", "return 1", "-1"]),
            Reply::Error("ERR Number of keys can't be negative".into())
        );
        assert_eq!(
            run(&mut e, &mut s, 0, &["EVAL", "return 1", "x"]),
            Reply::Error("ERR value is not an integer or out of range".into())
        );
    }

    #[test]
    fn script_time_is_frozen_and_expiry_applies() {
        let (mut e, mut s) = setup();
        run(&mut e, &mut s, 0, &["SET", "k", "v", "PX", "500"]);
        // The script runs at now=1000 (see `eval`), after the deadline.
        assert_eq!(
            eval(&mut e, &mut s, "return redis.call('GET', 'k')", &[], &[]),
            Reply::Nil
        );
        assert_eq!(
            eval(&mut e, &mut s, "return redis.call('TIME')[2]", &[], &[]),
            bulk("0")
        );
    }

    #[test]
    fn shebang_lines_are_understood() {
        let (mut e, mut s) = setup();
        assert_eq!(
            eval(
                &mut e,
                &mut s,
                "#!lua flags=no-writes,allow-stale\nreturn 5",
                &[],
                &[]
            ),
            Reply::Int(5)
        );
        let msg = error_text_of(eval(
            &mut e,
            &mut s,
            "#!lua\nlocal x = 1\nerror('here')",
            &[],
            &[],
        ));
        assert!(msg.starts_with("ERR user_script:3: here"), "{msg}");
        let msg = error_text_of(eval(&mut e, &mut s, "#!python\nreturn 1", &[], &[]));
        assert!(msg.contains("Unexpected engine"), "{msg}");
        let msg = error_text_of(eval(
            &mut e,
            &mut s,
            "#!lua flags=bogus\nreturn 1",
            &[],
            &[],
        ));
        assert!(msg.contains("Unexpected flag"), "{msg}");
    }

    #[test]
    fn runaway_scripts_are_stopped() {
        let (mut e, mut s) = setup();
        e.set_script_instruction_limit(Some(1_000_000));
        let msg = error_text_of(eval(&mut e, &mut s, "while true do end", &[], &[]));
        assert!(msg.contains("instruction limit"), "{msg}");
        assert_eq!(eval(&mut e, &mut s, "return 7", &[], &[]), Reply::Int(7));
    }

    /// The seq-allocation pattern the project uses: a hash per conversation
    /// with CURR (last handed out) and LAST (end of the reserved block).
    pub(crate) const SEQ_ALLOC: &str = r#"
        local key = KEYS[1]
        local size = tonumber(ARGV[1])
        local block = tonumber(ARGV[2])
        local ttl = tonumber(ARGV[3])
        local curr = tonumber(redis.call('HGET', key, 'CURR') or '0')
        local last = tonumber(redis.call('HGET', key, 'LAST') or '0')
        local first = curr + 1
        curr = curr + size
        if curr > last then
            last = curr + block
            redis.call('HSET', key, 'CURR', curr, 'LAST', last)
        else
            redis.call('HSET', key, 'CURR', curr)
        end
        redis.call('PEXPIRE', key, ttl)
        return {first, curr, last}
    "#;

    #[test]
    fn seq_allocation_script_hands_out_disjoint_ranges() {
        let (mut e, mut s) = setup();
        let mut next = 1;
        for size in [1, 5, 100, 3, 250] {
            let r = eval(
                &mut e,
                &mut s,
                SEQ_ALLOC,
                &["seq:c1"],
                &[&size.to_string(), "100", "60000"],
            );
            let Reply::Array(v) = r else { panic!("{r:?}") };
            assert_eq!(v[0], Reply::Int(next));
            assert_eq!(v[1], Reply::Int(next + size - 1));
            let Reply::Int(last) = v[2] else { panic!() };
            assert!(last >= next + size - 1);
            next += size;
        }
        assert_eq!(
            e.get_hash_field(1000, b"seq:c1", b"CURR"),
            Some(b"359".to_vec())
        );
        assert_eq!(
            run(&mut e, &mut s, 1000, &["PTTL", "seq:c1"]),
            Reply::Int(60000)
        );
        // After the TTL the counter is gone and allocation restarts.
        let r = eval(
            &mut e,
            &mut s,
            SEQ_ALLOC,
            &["seq:c2"],
            &["1", "10", "60000"],
        );
        assert_eq!(
            r,
            Reply::Array(vec![Reply::Int(1), Reply::Int(1), Reply::Int(11)])
        );
    }
}
