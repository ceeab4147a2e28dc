//! Background writers that turn many small records into one transaction a second
//! (session activity, audit events): drain a bounded queue on a timer until told to stop,
//! then once more.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Every `every`, hand what is queued (if anything) to `write`; on `stop`, write what is
/// left and return.
pub async fn flush_every<T, F, Fut>(
    mut queue: mpsc::Receiver<T>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    mut write: F,
) where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let stopping = tokio::select! {
            _ = stop.wait_for(|s| *s) => true,
            _ = tokio::time::sleep(every) => false,
        };
        let mut batch = Vec::new();
        while let Ok(x) = queue.try_recv() {
            batch.push(x);
        }
        if !batch.is_empty() {
            write(batch).await;
        }
        if stopping {
            return;
        }
    }
}
