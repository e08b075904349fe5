//! The worker's wait queues: requests waiting for a container of their action revision, first in
//! first out per revision (pool prefix), bounded in length and in time, and how many cold starts
//! their number calls for. Pure: a waiter is anything that says whether it still waits (a request
//! answered by another path, or gone, no longer does and is dropped wherever it sits).

use std::collections::{BTreeMap, VecDeque};

/// A queued request.
pub trait Waiting {
    /// False once the request was answered otherwise or went away.
    fn still_waits(&self) -> bool;
}

/// The queue of the action revision is at its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

struct Entry<W> {
    waiter: W,
    since_ms: u64,
}

/// Every action revision's queue of one worker.
pub struct Queues<W> {
    by_prefix: BTreeMap<String, VecDeque<Entry<W>>>,
}

impl<W> Default for Queues<W> {
    fn default() -> Self {
        Self { by_prefix: BTreeMap::new() }
    }
}

impl<W: Waiting> Queues<W> {
    /// Queues `waiter` last, unless `bound` requests of the revision already wait.
    pub fn push(&mut self, prefix: &str, waiter: W, now_ms: u64, bound: usize) -> Result<(), Full> {
        let queue = self.by_prefix.entry(prefix.to_owned()).or_default();
        queue.retain(|entry| entry.waiter.still_waits());
        if queue.len() >= bound {
            return Err(Full);
        }
        queue.push_back(Entry { waiter, since_ms: now_ms });
        Ok(())
    }

    /// True when a request of the revision still waits; forgets the revision's queue otherwise.
    pub fn has_waiter(&mut self, prefix: &str) -> bool {
        let Some(queue) = self.by_prefix.get_mut(prefix) else { return false };
        while queue.front().is_some_and(|entry| !entry.waiter.still_waits()) {
            queue.pop_front();
        }
        if queue.is_empty() {
            self.by_prefix.remove(prefix);
            return false;
        }
        true
    }

    /// The oldest request of the revision that still waits, out of the queue.
    pub fn next(&mut self, prefix: &str) -> Option<W> {
        let queue = self.by_prefix.get_mut(prefix)?;
        let next = loop {
            let entry = queue.pop_front()?;
            if entry.waiter.still_waits() {
                break entry.waiter;
            }
        };
        if queue.is_empty() {
            self.by_prefix.remove(prefix);
        }
        Some(next)
    }

    /// The requests of the revision that waited `limit_ms` or more, oldest first, out of the queue.
    pub fn expire(&mut self, prefix: &str, now_ms: u64, limit_ms: u64) -> Vec<W> {
        let Some(queue) = self.by_prefix.get_mut(prefix) else { return Vec::new() };
        let mut expired = Vec::new();
        let mut kept = VecDeque::with_capacity(queue.len());
        for entry in queue.drain(..).filter(|entry| entry.waiter.still_waits()) {
            if now_ms.saturating_sub(entry.since_ms) >= limit_ms {
                expired.push(entry.waiter);
            } else {
                kept.push_back(entry);
            }
        }
        if kept.is_empty() {
            self.by_prefix.remove(prefix);
        } else {
            *queue = kept;
        }
        expired
    }

    /// Every request of the revision that still waits, oldest first, out of the queue.
    pub fn take_all(&mut self, prefix: &str) -> Vec<W> {
        let queue = self.by_prefix.remove(prefix).unwrap_or_default();
        queue.into_iter().map(|entry| entry.waiter).filter(Waiting::still_waits).collect()
    }

    /// How many requests of the revision still wait, and the oldest of them.
    pub fn waiting(&self, prefix: &str) -> (usize, Option<&W>) {
        let Some(queue) = self.by_prefix.get(prefix) else { return (0, None) };
        let mut live = queue.iter().map(|entry| &entry.waiter).filter(|waiter| waiter.still_waits());
        let first = live.next();
        (first.map_or(0, |_| 1 + live.count()), first)
    }

