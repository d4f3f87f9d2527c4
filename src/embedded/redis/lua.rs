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
//! lock. The set-up and the cold paths (compiling, `redis.log`,
//! `math.random`, the error handler) go through mlua; the hot path does not.
//! Running a script, building `KEYS`/`ARGV`, `redis.call`/`redis.pcall` and
//! converting replies both ways use the raw Lua C API, because mlua's
//! per-value bookkeeping (reference slots, locking, `MultiValue`) cost
//! several times more than the commands themselves. The raw code shares one
//! heap-allocated [`ScriptCtx`] with the C functions (as a light userdata
//! upvalue); while a script runs, it points at the engine's keyspace.
//! Two more things serve the hot path: the Lua state allocates through
//! [`LuaHeap`], which recycles the small blocks every script allocates and
//! frees, and `tonumber` and `string.format` have fast paths for the forms
//! scripts call on every run (`tonumber('123')`, `string.format('%d', n)`)
//! that return exactly what Lua's own functions return, to which anything
//! else is passed.
//!
//! It must never let a script reach the host (files, clock, environment),
//! never roll back writes a failing script already made (Redis does not),
//! and never leave the engine unusable after a script error.
//!
//! # Raw C API discipline
//!
//! Lua reports errors with `longjmp`, which skips Rust destructors. Every
//! C function here is written so that at each call into Lua that can raise
//! an error (anything that allocates, because allocation can run the
//! garbage collector and a `__gc` finaliser can raise; plus `lua_error`
//! itself), the Rust frames between the raise and the catching `lua_pcall`
//! own nothing with a destructor: only integers, raw pointers and borrowed
//! references. Values that need dropping live in [`ScriptCtx`], which
//! outlives every call, and are only touched through the raw pointer with
//! short-lived borrows. Rust code that could conceivably panic (the command
//! interpreter) runs under `catch_unwind`; a caught panic is raised as a
//! Lua error and resumed once control is back in Rust.

use std::any::Any;
use std::ffi::{c_char, c_int, c_void};
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use mlua::{
    Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value as LuaValue, VmState,
    ffi,
};
use rustc_hash::FxHashMap;

use super::engine::{Db, HashFields, NOSCRIPT, Reply, ScriptReply, run_from_script};

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
/// Garbage-collector pause, in percent: a new cycle starts when the heap
/// reaches this share of what the previous cycle left alive. Scripts
/// allocate a few kilobytes each (KEYS, ARGV, reply tables, strings), all of
/// it garbage once they return, against a live heap of a few tens of
/// kilobytes (libraries, compiled scripts), so Lua's default of 200 starts
/// a cycle every dozen scripts or so, re-marking and re-sweeping the same
/// live objects each time. 1000 starts one a fifth as often and still
/// bounds the heap at 10x the live data, well under a megabyte. (On the
/// 1M-message demo, with perf over the service phase: the collector's steps
/// were 6.1 % of all samples at 400 and 2.5 % at 1000.)
const GC_PAUSE: c_int = 1000;
/// Garbage-collector step multiplier, in percent (Lua's default is 200): how
/// much collection work each incremental step does per allocated unit.
/// Higher means fewer, larger steps, so a cycle finishes in fewer scripts.
const GC_STEP_MUL: c_int = 400;
/// Arguments of one `redis.call` that are turned into slices on the stack
/// before falling back to a heap vector.
const INLINE_ARGS: usize = 32;
/// Largest Lua allocation, in bytes, that [`LuaHeap`] keeps on a free
/// list for reuse (tables, closures, short strings, small arrays).
const POOL_MAX_BLOCK: usize = 512;
/// Most bytes [`LuaHeap`] keeps on its free lists; beyond this, freed blocks
/// go straight back to the global allocator.
const POOL_MAX_BYTES: usize = 1 << 20;

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

/// The Lua state's allocator: exact-size free lists in front of the global
/// allocator.
///
/// Every script allocates the same few dozen small objects (tables, their
/// arrays, closures, strings) and the collector frees them again; recycling
/// them here skips the global allocator and mlua's accounting wrapper
/// (worth a few percent of script time). Blocks are
/// obtained from and returned to the global allocator with exactly the
/// layout mlua's allocator uses (the requested size, `SYS_MIN_ALIGN`), and a
/// block is only ever reused for a request of the same size, so blocks move
/// freely between the two allocators: the state is created by mlua's and is
/// handed back to it before it is closed.
struct LuaHeap {
    /// `free[n]`: a singly linked list of free blocks of exactly `n` bytes,
    /// the link stored in each block's first word.
    free: Box<[*mut u8]>,
    /// Bytes held on the free lists, at most `POOL_MAX_BYTES`.
    cached: usize,
    /// mlua's allocator and its data, restored before the state closes.
    original: (ffi::lua_Alloc, *mut c_void),
}

impl LuaHeap {
    fn layout(size: usize) -> std::alloc::Layout {
        match std::alloc::Layout::from_size_align(size, ffi::SYS_MIN_ALIGN) {
            Ok(layout) => layout,
            // Lua never asks for more than `isize::MAX` bytes.
            Err(_) => std::process::abort(),
        }
    }

    /// A block of `size` (> 0) bytes.
    ///
    /// # Safety
    /// The block must eventually go to `release` with the same size.
    unsafe fn take(&mut self, size: usize) -> *mut u8 {
        if let Some(head) = self.free.get_mut(size)
            && !head.is_null()
        {
            let block = *head;
            // SAFETY: `block` is a free block of `size` >= 8 bytes whose
            // first word holds the next link (see `release`).
            *head = unsafe { block.cast::<*mut u8>().read() };
            self.cached -= size;
            return block;
        }
        let layout = Self::layout(size);
        // SAFETY: `size` > 0.
        let block = unsafe { std::alloc::alloc(layout) };
        if block.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        block
    }

    /// Frees a block of `size` (> 0) bytes.
    ///
    /// # Safety
    /// `block` came from `take(size)`, or from the global allocator with the
    /// layout `layout(size)` (mlua's allocator), and is not used again.
    unsafe fn release(&mut self, block: *mut u8, size: usize) {
        if size >= std::mem::size_of::<*mut u8>()
            && size < self.free.len()
            && self.cached + size <= POOL_MAX_BYTES
        {
            // SAFETY: the block is at least a word long and aligned to
            // `SYS_MIN_ALIGN`, so it can hold the link.
            unsafe { block.cast::<*mut u8>().write(self.free[size]) };
            self.free[size] = block;
            self.cached += size;
            return;
        }
        // SAFETY: per the contract the block has this layout.
        unsafe { std::alloc::dealloc(block, Self::layout(size)) };
    }
}

impl Drop for LuaHeap {
    fn drop(&mut self) {
        for (size, head) in self.free.iter().enumerate() {
            let mut block = *head;
            while !block.is_null() {
                // SAFETY: every listed block is free, holds its link in its
                // first word, and has the layout `layout(size)`.
                unsafe {
                    let next = block.cast::<*mut u8>().read();
                    std::alloc::dealloc(block, Self::layout(size));
                    block = next;
                }
            }
        }
    }
}

/// The `lua_Alloc` function for [`LuaHeap`] (Lua 5.1 contract: `nsize` 0
/// frees, a null `ptr` allocates, `osize` is the block's current size).
///
/// # Safety
/// `ud` is the state's `LuaHeap`, used by nothing else meanwhile (Lua
/// calls this only from the thread running it, under `&mut Scripting`).
unsafe extern "C" fn lua_heap_alloc(
    ud: *mut c_void,
    ptr: *mut c_void,
    osize: usize,
    nsize: usize,
) -> *mut c_void {
    // SAFETY: per the contract; every block Lua passes back was allocated
    // with the size it states (by this heap or by mlua's allocator).
    unsafe {
        let heap = &mut *ud.cast::<LuaHeap>();
        let ptr = ptr.cast::<u8>();
        if nsize > isize::MAX as usize - ffi::SYS_MIN_ALIGN {
            // As mlua's allocator does: Lua reports a memory error (and
            // keeps the old block, if any).
            return std::ptr::null_mut();
        }
        if nsize == 0 {
            if !ptr.is_null() && osize > 0 {
                heap.release(ptr, osize);
            }
            return std::ptr::null_mut();
        }
        if ptr.is_null() || osize == 0 {
            return heap.take(nsize).cast();
        }
        if osize >= heap.free.len() && nsize >= heap.free.len() {
            // Large blocks are never pooled: resize in place if possible.
            let block = std::alloc::realloc(ptr, LuaHeap::layout(osize), nsize);
            if block.is_null() {
                std::alloc::handle_alloc_error(LuaHeap::layout(nsize));
            }
            return block.cast();
        }
        let block = heap.take(nsize);
        std::ptr::copy_nonoverlapping(ptr, block, osize.min(nsize));
        heap.release(ptr, osize);
        block.cast()
    }
}

