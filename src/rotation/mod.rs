//! The rotation engine. The protocol reads top to bottom in `protocol` (its step table, then
//! the five steps); the rest of this module serves it:
//!
//! | file | holds |
//! |---|---|
//! | `protocol` | the step table and the five steps |
//! | `begin` | what to do with a request: pure decisions, tested table-style |
//! | `rotator` | `Rotator::rotate`: reads, the lease, acting on `begin`'s answer |
//! | `run`, `retry` | a run's state, the loop over its steps, the retry loop |
//! | `sources`, `accounts` | where the idle user's password is known; MySQL's accounts |
//! | `guard`, `bluegreen` | the in-use guard; Blue/Green deployments |
//! | `lease`, `record`, `invocation` | the lease and user claims; the step record; Secrets Manager's calls |
//! | `versions`, `early_login` | idempotent secret writes and reads; the login opened ahead |
//! | `ports`, `clock` | the narrow traits the engine talks through, time among them |
//! | `abort`, `forget` | an operator's commands, under the lease |
//! | `errors`, `settings`, `request`, `report`, `shutdown` | what their names say |

pub mod abort;
mod accounts;
mod begin;
pub mod bluegreen;
pub mod clock;
mod early_login;
mod errors;
pub mod forget;
pub mod guard;
pub mod invocation;
pub mod lease;
pub mod ports;
mod protocol;
pub mod record;
mod report;
mod request;
mod retry;
mod rotator;
mod run;
mod settings;
mod shutdown;
mod sources;
mod versions;

#[cfg(test)]
pub(crate) mod fakes;
#[cfg(test)]
mod tests;

pub(crate) use accounts::unlisted_account;
pub(crate) use begin::left_by_us;
pub use clock::{Clock, OffsetClock, SystemClock};
pub use errors::RotationError;
pub use invocation::Invocation;
pub use request::{Completed, Outcome, Request};
pub use rotator::Rotator;
pub use settings::{LeaseWait, RetryPolicy, Settings, DEFAULT_MIN_INTERVAL};
pub use shutdown::Shutdown;
pub use versions::proxy_token;
