//! Announcements the broker could not take when a job was accepted.
//!
//! An async job is accepted once its row is committed as `queued`: the row
//! is the durable record. Its `JobSubmitted` message only wakes the
//! scheduler. When RabbitMQ is away the message waits here and this
//! instance's relay publishes it as soon as the broker is back, so the 202
//! keeps its promise without making the caller wait or retry. Should this
//! process die first, nothing is lost either: the scheduler's sweep picks up
//! every queued row it does not hold (`docs/reliability.md`).

use maas_core::messages::JobSubmitted;
use maas_mq::{Broker, PublishOpts};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Most announcements held in memory; past it the oldest are left to the
/// scheduler's sweep (their rows are in Postgres).
const MAX_PENDING: usize = 100_000;

#[derive(Default)]
pub struct Outbox {
    pending: Mutex<VecDeque<(JobSubmitted, String)>>,
    wake: Notify,
}

impl Outbox {
    /// Holds an announcement until the broker takes it.
    pub fn push(&self, msg: JobSubmitted, traceparent: String) {
        if let Ok(mut q) = self.pending.lock() {
            if q.len() >= MAX_PENDING {
                q.pop_front();
            }
            q.push_back((msg, traceparent));
        }
        self.wake.notify_one();
    }

    pub fn len(&self) -> usize {
        self.pending.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pop(&self) -> Option<(JobSubmitted, String)> {
        self.pending.lock().ok().and_then(|mut q| q.pop_front())
    }

    fn put_back(&self, item: (JobSubmitted, String)) {
        if let Ok(mut q) = self.pending.lock() {
            q.push_front(item);
        }
    }

    /// Publishes whatever is pending whenever the broker is connected.
    pub async fn relay(self: Arc<Self>, broker: Arc<Broker>) {
        let jobs_queue = broker.names.jobs();
        loop {
            if self.is_empty() {
                // The timeout is only a safety net for a missed wake-up.
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                continue;
            }
            if broker.connected().await.is_none() {
                return;
            }
            let mut sent = 0usize;
            while let Some(item) = self.pop() {
                let opts = PublishOpts::traced(Some(&item.1));
                match broker.publish_to_queue(&jobs_queue, &item.0, opts).await {
                    Ok(()) => sent += 1,
                    Err(e) => {
                        tracing::warn!(error = %e, pending = self.len() + 1, "relay paused: the broker is not taking announcements");
                        self.put_back(item);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                }
            }
            if sent > 0 {
                tracing::info!(sent, "announced jobs accepted while the broker was away");
            }
        }
    }
}