/// Owns the [`LuaHeap`]; declared after the Lua state in [`Scripting`] so
/// it outlives it (the state is handed back to mlua's allocator first).
struct HeapBox(*mut LuaHeap);

impl Drop for HeapBox {
    fn drop(&mut self) {
        // SAFETY: from `Box::into_raw` in `Scripting::build`, freed only
        // here, after the state stopped using it (`Scripting::drop`).
        drop(unsafe { Box::from_raw(self.0) });
    }
}

/// Registry references (`luaL_ref`) to the values the hot path pushes.
/// Pushing with `lua_rawgeti` never allocates, so it cannot raise.
#[derive(Debug, Clone, Copy, Default)]
struct Refs {
    /// The real global table, where `KEYS` and `ARGV` are stored.
    base: c_int,
    /// The message handler that turns errors into Redis error tables.
    handler: c_int,
    /// The C function [`run_script`].
    runner: c_int,
    /// Interned key strings.
    keys_name: c_int,
    argv_name: c_int,
    err: c_int,
    ok: c_int,
    source: c_int,
    line: c_int,
}

/// Where one `redis.call` argument's bytes are.
#[derive(Debug, Clone, Copy)]
enum Span {
    /// A Lua string on the C function's stack: Lua strings do not move and
    /// are not collected while they are on the stack.
    Lua(*const u8, usize),
    /// A number formatted into [`ScriptCtx::arena`].
    Arena(usize, usize),
}

/// What the raw C functions and the mlua callbacks share. Allocated once
/// per Lua state and reached through a raw pointer (see the module docs).
struct ScriptCtx {
    /// The engine's keyspace while a script runs; null otherwise.
    db: *mut Db,
    now_ms: i64,
    rng: Rand48,
    /// Hook firings during the current script.
    ticks: u64,
    /// Hook firings allowed per script (`None` = unlimited).
    max_ticks: Option<u64>,
    refs: Refs,
    /// A `redis.call` is between reading its arguments and returning; a
    /// nested call (only possible from a `__gc` finaliser) is refused, as
    /// Redis refuses it, so the buffers below are never shared.
    in_call: bool,
    /// Number arguments of `redis.call`, formatted.
    arena: Vec<u8>,
    spans: Vec<Span>,
    /// The reply of the `redis.call` in progress, while it is pushed.
    reply: Reply,
    /// Instead of `reply`, for HGET (false) and HMGET (true): the hash whose
    /// fields (the call's arguments 3..) are the reply; null if the key does
    /// not exist. It points into the keyspace, which nothing can change
    /// while `in_call` is set.
    hash_reply: Option<(*const HashFields, bool)>,
    /// Arrays being filled while a script's return value is converted.
    partial: Vec<Vec<Reply>>,
    /// The converted outcome of the script that just ran.
    result: Reply,
    /// A panic caught in Rust code called from Lua, resumed by `run`.
    panic: Option<Box<dyn Any + Send + 'static>>,
}

/// Owns the [`ScriptCtx`] allocation. A field of [`Scripting`] declared
/// after the Lua state, so it is freed only once the state (and any
/// finaliser that might still call `redis.call`) is gone.
struct CtxBox(*mut ScriptCtx);

