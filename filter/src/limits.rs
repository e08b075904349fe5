//! Per-namespace invocation limits in Envoy's shared data: invokes started in the current minute,
//! and activations in flight, per invoking namespace. Both live in one value, changed by
//! compare-and-swap, so that admitting an invoke is one read and one write, and every worker of one
//! Envoy counts against the same numbers (each Envoy counts alone: with N Envoys a namespace gets
//! N times its limits).
//!
//! ```text
//!  whisk/limits/{namespace} = "<minute since epoch> <invokes started in it> <activations running or waiting>"
//! ```

use crate::pool::SharedData;

/// Bound on CAS retries of one change.
const ATTEMPTS: usize = 64;

/// Why an invoke is refused (both answer 429, with OpenWhisk's messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PerMinute { count: u64, allowed: u64 },
    Concurrent { count: u64, allowed: u64 },
}

impl Refusal {
    pub fn message(self) -> String {
        match self {
            Self::PerMinute { count, allowed } => {
                whisk_contract::messages::too_many_per_minute(count, allowed)
            }
            Self::Concurrent { count, allowed } => {
                whisk_contract::messages::too_many_concurrent(count, allowed)
            }
        }
    }
}

/// What an admission does with the activations in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// One more is in flight (until [`leave`]); refused when `allowed` already are.
    Enter { allowed: u64 },
    /// Refused when `allowed` are in flight, without entering (a non-blocking invoke is checked at
    /// the door; its run enters when it starts).
    Check { allowed: u64 },
}

/// One admission: `per_minute` is the namespace's allowance of invokes in `minute` (minutes since
/// the epoch), or `None` for a run whose invoke was counted already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub minute: u64,
    pub per_minute: Option<u64>,
    pub in_flight: InFlight,
}

fn key(namespace: &str) -> String {
    [KEY_PREFIX, namespace].concat()
}

const KEY_PREFIX: &str = "whisk/limits/";

/// A namespace's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counts {
    minute: u64,
    started: u64,
    in_flight: u64,
}

impl Counts {
    /// Damaged values read as absent.
    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(' ').map(str::parse::<u64>);
        let counts = Self {
            minute: parts.next()?.ok()?,
            started: parts.next()?.ok()?,
            in_flight: parts.next()?.ok()?,
        };
        parts.next().is_none().then_some(counts)
    }

    /// Written without `format!`, which costs microseconds on its first use in a callback.
    fn encode(self) -> Vec<u8> {
        let mut numbers = itoa::Buffer::new();
        let mut text = Vec::with_capacity(40);
        text.extend_from_slice(numbers.format(self.minute).as_bytes());
        text.push(b' ');
        text.extend_from_slice(numbers.format(self.started).as_bytes());
        text.push(b' ');
        text.extend_from_slice(numbers.format(self.in_flight).as_bytes());
        text
    }

    /// The numbers after `admission`, or why it is refused (a refused invoke counts nothing).
    fn admit(self, admission: Admission) -> Result<Self, Refusal> {
        let mut next = self;
        if let Some(allowed) = admission.per_minute {
            if next.minute != admission.minute {
                next.minute = admission.minute;
                next.started = 0;
            }
            if next.started >= allowed {
                return Err(Refusal::PerMinute { count: next.started + 1, allowed });
            }
            next.started += 1;
        }
        match admission.in_flight {
            InFlight::Enter { allowed } | InFlight::Check { allowed } if next.in_flight >= allowed => {
                Err(Refusal::Concurrent { count: next.in_flight + 1, allowed })
            }
            InFlight::Enter { .. } => Ok(Self { in_flight: next.in_flight + 1, ..next }),
            InFlight::Check { .. } => Ok(next),
        }
    }
}

/// CAS loop over a namespace's numbers: `change` maps the current ones (absent: zero) to the new
/// ones or a refusal. A missing key is created unconditionally (shared data has no atomic create),
/// so two workers racing on a namespace's very first invoke may count one too few.
fn update(
    store: &impl SharedData,
    namespace: &str,
    change: impl Fn(Counts) -> Result<Counts, Refusal>,
) -> Result<(), Refusal> {
    let key = key(namespace);
    for _ in 0..ATTEMPTS {
        let (current, cas) = match store.get(&key) {
            Some((bytes, cas)) => (Counts::decode(&bytes).unwrap_or_default(), Some(cas)),
            None => (Counts::default(), None),
        };
        let next = change(current)?;
        if next == current && cas.is_some() {
            return Ok(());
        }
        if store.set(&key, &next.encode(), cas).is_ok() {
            return Ok(());
        }
    }
    // Contention beyond the bound: admit rather than refuse on our own failure to count.
    Ok(())
}

/// Admits an invoke or a run of `namespace`, or says why not.
pub fn admit(store: &impl SharedData, namespace: &str, admission: Admission) -> Result<(), Refusal> {
    update(store, namespace, |current| current.admit(admission))
}

