//! The two queues between a call and its provider (commands in, events out): bounded
//! multi-producer, single-consumer channels whose memory follows what they hold.
//!
//! Why not `tokio::sync::mpsc`: it stores messages in blocks of 32 slots, allocates the
//! first block when the channel is made and keeps two of them once traffic has crossed a
//! block (the sender fills the next while the receiver finishes the last), whatever the
//! capacity. For our two queues that was 7.3 KB per call (heaptrack, 500 pcmu calls),
//! while they hold one or two messages most of the time. Here a queue is a `VecDeque`
//! behind a mutex: it grows with a burst (a reply arriving faster than real time) and
//! gives the memory back once drained, so an idle queue is about 150 bytes.
//!
//! The API is the subset of tokio's that the call and the providers use, with tokio's
//! error types, so both ends read as before: `send` (waits for room), `try_send`,
//! `reserve` (a slot held while the message is made), `recv` (cancel-safe), `try_recv`.
//! Dropping the receiver closes the queue for every sender; dropping the last sender
//! ends the receiver's stream once it has drained.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

pub use tokio::sync::mpsc::error::{SendError, TryRecvError, TrySendError};

/// Capacity a drained queue keeps; above it the memory goes back to the allocator.
const KEEP_WHEN_EMPTY: usize = 4;

struct State<T> {
    queue: VecDeque<T>,
    /// Slots promised to [`Permit`]s not used yet.
    reserved: usize,
    senders: usize,
    receiver_alive: bool,
    receiver: Option<Waker>,
    /// Senders waiting for room; all are woken when a slot frees (there are one or two).
    waiting: Vec<Waker>,
}

impl<T> State<T> {
    fn has_room(&self, capacity: usize) -> bool {
        self.queue.len() + self.reserved < capacity
    }

    /// Registers a sender's waker once per task (a task polled again while the queue
    /// stays full must not add itself again).
    fn wait_for_room(&mut self, cx: &Context<'_>) {
        if !self.waiting.iter().any(|w| w.will_wake(cx.waker())) {
            self.waiting.push(cx.waker().clone());
        }
    }

    fn push(&mut self, value: T) -> Option<Waker> {
        self.queue.push_back(value);
        self.receiver.take()
    }
}

struct Shared<T> {
    capacity: usize,
    state: Mutex<State<T>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while the lock was held cannot leave the queue half-updated (every
        // change is one push, pop or count), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn wake_all(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}

/// A bounded queue of `capacity` messages (at least 1).
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        capacity: capacity.max(1),
        state: Mutex::new(State {
            queue: VecDeque::new(),
            reserved: 0,
            senders: 1,
            receiver_alive: true,
            receiver: None,
            waiting: Vec::new(),
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.receiver.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.shared.capacity)
            .finish()
    }
}

impl<T> Sender<T> {
    /// Queues `value` now, or says why not (full, or the receiver is gone).
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut state = self.shared.lock();
            if !state.receiver_alive {
                return Err(TrySendError::Closed(value));
            }
            if !state.has_room(self.shared.capacity) {
                return Err(TrySendError::Full(value));
            }
            state.push(value)
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Waits for room and queues `value`; `Err` gives it back if the receiver is gone.
    /// Dropping the future before it is done drops `value`.
    pub async fn send(&self, value: T) -> Result<(), SendError<T>> {
        let mut value = Some(value);
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            let Some(v) = value.take() else {
                // Polled after completion: nothing left to send.
                return Poll::Ready(Ok(()));
            };
            if !state.receiver_alive {
                return Poll::Ready(Err(SendError(v)));
            }
            if state.has_room(self.shared.capacity) {
                let waker = state.push(v);
                drop(state);
                if let Some(w) = waker {
                    w.wake();
                }
                return Poll::Ready(Ok(()));
            }
            state.wait_for_room(cx);
            value = Some(v);
            Poll::Pending
        })
        .await
    }

    /// Waits for room and holds one slot for a message made later: the message cannot
    /// be lost to a `select!` that picks another branch meanwhile.
    pub async fn reserve(&self) -> Result<Permit<'_, T>, SendError<()>> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if !state.receiver_alive {
                return Poll::Ready(Err(SendError(())));
            }
            if state.has_room(self.shared.capacity) {
                state.reserved += 1;
                return Poll::Ready(Ok(Permit {
                    shared: &self.shared,
                    used: false,
                }));
            }
            state.wait_for_room(cx);
            Poll::Pending
        })
        .await
    }
}

/// One slot held by [`Sender::reserve`]; given back if dropped unused.
pub struct Permit<'a, T> {
    shared: &'a Shared<T>,
    used: bool,
}

impl<T> Permit<'_, T> {
    pub fn send(mut self, value: T) {
        self.used = true;
        let waker = {
            let mut state = self.shared.lock();
            state.reserved -= 1;
            if state.receiver_alive {
                state.push(value)
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        if self.used {
            return;
        }
        let waiting = {
            let mut state = self.shared.lock();
            state.reserved -= 1;
            std::mem::take(&mut state.waiting)
        };
        wake_all(waiting);
    }
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity", &self.shared.capacity)
            .finish()
    }
}