    /// The revisions with a queue.
    pub fn prefixes(&self) -> Vec<String> {
        self.by_prefix.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

/// Cold starts to have in flight for `waiting` requests: one per `per_start` of them, since a
/// container that frees up serves the rest sooner than a new one starts.
pub fn starts_wanted(waiting: usize, per_start: usize) -> usize {
    waiting.div_ceil(per_start.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A test waiter: its push order, and a flag the test clears when it goes away.
    #[derive(Debug, Clone)]
    struct Request {
        id: usize,
        waits: Rc<Cell<bool>>,
    }

    impl Waiting for Request {
        fn still_waits(&self) -> bool {
            self.waits.get()
        }
    }

    const PREFIX: &str = "whisk/pool/guest/hello@r1";

    fn request(id: usize) -> Request {
        Request { id, waits: Rc::new(Cell::new(true)) }
    }

    #[test]
    fn first_in_first_out_skipping_the_gone_and_bounded() {
        let mut queues = Queues::default();
        let requests: Vec<Request> = (0..3).map(request).collect();
        for request in &requests {
            assert_eq!(queues.push(PREFIX, request.clone(), 0, 3), Ok(()));
        }
        assert_eq!(queues.push(PREFIX, request(9), 0, 3), Err(Full));
        requests[0].waits.set(false);
        assert_eq!(queues.waiting(PREFIX).0, 2);
        assert_eq!(queues.push(PREFIX, request(3), 0, 3), Ok(()), "a gone request frees its place");
        assert_eq!(queues.next(PREFIX).map(|r| r.id), Some(1));
        assert_eq!(queues.take_all(PREFIX).iter().map(|r| r.id).collect::<Vec<_>>(), vec![2, 3]);
        assert!(!queues.has_waiter(PREFIX) && queues.is_empty());
        assert_eq!(starts_wanted(5, 2), 3);
        assert_eq!(starts_wanted(0, 2), 0);
        assert_eq!(starts_wanted(1, 0), 1, "a zero ratio starts one per request");
    }

    #[test]
    fn a_request_expires_once_it_waited_the_limit() {
        let mut queues = Queues::default();
        queues.push(PREFIX, request(0), 100, 10).unwrap();
        queues.push(PREFIX, request(1), 150, 10).unwrap();
        assert!(queues.expire(PREFIX, 199, 100).is_empty());
        assert_eq!(queues.expire(PREFIX, 200, 100).iter().map(|r| r.id).collect::<Vec<_>>(), vec![0]);
        assert_eq!(queues.waiting(PREFIX).1.map(|r| r.id), Some(1));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        /// A container frees up: the next waiter is served (asking first whether there is one, or not).
        Serve(bool),
        /// The n-th pushed request is answered otherwise or goes away.
        Leave(usize),
        /// Time passes, and the queue is expired.
        Tick(u64),
    }

    proptest! {
        /// Whatever the interleaving: requests are served in the order they came, never one that
        /// left or expired, no request is served twice, the bound holds, and a request expires
        /// exactly when it waited the limit.
        #[test]
        fn served_in_arrival_order_never_gone_never_twice(ops in proptest::collection::vec(
            prop_oneof![
                3 => Just(Op::Push),
                3 => any::<bool>().prop_map(Op::Serve),
                1 => (0usize..40).prop_map(Op::Leave),
                1 => (0u64..30).prop_map(Op::Tick),
            ],
            1..200,
        )) {
            const BOUND: usize = 5;
            const LIMIT: u64 = 40;
            let mut queues = Queues::default();
            let mut pushed: Vec<(Request, u64)> = Vec::new();
            let mut done = vec![false; 0];
            let mut last_served: Option<usize> = None;
            let mut now = 0;
            for op in ops {
                match op {
                    Op::Push => {
                        let live = pushed.iter().filter(|(r, _)| r.waits.get() && !done[r.id]).count();
                        let request = request(pushed.len());
                        let result = queues.push(PREFIX, request.clone(), now, BOUND);
                        prop_assert_eq!(result.is_err(), live >= BOUND);
                        done.push(result.is_err());
                        pushed.push((request, now));
                    }
                    Op::Serve(ask_first) => {
                        let expected = pushed.iter().find(|(r, _)| r.waits.get() && !done[r.id]).map(|(r, _)| r.id);
                        if ask_first {
                            prop_assert_eq!(queues.has_waiter(PREFIX), expected.is_some());
                        }
                        let served = queues.next(PREFIX).map(|r| r.id);
                        prop_assert_eq!(served, expected);
                        if let Some(id) = served {
                            prop_assert!(last_served.is_none_or(|last| last < id), "out of order");
                            last_served = Some(id);
                            done[id] = true;
                        }
                    }
                    Op::Leave(n) => {
                        if let Some((request, _)) = pushed.get(n) {
                            request.waits.set(false);
                        }
                    }
                    Op::Tick(elapsed) => {
                        now += elapsed;
                        let expired: Vec<usize> = queues.expire(PREFIX, now, LIMIT).iter().map(|r| r.id).collect();
                        let expected: Vec<usize> = pushed
                            .iter()
                            .filter(|(r, since)| r.waits.get() && !done[r.id] && now - since >= LIMIT)
                            .map(|(r, _)| r.id)
                            .collect();
                        prop_assert_eq!(&expired, &expected);
                        for id in expired {
                            done[id] = true;
                        }
                    }
                }
                let live = pushed.iter().filter(|(r, _)| r.waits.get() && !done[r.id]).count();
                prop_assert_eq!(queues.waiting(PREFIX).0, live);
            }
        }
    }
}
