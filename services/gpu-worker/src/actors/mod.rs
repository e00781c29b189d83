//! The worker's actors.

pub mod model;
pub mod supervisor;
