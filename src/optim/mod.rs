//! SGD with momentum and parameter groups, and learning-rate schedules.

mod schedule;
mod sgd;

pub use schedule::CosineSchedule;
pub use sgd::{Sgd, SgdConfig};
