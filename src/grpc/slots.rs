//! A bound on long-lived streams of one kind on this replica (watches,
//! subscriptions): each open stream holds a [`Slot`], freed when the
//! stream is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The count of open streams of one kind.
#[derive(Clone, Default)]
pub struct Slots(Arc<AtomicUsize>);

/// One open stream; the count drops when it does.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slots {
    /// A slot if fewer than `max` are taken; else how many are.
    pub fn take(&self, max: usize) -> Result<Slot, usize> {
        let open = self.0.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(self.0.clone());
        if open >= max { Err(open) } else { Ok(slot) }
    }
}
