//! Per-namespace invocation limits in Envoy's shared data: invokes started in the current minute,
//! and activations in flight, per invoking namespace. Changed by compare-and-swap, so every worker
//! of one Envoy counts against the same numbers (each Envoy counts alone: with N Envoys a
//! namespace gets N times its limits).
//!
//! ```text
//!  whisk/limits/minute/{namespace}    = "<minute since epoch> <invokes started in it>"
//!  whisk/limits/in-flight/{namespace} = "<activations running or waiting>"
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

fn minute_key(namespace: &str) -> String {
    format!("whisk/limits/minute/{namespace}")
}

fn in_flight_key(namespace: &str) -> String {
    format!("whisk/limits/in-flight/{namespace}")
}

/// Reads a value of space-separated numbers; damaged values read as absent.
fn numbers<const N: usize>(bytes: &[u8]) -> Option<[u64; N]> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split(' ');
    let mut out = [0; N];
    for slot in &mut out {
        *slot = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// CAS loop over one key: `change` maps the current numbers (absent: `None`) to the new ones or a
/// refusal. A missing key is created unconditionally (shared data has no atomic create), so two
/// workers racing on a namespace's very first invoke of a minute may count one invoke too few.
fn update<const N: usize>(
    store: &impl SharedData,
    key: &str,
    change: impl Fn(Option<[u64; N]>) -> Result<[u64; N], Refusal>,
) -> Result<(), Refusal> {
    for _ in 0..ATTEMPTS {
        let (current, cas) = match store.get(key) {
            Some((bytes, cas)) => (numbers::<N>(&bytes), Some(cas)),
            None => (None, None),
        };
        let next = change(current)?;
        let text = next.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
        if store.set(key, text.as_bytes(), cas).is_ok() {
            return Ok(());
        }
    }
    // Contention beyond the bound: admit rather than refuse on our own failure to count.
    Ok(())
}

/// Counts one invoke of `namespace` in `minute` (minutes since the epoch); refused when the
/// namespace already started `allowed` in that minute (a refused invoke is not counted).
pub fn count_invoke(
    store: &impl SharedData,
    namespace: &str,
    minute: u64,
    allowed: u64,
) -> Result<(), Refusal> {
    update::<2>(store, &minute_key(namespace), |current| match current {
        Some([at, count]) if at == minute => {
            if count >= allowed {
                Err(Refusal::PerMinute { count: count + 1, allowed })
            } else {
                Ok([minute, count + 1])
            }
        }
        _ if allowed == 0 => Err(Refusal::PerMinute { count: 1, allowed }),
        _ => Ok([minute, 1]),
    })
}

/// One more activation of `namespace` in flight; refused when `allowed` are already.
pub fn enter(store: &impl SharedData, namespace: &str, allowed: u64) -> Result<(), Refusal> {
    update::<1>(store, &in_flight_key(namespace), |current| {
        let [count] = current.unwrap_or([0]);
        if count >= allowed {
            Err(Refusal::Concurrent { count: count + 1, allowed })
        } else {
            Ok([count + 1])
        }
    })
}

/// Refused when `allowed` activations of `namespace` are in flight, without entering (a
/// non-blocking invoke is checked at the door; its run enters when it starts).
pub fn check_room(store: &impl SharedData, namespace: &str, allowed: u64) -> Result<(), Refusal> {
    let count =
        store.get(&in_flight_key(namespace)).and_then(|(bytes, _)| numbers::<1>(&bytes)).map_or(0, |[c]| c);
    if count >= allowed { Err(Refusal::Concurrent { count: count + 1, allowed }) } else { Ok(()) }
}

/// An activation of `namespace` that [`enter`]ed is over.
pub fn leave(store: &impl SharedData, namespace: &str) {
    let _ = update::<1>(store, &in_flight_key(namespace), |current| {
        let [count] = current.unwrap_or([0]);
        Ok([count.saturating_sub(1)])
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::memory::MemoryData;
    use proptest::prelude::*;

    #[test]
    fn a_minute_admits_its_allowance_then_refuses_and_the_next_minute_starts_over() {
        let store = MemoryData::default();
        for _ in 0..3 {
            assert_eq!(count_invoke(&store, "guest", 100, 3), Ok(()));
        }
        let refusal = count_invoke(&store, "guest", 100, 3).unwrap_err();
        assert_eq!(refusal, Refusal::PerMinute { count: 4, allowed: 3 });
        assert_eq!(refusal.message(), "Too many requests in the last minute (count: 4, allowed: 3).");
        assert_eq!(count_invoke(&store, "alice", 100, 3), Ok(()), "per namespace");
        assert_eq!(count_invoke(&store, "guest", 101, 3), Ok(()), "a new minute");
        assert!(count_invoke(&store, "guest", 101, 0).is_err(), "zero allows none");
    }

    #[test]
    fn in_flight_activations_are_bounded_and_leaving_makes_room() {
        let store = MemoryData::default();
        assert_eq!(enter(&store, "guest", 2), Ok(()));
        assert_eq!(enter(&store, "guest", 2), Ok(()));
        assert_eq!(check_room(&store, "guest", 2), Err(Refusal::Concurrent { count: 3, allowed: 2 }));
        let refusal = enter(&store, "guest", 2).unwrap_err();
        assert_eq!(refusal.message(), "Too many concurrent requests in flight (count: 3, allowed: 2).");
        leave(&store, "guest");
        assert_eq!(check_room(&store, "guest", 2), Ok(()));
        assert_eq!(enter(&store, "guest", 2), Ok(()));
        leave(&store, "nobody");
        assert_eq!(check_room(&store, "nobody", 1), Ok(()), "leaving never goes below zero");
    }

    #[test]
    fn damaged_values_count_as_absent() {
        let store = MemoryData::default();
        store.set(&in_flight_key("guest"), b"junk", None).unwrap();
        assert_eq!(enter(&store, "guest", 1), Ok(()));
        assert_eq!(numbers::<2>(b"1 2 3"), None);
    }

    proptest! {
        /// However enters and leaves interleave, the count never exceeds the allowance and equals
        /// the number admitted minus those that left.
        #[test]
        fn the_in_flight_count_is_exact(steps in proptest::collection::vec(any::<bool>(), 1..200), allowed in 0u64..5) {
            let store = MemoryData::default();
            let mut admitted = 0u64;
            for step in steps {
                if step {
                    if enter(&store, "ns", allowed).is_ok() {
                        admitted += 1;
                    }
                } else if admitted > 0 {
                    leave(&store, "ns");
                    admitted -= 1;
                }
                prop_assert!(admitted <= allowed);
                let stored = store.get(&in_flight_key("ns")).and_then(|(b, _)| numbers::<1>(&b)).map_or(0, |[c]| c);
                prop_assert_eq!(stored, admitted);
            }
        }
    }
}
