//! Sync callers waiting for their job. Each API instance has one exclusive
//! reply queue; workers post a [`Reply::Done`] there when a job of this instance's
//! sync caller ends, and the waiting handler is woken.
//!
//! The map is behind a std mutex held only for an insert or a remove, never
//! across an `.await`.

use futures_util::StreamExt;
use maas_core::messages::{Piece, Reply};
use maas_mq::lapin::options::BasicConsumeOptions;
use maas_mq::lapin::types::FieldTable;
use maas_mq::Link;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::sync::Notify;
use uuid::Uuid;

/// A piece of streamed output and the attempt that produced it.
pub type AttemptPiece = (Option<i32>, Piece);

#[derive(Default)]
pub struct Replies {
    waiting: Mutex<HashMap<Uuid, Arc<Notify>>>,
    /// Streaming callers: chunks go here; the sender is dropped on `Done`.
    streams: Mutex<HashMap<Uuid, mpsc::UnboundedSender<AttemptPiece>>>,
}

/// A streaming caller's registration; dropping it unregisters.
pub struct StreamWaiter {
    replies: Arc<Replies>,
    job_id: Uuid,
    /// Pieces with the attempt that produced them.
    pub chunks: mpsc::UnboundedReceiver<AttemptPiece>,
}

impl Drop for StreamWaiter {
    fn drop(&mut self) {
        if let Ok(mut map) = self.replies.streams.lock() {
            map.remove(&self.job_id);
        }
    }
}

/// A registration; dropping it unregisters.
pub struct Waiter {
    replies: Arc<Replies>,
    job_id: Uuid,
    pub notify: Arc<Notify>,
}

impl Replies {
    /// Registers interest in a job before it is published, so a fast result
    /// cannot arrive before anyone listens.
    pub fn register(self: &Arc<Self>, job_id: Uuid) -> Waiter {
        let notify = Arc::new(Notify::new());
        if let Ok(mut map) = self.waiting.lock() {
            map.insert(job_id, notify.clone());
        }
        Waiter {
            replies: self.clone(),
            job_id,
            notify,
        }
    }

    /// Registers a streaming caller before its job is published.
    pub fn register_stream(self: &Arc<Self>, job_id: Uuid) -> StreamWaiter {
        let (tx, chunks) = mpsc::unbounded_channel();
        if let Ok(mut map) = self.streams.lock() {
            map.insert(job_id, tx);
        }
        StreamWaiter {
            replies: self.clone(),
            job_id,
            chunks,
        }
    }

    fn chunk(&self, job_id: Uuid, attempt: Option<i32>, piece: Piece) {
        let tx = self
            .streams
            .lock()
            .ok()
            .and_then(|m| m.get(&job_id).cloned());
        if let Some(tx) = tx {
            let _ = tx.send((attempt, piece));
        }
    }

    fn wake(&self, job_id: Uuid) {
        // The end of a stream: its receiver sees the channel close.
        if let Ok(mut map) = self.streams.lock() {
            map.remove(&job_id);
        }
        let notify = self
            .waiting
            .lock()
            .ok()
            .and_then(|m| m.get(&job_id).cloned());
        if let Some(n) = notify {
            n.notify_one();
        }
    }

    /// Declares and consumes this instance's reply queue on one broker
    /// link, until that link is lost ([`maas_mq::consume_forever`] calls it
    /// again on the next). Replies published while the queue was away are
    /// lost; their waiters re-read the job every second anyway.
    pub async fn session(
        self: Arc<Self>,
        link: Arc<Link>,
        queue: String,
    ) -> Result<(), maas_mq::MqError> {
        let ch = link.consumer_channel(256).await?;
        link.declare_private_queue(&ch, &queue).await?;
        let opts = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "api-replies".into(),
                opts,
                FieldTable::default(),
            )
            .await?;
        if link.generation > 1 {
            // Whatever was published meanwhile is gone: wake every waiter
            // so it re-reads its job now instead of within a second.
            self.wake_all();
        }
        loop {
            let delivery = tokio::select! {
                d = consumer.next() => d,
                _ = link.lost() => None,
            };
            let Some(Ok(delivery)) = delivery else { break };
            match serde_json::from_slice::<Reply>(&delivery.data) {
                Ok(Reply::Done { job_id }) => self.wake(job_id),
                Ok(Reply::Chunk {
                    job_id,
                    attempt,
                    text,
                    logprobs,
                    ..
                }) => self.chunk(job_id, attempt, Piece { text, logprobs }),
                Err(e) => tracing::warn!(error = %e, "malformed reply message ignored"),
            }
        }
        Ok(())
    }

    fn wake_all(&self) {
        let all: Vec<Arc<Notify>> = self
            .waiting
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for n in all {
            n.notify_one();
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Ok(mut map) = self.replies.waiting.lock() {
            map.remove(&self.job_id);
        }
    }
}
