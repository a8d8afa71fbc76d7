//! # confirmd
//!
//! Sign a user up and send the confirmation email, in one of two ways, so the difference can be
//! measured:
//!
//! - **sync**: the HTTP request waits while the email goes out over SMTP, then answers
//!   `201 Created`. Simple and ordered, and the user pays the mail server's latency.
//! - **background**: the request writes the email to an *outbox* table in the signup's own
//!   transaction, hands its id to a pool of tokio workers and answers `202 Accepted` at once.
//!   The email is as durable as the signup: a crash, an SMTP outage or a full queue delays it,
//!   never loses it.
//!
//! Data flows one way: [`http`] parses requests and calls [`delivery`], which owns the two modes
//! and the worker pool and uses [`store`] (every SQL statement of the project) and [`mail`] (the
//! message and the SMTP transport). [`startup`] wires them together for `main` and for the tests.
//!
//! The tooling is the default `tools` feature, which a production build leaves out
//! (`--no-default-features`): [`bench`](mod@bench) measures a running service; [`demo`] runs the
//! whole comparison in one process, against the [`catcher`], an SMTP server that can answer as
//! slowly as a real provider.

#[cfg(feature = "tools")]
pub mod bench;
/// The mail catcher lives in its own workspace crate, `confirmd-catcher` (`catcher/`).
#[cfg(feature = "tools")]
pub use confirmd_catcher as catcher;
pub mod cli;
pub mod config;
pub mod delivery;
#[cfg(feature = "tools")]
pub mod demo;
pub mod domain;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod secret;
pub mod startup;
pub mod store;
pub mod supervise;
pub mod telemetry;

mod clock;
mod templates;

pub use config::Settings;
pub use startup::Application;
