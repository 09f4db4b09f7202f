// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! The bounded channel between the two halves of an HTTP/1 proxied
//! request (Floodgate patch; see the repository's vendor/README.md).
//!
//! `proxy_1to1` runs its downstream half and its upstream half joined in
//! one task, and passes `HttpTask`s between them through two channels a
//! request. Tokio's `mpsc` channel is made for many senders on many
//! threads: each channel allocated its shared state and a block of 32
//! slots, and each send and receive went through its semaphore and its
//! block list (about 3 100 instructions a request under callgrind for
//! the two). This one has one sender and one receiver, and holds its
//! few tasks in a ring inline in its one allocation, behind a mutex that
//! is never contended (both ends are polled by the same task).
//!
//! It offers what `proxy_h1` uses of tokio's channel, with the same
//! meaning: `send`, `reserve` and `try_reserve` (a [`Permit`] holds a
//! slot until it sends or drops), `is_closed`, and `recv`, which returns
//! `None` once the sender is gone and nothing is left. The errors are
//! tokio's. A sender's dropped receiver fails its sends; messages left in
//! a dropped receiver are dropped with it.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use tokio::sync::mpsc::error::{SendError, TrySendError};

/// The most tasks a channel holds (Pingora's `TASK_BUFFER_SIZE`).
pub(crate) const CAPACITY: usize = crate::TASK_BUFFER_SIZE;

struct State<T> {
    ring: [Option<T>; CAPACITY],
    head: usize,
    len: usize,
    /// Slots held by permits not yet used.
    reserved: usize,
    /// The receiver, waiting for a task or the end.
    rx_waker: Option<Waker>,
    /// The sender, waiting for room.
    tx_waker: Option<Waker>,
    tx_gone: bool,
    rx_gone: bool,
}

impl<T> State<T> {
    fn has_room(&self) -> bool {
        self.len + self.reserved < CAPACITY
    }

    fn push(&mut self, task: T) {
        let at = (self.head + self.len) % CAPACITY;
        self.ring[at] = Some(task);
        self.len += 1;
        if let Some(w) = self.rx_waker.take() {
            w.wake();
        }
    }

    fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let task = self.ring[self.head].take();
        self.head = (self.head + 1) % CAPACITY;
        self.len -= 1;
        if let Some(w) = self.tx_waker.take() {
            w.wake();
        }
        task
    }
}

fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

type Shared<T> = Arc<Mutex<State<T>>>;

fn lock<T>(shared: &Shared<T>) -> MutexGuard<'_, State<T>> {
    // Nothing here panics while holding the lock but a waker's wake; its
    // state is whole either way.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A channel of at most [`CAPACITY`] tasks, with one sender and one
/// receiver.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Mutex::new(State {
        ring: std::array::from_fn(|_| None),
        head: 0,
        len: 0,
        reserved: 0,
        rx_waker: None,
        tx_waker: None,
        tx_gone: false,
        rx_gone: false,
    }));
    (Sender(shared.clone()), Receiver(shared))
}

pub(crate) struct Sender<T>(Shared<T>);

/// A slot reserved in the channel: [`Permit::send`] fills it; dropped
/// unused, it is given back.
pub(crate) struct Permit<'a, T> {
    sender: &'a Sender<T>,
    used: bool,
}

pub(crate) struct Receiver<T>(Shared<T>);

impl<T> Sender<T> {
    /// Sends a task once there is room; fails when the receiver is gone.
    pub(crate) async fn send(&self, task: T) -> Result<(), SendError<T>> {
        let mut task = Some(task);
        poll_fn(|cx| {
            let mut s = lock(&self.0);
            if s.rx_gone {
                let t = task.take().expect("polled after completion");
                return Poll::Ready(Err(SendError(t)));
            }
            if !s.has_room() {
                park(&mut s.tx_waker, cx);
                return Poll::Pending;
            }
            s.push(task.take().expect("polled after completion"));
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Reserves a slot once there is room; fails when the receiver is
    /// gone.
    pub(crate) async fn reserve(&self) -> Result<Permit<'_, T>, SendError<()>> {
        poll_fn(|cx| {
            let mut s = lock(&self.0);
            if s.rx_gone {
                return Poll::Ready(Err(SendError(())));
            }
            if !s.has_room() {
                park(&mut s.tx_waker, cx);
                return Poll::Pending;
            }
            s.reserved += 1;
            Poll::Ready(Ok(()))
        })
        .await?;
        Ok(Permit {
            sender: self,
            used: false,
        })
    }

    /// Reserves a slot if there is room now.
    pub(crate) fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError<()>> {
        let mut s = lock(&self.0);
        if s.rx_gone {
            return Err(TrySendError::Closed(()));
        }
        if !s.has_room() {
            return Err(TrySendError::Full(()));
        }
        s.reserved += 1;
        Ok(Permit {
            sender: self,
            used: false,
        })
    }

    /// Whether the receiver is gone.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.0).rx_gone
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut s = lock(&self.0);
        s.tx_gone = true;
        if let Some(w) = s.rx_waker.take() {
            w.wake();
        }
    }
}

impl<T> Permit<'_, T> {
    /// Sends a task in the reserved slot (a receiver gone by now drops
    /// it, as tokio's permit does).
    pub(crate) fn send(mut self, task: T) {
        self.used = true;
        let mut s = lock(&self.sender.0);
        s.reserved -= 1;
        if !s.rx_gone {
            s.push(task);
        }
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        if self.used {
            return;
        }
        let mut s = lock(&self.sender.0);
        s.reserved -= 1;
        if let Some(w) = s.tx_waker.take() {
            w.wake();
        }
    }
}

