//! Running one filesystem operation over many paths from a few threads.
//!
//! Creating, copying and flushing files mostly waits: for the journal, the
//! disk, or (in a VM) the host. One thread doing them in turn waits for
//! each; several overlap the waits. Measured on this project's 2-core ext4
//! VM: creating 10,000 empty files took 1.0 to 2.7 s from one thread and
//! 85 to 180 ms from 2 to 16 (bench measurement 8 has the copy itself).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Threads at most: each mostly waits, so more than the cores help.
pub(super) const THREADS: usize = 8;

/// Items per thread below which fewer threads are started: a thread costs
/// tens of microseconds to start, about what one small file costs to copy.
const PER_THREAD: usize = 64;

/// Runs `op` on every item, from up to [`THREADS`] threads that each take
/// the next item not yet taken (so one slow item does not hold back a
/// whole share). The first error stops the other threads after their
/// current item and is returned. With few items it runs on the calling
/// thread alone.
pub(super) fn for_each<T: Sync, E: Send>(
    items: &[T],
    op: impl Fn(&T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let threads = items.len().div_ceil(PER_THREAD).clamp(1, THREADS);
    if threads == 1 {
        return items.iter().try_for_each(op);
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let work = || {
        while !stop.load(Ordering::Relaxed) {
            let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                return;
            };
            if let Err(e) = op(item) {
                stop.store(true, Ordering::Relaxed);
                first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
                return;
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_once_and_an_error_is_returned() {
        let items: Vec<usize> = (0..1000).collect();
        let seen = Mutex::new(Vec::new());
        for_each(&items, |i| {
            seen.lock().unwrap().push(*i);
            Ok::<(), ()>(())
        })
        .unwrap();
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, items);

        let r = for_each(&items, |i| {
            if *i % 100 == 10 {
                Err(format!("item {i}"))
            } else {
                Ok(())
            }
        });
        assert!(matches!(r, Err(e) if e.starts_with("item ") && e.ends_with("10")));
    }

    #[test]
    fn few_items_run_on_the_calling_thread() {
        let me = std::thread::current().id();
        for_each(&[1, 2, 3], |_| {
            assert_eq!(std::thread::current().id(), me);
            Ok::<(), ()>(())
        })
        .unwrap();
    }
}
