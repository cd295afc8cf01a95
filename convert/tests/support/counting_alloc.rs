//! A counting global allocator for the allocation-bound tests (`gguf_alloc.rs`,
//! `alloc_bounds.rs`), included by each with `#[path]`: one test binary, one allocator.
//!
//! It counts only the allocations of a thread that is measuring (a thread-local flag), and
//! measurements are serialized by a mutex, so test threads that build inputs meanwhile do not
//! disturb the figures. The time of a measurement is the measuring thread's CPU time
//! ([`thread_cpu_time`]), which a busy machine does not inflate (wall time only as a figure).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// `System`, counting the bytes live and their peak for the measuring thread.
struct Counting;

/// Bytes allocated and not yet freed since the measurement began (signed: memory allocated
/// before it may be freed during it).
static CURRENT: AtomicIsize = AtomicIsize::new(0);
/// Highest value of `CURRENT` since the measurement began.
static PEAK: AtomicIsize = AtomicIsize::new(0);
/// One measurement at a time: the counters are global.
static MEASURE: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether this thread's allocations are counted. `const`-initialized and without a
    /// destructor, so reading it never allocates.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn measuring() -> bool {
    MEASURING.try_with(Cell::get).unwrap_or(false)
}

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes as isize, Ordering::SeqCst) + bytes as isize;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

fn shrank(bytes: usize) {
    CURRENT.fetch_sub(bytes as isize, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && measuring() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() && measuring() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        if measuring() {
            shrank(layout.size());
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && measuring() {
            // Counted as a move (new block before the old one is freed), the worst case.
            grew(new_size);
            shrank(layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// CPU time used by the calling thread (`CLOCK_THREAD_CPUTIME_ID`). Unlike wall time it does
/// not grow while the thread waits for a core, so a limit on it fails only when the work grew.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What one measured call cost in time (`gguf_alloc.rs` bounds memory only).
#[derive(Clone, Copy, Debug)]
#[allow(dead_code)]
pub struct Cost {
    /// CPU time of the measuring thread (the reader under test runs on it).
    pub cpu: Duration,
    /// Wall time: a figure only, inflated by other processes on a busy machine.
    pub wall: Duration,
}

#[allow(dead_code)]
impl Cost {
    /// `Err` with a message when the CPU time is over `limit`; wall time over the limit alone
    /// is not a failure (the thread was starved of CPU, not doing more work).
    pub fn check(&self, limit: Duration) -> Result<(), String> {
        if self.cpu > limit {
            Err(format!(
                "used {:?} of CPU time (wall {:?}), more than the {limit:?} limit",
                self.cpu, self.wall
            ))
        } else {
            if self.wall > limit {
                eprintln!(
                    "note: starved of CPU: {:?} wall for {:?} of CPU time (not a failure)",
                    self.wall, self.cpu
                );
            }
            Ok(())
        }
    }
}

/// Peak bytes allocated while `f` runs (its result included, which the caller drops after the
/// measurement), the result, and how long it took.
pub fn measure<T>(f: impl FnOnce() -> T) -> (usize, T, Cost) {
    let _one_at_a_time = MEASURE.lock().unwrap_or_else(PoisonError::into_inner);
    CURRENT.store(0, Ordering::SeqCst);
    PEAK.store(0, Ordering::SeqCst);
    let (start, cpu0) = (Instant::now(), thread_cpu_time());
    MEASURING.set(true);
    let result = f();
    MEASURING.set(false);
    let cost = Cost {
        cpu: thread_cpu_time().saturating_sub(cpu0),
        wall: start.elapsed(),
    };
    let peak = PEAK.load(Ordering::SeqCst).max(0) as usize;
    (peak, result, cost)
}