impl Drop for CtxBox {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::into_raw` in `Scripting::build`
        // and is freed only here; the Lua state that held copies of it was
        // dropped before this field (declaration order).
        drop(unsafe { Box::from_raw(self.0) });
    }
}

/// The context pointer for mlua callbacks, which must be `Send`.
#[derive(Clone, Copy)]
struct CtxPtr(*mut ScriptCtx);

// SAFETY: the pointee is owned by the `Scripting` that owns the Lua state
// holding these callbacks; they move between threads together, and Lua
// code (hence every callback) only runs under `&mut Scripting`.
unsafe impl Send for CtxPtr {}

impl CtxPtr {
    /// The pointer. (A method, so closures capture the `Send` wrapper
    /// rather than its field.)
    fn get(self) -> *mut ScriptCtx {
        self.0
    }
}

/// The scripting half of the engine: Lua state and script cache.
pub(crate) struct Scripting {
    lua: Lua,
    /// The main thread of `lua`, for the raw hot path.
    state: *mut ffi::lua_State,
    ctx: CtxBox,
    heap: HeapBox,
    /// The read-only view scripts see as their globals.
    env: Table,
    /// Registry references to the compiled scripts.
    by_sha: FxHashMap<[u8; 40], c_int>,
    /// EVAL sends the body every time; remembering its SHA avoids hashing
    /// the body again on each call.
    sha_by_body: FxHashMap<Vec<u8>, [u8; 40]>,
}

// SAFETY: `state` and `ctx` are owned by this value (the Lua state by
// `lua`, which is `Send` with mlua's `send` feature), used only through
// `&mut self`, and never shared with another thread.
unsafe impl Send for Scripting {}

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
        let ctx = CtxBox(Box::into_raw(Box::new(ScriptCtx {
            db: std::ptr::null_mut(),
            now_ms: 0,
            rng: Rand48::seeded(0),
            ticks: 0,
            max_ticks: Some(DEFAULT_INSTRUCTION_LIMIT / u64::from(HOOK_EVERY)),
            refs: Refs::default(),
            in_call: false,
            arena: Vec::new(),
            spans: Vec::new(),
            reply: Reply::Nil,
            hash_reply: None,
            partial: Vec::new(),
            result: Reply::Nil,
            panic: None,
        })));
        let ctx_ptr = CtxPtr(ctx.0);

        let base = lua.globals();
        for name in ["loadfile", "dofile"] {
            base.raw_set(name, LuaValue::Nil)?;
        }
        // Redis' print writes to the server's stdout; here it goes nowhere.
        base.raw_set("print", lua.create_function(|_, _: MultiValue| Ok(()))?)?;

        let redis = lua.create_table()?;
        // SAFETY: each closure is created with exactly the one upvalue (the
        // context pointer) that `redis_command` reads, and is left on the
        // stack as the single result.
        let (call, pcall): (Function, Function) = unsafe {
            (
                lua.exec_raw((), |state| {
                    ffi::lua_pushlightuserdata(state, ctx_ptr.get().cast::<c_void>());
                    ffi::lua_pushcclosure(state, redis_call, 1);
                })?,
                lua.exec_raw((), |state| {
                    ffi::lua_pushlightuserdata(state, ctx_ptr.get().cast::<c_void>());
                    ffi::lua_pushcclosure(state, redis_pcall, 1);
                })?,
            )
        };
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
        math.raw_set(
            "random",
            lua.create_function(move |_, args: MultiValue| math_random(ctx_ptr, &args))?,
        )?;
        math.raw_set(
            "randomseed",
            lua.create_function(move |_, args: MultiValue| math_randomseed(ctx_ptr, &args))?,
        )?;

        // `tonumber` and `string.format` get fast paths for the forms
        // scripts use on every call (see `fast_tonumber`, `fast_format`).
        wrap_c_function(&lua, &base, "tonumber", fast_tonumber)?;
        wrap_c_function(
            &lua,
            &base.raw_get::<Table>("string")?,
            "format",
            fast_format,
        )?;

        let env = lua.create_table()?;
        base.raw_set("_G", env.clone())?;
        lua.load(LIB_SOURCE)
            .set_name(LIB_CHUNK)
            .call::<()>((redis, base.clone(), env.clone()))?;
        let handler = lua.create_function(error_handler)?;
        lua.set_globals(env.clone())?;

        let refs = Refs {
            base: registry_ref(&lua, base)?,
            handler: registry_ref(&lua, handler)?,
            // SAFETY: pushes one C function, taken as the single result.
            runner: registry_ref(&lua, unsafe { lua.create_c_function(run_script)? })?,
            keys_name: registry_ref(&lua, "KEYS")?,
            argv_name: registry_ref(&lua, "ARGV")?,
            err: registry_ref(&lua, "err")?,
            ok: registry_ref(&lua, "ok")?,
            source: registry_ref(&lua, "source")?,
            line: registry_ref(&lua, "line")?,
        };
        // SAFETY: no Lua code runs while this exclusive borrow lives.
        unsafe { (*ctx.0).refs = refs };

        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                // SAFETY: see `CtxPtr`; fields are accessed through the raw
                // pointer, so a `redis.call` further down the Lua stack that
                // holds a borrow of another field is not disturbed.
                let exceeded = unsafe {
                    let c = ctx_ptr.get();
                    (*c).ticks += 1;
                    (*c).max_ticks.is_some_and(|m| (*c).ticks > m)
                };
                if exceeded {
                    return Err(mlua::Error::runtime(
                        "Script killed: it exceeded the embedded instruction limit",
                    ));
                }
                Ok(VmState::Continue)
            },
        )?;

        // SAFETY: `exec_raw` hands us the main thread (nothing else runs on
        // a fresh state); the pointer stays valid as long as `lua` lives,
        // and `Scripting` owns `lua`. `lua_gc` with these options only
        // stores the parameters.
        let mut state: *mut ffi::lua_State = std::ptr::null_mut();
        unsafe {
            lua.exec_raw::<()>((), |s| {
                state = s;
                ffi::lua_gc(s, ffi::LUA_GCSETPAUSE, GC_PAUSE);
                ffi::lua_gc(s, ffi::LUA_GCSETSTEPMUL, GC_STEP_MUL);
            })?;
        }

        let heap = HeapBox(Box::into_raw(Box::new(LuaHeap {
            free: vec![std::ptr::null_mut(); POOL_MAX_BLOCK + 1].into_boxed_slice(),
            cached: 0,
            original: (lua_heap_alloc, std::ptr::null_mut()),
        })));
        // SAFETY: no Lua code runs; from here on Lua allocates through the
        // heap, which can free what mlua's allocator allocated (see
        // `LuaHeap`). `Scripting::drop` puts mlua's allocator back.
        unsafe {
            let mut ud = std::ptr::null_mut();
            let original = ffi::lua_getallocf(state, &mut ud);
            (*heap.0).original = (original, ud);
            ffi::lua_setallocf(state, lua_heap_alloc, heap.0.cast());
        }

        Ok(Scripting {
            lua,
            state,
            ctx,
            heap,
            env,
            by_sha: FxHashMap::default(),
            sha_by_body: FxHashMap::default(),
        })
    }

    /// Number of cached scripts.
    pub(crate) fn len(&self) -> usize {
        self.by_sha.len()
    }

    pub(crate) fn set_instruction_limit(&mut self, limit: Option<u64>) {
        // SAFETY: `&mut self` excludes running Lua code, so this is the only
        // access to the context.
        unsafe { (*self.ctx.0).max_ticks = limit.map(|l| l.div_ceil(u64::from(HOOK_EVERY))) };
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
            let r = registry_ref(&self.lua, func).map_err(|e| {
                Reply::Error(format!(
                    "ERR Error compiling script (new function): {}",
                    error_text(&e)
                ))
            })?;
            self.by_sha.insert(sha, r);
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
        let refs: Vec<c_int> = self.by_sha.drain().map(|(_, r)| r).collect();
        // SAFETY: each reference was made by `registry_ref` and is released
        // exactly once (the map no longer holds it).
        let released = unsafe {
            self.lua.exec_raw::<()>((), |state| {
                for r in refs {
                    ffi::luaL_unref(state, ffi::LUA_REGISTRYINDEX, r);
                }
            })
        };
        // Releasing only stores into the registry; if it ever failed, the
        // functions would merely stay allocated.
        let _ = released;
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
        let sha = match self.compile(body) {
            Ok(sha) => sha,
            Err(r) => return r,
        };
        match self.by_sha.get(&sha) {
            Some(&func) => self.run(db, now_ms, &sha, func, keys, argv),
            None => Reply::Error(NOSCRIPT.to_owned()),
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
        let found = normalize_sha(sha).and_then(|s| self.by_sha.get(&s).map(|&f| (s, f)));
        match found {
            Some((sha, func)) => self.run(db, now_ms, &sha, func, keys, argv),
            None => Reply::Error(NOSCRIPT.to_owned()),
        }
    }

    fn run(
        &mut self,
        db: &mut Db,
        now_ms: i64,
        sha: &[u8; 40],
        func: c_int,
        keys: &[&[u8]],
        argv: &[&[u8]],
    ) -> Reply {
        let ctx = self.ctx.0;
        let job = RunJob {
            ctx,
            keys,
            argv,
            func,
            sha,
        };
        let state = self.state;
        // SAFETY: `&mut self` makes this the only user of the Lua state and
        // the context, and no Lua code runs between these stores and the
        // `lua_pcall` below. `db` stays borrowed for this whole function and
        // is only reached through the context pointer until it is cleared,
        // before `db` is usable again.
        //
        // Stack: at rest mlua leaves the main thread's stack empty (checked
        // in debug builds); Lua guarantees LUA_MINSTACK (20) free slots
        // there, so the two pushes need no `lua_checkstack`. `lua_rawgeti`
        // on the registry and `lua_pushlightuserdata` do not allocate and
        // cannot raise; `lua_pcall` catches everything raised inside
        // `run_script`; `lua_type`/`lua_tolstring` on a string and
        // `lua_settop` do not allocate. So nothing here can `longjmp` past
        // this frame, which owns no value with a destructor anyway until
        // the stack is restored.
        let failure = unsafe {
            (*ctx).db = std::ptr::from_mut(db);
            (*ctx).now_ms = now_ms;
            // Redis reseeds before every script, so math.random is a pure
            // function of the script and its inputs.
            (*ctx).rng = Rand48::seeded(0);
            (*ctx).ticks = 0;
            (*ctx).in_call = false;
            let top = ffi::lua_gettop(state);
            debug_assert_eq!(top, 0, "mlua left values on the main stack");
            ffi::lua_rawgeti_(state, ffi::LUA_REGISTRYINDEX, (*ctx).refs.runner);
            ffi::lua_pushlightuserdata(state, std::ptr::from_ref(&job).cast_mut().cast());
            let status = ffi::lua_pcall(state, 1, 0, 0);
            let failure = (status != ffi::LUA_OK).then(|| {
                let mut text = String::new();
                if ffi::lua_type(state, -1) == ffi::LUA_TSTRING {
                    text = String::from_utf8_lossy(str_at(state, -1)).into_owned();
                }
                text
            });
            ffi::lua_settop(state, top);
            (*ctx).db = std::ptr::null_mut();
            failure
        };
        // SAFETY: Lua is no longer running; this is the only access.
        let (panic, result) = unsafe {
            (*ctx).partial.clear();
            (*ctx).reply = Reply::Nil;
            (*ctx).hash_reply = None;
            (
                (*ctx).panic.take(),
                std::mem::replace(&mut (*ctx).result, Reply::Nil),
            )
        };
        if let Some(payload) = panic {
            resume_unwind(payload);
        }
        match failure {
            None => result,
            Some(text) => Reply::Error(format!(
                "ERR Error running script (call to f_{}): {text}",
                sha_str(sha)
            )),
        }
    }
}

/// Replaces the C function `table[name]` by `wrapper`, a C closure whose
/// upvalue 1 is the original function.
fn wrap_c_function(
    lua: &Lua,
    table: &Table,
    name: &str,
    wrapper: ffi::lua_CFunction,
) -> mlua::Result<()> {
    let original: Function = table.raw_get(name)?;
    // SAFETY: `exec_raw` pushes the original as the only argument, which
    // `lua_pushcclosure` turns into the wrapper's upvalue; the closure is
    // the single result. The wrappers check the upvalue is a C function.
    let wrapped: Function = unsafe {
        lua.exec_raw(original, |state| {
            ffi::lua_pushcclosure(state, wrapper, 1);
        })?
    };
    table.raw_set(name, wrapped)
}

/// Calls the original C function (upvalue 1) of a wrapper on the wrapper's
/// own stack frame, so it sees the same arguments and, for error messages,
/// the same call site and function name as if it had been called directly.
///
/// # Safety
/// Called from a C closure made by [`wrap_c_function`], with the stack as
/// Lua passed it.
unsafe fn call_original(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: upvalue 1 is the original C function (see `wrap_c_function`);
    // calling it here is what Lua would have done, and this frame holds
    // nothing with a destructor if it raises.
    unsafe {
        match ffi::lua_tocfunction(state, ffi::lua_upvalueindex(1)) {
            Some(original) => original(state),
            None => {
                ffi::lua_pushliteral(state, c"embedded Redis: wrapped function missing");
                ffi::lua_error(state)
            }
        }
    }
}

/// The value of a string of 1 to 15 ASCII digits with an optional leading
/// `-`: exactly what `strtod` returns for it (such integers are exact in a
/// double, and "-0" is negative zero). `None` for anything else.
fn parse_small_decimal(s: &[u8]) -> Option<f64> {
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')) as f64;
    Some(if negative { -v } else { v })
}

/// `tonumber`, with a fast path for one argument that is a number or a
/// short decimal integer string. Lua 5.1 converts strings with `strtod`,
/// which is slow; the fast path gives the identical double. Everything else
/// (bases, spaces, exponents, hex, non-numbers) goes to the original.
///
/// # Safety
/// Called by Lua only, as a closure made by [`wrap_c_function`].
unsafe extern "C-unwind" fn fast_tonumber(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: one argument is on the stack; a number is returned as itself
    // (the original pushes an identical copy), and a parsed string is
    // pushed into the slot Lua guarantees a C function (LUA_MINSTACK).
    unsafe {
        if ffi::lua_gettop(state) == 1 {
            match ffi::lua_type(state, 1) {
                ffi::LUA_TNUMBER => return 1,
                ffi::LUA_TSTRING => {
                    if let Some(v) = parse_small_decimal(str_at(state, 1)) {
                        ffi::lua_pushnumber(state, v);
                        return 1;
                    }
                }
                _ => {}
            }
        }
        call_original(state)
    }
}

/// `string.format`, with a fast path for `string.format('%d', n)` with a
/// number `n` in the 64-bit range, the usual way scripts print integers
/// without exponents. Lua 5.1 prints `(long) n` with `sprintf("%ld")`; the
/// fast path prints the same truncated integer. Every other format, and an
/// `n` that is a string or out of range, goes to the original.
///
/// # Safety
/// Called by Lua only, as a closure made by [`wrap_c_function`].
unsafe extern "C-unwind" fn fast_format(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: both arguments are on the stack and type-checked before they
    // are read; the digits are formatted into a stack buffer (no
    // destructor) before `push_bytes`, which may raise, and Lua guarantees
    // a C function a free slot for the result.
    unsafe {
        if ffi::lua_gettop(state) == 2
            && ffi::lua_type(state, 1) == ffi::LUA_TSTRING
            && ffi::lua_type(state, 2) == ffi::LUA_TNUMBER
            && str_at(state, 1) == b"%d"
        {
            let n = ffi::lua_tonumber(state, 2);
            // [-2^63, 2^63): where C's conversion to long is defined.
            if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&n) {
                let mut buf = [0u8; 24];
                let len = format_i64(n as i64, &mut buf);
                push_bytes(state, &buf[..len]);
                return 1;
            }
        }
        call_original(state)
    }
}

/// Writes `v` in decimal into `buf` and returns the length.
fn format_i64(v: i64, buf: &mut [u8; 24]) -> usize {
    let mut digits = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut len = 0;
    if v < 0 {
        buf[0] = b'-';
        len = 1;
    }
    for &d in &digits[i..] {
        buf[len] = d;
        len += 1;
    }
    len
}

impl Drop for Scripting {
    fn drop(&mut self) {
        // SAFETY: no Lua code runs during drop. mlua's allocator can free
        // and resize every block the heap handed out (same layouts), so it
        // takes over for `lua_close`, which runs when `lua` is dropped right
        // after this; the heap itself is freed after that (field order).
        unsafe {
            let (f, ud) = (*self.heap.0).original;
            ffi::lua_setallocf(self.state, f, ud);
        }
    }
}

/// Stores `value` in the registry and returns its reference.
fn registry_ref(lua: &Lua, value: impl mlua::IntoLua) -> mlua::Result<c_int> {
    let mut r = 0;
    // SAFETY: `exec_raw` pushes `value` as the only argument; `luaL_ref`
    // pops it, leaving no results. It runs in protected mode.
    unsafe {
        lua.exec_raw::<()>(value, |state| {
            r = ffi::luaL_ref(state, ffi::LUA_REGISTRYINDEX);
        })?;
    }
    Ok(r)
}

/// The bytes of the string at `idx`.
///
/// # Safety
/// The value at `idx` must be a string (not a number, which
/// `lua_tolstring` would convert in place), and the slice must not be used
/// after the value leaves the stack.
unsafe fn str_at<'a>(state: *mut ffi::lua_State, idx: c_int) -> &'a [u8] {
    let mut len = 0usize;
    // SAFETY: per the contract the value is a string, so this neither
    // allocates nor fails, and Lua strings are immutable and do not move.
    unsafe {
        let p = ffi::lua_tolstring(state, idx, &mut len);
        if p.is_null() || len == 0 {
            return &[];
        }
        std::slice::from_raw_parts(p.cast::<u8>(), len)
    }
}

/// Pushes `bytes` as a Lua string. May raise (it allocates).
///
/// # Safety
/// One free stack slot; the caller's frames must tolerate a `longjmp`.
unsafe fn push_bytes(state: *mut ffi::lua_State, bytes: &[u8]) {
    // SAFETY: Lua copies `len` bytes from the pointer; an empty slice is
    // passed as a static empty C string so the pointer is always valid.
    unsafe {
        if bytes.is_empty() {
            ffi::lua_pushlstring_(state, c"".as_ptr(), 0);
        } else {
            ffi::lua_pushlstring_(state, bytes.as_ptr().cast::<c_char>(), bytes.len());
        }
    }
}

/// Everything [`run_script`] needs, passed as a light userdata that points
/// into `Scripting::run`'s frame.
struct RunJob<'a> {
    ctx: *mut ScriptCtx,
    keys: &'a [&'a [u8]],
    argv: &'a [&'a [u8]],
    func: c_int,
    sha: &'a [u8; 40],
}

/// Runs one script in protected mode: sets `KEYS` and `ARGV`, calls the
/// script under the error handler, and converts its result (or error) into
/// `ScriptCtx::result`.
///
/// # Safety
/// Called by Lua only, through `lua_pcall` from `Scripting::run` with one
/// argument, a light userdata pointing at a live [`RunJob`] whose context
/// has its registry references set.
unsafe extern "C-unwind" fn run_script(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: per the contract, the job outlives this call. This frame only
    // holds references and integers, so Lua may `longjmp` out of any call
    // below (`set_string_array` allocates). Stack use: the argument slot is
    // dropped; then at most 5 slots (base table, name, array, string /
    // handler, function) of the LUA_MINSTACK (20) Lua guarantees a C
    // function, and the conversions check the stack for themselves.
    unsafe {
        let job = &*ffi::lua_touserdata(state, 1).cast::<RunJob<'_>>();
        let ctx = job.ctx;
        let refs = (*ctx).refs;
        ffi::lua_settop(state, 0);
        set_string_array(state, refs, refs.keys_name, job.keys);
        set_string_array(state, refs, refs.argv_name, job.argv);
        ffi::lua_rawgeti_(state, ffi::LUA_REGISTRYINDEX, refs.handler);
        ffi::lua_rawgeti_(state, ffi::LUA_REGISTRYINDEX, job.func);
        let status = ffi::lua_pcall(state, 0, 1, 1);
        // The stack is now: handler, then the result or the error value.
        if status == ffi::LUA_OK {
            convert_result(state, ctx, refs, 0);
        } else {
            convert_error(state, ctx, refs, job.sha);
        }
        0
    }
}

/// `base[name] = {items...}` with fresh Lua strings.
///
/// # Safety
/// Inside a C function or protected call with 4 free stack slots; may raise
/// (it allocates), so the caller's frames must tolerate a `longjmp`.
unsafe fn set_string_array(state: *mut ffi::lua_State, refs: Refs, name: c_int, items: &[&[u8]]) {
    // SAFETY: registry references are valid (set at build); the table is at
    // -2 when each string is at -1, and at -3 below name/table at the end.
    // Lua's array length is an int; larger arguments lists cannot reach
    // here (a request that size would not fit the protocol's own limits),
    // and if one did, the extra items would go into the hash part.
    unsafe {
        ffi::lua_rawgeti_(state, ffi::LUA_REGISTRYINDEX, refs.base);
        ffi::lua_rawgeti_(state, ffi::LUA_REGISTRYINDEX, name);
        ffi::lua_createtable(state, c_int::try_from(items.len()).unwrap_or(0), 0);
        for (i, item) in items.iter().enumerate() {
            push_bytes(state, item);
            match c_int::try_from(i + 1) {
                Ok(i) => ffi::lua_rawseti_(state, -2, i),
                Err(_) => ffi::lua_pop(state, 1),
            }
        }
        ffi::lua_rawset(state, -3);
        ffi::lua_pop(state, 1);
    }
}

/// The string stored under the registry-held key `key` in the table at
/// absolute index `table`, if it is a string. Needs one free stack slot;
/// does not allocate and cannot raise.
///
/// # Safety
/// `table` must be a valid absolute index of a table.
unsafe fn string_field(state: *mut ffi::lua_State, table: c_int, key: c_int) -> Option<String> {
    // SAFETY: `lua_rawgeti` on the registry and `lua_rawget` neither
    // allocate nor call metamethods; the value is popped before returning.
    unsafe {
        ffi::lua_rawgeti_(state, ffi::LUA_REGISTRYINDEX, key);
        ffi::lua_rawget_(state, table);
        let out = (ffi::lua_type(state, -1) == ffi::LUA_TSTRING)
            .then(|| String::from_utf8_lossy(str_at(state, -1)).into_owned());
        ffi::lua_pop(state, 1);
        out
    }
}

/// The number stored under `key` in the table at absolute index `table`,
/// truncated to an integer, if it is a number. Like [`string_field`].
///
/// # Safety
/// As [`string_field`].
unsafe fn int_field(state: *mut ffi::lua_State, table: c_int, key: c_int) -> Option<i64> {
    // SAFETY: as in `string_field`.
    unsafe {
        ffi::lua_rawgeti_(state, ffi::LUA_REGISTRYINDEX, key);
        ffi::lua_rawget_(state, table);
        let out = (ffi::lua_type(state, -1) == ffi::LUA_TNUMBER)
            .then(|| ffi::lua_tonumber(state, -1) as i64);
        ffi::lua_pop(state, 1);
        out
    }
}

/// Lua → Redis conversion of the value on top of the stack (left there),
/// as Redis documents it. The reply goes into the innermost array being
/// built (`ScriptCtx::partial`), or into `ScriptCtx::result` at depth 0.
///
/// # Safety
/// Inside a C function with 2 free stack slots. Frames of this function
/// hold no value with a destructor across a Lua call (the replies being
/// built live in the context), so a `longjmp` out of it is harmless.
unsafe fn convert_result(
    state: *mut ffi::lua_State,
    ctx: *mut ScriptCtx,
    refs: Refs,
    depth: usize,
) {
    // SAFETY: reads of the value at -1 do not allocate; tables are read
    // with raw access (no metamethods). Each level checks for the 2 slots
    // its child needs (the child and a key) before pushing it.
    unsafe {
        let item = if depth > MAX_REPLY_DEPTH {
            Reply::Error("ERR reached lua stack limit".to_owned())
        } else {
            match ffi::lua_type(state, -1) {
                ffi::LUA_TBOOLEAN => {
                    if ffi::lua_toboolean(state, -1) != 0 {
                        Reply::Int(1)
                    } else {
                        Reply::Nil
                    }
                }
                // Truncation toward zero, saturating, as a C cast would do
                // for in-range values.
                ffi::LUA_TNUMBER => Reply::Int(ffi::lua_tonumber(state, -1) as i64),
                ffi::LUA_TSTRING => Reply::Bulk(str_at(state, -1).to_vec()),
                ffi::LUA_TTABLE => {
                    let table = ffi::lua_gettop(state);
                    if let Some(e) = string_field(state, table, refs.err) {
                        Reply::Error(e.strip_prefix('-').unwrap_or(&e).to_owned())
                    } else if let Some(s) = string_field(state, table, refs.ok) {
                        Reply::Status(s)
                    } else if ffi::lua_checkstack(state, 2) == 0 {
                        Reply::Error("ERR reached lua stack limit".to_owned())
                    } else {
                        (*ctx).partial.push(Vec::new());
                        let mut i: c_int = 1;
                        loop {
                            ffi::lua_rawgeti_(state, table, i);
                            if ffi::lua_type(state, -1) == ffi::LUA_TNIL {
                                ffi::lua_pop(state, 1);
                                break;
                            }
                            convert_result(state, ctx, refs, depth + 1);
                            ffi::lua_pop(state, 1);
                            match i.checked_add(1) {
                                Some(next) => i = next,
                                None => break,
                            }
                        }
                        Reply::Array((*ctx).partial.pop().unwrap_or_default())
                    }
                }
                _ => Reply::Nil,
            }
        };
        match (*ctx).partial.last_mut() {
            Some(items) => items.push(item),
            None => (*ctx).result = item,
        }
    }
}

/// The error reply for a script that raised the value on top of the stack
/// (the error table the handler built), formatted as Redis 7 does:
/// `<code> <message> script: <sha>, on @user_script:<line>.`
///
/// # Safety
/// Inside a C function with 1 free stack slot. Does not allocate in Lua.
unsafe fn convert_error(
    state: *mut ffi::lua_State,
    ctx: *mut ScriptCtx,
    refs: Refs,
    sha: &[u8; 40],
) {
    // SAFETY: only non-allocating reads (see `string_field`).
    unsafe {
        let msg = if ffi::lua_type(state, -1) == ffi::LUA_TTABLE {
            let table = ffi::lua_gettop(state);
            let msg = string_field(state, table, refs.err)
                .unwrap_or_else(|| "ERR unknown error".to_owned());
            let msg = msg.strip_prefix('-').unwrap_or(&msg).to_owned();
            let source = string_field(state, table, refs.source);
            let line = int_field(state, table, refs.line);
            match (source, line) {
                (Some(src), Some(line)) => {
                    format!("{msg} script: {}, on {src}:{line}.", sha_str(sha))
                }
                _ => msg,
            }
        } else {
            format!("ERR {}", raw_value_text(state, -1))
        };
        (*ctx).result = Reply::Error(msg);
    }
}

/// Lua's `tostring` for the plain values an error can be, without
/// allocating in Lua.
///
/// # Safety
/// `idx` must be a valid stack index.
unsafe fn raw_value_text(state: *mut ffi::lua_State, idx: c_int) -> String {
    // SAFETY: type checks first; strings are read in place, numbers with
    // `lua_tonumber`, and `lua_typename` returns a static C string.
    unsafe {
        match ffi::lua_type(state, idx) {
            ffi::LUA_TSTRING => String::from_utf8_lossy(str_at(state, idx)).into_owned(),
            ffi::LUA_TNUMBER => {
                let mut out = Vec::new();
                push_number(ffi::lua_tonumber(state, idx), &mut out);
                String::from_utf8_lossy(&out).into_owned()
            }
            ffi::LUA_TBOOLEAN => (ffi::lua_toboolean(state, idx) != 0).to_string(),
            ffi::LUA_TNIL => "nil".to_owned(),
            t => std::ffi::CStr::from_ptr(ffi::lua_typename(state, t))
                .to_string_lossy()
                .into_owned(),
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

/// `redis.call`: runs a command; an error reply is raised as the error
/// table `{err=...}` (what `pcall(redis.call, ..)` observes), anything else
/// is returned converted to Lua.
///
/// It is a C function on purpose, beyond speed: Lua 5.1 discards the
/// caller's frame when it tail-calls a Lua function (`return
/// redis.call(..)` is the common case), which would lose the script line
/// Redis puts in the error; calls to C functions keep it. And only the C
/// API can raise a table as the error value.
///
/// # Safety
/// Called by Lua only, with upvalue 1 the context pointer (see
/// `Scripting::build`).
unsafe extern "C-unwind" fn redis_call(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { redis_command::<true>(state) }
}

/// `redis.pcall`: like [`redis_call`], but an error reply is returned as
/// the table `{err=...}` instead of raised.
///
/// # Safety
/// As [`redis_call`].
unsafe extern "C-unwind" fn redis_pcall(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { redis_command::<false>(state) }
}

/// Why a `redis.call` could not produce a reply.
enum CallFailure {
    /// Called while no script runs (from a finaliser between scripts).
    OutsideScript,
    /// Called from inside another `redis.call` (a finaliser run by its
    /// allocation).
    Reentered,
    /// The command interpreter panicked; the payload is in the context.
    Panicked,
}

/// The body of `redis.call` (`RAISE`) and `redis.pcall`.
///
/// Three phases. 1: read the arguments off the stack (no Lua allocation,
/// so nothing can raise while the argument vector exists). 2: run the
/// command in Rust under `catch_unwind`, storing the reply in the context.
/// 3: push the reply (this allocates, so it may raise; the frame then holds
/// only a raw pointer and a borrow of the context's reply, which nothing
/// else touches because `in_call` is set).
///
/// # Safety
/// As [`redis_call`].
unsafe fn redis_command<const RAISE: bool>(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: upvalue 1 is the context pointer, valid for the state's
    // lifetime (`CtxBox`). Fields are accessed through the raw pointer so no
    // long-lived `&mut ScriptCtx` overlaps Lua code that might run during
    // an allocation.
    unsafe {
        let ctx = ffi::lua_touserdata(state, ffi::lua_upvalueindex(1)).cast::<ScriptCtx>();
        let outcome = execute_from_stack(state, ctx);
        match outcome {
            Ok(()) => {
                let raise = match (*ctx).hash_reply.take() {
                    Some((hash, multi)) => {
                        push_hash_fields(state, &(*ctx).spans, &(*ctx).arena, hash.as_ref(), multi);
                        false
                    }
                    None => {
                        push_reply(state, (*ctx).refs, &(*ctx).reply);
                        RAISE && matches!((*ctx).reply, Reply::Error(_))
                    }
                };
                (*ctx).reply = Reply::Nil;
                (*ctx).in_call = false;
                if raise {
                    ffi::lua_error(state);
                }
                1
            }
            Err(CallFailure::OutsideScript) => {
                ffi::lua_pushliteral(state, c"redis.call used outside a script");
                ffi::lua_error(state)
            }
            Err(CallFailure::Reentered) => {
                push_error_table(
                    state,
                    (*ctx).refs,
                    b"ERR redis.call() recursive call detected. Are you doing funny stuff with Lua finalizers?",
                );
                if RAISE {
                    ffi::lua_error(state);
                }
                1
            }
            Err(CallFailure::Panicked) => {
                (*ctx).in_call = false;
                ffi::lua_pushliteral(state, c"redis.call: the command panicked");
                ffi::lua_error(state)
            }
        }
    }
}

/// Phases 1 and 2 of [`redis_command`]: on success the reply is in
/// `(*ctx).reply` and `(*ctx).in_call` is set.
///
/// # Safety
/// `ctx` is the live context; called from a C function whose arguments are
/// the command. Makes no Lua call that allocates.
unsafe fn execute_from_stack(
    state: *mut ffi::lua_State,
    ctx: *mut ScriptCtx,
) -> Result<(), CallFailure> {
    // SAFETY: see `redis_command`. The only Lua calls are `lua_gettop`,
    // `lua_type`, `lua_tolstring` on strings and `lua_tonumber`, none of
    // which allocate or raise. Slices of Lua strings stay valid while the
    // arguments are on the stack, i.e. for this whole call.
    unsafe {
        if (*ctx).in_call {
            return Err(CallFailure::Reentered);
        }
        let db = (*ctx).db;
        if db.is_null() {
            return Err(CallFailure::OutsideScript);
        }
        (*ctx).in_call = true;
        let nargs = ffi::lua_gettop(state);
        let spans = &mut (*ctx).spans;
        let arena = &mut (*ctx).arena;
        spans.clear();
        arena.clear();
        let mut bad_arg = (nargs == 0)
            .then_some("ERR Please specify at least one argument for this redis lib call");
        for i in 1..=nargs {
            match ffi::lua_type(state, i) {
                ffi::LUA_TSTRING => {
                    let s = str_at(state, i);
                    spans.push(Span::Lua(s.as_ptr(), s.len()));
                }
                ffi::LUA_TNUMBER => {
                    let start = arena.len();
                    push_number(ffi::lua_tonumber(state, i), arena);
                    spans.push(Span::Arena(start, arena.len()));
                }
                _ => {
                    bad_arg =
                        Some("ERR Lua redis lib command arguments must be strings or integers");
                    break;
                }
            }
        }
        if let Some(msg) = bad_arg {
            (*ctx).reply = Reply::Error(msg.to_owned());
            return Ok(());
        }
        let now_ms = (*ctx).now_ms;
        let arena: &[u8] = arena;
        let spans: &[Span] = spans;
        let run = AssertUnwindSafe(|| {
            if spans.len() <= INLINE_ARGS {
                let mut inline: [&[u8]; INLINE_ARGS] = [&[]; INLINE_ARGS];
                for (d, s) in inline.iter_mut().zip(spans) {
                    *d = span_bytes(*s, arena);
                }
                run_from_script(&mut *db, now_ms, &inline[..spans.len()])
            } else {
                let args: Vec<&[u8]> = spans.iter().map(|s| span_bytes(*s, arena)).collect();
                run_from_script(&mut *db, now_ms, &args)
            }
        });
        match catch_unwind(run) {
            Ok(ScriptReply::Reply(reply)) => {
                (*ctx).reply = reply;
                Ok(())
            }
            Ok(ScriptReply::HashFields { hash, multi }) => {
                (*ctx).hash_reply =
                    Some((hash.map_or(std::ptr::null(), std::ptr::from_ref), multi));
                Ok(())
            }
            Err(payload) => {
                (*ctx).panic = Some(payload);
                Err(CallFailure::Panicked)
            }
        }
    }
}

/// The bytes of an argument.
///
/// # Safety
/// A `Span::Lua` must describe a string that is still on the stack.
unsafe fn span_bytes(span: Span, arena: &[u8]) -> &[u8] {
    match span {
        // SAFETY: per the contract, the string is alive and immutable.
        Span::Lua(p, len) => unsafe { std::slice::from_raw_parts(p, len) },
        Span::Arena(a, b) => arena.get(a..b).unwrap_or_default(),
    }
}

/// Pushes the reply of HGET (`multi` false: one value or false) or HMGET
/// (a table of them) for the field names in `spans[2..]`. May raise.
///
/// # Safety
/// Inside a C function with 2 free stack slots, with the call's arguments
/// still on the stack; `hash`, `spans` and `arena` must not change while this runs
/// (both are guarded by `in_call`), and the caller's frames must tolerate a
/// `longjmp`.
unsafe fn push_hash_fields(
    state: *mut ffi::lua_State,
    spans: &[Span],
    arena: &[u8],
    hash: Option<&HashFields>,
    multi: bool,
) {
    // Field names that were numbers are looked up by their formatted text
    // in the arena, as the general path does.
    // SAFETY: every span is an argument still on the stack or in the arena,
    // which nothing changes while `in_call` is set (see the contract).
    unsafe {
        let fields = spans.get(2..).unwrap_or_default();
        let value = |span: &Span| hash.and_then(|h| h.get(span_bytes(*span, arena)));
        if !multi {
            match fields.first().and_then(value) {
                Some(v) => push_bytes(state, v),
                None => ffi::lua_pushboolean(state, 0),
            }
            return;
        }
        ffi::lua_createtable(state, c_int::try_from(fields.len()).unwrap_or(0), 0);
        for (i, span) in fields.iter().enumerate() {
            match value(span) {
                Some(v) => push_bytes(state, v),
                None => ffi::lua_pushboolean(state, 0),
            }
            match c_int::try_from(i + 1) {
                Ok(i) => ffi::lua_rawseti_(state, -2, i),
                Err(_) => ffi::lua_pop(state, 1),
            }
        }
    }
}

/// Pushes `{err = msg}`. May raise.
///
/// # Safety
/// Inside a C function with 3 free stack slots; the caller's frames must
/// tolerate a `longjmp`.
unsafe fn push_error_table(state: *mut ffi::lua_State, refs: Refs, msg: &[u8]) {
    // SAFETY: the table is at -3 when the key and value are pushed.
    unsafe {
        ffi::lua_createtable(state, 0, 1);
        ffi::lua_rawgeti_(state, ffi::LUA_REGISTRYINDEX, refs.err);
        push_bytes(state, msg);
        ffi::lua_rawset(state, -3);
    }
}

/// Redis → Lua conversion, as Redis documents it. May raise.
///
/// # Safety
/// Inside a C function with 3 free stack slots; `reply` must not change
/// while this runs (it is the context's reply, guarded by `in_call`), and
/// the caller's frames must tolerate a `longjmp`.
unsafe fn push_reply(state: *mut ffi::lua_State, refs: Refs, reply: &Reply) {
    // SAFETY: every push has its slot: 1 for scalars, 3 for status/error
    // tables, and arrays check for 3 more before each element.
    unsafe {
        match reply {
            Reply::Int(i) => ffi::lua_pushinteger(state, *i as ffi::lua_Integer),
            Reply::Bulk(b) => push_bytes(state, b),
            Reply::Nil | Reply::NilArray => ffi::lua_pushboolean(state, 0),
            Reply::Status(s) => {
                ffi::lua_createtable(state, 0, 1);
                ffi::lua_rawgeti_(state, ffi::LUA_REGISTRYINDEX, refs.ok);
                push_bytes(state, s.as_bytes());
                ffi::lua_rawset(state, -3);
            }
            Reply::Error(s) => push_error_table(state, refs, s.as_bytes()),
            Reply::Array(items) => {
                ffi::lua_createtable(state, c_int::try_from(items.len()).unwrap_or(0), 0);
                if ffi::lua_checkstack(state, 3) == 0 {
                    // Command replies nest two or three levels deep; this
                    // only guards the stack.
                    return;
                }
                for (i, item) in items.iter().enumerate() {
                    push_reply(state, refs, item);
                    match c_int::try_from(i + 1) {
                        Ok(i) => ffi::lua_rawseti_(state, -2, i),
                        Err(_) => ffi::lua_pop(state, 1),
                    }
                }
            }
        }
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

fn math_random(ctx: CtxPtr, args: &MultiValue) -> mlua::Result<f64> {
    // SAFETY: see `CtxPtr`; a single field is accessed through the raw
    // pointer and no Lua code runs meanwhile.
    let r = unsafe { (*ctx.get()).rng.unit() };
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

fn math_randomseed(ctx: CtxPtr, args: &MultiValue) -> mlua::Result<()> {
    let seed = int_arg(args.front(), 1, "randomseed")?;
    // SAFETY: as in `math_random`.
    unsafe { (*ctx.get()).rng = Rand48::seeded(seed) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::engine::tests::run;
    use super::super::engine::{Engine, Reply, Session};
    use super::*;

    fn setup() -> (Engine, Session) {
        let e = Engine::new(1);
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

    fn eval_bytes(
        e: &mut Engine,
        s: &mut Session,
        src: &str,
        keys: &[&[u8]],
        argv: &[&[u8]],
    ) -> Reply {
        let n = keys.len().to_string();
        let mut args: Vec<&[u8]> = vec![b"EVAL", src.as_bytes(), n.as_bytes()];
        args.extend_from_slice(keys);
        args.extend_from_slice(argv);
        e.execute(s, 1_000, &args)
    }

    #[test]
    fn raw_call_error_paths() {
        let (mut e, mut s) = setup();
        run(&mut e, &mut s, 0, &["SET", "s", "x"]);
        let cases: &[(&str, &str)] = &[
            (
                "return redis.pcall('GET').err",
                "ERR Wrong number of args calling Redis command from script",
            ),
            (
                "return redis.pcall().err",
                "ERR Please specify at least one argument for this redis lib call",
            ),
            (
                "return redis.pcall('GET', {}).err",
                "ERR Lua redis lib command arguments must be strings or integers",
            ),
            (
                "return redis.pcall('SET', 'k', true).err",
                "ERR Lua redis lib command arguments must be strings or integers",
            ),
            (
                "local ok, e = pcall(redis.call, 'NOPE') return e.err",
                "ERR Unknown Redis command called from script",
            ),
            (
                "return redis.pcall('MULTI').err",
                "ERR This Redis command is not allowed from script",
            ),
            // The HGET/HMGET fast path reports errors like any command.
            (
                "return redis.pcall('HMGET', 's', 'a').err",
                "WRONGTYPE Operation against a key holding the wrong kind of value",
            ),
            (
                "local ok, e = pcall(redis.call, 'HGET', 's', 'f') return e.err",
                "WRONGTYPE Operation against a key holding the wrong kind of value",
            ),
            (
                "return redis.pcall('HGET', 's').err",
                "ERR Wrong number of args calling Redis command from script",
            ),
        ];
        for (src, want) in cases {
            assert_eq!(eval(&mut e, &mut s, src, &[], &[]), bulk(want), "{src}");
        }
        // A tail call keeps the script's line in the error, fast path too.
        for cmd in ["HGET", "INCR"] {
            let src = format!("local x = 1\nreturn redis.call('{cmd}', 's', 'f')");
            let src = if cmd == "INCR" {
                "local x = 1\nreturn redis.call('INCR', 's')".to_owned()
            } else {
                src
            };
            let msg = error_text_of(eval(&mut e, &mut s, &src, &[], &[]));
            assert!(msg.ends_with(", on @user_script:2."), "{msg}");
        }
        // pcall'd errors leave the engine and later calls working.
        assert_eq!(
            eval(
                &mut e,
                &mut s,
                "redis.pcall('INCR', 's') redis.pcall('HGET', 's', 'f') return redis.call('GET', 's')",
                &[],
                &[]
            ),
            bulk("x")
        );
    }

    #[test]
    fn binary_safe_arguments_and_replies() {
        let (mut e, mut s) = setup();
        let key: &[u8] = b"k\0ey";
        let value: &[u8] = b"v\0\xffal\0";
        let r = eval_bytes(
            &mut e,
            &mut s,
            "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])",
            &[key],
            &[value],
        );
        assert_eq!(r, Reply::Bulk(value.to_vec()));
        // Hash fields and values with NUL bytes, through HGET and HMGET.
        let r = eval_bytes(
            &mut e,
            &mut s,
            "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'plain', '') \
             return {redis.call('HGET', KEYS[1], ARGV[1]), \
                     redis.call('HMGET', KEYS[1], ARGV[1], 'f', 'plain', 'f\\0x')}",
            &[b"h\0"],
            &[b"f\0x", value],
        );
        assert_eq!(
            r,
            Reply::Array(vec![
                Reply::Bulk(value.to_vec()),
                Reply::Array(vec![
                    Reply::Bulk(value.to_vec()),
                    Reply::Nil,
                    bulk(""),
                    Reply::Bulk(value.to_vec())
                ]),
            ])
        );
        assert_eq!(e.get_hash_field(0, b"h\0", b"f\0x"), Some(value.to_vec()));
        // Empty strings both ways.
        assert_eq!(
            eval_bytes(
                &mut e,
                &mut s,
                "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])",
                &[b""],
                &[b""],
            ),
            bulk("")
        );
    }

    #[test]
    fn number_arguments_are_formatted_like_before() {
        let (mut e, mut s) = setup();
        let cases: &[(&str, &str)] = &[
            ("10", "10"),
            ("-7", "-7"),
            ("2.0", "2"),
            ("-0.0", "0"),
            ("1.5", "1.5"),
            ("-3.25", "-3.25"),
            ("0.1", "0.1"),
            ("1/3", "0.3333333333333333"),
            ("1e15", "1000000000000000"),
            ("2^53", "9007199254740992"),
            ("-2^63", "-9223372036854775808"),
            ("2^63", "9223372036854776000"),
            ("1/0", "inf"),
            ("-1/0", "-inf"),
            ("0/0", "NaN"),
        ];
        for (expr, want) in cases {
            let src = format!("redis.call('SET', 'n', {expr}) return redis.call('GET', 'n')");
            assert_eq!(eval(&mut e, &mut s, &src, &[], &[]), bulk(want), "{expr}");
        }
        // Number field names reach the HMGET fast path as their text.
        assert_eq!(
            eval(
                &mut e,
                &mut s,
                "redis.call('HSET', 'h', 1, 'one', 2.5, 'x') \
                 return redis.call('HMGET', 'h', 1, 2.5, '1', 1.0, 3)",
                &[],
                &[]
            ),
            Reply::Array(vec![
                bulk("one"),
                bulk("x"),
                bulk("one"),
                bulk("one"),
                Reply::Nil
            ])
        );
        assert_eq!(
            eval(
                &mut e,
                &mut s,
                "return redis.call('HGET', 'h', 2.5)",
                &[],
                &[]
            ),
            bulk("x")
        );
    }

    #[test]
    fn calls_with_many_arguments() {
        let (mut e, mut s) = setup();
        // 2 + 2 * 40 arguments, past the inline argument buffer.
        let src = r#"
            local args = {}
            for i = 1, 40 do args[#args + 1] = 'f' .. i; args[#args + 1] = i * 10 end
            local added = redis.call('HSET', KEYS[1], unpack(args))
            local names = {}
            for i = 1, 45 do names[i] = 'f' .. i end
            local got = redis.call('HMGET', KEYS[1], unpack(names))
            return {added, got[1], got[40], got[41], #got, redis.call('HLEN', KEYS[1])}
        "#;
        assert_eq!(
            eval(&mut e, &mut s, src, &["big"], &[]),
            Reply::Array(vec![
                Reply::Int(40),
                bulk("10"),
                bulk("400"),
                Reply::Nil,
                Reply::Int(45),
                Reply::Int(40),
            ])
        );
    }

    /// `depth` arrays nested in one another around `leaf`.
    fn nested(depth: usize, leaf: Reply) -> Reply {
        (0..depth).fold(leaf, |r, _| Reply::Array(vec![r]))
    }

    #[test]
    fn deep_and_nested_replies() {
        let (mut e, mut s) = setup();
        let src = "local t = 1 for i = 1, tonumber(ARGV[1]) do t = {t} end return t";
        // The innermost value sits at depth 1000: still converted.
        assert_eq!(
            eval(&mut e, &mut s, src, &[], &["1000"]),
            nested(1000, Reply::Int(1))
        );
        // One deeper hits the limit, as Redis' stack would.
        assert_eq!(
            eval(&mut e, &mut s, src, &[], &["1001"]),
            nested(1001, Reply::Error("ERR reached lua stack limit".to_owned()))
        );
        // Nested replies of commands come back nested; status and error
        // tables inside arrays convert as such.
        run(&mut e, &mut s, 0, &["SET", "a", "1"]);
        assert_eq!(
            eval(
                &mut e,
                &mut s,
                "local r = redis.call('SCAN', 0) return {r, redis.call('SET', 'b', 2), redis.pcall('INCR', 'x', 'y')}",
                &[],
                &[]
            ),
            Reply::Array(vec![
                Reply::Array(vec![bulk("0"), Reply::Array(vec![bulk("a")])]),
                Reply::Status("OK".into()),
                Reply::Error("ERR Wrong number of args calling Redis command from script".into()),
            ])
        );
        // A table with both an array part and an `err` field is an error.
        assert_eq!(
            eval(
                &mut e,
                &mut s,
                "return {1, 2, err = '-BAD thing'}",
                &[],
                &[]
            ),
            Reply::Error("BAD thing".into())
        );
    }

    #[test]
    fn builtin_fast_paths_match_the_originals() {
        let (mut e, mut s) = setup();
        // '%d%s' and an explicit base 10 take the original C functions.
        let src = r#"
            local bad = {}
            local nums = {0, -0.0, 1, -1, 3.7, -3.7, 0.5, -0.5, 2^31, 2^53, 2^53 + 2,
                          2^62, -2^63, 2^63 - 1024, 1e15, 123456789012345, 0/0, 1/0, -1/0, 2^63, -2^64}
            for _, v in ipairs(nums) do
              local a, b = string.format('%d', v), string.format('%d%s', v, '')
              if a ~= b then bad[#bad + 1] = 'format ' .. tostring(v) .. ': ' .. a .. ' ~= ' .. b end
              local c = ('%d'):format(v)
              if c ~= b then bad[#bad + 1] = 'method format ' .. tostring(v) end
            end
            local strs = {'0', '-0', '7', '007', '-12', '123456789012345', '-123456789012345',
                          '1234567890123456', '99999999999999999999', '', '-', '--1', ' 5', '5 ', '0x10',
                          '1e3', '1.5', '12abc', 'abc', '+5', '\0', '5\0', '-\0', 5, -0.0, 2.5}
            for i, v in ipairs(strs) do
              local a, b = tonumber(v), tonumber(v, 10)
              local same = (a == b) and (a == nil or a ~= 0 or 1 / a == 1 / b)
              if not same then bad[#bad + 1] = 'tonumber #' .. i .. ': ' .. tostring(a) .. ' ~= ' .. tostring(b) end
            end
            if tonumber(nil) ~= nil or tonumber({}) ~= nil then bad[#bad + 1] = 'tonumber of non-numbers' end
            local ok, m1 = pcall(function() return string.format('%d', 'x') end)
            local ok2, m2 = pcall(function() return tonumber() end)
            local ok3, m3 = pcall(function() return ('%d'):format({}) end)
            return {#bad, table.concat(bad, '; '), m1, m2, m3}
        "#;
        let r = eval(&mut e, &mut s, src, &[], &[]);
        let Reply::Array(v) = r else { panic!("{r:?}") };
        assert_eq!(v[0], Reply::Int(0), "{:?}", v[1]);
        assert_eq!(
            v[2],
            bulk("user_script:20: bad argument #2 to 'format' (number expected, got string)")
        );
        assert_eq!(
            v[3],
            bulk("user_script:21: bad argument #1 to 'tonumber' (value expected)")
        );
        assert_eq!(
            v[4],
            bulk("user_script:22: bad argument #1 to 'format' (number expected, got table)")
        );
        // The plain results, for the record.
        assert_eq!(
            eval(
                &mut e,
                &mut s,
                "return {string.format('%d', 1763942400123), string.format('%d', -2.9), tonumber('-0042'), tonumber('12') + 1}",
                &[],
                &[]
            ),
            Reply::Array(vec![
                bulk("1763942400123"),
                bulk("-2"),
                Reply::Int(-42),
                Reply::Int(13)
            ])
        );
    }

    #[test]
    fn finalizers_may_call_redis_inside_a_script() {
        let (mut e, mut s) = setup();
        let src = r#"
            local p = newproxy(true)
            getmetatable(p).__gc = function() redis.call('SET', 'fin', 'ran') end
            p = nil
            collectgarbage()
            return redis.call('GET', 'fin')
        "#;
        assert_eq!(eval(&mut e, &mut s, src, &[], &[]), bulk("ran"));
        assert_eq!(eval(&mut e, &mut s, "return 1", &[], &[]), Reply::Int(1));
    }

    #[test]
    fn nested_and_out_of_script_calls_are_refused() {
        let scripting = Scripting::new();
        let mut db = Db::default();
        let redis: Table = scripting.env.get("redis").unwrap();
        let pcall: Function = redis.get("pcall").unwrap();
        let call: Function = redis.get("call").unwrap();
        let ctx = scripting.ctx.0;
        // SAFETY: no Lua code runs while the context is set up; `db`
        // outlives every use below and is unset before it is dropped.
        unsafe {
            (*ctx).db = &raw mut db;
            (*ctx).in_call = true;
        }
        // As if a finaliser ran during a `redis.call`'s allocation.
        let t: Table = pcall.call("PING").unwrap();
        let msg: String = t.get("err").unwrap();
        assert!(msg.contains("recursive call detected"), "{msg}");
        assert!(call.call::<LuaValue>("PING").is_err());
        // SAFETY: as above.
        unsafe { (*ctx).in_call = false };
        let t: Table = pcall.call("PING").unwrap();
        assert_eq!(t.get::<String>("ok").unwrap(), "PONG");
        let r: LuaValue = pcall.call(("SET", "k", "v")).unwrap();
        assert!(matches!(r, LuaValue::Table(_)));
        assert!(db.ks.get(0, b"k").is_some());
        // SAFETY: as above.
        unsafe { (*ctx).db = std::ptr::null_mut() };
        let err = pcall.call::<LuaValue>("PING").unwrap_err();
        assert!(err.to_string().contains("outside a script"), "{err}");
        drop(scripting);
    }

    #[test]
    fn lua_memory_stays_bounded() {
        let mut scripting = Scripting::new();
        let mut db = Db::default();
        let churn =
            b"local t = {} for i = 1, 2000 do t[i] = {i, tostring(i) .. ARGV[1]} end return #t";
        for i in 0..300 {
            let arg = i.to_string();
            let r = scripting.eval(&mut db, 0, churn, &[], &[arg.as_bytes()]);
            assert_eq!(r, Reply::Int(2000));
        }
        let r = scripting.eval(&mut db, 0, b"return collectgarbage('count')", &[], &[]);
        let Reply::Int(kb) = r else { panic!("{r:?}") };
        // The live heap is a few hundred KB; the collector's pause lets
        // garbage reach a small multiple of it.
        assert!(kb < 8 * 1024, "Lua heap at {kb} KB");
        // SAFETY: no Lua code runs; a read of the heap's counter.
        let cached = unsafe { (*scripting.heap.0).cached };
        assert!(cached > 0 && cached <= POOL_MAX_BYTES, "{cached}");
    }
}
