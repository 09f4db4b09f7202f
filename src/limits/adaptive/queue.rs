//! The FIFO queue of requests waiting for a slot of the window.
//!
//! Its length is an atomic, so that the request path's fast checks (may a
//! newcomer take a free slot, does a release have a waiter to hand its slot
//! to) never take the lock; only joining, leaving and being handed a slot
//! do, and only while requests actually wait.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;

pub(super) struct Waiter {
    pub id: u64,
    pub critical: bool,
    /// Fires when a slot is handed over.
    pub tx: oneshot::Sender<()>,
}

#[derive(Default)]
pub(super) struct WaitQueue {
    waiters: Mutex<VecDeque<Waiter>>,
    len: AtomicUsize,
}

impl WaitQueue {
    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    /// Joins the queue unless it already holds `max` waiters.
    #[allow(clippy::disallowed_methods)] // the waiting path only
    pub fn push(&self, w: Waiter, max: usize) -> bool {
        let Ok(mut q) = self.waiters.lock() else {
            return false;
        };
        if q.len() >= max {
            return false;
        }
        q.push_back(w);
        self.len.store(q.len(), Ordering::SeqCst);
        true
    }

    /// Takes the first waiter if `take` agrees (it reserves a slot for it).
    #[allow(clippy::disallowed_methods)] // only while requests wait
    pub fn pop_front_if(&self, take: impl FnOnce(&Waiter) -> bool) -> Option<Waiter> {
        let mut q = self.waiters.lock().ok()?;
        let front = q.front()?;
        if !take(front) {
            return None;
        }
        let w = q.pop_front();
        self.len.store(q.len(), Ordering::SeqCst);
        w
    }

    /// Leaves the queue (a wait that timed out or was dropped).
    #[allow(clippy::disallowed_methods)] // the waiting path only
    pub fn remove(&self, id: u64) {
        if let Ok(mut q) = self.waiters.lock() {
            q.retain(|w| w.id != id);
            self.len.store(q.len(), Ordering::SeqCst);
        }
    }
}
