//! The states a row can be in, as enums: parsed where a row is read, matched exhaustively
//! everywhere else, and written back as the schema's strings with `as_str`.

/// What an outbox row sends. Its requester is never told which: every signup is answered the
/// same way, whether the address is new, pending or confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl EmailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EmailKind::Confirmation => "confirmation",
            EmailKind::AccountNotice => "account_notice",
            EmailKind::Suppressed => "suppressed",
        }
    }

    /// The schema's CHECK constraint allows only these three.
    pub(crate) fn parse(kind: &str) -> EmailKind {
        match kind {
            "account_notice" => EmailKind::AccountNotice,
            "suppressed" => EmailKind::Suppressed,
            _ => EmailKind::Confirmation,
        }
    }
}
