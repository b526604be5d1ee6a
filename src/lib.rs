//! Zero-downtime password rotation for RDS behind RDS Proxy. The protocol reads top to
//! bottom in `rotation::protocol`; the book under docs/ explains it.

pub mod adopt;
pub mod app;
pub mod aws;
pub mod calls;
pub mod check;
pub mod cli;
pub mod db;
pub mod entropy;
pub mod failpoint;
pub mod lambda;
pub mod message;
pub mod metrics;
pub mod mutants;
pub mod password;
pub mod ratelimit;
pub mod rotation;
pub mod secret;
#[cfg(test)]
mod sim;
pub mod telemetry;
pub mod worker;

/// The version and the git revision it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("ROTATOR_GIT_REVISION"),
    ")"
);