impl<T> Receiver<T> {
    /// The next message; `None` once every sender is gone and the queue is drained.
    /// Cancel-safe: a message is taken only when this returns it.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next message if one is queued now.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.lock();
        let (value, waiting) = take(&mut state);
        let senders = state.senders;
        drop(state);
        wake_all(waiting);
        match value {
            Some(v) => Ok(v),
            None if senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    fn poll_recv(&mut self, cx: &Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        let (value, waiting) = take(&mut state);
        if let Some(v) = value {
            drop(state);
            wake_all(waiting);
            return Poll::Ready(Some(v));
        }
        if state.senders == 0 {
            return Poll::Ready(None);
        }
        match &state.receiver {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.receiver = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Pops the front message, frees the memory of a drained burst, and hands back the
/// senders waiting for room, to be woken once the lock is released.
fn take<T>(state: &mut State<T>) -> (Option<T>, Vec<Waker>) {
    let Some(v) = state.queue.pop_front() else {
        return (None, Vec::new());
    };
    if state.queue.is_empty() && state.queue.capacity() > KEEP_WHEN_EMPTY {
        state.queue = VecDeque::new();
    }
    (Some(v), std::mem::take(&mut state.waiting))
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (queued, waiting) = {
            let mut state = self.shared.lock();
            state.receiver_alive = false;
            (
                std::mem::take(&mut state.queue),
                std::mem::take(&mut state.waiting),
            )
        };
        // Messages are dropped outside the lock (their drop may be arbitrary work).
        drop(queued);
        wake_all(waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::time::Duration;

    /// Polls `f` once with the current task's waker.
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx))).await
    }

    #[tokio::test]
    async fn delivers_in_order_and_ends_when_the_senders_are_gone() {
        let (tx, mut rx) = bounded(4);
        let tx2 = tx.clone();
        tx.send(1).await.unwrap();
        tx2.try_send(2).unwrap();
        tx.reserve().await.unwrap().send(3);
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), Ok(2));
        drop(tx2);
        // Queued messages outlive the senders.
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn full_means_full_and_a_slot_freed_wakes_the_sender() {
        let (tx, mut rx) = bounded(2);
        tx.try_send(1).unwrap();
        let permit = tx.reserve().await.unwrap();
        // One queued and one reserved: no room.
        assert!(matches!(tx.try_send(9), Err(TrySendError::Full(9))));
        drop(permit);
        tx.try_send(2).unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(3).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the send waits while the queue is full"
        );
        assert_eq!(rx.recv().await, Some(1));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn a_dropped_receiver_fails_every_sender_and_drops_what_was_queued() {
        let (tx, rx) = bounded(1);
        let queued = Arc::new(());
        tx.try_send(queued.clone()).unwrap();
        let blocked = tokio::spawn({
            let tx = tx.clone();
            let v = Arc::new(());
            async move { tx.send(v).await.is_err() }
        });
        let reserving = tokio::spawn({
            let tx = tx.clone();
            async move { tx.reserve().await.is_err() }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(
            Arc::strong_count(&queued),
            1,
            "the queued message was dropped"
        );
        assert!(blocked.await.unwrap(), "a waiting send fails");
        assert!(reserving.await.unwrap(), "a waiting reserve fails");
        assert!(matches!(tx.try_send(queued), Err(TrySendError::Closed(_))));
    }

    #[tokio::test]
    async fn recv_is_cancel_safe_and_wakes_on_send() {
        let (tx, mut rx) = bounded::<u32>(8);
        // A recv dropped while pending loses nothing.
        assert!(tokio::time::timeout(Duration::from_millis(1), rx.recv())
            .await
            .is_err());
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(7).await.unwrap();
            tx
        });
        assert_eq!(rx.recv().await, Some(7));
        drop(sender.await.unwrap());
        assert_eq!(rx.recv().await, None);
    }

    /// A burst grows the queue; once drained it holds no more than a few slots.
    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let (tx, mut rx) = bounded::<[u8; 56]>(256);
        for _ in 0..200 {
            tx.try_send([0; 56]).unwrap();
        }
        assert!(rx.shared.lock().queue.capacity() >= 200);
        while rx.try_recv().is_ok() {}
        assert!(rx.shared.lock().queue.capacity() <= KEEP_WHEN_EMPTY);
        // The whole channel, empty: well under tokio's 32-slot block.
        let heap = std::mem::size_of::<Shared<[u8; 56]>>() + 16;
        assert!(heap < 32 * 56, "{heap} bytes");
    }

    /// Several sends on one task, polled again and again again and again while the queue is full register
    /// one waker, not one per poll.
    #[tokio::test]
    async fn a_waiting_task_registers_once() {
        let (tx, mut rx) = bounded::<u32>(1);
        tx.try_send(0).unwrap();
        let mut sends: Vec<_> = (1..=3).map(|i| Box::pin(tx.send(i))).collect();
        for _ in 0..10 {
            for s in &mut sends {
                assert!(poll_once(s).await.is_pending());
            }
        }
        assert_eq!(rx.shared.lock().waiting.len(), 1);
        assert_eq!(rx.recv().await, Some(0));
        // Freed: the first send polled gets the slot.
        assert!(poll_once(&mut sends[0]).await.is_ready());
        assert_eq!(rx.recv().await, Some(1));
    }
}
