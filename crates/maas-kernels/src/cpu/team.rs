//! A team of threads for the many small parallel loops of a decode step.
//!
//! A decode step of a small model is ~150 short parallel regions (a few to
//! a few hundred microseconds each). Waking pool threads through the OS for
//! each costs as much as the work, so the team's helpers spin between jobs
//! while jobs keep coming, and sleep after a quiet spell.
//!
//! One job runs at a time: a caller that finds the team busy (another model
//! thread is using it) runs its job alone rather than wait.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle helper spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

type Task = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped for every job; helpers watch it.
    epoch: AtomicUsize,
    /// The current job (valid while `pending` > 0 or the caller runs it).
    job: UnsafeCell<(*const Task, usize)>,
    /// Next task index to hand out.
    next: AtomicUsize,
    /// Helpers still inside the current job.
    pending: AtomicUsize,
    /// Helpers asleep (to be unparked for the next job).
    sleepers: Mutex<Vec<Thread>>,
    any_asleep: AtomicBool,
}

// SAFETY: `job` is written only by the caller holding the `busy` lock before
// it publishes the epoch (Release) and read by helpers after they see it
// (Acquire); the task itself is `Sync`, and the caller waits until every
// helper has left the job before the pointer dies.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Team {
    shared: Arc<Shared>,
    helpers: usize,
    busy: Mutex<()>,
}

impl Team {
    fn new(helpers: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new((std::ptr::null::<fn(usize)>() as *const Task, 0)),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            sleepers: Mutex::new(Vec::new()),
            any_asleep: AtomicBool::new(false),
        });
        for i in 0..helpers {
            let s = shared.clone();
            std::thread::Builder::new().name(format!("maas-team-{i}")).spawn(move || helper(&s)).expect("spawning a team thread");
        }
        Self { shared, helpers, busy: Mutex::new(()) }
    }

    /// The process-wide team: one helper per core beyond the caller's.
    pub fn global() -> &'static Team {
        static TEAM: OnceLock<Team> = OnceLock::new();
        TEAM.get_or_init(|| Team::new(std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_sub(1)))
    }

    /// Threads that work on a job (helpers plus the caller).
    pub fn threads(&self) -> usize {
        self.helpers + 1
    }

    /// Runs `task(i)` for every `i < n`, spread over the team; returns when
    /// all are done.
    pub fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        let guard = match self.busy.try_lock() {
            Ok(g) if n > 1 && self.helpers > 0 => g,
            _ => {
                (0..n).for_each(task);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY: we hold `busy`, and the previous job's helpers have all
        // left (pending was 0 when it returned), so nobody reads `job` now.
        // The lifetime is erased; we wait below until no helper can touch it.
        unsafe {
            let erased: *const Task = std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Task>(task);
            *s.job.get() = (erased, n);
        }
        s.next.store(0, Ordering::Relaxed);
        s.pending.store(self.helpers, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.any_asleep.load(Ordering::SeqCst) {
            if let Ok(mut sl) = s.sleepers.lock() {
                for t in sl.drain(..) {
                    t.unpark();
                }
                s.any_asleep.store(false, Ordering::Release);
            }
        }
        work(s, task, n);
        while s.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        drop(guard);
    }
}

fn work(s: &Shared, task: &(dyn Fn(usize) + Sync), n: usize) {
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            return;
        }
        task(i);
    }
}

fn helper(s: &Shared) {
    // Epoch 0 is the one before any job; a helper that starts late must not
    // take a job already published as one it has seen.
    let mut seen = 0;
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            std::hint::spin_loop();
            spins += 1;
            if spins % 1024 == 0 && idle_since.elapsed() > SPIN {
                // Sleep until the next job unparks us (re-checking the epoch
                // after registering, so a job published meanwhile is not missed).
                if let Ok(mut sl) = s.sleepers.lock() {
                    sl.push(std::thread::current());
                    s.any_asleep.store(true, Ordering::SeqCst);
                }
                while s.epoch.load(Ordering::SeqCst) == seen {
                    std::thread::park_timeout(Duration::from_millis(100));
                }
                idle_since = Instant::now();
            }
        }
        // SAFETY: the epoch was published after `job` was written; the caller
        // keeps the task alive until `pending` reaches 0, which happens only
        // after this helper's decrement below.
        let (task, n) = unsafe { *s.job.get() };
        work(s, unsafe { &*task }, n);
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_jobs_and_after_a_sleep() {
        let team = Team::global();
        for round in 0..2000 {
            let n = 1 + round % 37;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            team.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "round {round}");
            if round == 1000 {
                std::thread::sleep(SPIN * 3); // the helpers go to sleep
            }
        }
        // Two callers at once: one gets the team, the other runs alone.
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..2 {
                sc.spawn(|| {
                    for _ in 0..200 {
                        team.run(10, &|_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 2 * 200 * 10);
    }
}
