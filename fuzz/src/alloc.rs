//! A counting global allocator: live bytes, their peak and the largest single request of the
//! thread running a fuzz input, so an input that makes a reader allocate beyond the cap is a
//! finding rather than an out-of-memory kill.
//!
//! Requests above [`HARD_LIMIT`] are refused (null), which Rust turns into an abort: the input
//! that asked is then still on disk in the fuzzer's work directory (`current.*`), and the
//! driver reports the crash. Everything below it is served by `System` and merely counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

/// No single allocation above this is ever served while measuring (the machine is shared; an
/// allocation bomb must not take it down).
pub const HARD_LIMIT: usize = 4 << 30;

struct Counting;

static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations are counted (const-initialized: reading never allocates).
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn measuring() -> bool {
    MEASURING.try_with(Cell::get).unwrap_or(false)
}

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes as isize, Ordering::Relaxed) + bytes as isize;
    PEAK.fetch_max(now, Ordering::Relaxed);
    LARGEST.fetch_max(bytes, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    CURRENT.fetch_sub(bytes as isize, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged (or refused with null, which the
// `GlobalAlloc` contract allows); the counters only observe sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if measuring() && layout.size() > HARD_LIMIT {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && measuring() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if measuring() && layout.size() > HARD_LIMIT {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
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
        if measuring() && new_size > HARD_LIMIT {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
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

/// What one measured call allocated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Most bytes live at once.
    pub peak: usize,
    /// Largest single request.
    pub largest: usize,
}

/// Run `f` with this thread's allocations counted. One measurement at a time per process (the
/// fuzzer runs inputs on one thread).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Usage) {
    CURRENT.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    MEASURING.set(true);
    let out = f();
    MEASURING.set(false);
    let usage = Usage {
        peak: PEAK.load(Ordering::Relaxed).max(0) as usize,
        largest: LARGEST.load(Ordering::Relaxed),
    };
    (out, usage)
}
