//! The kit every integration test shares, one copy of each part: a free port ([`free_port`]),
//! the app started inside the test process ([`app`]), the real binary as a child process
//! ([`binary`] for a command run to the end, [`process`] for a service that keeps running), the
//! confirmation link in an email ([`links`]), the SMTP server the app sends to ([`smtp`]), the
//! trace collector it exports to ([`otlp`]), bursts of signups from many clients ([`burst`]),
//! and PostgreSQL databases and servers of the tests' own ([`postgres`]).
//!
//! A test includes it with `mod support;` (`#[path = "../support/mod.rs"] mod support;` from a
//! folder such as `tests/api/`) and names the parts it uses.

// Each integration test binary uses a different subset of the kit.
#![allow(dead_code)]

pub mod app;
pub mod binary;
pub mod burst;
pub mod links;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod smtp;

/// A port nobody listens on: bound by the OS, then released.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("the OS hands out a free port")
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}
