//! Three window tables in rotation: the previous window, the current one,
//! and the next one, which the background rotation prepares ahead of time
//! so the request path never pays for clearing or allocating a table.
//!
//! A client table is prepared by allocating a fresh one, sized from what
//! the windows before it saw: the distinct clients of the last complete
//! window and those the current one has seen so far (extrapolated over the
//! whole window), with a quarter of headroom, within the plan's bounds.
//! While nothing predicts a window (the first ones), it gets the most the
//! plan allows. While the next window has not started, a later round may
//! grow its table again. Old tables are dropped, and their memory returned,
//! when the last request holding one lets go.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::table::{ClientTable, CountTable, OverflowKind, TableKind, TablePlan};

const NO_WINDOW: u64 = u64::MAX;

/// Where a window's table lives: fixed (cleared in place), or swapped for
/// a fresh allocation at each rotation (client tables).
enum Holder {
    Fixed(CountTable),
    Swapped(ArcSwap<CountTable>),
}

struct WindowTable {
    /// The window this table counts; `NO_WINDOW` while being prepared.
    window: AtomicU64,
    holder: Holder,
    /// The clients this table was sized for (client tables).
    sized_for: AtomicU64,
}

/// A window's table, as a request holds it for one decision.
pub(super) enum TableRef<'a> {
    Fixed(&'a CountTable),
    Swapped(arc_swap::Guard<Arc<CountTable>>),
}

impl Deref for TableRef<'_> {
    type Target = CountTable;
    #[inline]
    fn deref(&self) -> &CountTable {
        match self {
            TableRef::Fixed(t) => t,
            TableRef::Swapped(g) => g,
        }
    }
}

/// Three tables in rotation: previous, current, and next (prepared ahead).
pub struct WindowRing {
    tables: [WindowTable; 3],
    /// The client tables' plan and overflow sketch, when this ring holds
    /// client tables.
    plan: Option<(TablePlan, OverflowKind)>,
}

impl WindowRing {
    pub(super) fn new(kind: TableKind, now_window: u64) -> Result<Self, String> {
        let plan = match kind {
            TableKind::Clients {
                capacity,
                memory,
                overflow,
            } => Some((TablePlan::new(capacity, memory), overflow)),
            _ => None,
        };
        let holder = |w: u64| -> Result<Holder, String> {
            Ok(match plan {
                None => Holder::Fixed(CountTable::new(kind)?),
                // The past window is never written; the current and next
                // ones get the most the plan allows, as nothing predicts
                // them yet.
                Some((p, o)) => {
                    let upcoming = w != NO_WINDOW && w >= now_window;
                    let places = if upcoming { p.max_places } else { p.min_places };
                    let t = ClientTable::with_places(places, p.overflow_bytes, o)?;
                    Holder::Swapped(ArcSwap::from_pointee(CountTable::Clients(t)))
                }
            })
        };
        let mut tables = [
            Self::slot(NO_WINDOW, holder(NO_WINDOW)?),
            Self::slot(NO_WINDOW, holder(NO_WINDOW)?),
            Self::slot(NO_WINDOW, holder(NO_WINDOW)?),
        ];
        for w in [now_window.saturating_sub(1), now_window, now_window + 1] {
            tables[(w % 3) as usize] = Self::slot(w, holder(w)?);
        }
        Ok(WindowRing { tables, plan })
    }

    /// A ring of exact one-client counters (which cannot fail: no client
    /// table to allocate).
    pub(super) fn exact(now_window: u64) -> Self {
        let fixed = |w| Self::slot(w, Holder::Fixed(CountTable::exact()));
        let mut tables = [fixed(NO_WINDOW), fixed(NO_WINDOW), fixed(NO_WINDOW)];
        for w in [now_window.saturating_sub(1), now_window, now_window + 1] {
            tables[(w % 3) as usize] = fixed(w);
        }
        WindowRing { tables, plan: None }
    }

    fn slot(window: u64, holder: Holder) -> WindowTable {
        WindowTable {
            window: AtomicU64::new(window),
            holder,
            sized_for: AtomicU64::new(0),
        }
    }

