//! The values that cross the store's seam: what a signup writes, what a sender claims, what the
//! handlers and the operator read. Backend-neutral: each backend builds them from its own rows.

use std::time::Duration;

use crate::domain::{DeliveryMode, SubscriberEmail, SubscriberName, TokenHash, TokenNonce};

use super::state::{EmailKind, OutboxState, UnknownState, UserStatus};

/// The primary key of an `email_outbox` row: what travels through the workers' channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutboxId(pub i64);

impl std::fmt::Display for OutboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A sender's hold on an outbox row: its id and the claim id the claiming statement wrote into
/// it. Outcomes are written only while the row still carries this claim id, so a sender whose
/// lease ran out (and whose row the sweeper gave to another sender) cannot overwrite the newer
/// sender's outcome. The fence is an id the database chose, not the lease's end: two claims
/// made in the same millisecond, or by instances whose clocks disagree, still differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub id: OutboxId,
    pub claim_id: i64,
}

/// What a signup writes, already parsed. Owned, because it travels to the group-commit writer.
/// It carries no token: the outbox row keeps the nonce the token is derived from, and the user's
/// side the token's hash.
pub struct NewSignup {
    /// The signup request's public id (a random UUID): what its sender is told, and all it can
    /// ask about.
    pub signup_id: String,
    pub email: SubscriberEmail,
    /// Kept with the token, and given to the user only when that token's link is confirmed.
    pub name: Option<SubscriberName>,
    pub nonce: TokenNonce,
    pub token_hash: TokenHash,
    pub token_expires_at: i64,
    pub mode: DeliveryMode,
    pub request_id: Option<String>,
    /// The request's W3C trace context (`traceparent`), kept with the outbox row so that its
    /// delivery joins the signup's trace; `None` when traces are not exported.
    pub trace_context: Option<String>,
    /// For sync mode: the row is written already claimed by the request, leased for this long,
    /// so no worker or sweeper sends it at the same time. [`StoredSignup::claim`] is the claim.
    pub claim_for: Option<Duration>,
    /// An address gets no new email sooner than this after its last one.
    pub resend_interval_ms: i64,
    /// The caller's clock, Unix ms. SQLite stamps the rows with it (one process, one clock);
    /// PostgreSQL stamps them with its own clock instead, the one every instance's leases and
    /// due times are compared against.
    pub now: i64,
}

/// What a committed signup is known by.
#[derive(Debug, Clone)]
pub struct StoredSignup {
    pub signup_id: String,
    pub outbox_id: OutboxId,
    pub email: String,
    /// What its outbox row sends (for the operator's logs and for sync mode; never for the
    /// requester).
    pub kind: EmailKind,
    /// How many signups were committed in the same transaction, this one included.
    pub group_size: usize,
    /// The request's claim on its row, when it was written claimed (sync mode).
    pub claim: Option<Claim>,
}

/// An outbox row claimed for sending: everything needed to build and send the email.
/// (No `Debug`: a row written before tokens were derived may hold a raw token.)
#[derive(Clone)]
pub struct ClaimedEmail {
    pub claim: Claim,
    pub kind: EmailKind,
    pub recipient: String,
    /// What the link's token is derived from.
    pub nonce: Option<TokenNonce>,
    /// A raw token, on rows queued before tokens were derived (erased once sent).
    pub legacy_token: Option<String>,
    /// The hash stored for this row's link: if the secret changed since the signup, the new
    /// token's hash replaces it before the email goes out.
    pub token_hash: Option<TokenHash>,
    /// Attempts including this one.
    pub attempts: i64,
    pub request_id: Option<String>,
    /// The `traceparent` of the request that queued the row, if it was traced.
    pub trace_context: Option<String>,
    pub created_at: i64,
}

/// A claimed row as each backend's claiming statements return it (`sqlx::query_as!`), before
/// its kind and byte columns are parsed.
pub(crate) struct ClaimedRow {
    pub(crate) id: i64,
    pub(crate) claim_id: i64,
    pub(crate) kind: String,
    pub(crate) recipient: String,
    pub(crate) nonce: Option<Vec<u8>>,
    /// Only SQLite files from before tokens were derived hold one.
    pub(crate) legacy_token: Option<String>,
    pub(crate) token_hash: Option<Vec<u8>>,
    pub(crate) attempts: i64,
    pub(crate) request_id: Option<String>,
    pub(crate) trace_context: Option<String>,
    pub(crate) created_at: i64,
}

impl TryFrom<ClaimedRow> for ClaimedEmail {
    type Error = UnknownState;

