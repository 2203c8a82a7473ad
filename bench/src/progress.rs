//! Progress lines on stderr during long runs.

use std::time::{Duration, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Prints `line(elapsed)` to stderr every `every` until the returned guard is dropped; does
/// nothing when `enabled` is false.
pub fn ticker<F>(enabled: bool, every: Duration, mut line: F) -> Option<DropGuard>
where
    F: FnMut(Duration) -> String + Send + 'static,
{
    if !enabled {
        return None;
    }
    let stop = CancellationToken::new();
    let guard = stop.clone().drop_guard();
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => eprintln!("{}", line(start.elapsed())),
            }
        }
    });
    Some(guard)
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