    /// The table counting window `n`, if the ring holds it.
    #[inline]
    pub(super) fn table(&self, n: u64) -> Option<TableRef<'_>> {
        let s = &self.tables[(n % 3) as usize];
        if s.window.load(Ordering::Acquire) != n {
            return None;
        }
        Some(match &s.holder {
            Holder::Fixed(t) => TableRef::Fixed(t),
            Holder::Swapped(a) => TableRef::Swapped(a.load()),
        })
    }

    /// Prepares the current and next windows' tables (`into_ms` of
    /// `window_ms` into window `now_window`). Off the request path.
    pub(super) fn rotate(&self, now_window: u64, into_ms: u64, window_ms: u64) {
        let clients = self.expected_clients(now_window, into_ms, window_ms);
        for w in [now_window, now_window + 1] {
            let s = &self.tables[(w % 3) as usize];
            let prepared = s.window.load(Ordering::Acquire) == w;
            // The next window may be resized while nobody uses it: a table
            // nothing predicted (sized for 0) once this window has shown its
            // demand, a table that grew too small at any time (never in
            // the last eighth of this window, so that a round that read the
            // clock just before the boundary never replaces a table in use).
            let sized_for = s.sized_for.load(Ordering::Relaxed);
            let resize = prepared
                && w == now_window + 1
                && self.plan.is_some()
                && (window_ms - into_ms) * 8 > window_ms
                && clients.is_some_and(|c| {
                    (sized_for == 0 && into_ms * 8 >= window_ms) || c > sized_for * 5 / 4
                });
            if !prepared || resize {
                self.prepare(s, w, clients);
            }
        }
    }

    fn prepare(&self, s: &WindowTable, w: u64, clients: Option<u64>) {
        s.window.store(NO_WINDOW, Ordering::Release);
        match (&s.holder, self.plan) {
            (Holder::Fixed(t), _) => t.clear(),
            (Holder::Swapped(a), Some((plan, overflow))) => {
                let places = match clients {
                    Some(c) => TablePlan::places_for(c as usize),
                    // Nobody came lately: the floor.
                    None => plan.min_places,
                }
                .clamp(plan.min_places, plan.max_places);
                match ClientTable::with_places(places, plan.overflow_bytes, overflow) {
                    Ok(t) => {
                        // Sized for the clients expected: they will touch
                        // nearly every page, so touch them here, off the
                        // request path, instead of a page fault each on
                        // the requests of the new window.
                        if clients.is_some() {
                            t.prefault();
                        }
                        a.store(Arc::new(CountTable::Clients(t)))
                    }
                    // No memory for a fresh table: reuse the old one.
                    Err(_) => a.load().clear(),
                }
                s.sized_for.store(clients.unwrap_or(0), Ordering::Relaxed);
            }
            (Holder::Swapped(a), None) => a.load().clear(),
        }
        s.window.store(w, Ordering::Release);
    }

    /// The clients the next window should have room for: the most of the
    /// last complete window and of the current one so far (extrapolated),
    /// plus a quarter; `None` when neither saw anyone.
    fn expected_clients(&self, now_window: u64, into_ms: u64, window_ms: u64) -> Option<u64> {
        let demand = |n: Option<u64>| {
            n.and_then(|n| self.table(n))
                .and_then(|t| t.demand())
                .unwrap_or(0)
        };
        let last = demand(now_window.checked_sub(1));
        let so_far = demand(Some(now_window));
        // Extrapolated only once an eighth of the window has passed.
        let current = if into_ms * 8 >= window_ms {
            (so_far as u128 * window_ms as u128 / into_ms.max(1) as u128) as u64
        } else {
            so_far
        };
        let busiest = last.max(current);
        (busiest > 0).then(|| busiest + busiest / 4)
    }

    /// Bytes the tables hold (allocated, touched or not).
    pub(super) fn memory_bytes(&self) -> usize {
        self.tables
            .iter()
            .map(|s| match &s.holder {
                Holder::Fixed(t) => t.memory_bytes(),
                Holder::Swapped(a) => a.load().memory_bytes(),
            })
            .sum()
    }
}
