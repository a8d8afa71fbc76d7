//! What a signup writes (the user, the token's hash, the outbox row), and the reads and the write
//! behind the link: a signup request's state, a token's owner, confirming it.
//!
//! The writes run inside the group-commit [`writer`](super::writer)'s transactions; the rest on
//! the store's pools.

use std::collections::HashMap;

use sqlx::SqliteConnection;

use super::SqliteStore;
use crate::{
    domain::{SubscriberName, TokenHash},
    store::{
        Claim, EmailKind, NewSignup, OutboxId, OutboxState, SignupView, StoreError, StoredSignup,
        TokenOwner, UnknownState, UserStatus, millis,
    },
};

/// A row of [`insert_new_users`], as JSON for `json_each`.
#[derive(serde::Serialize)]
struct NewUserRow<'a> {
    id: String,
    signup_id: &'a str,
    /// The address to send to, for the outbox.
    email: &'a str,
    /// What `users.email` holds: the address's comparison key, so one mailbox is one user.
    key: &'a str,
    name: Option<&'a str>,
    /// Hex, like the hash: JSON has no bytes, and SQLite's `unhex` turns them back into BLOBs.
    nonce: String,
    token_hash: String,
    token_expires_at: i64,
    mode: &'static str,
    state: &'static str,
    attempts: i64,
    /// For a row written claimed (sync mode): the end of the request's lease.
    lease_until: Option<i64>,
    request_id: Option<&'a str>,
    trace_context: Option<&'a str>,
    now: i64,
}

/// Writes signups of addresses that have no user yet (and appear once): one statement per
/// table for all of them. The user starts without a name: the name waits with the token until
/// its link is confirmed.
pub(super) async fn insert_new_users(
    conn: &mut SqliteConnection,
    signups: &[&NewSignup],
) -> Result<Vec<StoredSignup>, sqlx::Error> {
    if signups.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<NewUserRow> = signups
        .iter()
        .map(|new| {
            let (state, attempts) = outbox_start(new);
            NewUserRow {
                id: uuid::Uuid::now_v7().to_string(),
                signup_id: &new.signup_id,
                email: new.email.as_str(),
                key: new.email.key(),
                name: new.name.as_ref().map(SubscriberName::as_str),
                nonce: hex(&new.nonce.0),
                token_hash: hex(&new.token_hash.0),
                token_expires_at: new.token_expires_at,
                mode: new.mode.as_str(),
                state: state.as_str(),
                attempts,
                lease_until: lease_until(new),
                request_id: new.request_id.as_deref(),
                trace_context: new.trace_context.as_deref(),
                now: new.now,
            }
        })
        .collect();
    let json = serde_json::to_string(&rows).expect("rows serialize");
    sqlx::query!(
        r#"INSERT INTO users (id, email, status, created_at)
           SELECT value ->> 'id', value ->> 'key', 'pending', value ->> 'now'
           FROM json_each(?1)"#,
        json
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        r#"INSERT INTO confirmation_tokens (token_hash, user_id, name, created_at, expires_at)
           SELECT unhex(value ->> 'token_hash'), value ->> 'id', value ->> 'name', value ->> 'now',
                  value ->> 'token_expires_at'
           FROM json_each(?1)"#,
        json
    )
    .execute(&mut *conn)
    .await?;
    let outbox: HashMap<String, (i64, Option<i64>)> = sqlx::query!(
        r#"INSERT INTO email_outbox
             (signup_id, user_id, kind, recipient, nonce, token_hash, mode, state, attempts,
              next_attempt_at, lease_until, claim_id, request_id, trace_context, created_at)
           SELECT value ->> 'signup_id', value ->> 'id', 'confirmation', value ->> 'email',
                  unhex(value ->> 'nonce'), unhex(value ->> 'token_hash'),
                  value ->> 'mode', value ->> 'state', value ->> 'attempts', value ->> 'now',
                  value ->> 'lease_until',
                  CASE WHEN value ->> 'lease_until' IS NOT NULL THEN random() END,
                  value ->> 'request_id', value ->> 'trace_context', value ->> 'now'
           FROM json_each(?1)
           RETURNING id AS "id!: i64", user_id AS "user_id!: String",
                     claim_id AS "claim_id: i64""#,
        json
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| (row.user_id, (row.id, row.claim_id)))
    .collect();
    Ok(rows
        .into_iter()
        .map(|row| {
            let (id, claim_id) = outbox[&row.id];
            StoredSignup {
                signup_id: row.signup_id.to_owned(),
                outbox_id: OutboxId(id),
                email: row.email.to_owned(),
                kind: EmailKind::Confirmation,
                group_size: 1,
                claim: claim_id.map(|claim_id| Claim {
                    id: OutboxId(id),
                    claim_id,
                }),
            }
        })
        .collect())
}

/// The state an outbox row starts in: sync rows are written already claimed by their request.
fn outbox_start(new: &NewSignup) -> (OutboxState, i64) {
    match new.claim_for {
        Some(_) => (OutboxState::Sending, 1),
        None => (OutboxState::Queued, 0),
    }
}

