//! Test harness for the real local stack (PostgreSQL and moto, started by `scripts/local-stack`).
//! Each test gets fresh resources: its own database, users, secrets and DynamoDB table.
#![allow(dead_code)]

pub mod lambda;
pub mod mariadb;

// One file per concern; everything is re-exported, so tests keep `use common::*`.
mod app;
mod harness;
mod pair;
mod process;
mod proxy;
mod queues;
mod stack;

// Each test uses only some of them.
#[allow(unused_imports)]
pub use self::{app::*, harness::*, pair::*, process::*, proxy::*, queues::*, stack::*};
