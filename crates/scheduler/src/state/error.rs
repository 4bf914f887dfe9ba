//! Why the scheduler refuses a request, and the code each refusal maps to.

use std::path::PathBuf;

use crate::plan;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// Unknown member, or its lease expired: register again.
    #[error("member {0:?} is not registered (its lease may have expired): register again")]
    UnknownMember(String),
    /// Unknown job.
    #[error("job {0:?} not found")]
    UnknownJob(String),
    /// The job file does not parse or validate.
    #[error(transparent)]
    BadJob(#[from] ember_core::JobError),
    /// The job's data cannot be planned.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// `ember stop` on a job that reads a fixed set of files (it ends by itself).
    #[error("job {0:?} reads a fixed set of files and ends by itself; only a follow job can be stopped")]
    NotStream(String),
    /// A rollback that cannot be done (unknown label, wrong kind of job, servers that failed).
    #[error("rollback refused: {0}")]
    Rollback(String),
    /// No ps-server registered yet.
    #[error("no ps-server is registered yet")]
    NoPs,
    /// A work report whose figures its item cannot hold (see `report_check`).
    #[error("report refused: {0}")]
    BadReport(String),
    /// The state file could not be written or read.
    #[error("state file {}: {reason}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

impl ember_core::HasCode for SchedulerError {
    fn code(&self) -> ember_core::Code {
        use ember_core::Code;
        match self {
            SchedulerError::UnknownMember(_) | SchedulerError::UnknownJob(_) => Code::NotFound,
            SchedulerError::Plan(plan::PlanError::Root(ember_model::DataRootError::Outside(_))) => {
                Code::PermissionDenied
            }
            SchedulerError::BadJob(_) | SchedulerError::Plan(_) | SchedulerError::BadReport(_) => Code::InvalidArgument,
            SchedulerError::NoPs | SchedulerError::NotStream(_) | SchedulerError::Rollback(_) => {
                Code::FailedPrecondition
            }
            // The state file could not be written (a full or failed disk): retry later.
            SchedulerError::State { .. } => Code::Unavailable,
        }
    }
}
