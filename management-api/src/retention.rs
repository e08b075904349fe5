//! Activation retention: records older than the time to live (`--activation-ttl`) are deleted by a
//! background task, in every namespace, so that the store does not grow without bound.
//!
//! ```text
//!  every sweep_period(ttl) ─► cutoff(now, ttl) ─► sweep: delete_activations_before(cutoff, BATCH)
//!                                                         … again while a batch comes back full
//!                          ─► log + whisk_management_activations_deleted_total
//! ```
//!
//! What is expired is decided by [`cutoff`] and [`is_expired`], pure and tested without a store; a
//! record's age is counted from its `start`, the time listings filter and order by. Deleting goes a
//! batch at a time, each batch its own short transaction, so that the data plane's record writes
//! and users' reads never wait behind one long delete.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::state::epoch_millis;
use crate::store::{Store, StoreError};

/// `--activation-ttl`'s default: a week, as in many OpenWhisk deployments' activation stores.
pub const DEFAULT_TTL: &str = "7d";
/// Records deleted per transaction.
pub const BATCH: u64 = 1_000;
/// Bounds of the sweep period: no busier than once a second, no lazier than once an hour.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);
pub const MAX_PERIOD: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("cannot delete expired activation records: {0}")]
    Store(#[from] StoreError),
    #[error("the activation retention sweep did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The `start` (epoch ms) before which a record has expired at `now`; `None` when `ttl` is zero,
/// which keeps records forever (and before the TTL has elapsed since the epoch, nothing is old
/// enough).
pub fn cutoff(now: u64, ttl: Duration) -> Option<u64> {
    if ttl.is_zero() {
        return None;
    }
    let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    Some(now.saturating_sub(ttl))
}

/// Whether a record that started at `start` has expired at `now`: it is older than `ttl`.
pub fn is_expired(start: u64, now: u64, ttl: Duration) -> bool {
    cutoff(now, ttl).is_some_and(|cutoff| start < cutoff)
}

/// How often to sweep: a tenth of the TTL, so that a record outlives it by at most a tenth, within
/// [`MIN_PERIOD`] and [`MAX_PERIOD`]; `None` when records are kept forever.
pub fn sweep_period(ttl: Duration) -> Option<Duration> {
    (!ttl.is_zero()).then(|| (ttl / 10).clamp(MIN_PERIOD, MAX_PERIOD))
}

/// Deletes every record that started before `cutoff`, [`BATCH`] at a time, until a batch comes
/// back short or `keep_going` says stop (between batches: the server is shutting down). Returns how
/// many went. Blocks: call it on a blocking thread.
pub fn sweep(store: &Store, cutoff: u64, keep_going: impl Fn() -> bool) -> Result<u64, StoreError> {
    let mut deleted = 0;
    loop {
        let batch = store.delete_activations_before(cutoff, BATCH)?;
        deleted += batch;
        if batch < BATCH || !keep_going() {
            return Ok(deleted);
        }
    }
}

/// One sweep at `now` on a blocking thread; counts what it deleted in `metrics`.
pub async fn sweep_once(
    store: &Arc<Store>,
    metrics: &Metrics,
    ttl: Duration,
    now: u64,
    stop: &watch::Receiver<bool>,
) -> Result<u64, RetentionError> {
    let Some(cutoff) = cutoff(now, ttl) else {
        return Ok(0);
    };
    let (store, stop) = (Arc::clone(store), stop.clone());
    let deleted = tokio::task::spawn_blocking(move || sweep(&store, cutoff, || !*stop.borrow())).await??;
    metrics.count_expired_activations(deleted);
    Ok(deleted)
}

/// Sweeps at once, then every [`sweep_period`], until `stop` turns true or its sender is dropped.
/// A failed sweep is logged and tried again a period later.
pub async fn run(store: Arc<Store>, metrics: &Metrics, ttl: Duration, mut stop: watch::Receiver<bool>) {
    let Some(period) = sweep_period(ttl) else {
        tracing::info!("activation retention off: records are kept forever");
        return;
    };
    tracing::info!(
        ttl = %humantime::format_duration(ttl),
        period = %humantime::format_duration(period),
        "activation retention on"
    );
    let mut ticks = tokio::time::interval(period);
    // After a slow sweep, wait a whole period again rather than sweeping twice in a row.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
        match sweep_once(&store, metrics, ttl, epoch_millis(), &stop).await {
            Ok(0) => tracing::debug!("no activation record has expired"),
            Ok(deleted) => tracing::info!(deleted, "expired activation records deleted"),
            Err(error) => {
                tracing::warn!(%error, "activation retention sweep failed; trying again next period")
            }
        }
    }
    tracing::info!("activation retention stopped");
}

