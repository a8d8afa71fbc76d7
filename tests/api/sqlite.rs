//! The API suite on SQLite: each test's app on a file in a temporary folder.

use crate::{binary, smtp, support};

const BACKEND: helpers::Backend = helpers::Backend::Sqlite;

#[path = "helpers.rs"]
mod helpers;

#[path = "abuse.rs"]
mod abuse;
#[path = "bad_input.rs"]
mod bad_input;
#[path = "client_limit.rs"]
mod client_limit;
#[path = "confirm.rs"]
mod confirm;
#[path = "health.rs"]
mod health;
#[path = "metrics.rs"]
mod metrics;
#[path = "openapi.rs"]
mod openapi;
#[path = "outbox.rs"]
mod outbox;
#[path = "page.rs"]
mod page;
#[path = "privacy.rs"]
mod privacy;
#[path = "restart.rs"]
mod restart;
#[path = "secret.rs"]
mod secret;
#[path = "signup.rs"]
mod signup;
#[path = "slow_clients.rs"]
mod slow_clients;
#[path = "smtp_faults.rs"]
mod smtp_faults;
// SQLite's alone: see main.rs.
#[path = "storage_faults.rs"]
mod storage_faults;
