//! Sync or background: the choice a signup request makes, and the project's subject.

use std::{fmt, str::FromStr};

use serde::Deserialize;

/// How a signup's confirmation email is sent: the whole point of the project is to compare the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// The request waits for the SMTP server to accept the email.
    Sync,
    /// The request returns once the email is in the outbox; a worker sends it.
    #[serde(alias = "async")]
    Background,
}

impl DeliveryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::Sync => "sync",
            DeliveryMode::Background => "background",
        }
    }
}

impl fmt::Display for DeliveryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown delivery mode {0:?}: expected \"sync\" or \"background\" (or its alias \"async\")"
)]
pub struct UnknownMode(String);

impl FromStr for DeliveryMode {
    type Err = UnknownMode;

    /// `async` is accepted for `background`: it is the word the course this project grew from uses.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sync" => Ok(DeliveryMode::Sync),
            "background" | "async" => Ok(DeliveryMode::Background),
            other => Err(UnknownMode(other.chars().take(32).collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_is_another_name_for_background() {
        assert_eq!(
            "async".parse::<DeliveryMode>().unwrap(),
            DeliveryMode::Background
        );
        assert_eq!("sync".parse::<DeliveryMode>().unwrap(), DeliveryMode::Sync);
        assert!("SYNC".parse::<DeliveryMode>().is_err());
        assert!("".parse::<DeliveryMode>().is_err());
    }
}
