//! Handing memory freed after a burst back to the kernel (row 112). glibc keeps what a burst
//! of connections freed (TLS state and buffers of thousands of tunnels) in its per-thread arenas,
//! so the process stays at its peak; [`Trimmer`] notices a burst that has passed and calls
//! `malloc_trim`, which releases the free pages of every arena.
//!
//! The one `unsafe` here is that foreign call. It owns no policy beyond "when": the watcher
//! thread asks once a second, never a worker.

// The only unsafe code of the crate: one foreign function without pointers or preconditions.
#![allow(unsafe_code)]

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    /// glibc: releases free memory at the top of the heap and the free pages inside every arena.
    fn malloc_trim(pad: usize) -> std::ffi::c_int;
}

/// Asks the allocator to return freed pages to the kernel; whether it released any.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointer and has no precondition; it locks each arena
        // itself, so it may run while other threads allocate.
        unsafe { malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Connections closed since the peak before a burst counts as passed.
const BURST: usize = 256;

/// Trims once open connections fell to half of the peak since the last trim, by at least
/// [`BURST`]: after a burst, not on ordinary churn.
#[derive(Debug, Default)]
pub struct Trimmer {
    peak: usize,
}

impl Trimmer {
    /// Called with the connections open now; trims when a burst has passed. Returns whether it
    /// trimmed.
    pub fn observe(&mut self, open: usize) -> bool {
        self.peak = self.peak.max(open);
        if self.peak.saturating_sub(open) < BURST || open > self.peak / 2 {
            return false;
        }
        self.peak = open;
        trim();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// 200 MiB in small blocks allocated and freed on another thread (its own arena) stay with
    /// the process until trimmed.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_returns_what_a_burst_freed() {
        std::thread::spawn(|| {
            let blocks: Vec<Vec<u8>> = (0..100_000).map(|i| vec![i as u8; 2048]).collect();
            let mut keep = blocks;
            // One live block near the end keeps the arena from shrinking on its own.
            let last = keep.pop();
            drop(keep);
            let before = rss_kib();
            assert!(trim(), "nothing released");
            let after = rss_kib();
            assert!(after + 100 * 1024 < before, "{before} KiB -> {after} KiB");
            drop(last);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn trims_after_a_burst_not_on_churn() {
        let mut t = Trimmer::default();
        assert!(!t.observe(100));
        assert!(!t.observe(40), "60 closed is churn");
        assert!(!t.observe(10_000));
        assert!(!t.observe(6_000), "still over half the peak");
        assert!(t.observe(3_000));
        assert!(!t.observe(2_000), "the peak starts again from the trim");
    }
}