/// The end of the lease a sync row is written with.
fn lease_until(new: &NewSignup) -> Option<i64> {
    new.claim_for
        .map(|lease| new.now.saturating_add(millis(lease)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One signup's statements, inside the group's transaction, for an address that may have a user
/// already. It is never refused, and it never touches what earlier signups left: an address
/// that has a user gets the email its state calls for, and the requester is not told which.
///
/// - A pending address gets a confirmation with a token of its own, beside the tokens already
///   sent (their links keep working), its name kept with the token.
/// - A confirmed address gets the account notice, and no token.
/// - Either way, if this address was sent an email less than the resend interval ago, the row
///   is `suppressed`: it sends nothing. Suppressed rows do not count as emails sent, so a stream
///   of them cannot keep the owner from getting the next one.
pub(super) async fn write_signup(
    conn: &mut SqliteConnection,
    new: &NewSignup,
) -> Result<StoredSignup, StoreError> {
    let email = new.email.as_str();
    let existing = sqlx::query!(
        r#"SELECT id AS "id!", email AS "email!", status AS "status!" FROM users WHERE email = ?1"#,
        // `users.email` holds the comparison key; the outbox below gets the address as typed.
        new.email.key()
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(user) = existing else {
        // A new address: written as a group's new users are, as a group of one.
        let mut stored = insert_new_users(conn, &[new]).await?;
        return Ok(stored.pop().expect("one signup in, one written"));
    };

    let last_email_at = sqlx::query_scalar!(
        r#"SELECT MAX(created_at) AS "created_at: i64" FROM email_outbox
           WHERE user_id = ?1 AND kind != 'suppressed'"#,
        user.id
    )
    .fetch_one(&mut *conn)
    .await?;
    let too_soon =
        last_email_at.is_some_and(|last| last.saturating_add(new.resend_interval_ms) > new.now);
    let kind = match (too_soon, user.status.parse()?) {
        (true, _) => EmailKind::Suppressed,
        (false, UserStatus::Confirmed) => EmailKind::AccountNotice,
        (false, UserStatus::Pending) => EmailKind::Confirmation,
    };

    let (nonce, token_hash) = match kind {
        EmailKind::Confirmation => {
            let (hash, name) = (
                &new.token_hash.0[..],
                new.name.as_ref().map(SubscriberName::as_str),
            );
            sqlx::query!(
                "INSERT INTO confirmation_tokens (token_hash, user_id, name, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                hash,
                user.id,
                name,
                new.now,
                new.token_expires_at
            )
            .execute(&mut *conn)
            .await?;
            (Some(&new.nonce.0[..]), Some(hash))
        }
        EmailKind::AccountNotice | EmailKind::Suppressed => (None, None),
    };

    let (mode, kind_name) = (new.mode.as_str(), kind.as_str());
    let (state, attempts) = outbox_start(new);
    let state = state.as_str();
    let lease_until = lease_until(new);
    let row = sqlx::query!(
        r#"INSERT INTO email_outbox
             (signup_id, user_id, kind, recipient, nonce, token_hash, mode, state, attempts,
              next_attempt_at, lease_until, claim_id, request_id, trace_context, created_at)
           VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,
                   CASE WHEN ?11 IS NOT NULL THEN random() END, ?12, ?13, ?10)
           RETURNING id AS "id!", claim_id"#,
        new.signup_id,
        user.id,
        kind_name,
        // The address as this request typed it: `users.email` holds only its comparison key.
        email,
        nonce,
        token_hash,
        mode,
        state,
        attempts,
        new.now,
        lease_until,
        new.request_id.as_deref(),
        new.trace_context.as_deref()
    )
    .fetch_one(&mut *conn)
    .await?;

    Ok(StoredSignup {
        signup_id: new.signup_id.clone(),
        outbox_id: OutboxId(row.id),
        email: email.to_owned(),
        kind,
        group_size: 1,
        claim: row.claim_id.map(|claim_id| Claim {
            id: OutboxId(row.id),
            claim_id,
        }),
    })
}

impl SqliteStore {
    /// A signup request, by the id its sender was given.
    pub async fn signup(&self, signup_id: &str) -> Result<Option<SignupView>, StoreError> {
        let row = sqlx::query!(
            r#"SELECT signup_id AS "id!", created_at AS "created_at!", mode AS "mode!",
                      state AS "state!", attempts AS "attempts!",
                      next_attempt_at AS "next_attempt_at!", sent_at
               FROM email_outbox WHERE signup_id = ?1"#,
            signup_id
        )
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| {
            Ok(SignupView {
                id: r.id,
                created_at: r.created_at,
                mode: r
                    .mode
                    .parse()
                    .map_err(|_| UnknownState::new("delivery mode", &r.mode))?,
                state: r.state.parse()?,
                attempts: r.attempts,
                next_attempt_at: r.next_attempt_at,
                sent_at: r.sent_at,
            })
        })
        .transpose()
    }

    /// Who a token belongs to, if anyone.
    pub async fn token_owner(&self, hash: &TokenHash) -> Result<Option<TokenOwner>, StoreError> {
        let hash = &hash.0[..];
        let row = sqlx::query!(
            r#"SELECT u.id AS "user_id!", u.status AS "status!",
                      t.expires_at AS "expires_at!", t.name
               FROM confirmation_tokens t JOIN users u ON u.id = t.user_id
               WHERE t.token_hash = ?1"#,
            hash
        )
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| {
            Ok(TokenOwner {
                user_id: r.user_id,
                status: r.status.parse()?,
                expires_at: r.expires_at,
                name: r.name,
            })
        })
        .transpose()
    }

    /// Confirms the pending user a token belongs to, who takes the name that token's request
    /// gave (if it gave one). `false` if it was confirmed already, so two clicks racing on one
    /// link confirm once and both learn the outcome; a name then changes nothing.
    pub async fn confirm(&self, owner: &TokenOwner, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query!(
            "UPDATE users SET status = 'confirmed', confirmed_at = ?2, name = COALESCE(?3, name)
             WHERE id = ?1 AND status = 'pending'",
            owner.user_id,
            now,
            owner.name
        )
        .execute(&self.writer)
        .await;
        let done = self.wrote(done)?;
        Ok(done.rows_affected() == 1)
    }
}