    fn try_from(r: ClaimedRow) -> Result<ClaimedEmail, UnknownState> {
        Ok(ClaimedEmail {
            claim: Claim {
                id: OutboxId(r.id),
                claim_id: r.claim_id,
            },
            kind: r.kind.parse()?,
            recipient: r.recipient,
            nonce: r
                .nonce
                .and_then(|n| <[u8; 32]>::try_from(n).ok())
                .map(TokenNonce),
            legacy_token: r.legacy_token,
            token_hash: r
                .token_hash
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .map(TokenHash),
            attempts: r.attempts,
            request_id: r.request_id,
            trace_context: r.trace_context,
            created_at: r.created_at,
        })
    }
}

/// A signup request as its sender may see it, for `GET /signups/{id}`: its own email's delivery,
/// and nothing about the account (no name, no status, no error text, no kind).
#[derive(Debug, Clone)]
pub struct SignupView {
    pub id: String,
    pub created_at: i64,
    pub mode: DeliveryMode,
    pub state: OutboxState,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub sent_at: Option<i64>,
}

/// The user a token belongs to, for `GET /confirm`.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub user_id: String,
    pub status: UserStatus,
    pub expires_at: i64,
    /// The name the token's request gave, applied when this link confirms the address.
    pub name: Option<String>,
}

// The operator's view of the outbox, for `confirmd outbox`: what the queue holds,
// which emails failed and why, and putting failed emails back in the queue.

/// The queue as an operator sees it (`confirmd outbox`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub queued: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
    pub superseded: i64,
}

/// The states that stay small however long the service runs, for `/metrics`: each is counted
/// off an index that holds only its rows, so a scrape costs the same at any table size. Sent and
/// superseded rows, the bulk of the table, are not counted here: `confirmd_emails_total` counts
/// sends as they happen, and the pruner deletes the rows after `retention.sent_days`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveCounts {
    pub queued: i64,
    pub sending: i64,
    pub failed: i64,
}

/// One kind of row the pruner deletes, with the times that make a row old enough: each backend
/// deletes at most a batch of them per statement (see `Store::prune`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Sent and superseded emails written before this time.
    DoneEmails { written_before: i64 },
    /// Failed emails written before this time: operators had until then to requeue them.
    FailedEmails { written_before: i64 },
    /// Pending users whose every link expired before `expired_before`, with their tokens and
    /// emails, unless an email of theirs is still queued or being sent, or failed at or after
    /// `failed_since` (an operator may still requeue it, and its link is renewed when it is
    /// sent). Only tokens created before `created_before` are read: a link lasts
    /// `token.ttl_hours` from about its token's creation or longer, so a token created since is
    /// left for a later pass (on PostgreSQL, late by the signup's write delay and clock skew).
    ExpiredSignups {
        expired_before: i64,
        created_before: i64,
        failed_since: i64,
    },
    /// Tokens of confirmed users that expired before `expired_before`, of those created before
    /// `created_before`: their links only ever said "already confirmed" or "expired".
    ExpiredTokens {
        expired_before: i64,
        created_before: i64,
    },
}

/// What one prune batch did (see `Store::prune`): one statement, or two for PostgreSQL's
/// expired signups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Rows deleted: emails, tokens, or users (not counting the tokens and emails that went
    /// with them).
    pub rows: u64,
    /// The statement found as many rows as its limit let it take, so more may be left. Not
    /// the same as `rows` reaching the limit: expired signups are found by their tokens, and a
    /// user who signed up twice has two.
    pub full: bool,
}

impl Pruned {
    /// A statement that deletes each row it finds.
    pub(crate) fn deleted(rows: u64, limit: i64) -> Pruned {
        Pruned {
            rows,
            full: i64::try_from(rows).is_ok_and(|rows| rows >= limit),
        }
    }
}

impl Prune {
    /// Every [`Prune::label`], for zero lines before the first prune.
    pub const LABELS: [&'static str; 4] = [
        "sent_emails",
        "failed_emails",
        "pending_signups",
        "expired_tokens",
    ];

    /// The `what` label of `confirmd_pruned_rows_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Prune::DoneEmails { .. } => "sent_emails",
            Prune::FailedEmails { .. } => "failed_emails",
            Prune::ExpiredSignups { .. } => "pending_signups",
            Prune::ExpiredTokens { .. } => "expired_tokens",
        }
    }
}

/// What the outbox's rows send, for the operator: the requesters are never told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub confirmation: i64,
    pub account_notice: i64,
    pub suppressed: i64,
}

/// An email that will not be sent unless someone puts it back in the queue.
#[derive(Debug, Clone)]
pub struct FailedEmail {
    pub id: OutboxId,
    pub kind: EmailKind,
    pub recipient: String,
    pub attempts: i64,
    pub created_at: i64,
    pub last_error: Option<String>,
}

/// What `requeue` did with one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    Requeued,
    /// Only failed emails of pending users go back in the queue; this one is in `state`, its
    /// user `status`.
    NotFailed {
        state: OutboxState,
        status: UserStatus,
    },
    Unknown,
}
