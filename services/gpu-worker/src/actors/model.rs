//! A pool of threads running one model: one `SyncArbiter` thread per slot,
//! each with its own model instance.

use crate::models::{CancelFlag, Model, ModelError, ModelOutput};
use actix::{Actor, Handler, Message, SyncContext};
use serde_json::Value;

pub struct ModelRunner {
    model: Box<dyn Model>,
}

impl ModelRunner {
    pub fn new(model: Box<dyn Model>) -> Self {
        Self { model }
    }
}

impl Actor for ModelRunner {
    type Context = SyncContext<Self>;
}

/// Run one job on this slot's model.
pub struct RunJob {
    pub input: Value,
    pub cancel: CancelFlag,
}

impl Message for RunJob {
    type Result = Result<ModelOutput, ModelError>;
}

impl Handler<RunJob> for ModelRunner {
    type Result = Result<ModelOutput, ModelError>;

    fn handle(&mut self, msg: RunJob, _: &mut SyncContext<Self>) -> Self::Result {
        if msg.cancel.is_cancelled() {
            return Err(ModelError::Cancelled);
        }
        self.model.run(&msg.input, &msg.cancel)
    }
}
