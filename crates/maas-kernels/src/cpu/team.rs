//! A team of threads for the many small parallel loops of a decode step.
//!
//! A decode step of a small model is ~150 short parallel regions (a few to
//! a few hundred microseconds each). Waking pool threads through the OS for
//! each costs as much as the work, so the team's helpers spin between jobs
//! while jobs keep coming, and sleep after a quiet spell.
//!
//! The caller takes part in its own job and only waits for tasks a helper
//! has actually claimed: a helper that is not running (the machine is busy
//! with other processes) delays nothing, it just finds no work left. Spin
//! loops yield to the OS now and then, so an oversubscribed machine still
//! makes progress.
//!
//! One job runs at a time: a caller that finds the team busy (another model
//! thread is using it) runs its job alone rather than wait.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle helper spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);
/// Spins between yields to the OS.
const YIELD_EVERY: u32 = 256;

struct Shared {
    /// Epoch (24 bits), task count (20 bits), next task index (20 bits): a
    /// task is claimed by advancing the index with a compare-and-swap, which
    /// also checks that the job is still the same.
    state: AtomicU64,
    /// The current job's task (a fat pointer in two halves); written before
    /// the epoch is published, used only by a helper whose claim then
    /// succeeds (which proves it was not rewritten since).
    task_data: AtomicPtr<()>,
    task_vtable: AtomicPtr<()>,
    /// Tasks of the current job finished.
    done: AtomicUsize,
    sleepers: Mutex<Vec<Thread>>,
    any_asleep: AtomicBool,
}

pub struct Team {
    shared: Arc<Shared>,
    helpers: usize,
    busy: Mutex<()>,
}

const FIELD: u64 = (1 << 20) - 1;

/// (epoch, tasks, next index).
fn split(state: u64) -> (u64, usize, usize) {
    (
        state >> 40,
        ((state >> 20) & FIELD) as usize,
        (state & FIELD) as usize,
    )
}

fn pack(epoch: u64, tasks: usize) -> u64 {
    ((epoch & 0xff_ffff) << 40) | ((tasks as u64) << 20)
}

impl Team {
    fn new(helpers: usize) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            task_data: AtomicPtr::new(std::ptr::null_mut()),
            task_vtable: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            sleepers: Mutex::new(Vec::new()),
            any_asleep: AtomicBool::new(false),
        });
        for i in 0..helpers {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("maas-team-{i}"))
                .spawn(move || helper(&s))
                .expect("spawning a team thread");
        }
        Self {
            shared,
            helpers,
            busy: Mutex::new(()),
        }
    }

    /// The process-wide team: one helper per core beyond the caller's.
    pub fn global() -> &'static Team {
        static TEAM: OnceLock<Team> = OnceLock::new();
        TEAM.get_or_init(|| {
            Team::new(
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .saturating_sub(1),
            )
        })
    }

    /// Runs `task(i)` for every `i < n`, spread over the team; returns when
    /// all are done.
    pub fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        let guard = match self.busy.try_lock() {
            Ok(g) if n > 1 && self.helpers > 0 && n as u64 <= FIELD => g,
            _ => {
                (0..n).for_each(task);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY (of what helpers do with these): a fat pointer to a
        // `dyn Fn` is (data, vtable); it is only called after a successful
        // claim of this epoch's task, and this function returns only once
        // every claimed task is done, so the task outlives every call.
        let (data, vtable) =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), (*mut (), *mut ())>(task) };
        let epoch = (split(s.state.load(Ordering::Relaxed)).0 + 1) & 0xff_ffff;
        s.task_data.store(data, Ordering::Relaxed);
        s.task_vtable.store(vtable, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        s.state.store(pack(epoch, n), Ordering::SeqCst);
        if s.any_asleep.load(Ordering::SeqCst) {
            if let Ok(mut sl) = s.sleepers.lock() {
                for t in sl.drain(..) {
                    t.unpark();
                }
                s.any_asleep.store(false, Ordering::SeqCst);
            }
        }
        // Work alongside the helpers, then wait for tasks they still hold.
        while let Some(i) = claim(s, epoch) {
            task(i);
            s.done.fetch_add(1, Ordering::Release);
        }
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) != n {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(YIELD_EVERY) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        drop(guard);
    }
}

/// Claims the next task of `epoch`, if any is left.
fn claim(s: &Shared, epoch: u64) -> Option<usize> {
    let mut cur = s.state.load(Ordering::Acquire);
    loop {
        let (e, n, i) = split(cur);
        if e != epoch || i >= n {
            return None;
        }
        match s
            .state
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Some(i),
            Err(now) => cur = now,
        }
    }
}

fn helper(s: &Shared) {
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    let mut last_epoch = 0;
    loop {
        let (epoch, n, i) = split(s.state.load(Ordering::Acquire));
        if epoch != last_epoch && i < n {
            // Read the job, then claim: a successful claim proves the job
            // read belongs to this epoch (it is rewritten only after all of
            // this epoch's tasks are done, and ours was not yet claimed).
            let data = s.task_data.load(Ordering::Acquire);
            let vtable = s.task_vtable.load(Ordering::Acquire);
            while let Some(i) = claim(s, epoch) {
                // SAFETY: see above; the caller keeps the task alive until
                // `done` reaches n, which needs this task's increment.
                let task: &(dyn Fn(usize) + Sync) = unsafe {
                    std::mem::transmute::<(*mut (), *mut ()), &(dyn Fn(usize) + Sync)>((
                        data, vtable,
                    ))
                };
                task(i);
                s.done.fetch_add(1, Ordering::Release);
            }
            last_epoch = epoch;
            idle_since = Instant::now();
            continue;
        }
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(YIELD_EVERY) {
            if idle_since.elapsed() > SPIN {
                // Sleep until the next job unparks us (re-checking the state
                // after registering, so a job published meanwhile is not missed).
                if let Ok(mut sl) = s.sleepers.lock() {
                    sl.push(std::thread::current());
                    s.any_asleep.store(true, Ordering::SeqCst);
                }
                while split(s.state.load(Ordering::SeqCst)).0 == epoch {
                    std::thread::park_timeout(Duration::from_millis(100));
                }
                idle_since = Instant::now();
            } else {
                std::thread::yield_now();
            }
        } else {
            std::hint::spin_loop();
        }
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
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "round {round}"
            );
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

    #[test]
    fn jobs_finish_when_the_machine_is_oversubscribed() {
        // Busy threads on every core: the helpers rarely run, and the caller
        // must not wait for them.
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                });
            }
            let sum = AtomicUsize::new(0);
            for _ in 0..300 {
                Team::global().run(8, &|i| {
                    sum.fetch_add(i, Ordering::Relaxed);
                });
            }
            stop.store(true, Ordering::Relaxed);
            assert_eq!(sum.load(Ordering::Relaxed), 300 * 28);
        });
    }
}
