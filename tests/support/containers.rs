//! Backends in Docker containers, for a user who has a Docker engine and
//! has not set the endpoint variables: `cargo test` alone then works.
//!
//! Each backend is started at most once per test binary, on first use, with
//! `testcontainers` (Redis 7.2, Apache Kafka 3.8 in KRaft mode, MongoDB 7.0), and
//! removed when the binary exits. The containers are started from a thread
//! of their own, because the tests that ask are already inside a tokio
//! runtime and the blocking runner brings its own.
//!
//! Only the endpoint suites can use them. The fault suite kills and
//! restarts private servers from the binaries `ci/backends.sh up`
//! installs, and says so when they are missing.

use std::any::Any;
use std::sync::{Mutex, OnceLock};

use testcontainers::runners::SyncRunner;
use testcontainers::{Image, ImageExt};
use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
use testcontainers_modules::mongo::Mongo;
use testcontainers_modules::redis::{REDIS_PORT, Redis};

/// Started containers, kept alive until the process exits.
static RUNNING: Mutex<Vec<Box<dyn Any + Send>>> = Mutex::new(Vec::new());

/// Removes every container this process started. Registered with
/// `atexit`, since statics are never dropped.
extern "C" fn remove_all() {
    let taken = match RUNNING.lock() {
        Ok(mut v) => std::mem::take(&mut *v),
        Err(_) => return,
    };
    // Each container's drop stops and removes it. Done on a thread of its
    // own so no runtime of the exiting thread is in the way.
    #[allow(clippy::disallowed_methods)]
    let _ = std::thread::spawn(move || drop(taken)).join();
}

fn register_cleanup() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: `remove_all` is a plain extern "C" function that lives for
        // the whole process.
        unsafe { libc::atexit(remove_all) };
    });
}

/// Starts `image` (on its own thread), keeps it running, and returns the
/// host port mapped to `port`. `Err` says why Docker could not do it.
fn start<I>(image: testcontainers::ContainerRequest<I>, port: u16) -> Result<u16, String>
where
    I: Image + Send + 'static,
{
    register_cleanup();
    #[allow(clippy::disallowed_methods)]
    let started = std::thread::spawn(move || {
        let container = image.start().map_err(|e| e.to_string())?;
        let host_port = container
            .get_host_port_ipv4(port)
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((container, host_port))
    })
    .join()
    .map_err(|_| "the thread starting the container panicked".to_string())??;
    let (container, host_port) = started;
    RUNNING
        .lock()
        .map_err(|_| "container registry poisoned".to_string())?
        .push(Box::new(container));
    Ok(host_port)
}

/// The endpoint variable `var` ("REDIS_URL", "KAFKA_BROKERS" or
/// "MONGODB_URI") served by a container started for this process, or why
/// none could be started (no Docker engine, image not pullable, ...).
pub fn endpoint(var: &str) -> Result<String, String> {
    static REDIS: OnceLock<Result<String, String>> = OnceLock::new();
    static KAFKA: OnceLock<Result<String, String>> = OnceLock::new();
    static MONGO: OnceLock<Result<String, String>> = OnceLock::new();
    match var {
        "REDIS_URL" => REDIS
            .get_or_init(|| {
                let port = start(Redis::default().with_tag("7.2"), REDIS_PORT)?;
                Ok(format!("redis://127.0.0.1:{port}/"))
            })
            .clone(),
        "KAFKA_BROKERS" => KAFKA
            .get_or_init(|| {
                let port = start(Kafka::default().into(), KAFKA_PORT.as_u16())?;
                Ok(format!("127.0.0.1:{port}"))
            })
            .clone(),
        "MONGODB_URI" => MONGO
            .get_or_init(|| {
                let port = start(Mongo::default().with_tag("7.0"), 27017)?;
                Ok(format!("mongodb://127.0.0.1:{port}/"))
            })
            .clone(),
        other => Err(format!("no container is known for {other}")),
    }
}
