//! Integration tests: the real application on a random port, a temporary SQLite file, and an
//! SMTP server inside the test process that receives the email (or fails on purpose).

#[path = "../support/mod.rs"]
mod support;
use support::{binary, smtp};

mod helpers;

mod abuse;
mod bad_input;
mod client_limit;
mod confirm;
mod health;
mod metrics;
mod openapi;
mod outbox;
mod page;
mod privacy;
mod restart;
mod secret;
mod signup;
mod slow_clients;
mod smtp_faults;
mod storage_faults;
