//! Messages carried by RabbitMQ, JSON-encoded. Every message also carries a
//! `traceparent` AMQP header (see [`crate::trace`]).

use crate::Lane;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// api → scheduler (`<ns>.jobs`): a job row was committed as `queued`.
///
/// The row in Postgres is the durable record; this message only wakes the
/// scheduler. A lost or duplicated message is harmless: the scheduler rebuilds
/// from Postgres on start and every transition is conditional.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSubmitted {
    pub job_id: Uuid,
    pub tenant_id: Uuid,
    pub model: String,
    pub lane: Lane,
    pub created_at: DateTime<Utc>,
    /// The reply queue of the API instance holding a sync caller, if any.
    #[serde(default)]
    pub reply_to: Option<String>,
}

/// api → scheduler (`<ns>.jobs`): a batch's lines were committed as queued
/// jobs. One message for the whole batch: the scheduler reads the lines
/// back from Postgres (and its sweep finds them if this message is lost).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSubmitted {
    pub batch_id: String,
    pub tenant_id: Uuid,
}

/// scheduler → one worker (`<ns>.worker.<id>`): run this attempt of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dispatch {
    pub job_id: Uuid,
    pub tenant_id: Uuid,
    pub key_id: Option<Uuid>,
    pub attempt: i32,
    pub model: String,
    pub input: Value,
    /// The reply queue of the API instance holding a sync caller, if any.
    pub reply_to: Option<String>,
}

/// Capacity a worker offers for one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSlots {
    pub model: String,
    pub slots: u32,
}

/// One attempt a worker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningAttempt {
    pub job_id: Uuid,
    pub attempt: i32,
}

/// worker → scheduler (`<ns>.events`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// Sent at start and then periodically: registration and liveness in one.
    /// `incarnation` is new for every process, so a restart under the same
    /// `worker_id` is seen as one; `running` lists the attempts the worker has
    /// received and not finished, so the scheduler can correct its slot count.
    Heartbeat {
        worker_id: String,
        incarnation: String,
        models: Vec<ModelSlots>,
        draining: bool,
        #[serde(default)]
        running: Vec<RunningAttempt>,
    },
    /// The worker is done with an attempt (whatever the outcome), so its slot is free.
    Finished {
        worker_id: String,
        job_id: Uuid,
        attempt: i32,
    },
    /// The worker is leaving; whatever is still assigned to it must be handed to others.
    Deregister { worker_id: String },
}

/// worker → api instance (`<ns>.reply.<instance>`), for a caller waiting
/// on that instance. Published in order on one channel, so a job's chunks
/// arrive before its `Done`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// A piece of streamed output (whole UTF-8 characters), with the
    /// logprobs of its tokens when they were asked for.
    Chunk {
        job_id: Uuid,
        seq: u32,
        /// The attempt that produced it: a caller that has received part
        /// of one attempt's output cannot splice another's onto it.
        #[serde(default)]
        attempt: Option<i32>,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logprobs: Option<serde_json::Value>,
    },
    /// The job has ended; its final state is in Postgres and Redis.
    Done { job_id: Uuid },
}

/// A piece of streamed output on its way from a model to the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    /// Chat-style logprob entries of the piece's tokens, when asked for.
    pub logprobs: Option<serde_json::Value>,
}

/// api → every worker (fanout `<ns>.cancel`): stop this job if you run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelJob {
    pub job_id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_events_are_tagged_by_type() {
        let e = WorkerEvent::Finished {
            worker_id: "w1".into(),
            job_id: Uuid::nil(),
            attempt: 2,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "finished");
        let back: WorkerEvent = serde_json::from_value(v).unwrap();
        assert!(matches!(back, WorkerEvent::Finished { attempt: 2, .. }));
    }
}
