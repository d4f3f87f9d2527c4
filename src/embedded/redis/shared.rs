//! The engine as connections share it: one holder at a time, and nobody
//! who finds it busy parks a thread waiting.
//!
//! A Redis server runs one command at a time while its clients, on other
//! cores, get on with their own work. In process, a plain mutex turns the
//! same picture into workers parked on the lock: on two cores, every time
//! both workers want the engine, one of them stops, and with it every task
//! it could have run (decoding, encoding, the persistence writes). So a
//! connection that finds the engine held does not wait for it: it leaves
//! its request in the engine's *lobby* and awaits the reply, and the
//! holder runs the waiting requests, in the order they were left, before it
//! lets go. The engine still runs one request at a time, and each request
//! runs whole, exactly as before; only who runs it changes.
//!
//! No request is stranded in the lobby: its owner tries the lock once more
//! after leaving it, and every holder, having let go, looks at the lobby
//! again and takes the lock back if something is waiting. So a request left
//! while the lock is held is run either by that holder (it looks after
//! letting go) or by its owner (the lock was free when it tried).
//!
//! Inspection through [`SharedEngine::lock`] (tests, checkers, the demo's
//! audit) blocks like a mutex, and its guard runs the lobby too when
//! dropped. On a single-threaded runtime the lock is never found held (it
//! is never held across an `.await`), so the lobby stays empty and the
//! order of requests is that of the program: determinism under a seed is
//! unchanged.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};

use parking_lot::{Mutex, MutexGuard};

use super::engine::Engine;

/// A request left for the engine's holder to run.
pub type Job = Box<dyn FnOnce(&mut Engine) + Send>;

/// One engine shared by many connections (see the module docs).
pub struct SharedEngine {
    engine: Mutex<Engine>,
    lobby: Mutex<VecDeque<Job>>,
}

impl std::fmt::Debug for SharedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEngine")
            .field("waiting", &self.lobby.lock().len())
            .finish_non_exhaustive()
    }
}

impl SharedEngine {
    /// Shares `engine`.
    pub fn new(engine: Engine) -> Self {
        SharedEngine {
            engine: Mutex::new(engine),
            lobby: Mutex::new(VecDeque::new()),
        }
    }

    /// Takes the engine, blocking the thread while another holds it.
    pub fn lock(&self) -> EngineGuard<'_> {
        EngineGuard {
            shared: self,
            guard: Some(self.engine.lock()),
        }
    }

    /// Takes the engine if nobody holds it.
    pub fn try_lock(&self) -> Option<EngineGuard<'_>> {
        self.engine.try_lock().map(|guard| EngineGuard {
            shared: self,
            guard: Some(guard),
        })
    }

    /// Runs `job` on the engine: at once if it is free, otherwise by its
    /// current holder before that lets go.
    pub fn submit(&self, job: Job) {
        self.lobby.lock().push_back(job);
        // The holder may have looked at the lobby just before the job
        // arrived; if it has let go since, this runs the job itself.
        drop(self.try_lock());
    }

    /// How many requests are waiting for the engine's holder.
    pub fn waiting(&self) -> usize {
        self.lobby.lock().len()
    }

    fn next_job(&self) -> Option<Job> {
        self.lobby.lock().pop_front()
    }
}

/// The engine, held. Dropping it runs whatever requests other connections
/// left meanwhile, then lets go.
pub struct EngineGuard<'a> {
    shared: &'a SharedEngine,
    guard: Option<MutexGuard<'a, Engine>>,
}

impl Deref for EngineGuard<'_> {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        // Only `drop` takes the guard out.
        self.guard
            .as_deref()
            .expect("engine guard is held until dropped")
    }
}

impl DerefMut for EngineGuard<'_> {
    fn deref_mut(&mut self) -> &mut Engine {
        self.guard
            .as_deref_mut()
            .expect("engine guard is held until dropped")
    }
}

impl Drop for EngineGuard<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        if std::thread::panicking() {
            // Running more requests while unwinding risks a second panic;
            // whoever takes the engine next runs them.
            return;
        }
        loop {
            while let Some(job) = self.shared.next_job() {
                job(&mut guard);
            }
            drop(guard);
            if self.shared.lobby.lock().is_empty() {
                return;
            }
            match self.shared.engine.try_lock() {
                Some(again) => guard = again,
                // Its holder will run them.
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_job_left_while_the_engine_is_held_runs_when_the_holder_lets_go() {
        let shared = SharedEngine::new(Engine::new(1));
        let ran = Arc::new(AtomicUsize::new(0));
        let guard = shared.lock();
        for _ in 0..3 {
            let ran = ran.clone();
            shared.submit(Box::new(move |_| {
                ran.fetch_add(1, Ordering::SeqCst);
            }));
        }
        assert_eq!(ran.load(Ordering::SeqCst), 0, "nothing runs while held");
        drop(guard);
        assert_eq!(ran.load(Ordering::SeqCst), 3);
        assert!(shared.lobby.lock().is_empty());
    }

    #[test]
    fn a_job_left_on_a_free_engine_runs_at_once() {
        let shared = SharedEngine::new(Engine::new(1));
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        shared.submit(Box::new(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn jobs_run_in_the_order_they_were_left() {
        let shared = SharedEngine::new(Engine::new(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let guard = shared.lock();
        for i in 0..5 {
            let order = order.clone();
            shared.submit(Box::new(move |_| order.lock().push(i)));
        }
        drop(guard);
        assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn no_job_is_stranded_when_threads_race_for_the_engine() {
        // Four threads alternate between holding the engine and leaving
        // jobs; every job must have run once all of them are done.
        let shared = Arc::new(SharedEngine::new(Engine::new(1)));
        let ran = Arc::new(AtomicUsize::new(0));
        let per_thread = 20_000;
        std::thread::scope(|s| {
            for t in 0..4 {
                let shared = shared.clone();
                let ran = ran.clone();
                s.spawn(move || {
                    for i in 0..per_thread {
                        if (i + t) % 3 == 0 {
                            let mut g = shared.lock();
                            g.reserve_keys(0);
                        } else {
                            let ran = ran.clone();
                            shared.submit(Box::new(move |_| {
                                ran.fetch_add(1, Ordering::SeqCst);
                            }));
                        }
                    }
                });
            }
        });
        let expected: usize = (0..4)
            .map(|t| (0..per_thread).filter(|i| (i + t) % 3 != 0).count())
            .sum();
        assert_eq!(ran.load(Ordering::SeqCst), expected);
        assert!(shared.lobby.lock().is_empty());
    }
}
