//! Three window tables in rotation: the previous window, the current one,
//! and the next one, which the background rotation clears ahead of time so
//! the request path never pays for clearing a table.

use std::sync::atomic::{AtomicU64, Ordering};

use super::table::{CountTable, TableKind};

const NO_WINDOW: u64 = u64::MAX;

struct WindowTable {
    /// The window this table counts; `NO_WINDOW` while cleared for
    /// reuse.
    window: AtomicU64,
    table: CountTable,
}

/// Three tables in rotation: previous, current, and next (cleared ahead).
pub struct WindowRing {
    tables: [WindowTable; 3],
}

impl WindowRing {
    pub(super) fn new(kind: TableKind, now_window: u64) -> Self {
        let table = |w: u64| WindowTable {
            window: AtomicU64::new(w),
            table: CountTable::new(kind),
        };
        let mut tables = [table(NO_WINDOW), table(NO_WINDOW), table(NO_WINDOW)];
        for w in [now_window.saturating_sub(1), now_window, now_window + 1] {
            tables[(w % 3) as usize].window = AtomicU64::new(w);
        }
        WindowRing { tables }
    }

    /// The table counting window `n`, if the ring holds it.
    #[inline]
    pub(super) fn table(&self, n: u64) -> Option<&CountTable> {
        let s = &self.tables[(n % 3) as usize];
        (s.window.load(Ordering::Acquire) == n).then_some(&s.table)
    }

    /// Prepares the current and next windows' tables. Off the request path.
    pub(super) fn rotate(&self, now_window: u64) {
        for w in [now_window, now_window + 1] {
            let s = &self.tables[(w % 3) as usize];
            if s.window.load(Ordering::Acquire) != w {
                s.window.store(NO_WINDOW, Ordering::Release);
                s.table.clear();
                s.window.store(w, Ordering::Release);
            }
        }
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.tables.iter().map(|s| s.table.memory_bytes()).sum()
    }
}