/// An activation of `namespace` that entered is over.
pub fn leave(store: &impl SharedData, namespace: &str) {
    let _ = update(store, namespace, |current| {
        Ok(Counts { in_flight: current.in_flight.saturating_sub(1), ..current })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::memory::MemoryData;
    use proptest::prelude::*;

    fn invoke(minute: u64, per_minute: u64, allowed: u64) -> Admission {
        Admission { minute, per_minute: Some(per_minute), in_flight: InFlight::Check { allowed } }
    }

    fn blocking(minute: u64, per_minute: u64, allowed: u64) -> Admission {
        Admission { minute, per_minute: Some(per_minute), in_flight: InFlight::Enter { allowed } }
    }

    fn in_flight(store: &MemoryData, namespace: &str) -> u64 {
        store.get(&key(namespace)).and_then(|(bytes, _)| Counts::decode(&bytes)).map_or(0, |c| c.in_flight)
    }

    #[test]
    fn a_minute_admits_its_allowance_then_refuses_and_the_next_minute_starts_over() {
        let store = MemoryData::default();
        for _ in 0..3 {
            assert_eq!(admit(&store, "guest", invoke(100, 3, 10)), Ok(()));
        }
        let refusal = admit(&store, "guest", invoke(100, 3, 10)).unwrap_err();
        assert_eq!(refusal, Refusal::PerMinute { count: 4, allowed: 3 });
        assert_eq!(refusal.message(), "Too many requests in the last minute (count: 4, allowed: 3).");
        assert_eq!(admit(&store, "alice", invoke(100, 3, 10)), Ok(()), "per namespace");
        assert_eq!(admit(&store, "guest", invoke(101, 3, 10)), Ok(()), "a new minute");
        assert!(admit(&store, "guest", invoke(101, 0, 10)).is_err(), "zero allows none");
    }

    #[test]
    fn in_flight_activations_are_bounded_and_leaving_makes_room() {
        let store = MemoryData::default();
        assert_eq!(admit(&store, "guest", blocking(1, 100, 2)), Ok(()));
        assert_eq!(admit(&store, "guest", blocking(1, 100, 2)), Ok(()));
        assert_eq!(
            admit(&store, "guest", invoke(1, 100, 2)),
            Err(Refusal::Concurrent { count: 3, allowed: 2 })
        );
        let refusal = admit(&store, "guest", blocking(1, 100, 2)).unwrap_err();
        assert_eq!(refusal.message(), "Too many concurrent requests in flight (count: 3, allowed: 2).");
        leave(&store, "guest");
        assert_eq!(admit(&store, "guest", invoke(1, 100, 2)), Ok(()));
        assert_eq!(in_flight(&store, "guest"), 1, "a checked invoke does not enter");
        // A run whose invoke was counted enters without counting the minute again.
        let run = Admission { minute: 1, per_minute: None, in_flight: InFlight::Enter { allowed: u64::MAX } };
        assert_eq!(admit(&store, "guest", run), Ok(()));
        assert_eq!(in_flight(&store, "guest"), 2);
        leave(&store, "nobody");
        assert_eq!(admit(&store, "nobody", invoke(1, 100, 1)), Ok(()), "leaving never goes below zero");
    }

    #[test]
    fn a_refused_invoke_counts_nothing_and_a_new_minute_keeps_those_in_flight() {
        let store = MemoryData::default();
        assert_eq!(admit(&store, "guest", blocking(7, 5, 1)), Ok(()));
        assert!(admit(&store, "guest", blocking(7, 5, 1)).is_err(), "in flight");
        assert_eq!(
            Counts::decode(&store.get(&key("guest")).unwrap().0).unwrap(),
            Counts { minute: 7, started: 1, in_flight: 1 }
        );
        assert!(admit(&store, "guest", blocking(8, 5, 1)).is_err(), "still in flight in the next minute");
        leave(&store, "guest");
        assert_eq!(admit(&store, "guest", blocking(8, 5, 1)), Ok(()));
    }

    #[test]
    fn damaged_values_count_as_absent() {
        let store = MemoryData::default();
        store.set(&key("guest"), b"junk", None).unwrap();
        assert_eq!(admit(&store, "guest", blocking(1, 1, 1)), Ok(()));
        assert_eq!(Counts::decode(b"1 2 3 4"), None);
        assert_eq!(Counts::decode(b"1 2"), None);
    }

    proptest! {
        /// However admissions and leaves interleave, the in-flight count never exceeds the
        /// allowance and equals the number that entered minus those that left; the minute's count
        /// equals the counted invokes admitted in it.
        #[test]
        fn the_counts_are_exact(
            steps in proptest::collection::vec((0u8..4, 0u64..3), 1..200),
            allowed in 0u64..5,
            per_minute in 0u64..8,
        ) {
            let store = MemoryData::default();
            let (mut entered, mut started, mut minute) = (0u64, 0u64, 0u64);
            for (op, advance) in steps {
                if advance == 2 {
                    minute += 1;
                    started = 0;
                }
                match op {
                    0 | 1 => {
                        let in_flight = if op == 0 { InFlight::Enter { allowed } } else { InFlight::Check { allowed } };
                        if admit(&store, "ns", Admission { minute, per_minute: Some(per_minute), in_flight }).is_ok() {
                            started += 1;
                            entered += u64::from(op == 0);
                        }
                    }
                    2 => {
                        let run = Admission { minute, per_minute: None, in_flight: InFlight::Enter { allowed: u64::MAX } };
                        prop_assert!(admit(&store, "ns", run).is_ok());
                        entered += 1;
                    }
                    _ => if entered > 0 {
                        leave(&store, "ns");
                        entered -= 1;
                    }
                }
                let counts = store.get(&key("ns")).and_then(|(b, _)| Counts::decode(&b)).unwrap_or_default();
                prop_assert_eq!(counts.in_flight, entered);
                prop_assert!(started <= per_minute);
                if counts.minute == minute {
                    prop_assert_eq!(counts.started, started);
                }
            }
        }
    }
}