#[cfg(test)]
mod tests {
    use whisk_contract::{ActivationRecord, ActivationResponse, ActivationStatus};

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    #[test]
    fn a_record_expires_once_older_than_the_ttl() {
        let now = 10 * DAY.as_millis() as u64;
        let week = 7 * DAY;
        assert_eq!(cutoff(now, week), Some(3 * DAY.as_millis() as u64));
        let cutoff = cutoff(now, week).unwrap();
        assert!(is_expired(cutoff - 1, now, week));
        assert!(!is_expired(cutoff, now, week), "exactly the TTL old is kept");
        assert!(!is_expired(now, now, week));
        assert!(!is_expired(now + 1, now, week), "a record from a clock ahead is kept");
    }

    #[test]
    fn a_zero_ttl_keeps_everything_and_early_clocks_expire_nothing() {
        assert_eq!(cutoff(1_000, Duration::ZERO), None);
        assert!(!is_expired(0, u64::MAX, Duration::ZERO));
        assert_eq!(cutoff(1_000, DAY), Some(0), "nothing started before the epoch");
        assert!(!is_expired(0, 1_000, DAY));
        assert_eq!(cutoff(u64::MAX, Duration::MAX), Some(0));
    }

    #[test]
    fn sweeps_come_a_tenth_of_the_ttl_apart_within_bounds() {
        assert_eq!(sweep_period(Duration::ZERO), None);
        assert_eq!(sweep_period(Duration::from_secs(600)), Some(Duration::from_secs(60)));
        assert_eq!(sweep_period(Duration::from_secs(2)), Some(MIN_PERIOD));
        assert_eq!(sweep_period(7 * DAY), Some(MAX_PERIOD));
    }

    fn record(id: usize, start: u64) -> ActivationRecord {
        ActivationRecord {
            activation_id: format!("{id:032x}"),
            namespace: if id.is_multiple_of(2) { "guest".into() } else { "alice".into() },
            name: "hello".into(),
            version: "0.0.1".into(),
            subject: "guest".into(),
            publish: false,
            start,
            end: start,
            duration: 0,
            response: ActivationResponse::new(ActivationStatus::Success, serde_json::json!({})),
            logs: vec![],
            annotations: vec![],
            cause: None,
        }
    }

    #[test]
    fn a_sweep_goes_batch_after_batch_until_nothing_has_expired() {
        let store = Store::open_in_memory().unwrap();
        let expired = BATCH as usize * 2 + 3;
        let records: Vec<_> =
            (0..expired + 5).map(|id| record(id, if id < expired { 10 } else { 1_000 })).collect();
        store.put_activations(&records).unwrap();
        assert_eq!(sweep(&store, 500, || true).unwrap(), expired as u64);
        assert_eq!(sweep(&store, 500, || true).unwrap(), 0);
        let left = |namespace| store.count_activations(namespace, &Default::default()).unwrap();
        assert_eq!(left("guest") + left("alice"), 5);
    }

    #[test]
    fn a_sweep_told_to_stop_ends_after_its_batch() {
        let store = Store::open_in_memory().unwrap();
        let records: Vec<_> = (0..BATCH as usize * 2).map(|id| record(id, 10)).collect();
        store.put_activations(&records).unwrap();
        assert_eq!(sweep(&store, 500, || false).unwrap(), BATCH);
    }

    #[tokio::test]
    async fn sweep_once_counts_what_it_deleted() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        store.put_activations(&[record(0, 10), record(1, 20), record(2, DAY.as_millis() as u64)]).unwrap();
        let metrics = Metrics::new();
        let (_stop, stopped) = watch::channel(false);
        let now = DAY.as_millis() as u64;
        assert_eq!(sweep_once(&store, &metrics, Duration::from_secs(60), now, &stopped).await.unwrap(), 2);
        assert_eq!(sweep_once(&store, &metrics, Duration::ZERO, now, &stopped).await.unwrap(), 0);
        let text = metrics.encode().unwrap();
        assert!(text.contains("whisk_management_activations_deleted_total 2"), "{text}");
    }

    #[tokio::test]
    async fn run_stops_when_told() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let metrics = Metrics::new();
        let (stop, stopped) = watch::channel(false);
        let running = run(Arc::clone(&store), &metrics, DAY, stopped);
        let stopping = async {
            tokio::task::yield_now().await;
            stop.send(true).unwrap();
        };
        let ((), ()) =
            tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(running, stopping) })
                .await
                .unwrap();
    }
}
