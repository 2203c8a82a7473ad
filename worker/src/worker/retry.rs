//! Waiting out a backoff: deliveries held before their nack, and sleeps that end at shutdown.

use roomcast_broker::Delivery;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Deliveries waiting for their retry backoff before being nacked; cancelling the token
/// nacks them at once.
pub(super) struct RetryQueue {
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

impl RetryQueue {
    pub(super) fn new(cancel: CancellationToken) -> Self {
        RetryQueue {
            tasks: JoinSet::new(),
            cancel,
        }
    }

    /// Nacks `deliveries`, in order, after `delay`.
    pub(super) fn schedule(&mut self, deliveries: Vec<Delivery>, delay: Duration) {
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(delay) => {}
            }
            for delivery in deliveries {
                if let Err(error) = delivery.nack().await {
                    tracing::debug!(%error, "nack failed; the delivery is released when the stream closes");
                }
            }
        });
    }

    /// Forgets the finished tasks.
    pub(super) fn reap(&mut self) {
        while let Some(result) = self.tasks.try_join_next() {
            if let Err(error) = result {
                tracing::warn!(%error, "a retry task failed");
            }
        }
    }

    /// Nacks every waiting delivery now and waits until that is done.
    pub(super) async fn flush(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Sleeps for `delay`; `false` when `shutdown` was cancelled first.
pub(super) async fn sleep_unless_cancelled(shutdown: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sleeps_end_on_time_or_at_shutdown() {
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        assert!(sleep_unless_cancelled(&shutdown, Duration::from_secs(30)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(30));

        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            cancel.cancel();
        });
        let start = tokio::time::Instant::now();
        assert!(!sleep_unless_cancelled(&shutdown, Duration::from_secs(3_600)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