impl<T> std::fmt::Debug for Permit<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

impl<T> Receiver<T> {
    /// The next task; `None` once the sender is gone and none is left.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let mut s = lock(&self.0);
            if let Some(task) = s.pop() {
                return Poll::Ready(Some(task));
            }
            if s.tx_gone {
                return Poll::Ready(None);
            }
            park(&mut s.rx_waker, cx);
            Poll::Pending
        })
        .await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let left: Vec<T> = {
            let mut s = lock(&self.0);
            s.rx_gone = true;
            if let Some(w) = s.tx_waker.take() {
                w.wake();
            }
            std::iter::from_fn(|| s.pop()).collect()
        };
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn tasks_arrive_in_order_then_none_once_the_sender_is_gone() {
        let (tx, mut rx) = channel::<u32>();
        for i in 0..CAPACITY as u32 {
            tx.send(i).await.unwrap();
        }
        // Full: the next send waits for a receive.
        let mut next = Box::pin(tx.send(99));
        assert!((&mut next).now_or_never().is_none());
        assert_eq!(rx.recv().await, Some(0));
        next.await.unwrap();
        drop(tx);
        let mut got = vec![];
        while let Some(i) = rx.recv().await {
            got.push(i);
        }
        assert_eq!(got, [1, 2, 3, 99]);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_and_by_the_sender_leaving() {
        let (tx, mut rx) = channel::<u32>();
        let (got, ()) = tokio::join!(rx.recv(), async {
            tokio::task::yield_now().await;
            tx.send(7).await.unwrap();
        });
        assert_eq!(got, Some(7));
        let (got, ()) = tokio::join!(rx.recv(), async {
            tokio::task::yield_now().await;
            drop(tx);
        });
        assert_eq!(got, None);
    }

    #[tokio::test]
    async fn permits_hold_room_until_they_send_or_drop() {
        let (tx, mut rx) = channel::<u32>();
        let permits: Vec<_> = (0..CAPACITY).map(|_| tx.try_reserve().unwrap()).collect();
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Full(()))));
        assert!(
            tx.reserve().now_or_never().is_none(),
            "no room: reserve waits"
        );
        let mut permits = permits.into_iter();
        permits.next().unwrap().send(1);
        drop(permits.next()); // given back unused
        assert_eq!(rx.recv().await, Some(1));
        assert!(
            rx.recv().now_or_never().is_none(),
            "a dropped permit sends nothing"
        );
        // Two slots free again (one received, one dropped).
        let a = tx.reserve().await.unwrap();
        let b = tx.try_reserve().unwrap();
        assert!(tx.try_reserve().is_err());
        drop((a, b, permits));
        assert!(tx.try_reserve().is_ok());
    }

    #[tokio::test]
    async fn a_gone_receiver_fails_sends_and_drops_what_it_held() {
        let held = Arc::new(());
        let (tx, rx) = channel::<Arc<()>>();
        tx.send(held.clone()).await.unwrap();
        let permit = tx.try_reserve().unwrap();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(Arc::strong_count(&held), 1, "the task held is dropped");
        permit.send(held.clone());
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "a permit's send after that is dropped"
        );
        assert!(tx.send(held.clone()).await.is_err());
        assert!(tx.reserve().await.is_err());
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Closed(()))));
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_is_woken_by_a_receive_and_by_the_receiver_leaving() {
        let (tx, mut rx) = channel::<u32>();
        for i in 0..CAPACITY as u32 {
            tx.send(i).await.unwrap();
        }
        let (sent, got) = tokio::join!(tx.send(9), async {
            tokio::task::yield_now().await;
            rx.recv().await
        });
        assert!(sent.is_ok());
        assert_eq!(got, Some(0));
        let (reserved, ()) = tokio::join!(tx.reserve(), async {
            tokio::task::yield_now().await;
            drop(rx);
        });
        assert!(reserved.is_err());
    }
}
