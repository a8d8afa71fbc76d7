//! The states a row can be in, as enums: parsed where a row is read (a value the code does not
//! know is an [`UnknownState`] error, never a silent default), matched exhaustively everywhere
//! else, and written back as the schema's strings with `as_str`, which is also what the JSON
//! answers, the metrics and the operator's report show.

use std::{fmt, str::FromStr};

/// A state string the schema's CHECK constraints do not allow: a database written by a newer
/// confirmd, or edited by hand. Reported, not guessed at.
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {value:?} in the database")]
pub struct UnknownState {
    what: &'static str,
    value: String,
}

impl UnknownState {
    /// A `value` of the column that holds `what`, which no variant matches.
    pub(crate) fn new(what: &'static str, value: &str) -> UnknownState {
        UnknownState {
            what,
            value: value.chars().take(32).collect(),
        }
    }
}

/// Writes the `as_str`/`FromStr`/`Display` trio for a state enum, from one table of
/// variant <-> schema string, so the two directions cannot disagree.
macro_rules! state_strings {
    ($type:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $type {
            /// The schema's string for this state.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($type::$variant => $text,)+
                }
            }
        }

        impl FromStr for $type {
            type Err = UnknownState;

            fn from_str(value: &str) -> Result<Self, Self::Err> {
                match value {
                    $($text => Ok($type::$variant),)+
                    _ => Err(UnknownState::new($what, value)),
                }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// Where an outbox row stands. A row is written `queued` (background) or `sending` (sync: claimed
/// by its request), and a sender moves it on:
///
/// ```text
/// queued --claim--> sending --sent--> sent
///    ^                 |
///    +----retry--------+--give up--> failed --(operator requeues)--> queued
/// ```
///
/// A lease that runs out also takes `sending` back to `queued` (its sender died mid-send).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxState {
    /// Waits for a sender, due at its `next_attempt_at`.
    Queued,
    /// Claimed by a sender, under a lease.
    Sending,
    /// The SMTP server accepted it.
    Sent,
    /// Given up: rejected for good, or out of attempts. Kept for the operator.
    Failed,
    /// Replaced before it was sent. No code writes it any more; rows from older versions may
    /// hold it, and it stays a state a row can be in.
    Superseded,
}

state_strings!(OutboxState, "outbox state", {
    Queued => "queued",
    Sending => "sending",
    Sent => "sent",
    Failed => "failed",
    Superseded => "superseded",
});

/// Where a user (one address) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserStatus {
    /// Signed up, no link confirmed yet.
    Pending,
    /// A link was confirmed: the address is the user's.
    Confirmed,
}

state_strings!(UserStatus, "user status", {
    Pending => "pending",
    Confirmed => "confirmed",
});

/// What an outbox row sends. Its requester is never told which: every signup is answered the
/// same way, whether the address is new, pending or confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmailKind {
    /// The confirmation link, to an address that has not confirmed yet.
    Confirmation,
    /// "You already have an account", to a confirmed address: fixed text, nothing the requester
    /// chose.
    AccountNotice,
    /// Nothing: this address was sent an email less than the resend interval ago. The row goes
    /// through the same states as one that sends, so its requester sees the same thing.
    Suppressed,
}

state_strings!(EmailKind, "email kind", {
    Confirmation => "confirmation",
    AccountNotice => "account_notice",
    Suppressed => "suppressed",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_as_itself_and_an_unknown_one_is_an_error() {
        use OutboxState::*;
        for state in [Queued, Sending, Sent, Failed, Superseded] {
            assert_eq!(state.as_str().parse::<OutboxState>().unwrap(), state);
        }
        for status in [UserStatus::Pending, UserStatus::Confirmed] {
            assert_eq!(status.as_str().parse::<UserStatus>().unwrap(), status);
        }
        use EmailKind::*;
        for kind in [Confirmation, AccountNotice, Suppressed] {
            assert_eq!(kind.as_str().parse::<EmailKind>().unwrap(), kind);
        }
        // Before, an unknown kind was read as a confirmation.
        assert!("newsletter".parse::<EmailKind>().is_err());
        assert!("Queued".parse::<OutboxState>().is_err());
        assert!("deleted".parse::<UserStatus>().is_err());
    }
}
