//! What a caller asks of `Rotator::rotate`, and what it gets back.

use std::time::Duration;

use super::invocation::Invocation;
use super::record::Step;

/// Why a rotation was asked for, and what may be skipped.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Rotate even if the last rotation finished less than `min_interval` ago.
    pub force: bool,
    /// Skip the request when the last successful rotation is younger than this.
    pub min_interval: Option<Duration>,
    /// The same request delivered twice (SQS redelivery, duplicate event) carries the same id;
    /// it never starts a second rotation.
    pub request_id: Option<String>,
    /// Free text kept in the record, e.g. "scheduled" or an operator's note.
    pub reason: Option<String>,
    /// Change the idle user's password even if it is in use (the guard only warns). Not implied
    /// by `force`: the interval protects caches, the guard applications that outlived them.
    pub ignore_in_use: bool,
    /// A call of the Secrets Manager rotation function (`rds-rotator lambda`), for one step.
    pub invocation: Option<Invocation>,
    /// Whatever still runs this long after `rotate` was called is dropped there, and the call
    /// ends as `Interrupted` (reported as any other end). For work outside a step's own stop
    /// (`Shutdown`): a wait for the lease, a resumed run's claims. Its lease is left to expire.
    pub hard_stop: Option<Duration>,
}

/// What `rotate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Rotated(Completed),
    /// Nothing to do: a rotation for this request already happened, or one happened recently.
    Skipped {
        secret_arn: String,
        why: String,
    },
    /// An invocation's steps are done; the rotation goes on with `next` (a later invocation).
    Advanced {
        secret_arn: String,
        rotation_id: String,
        next: Step,
    },
    /// An invocation after createSecret, for a rotation that never began: Secrets Manager's
    /// test of the configuration (RotateImmediately=false calls only testSecret).
    NotBegun {
        secret_arn: String,
        rotation_id: String,
    },
}

/// A rotation that ran to the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub secret_arn: String,
    pub rotation_id: String,
    pub previous_user: String,
    pub current_user: String,
    /// True when this run continued a rotation that an earlier process had started.
    pub resumed: bool,
}
