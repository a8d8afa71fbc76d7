//! What a signup writes (the user, the token's hash, the outbox row), and the reads and the write
//! behind the link: a signup request's state, a token's owner, confirming it.
//!
//! Signups are written in batches, many to a commit ([`Signups`]). Two instances may sign
//! one address up at the same moment; SQLite
//! never met that (its one writer did one signup at a time), so here the user row is the lock:
//! the first signup of an address inserts it (`ON CONFLICT DO NOTHING`: the second waits for the
//! first to commit, then inserts nothing), and a signup of an address that has a user locks its
//! row (`FOR UPDATE`) before it reads the last email, so the second of two signups sees the
//! first's email and the resend interval holds across instances. Neither ever sees a unique
//! violation.

use std::{collections::HashMap, sync::Arc};

use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::{
    PostgresStore,
    batch::Batch,
    health::{WriteHealth, is_server_fault},
    listener::{self, CHANNEL},
};
use crate::{
    domain::{SubscriberName, TokenHash},
    store::{
        Claim, EmailKind, NewSignup, OutboxId, OutboxState, SignupView, StoreError, StoredSignup,
        TokenOwner, UnknownState, UserStatus, millis,
    },
};

impl PostgresStore {
    /// Writes a signup, its token and its outbox row in one transaction, so an acknowledged
    /// signup always has its email in the database. Signing up again adds a token: the links
    /// already sent keep working until they expire or the address is confirmed. An address
    /// that has a user gets the email its state calls for, and the requester is not told which:
    ///
    /// - a pending address gets a confirmation with a token of its own, its name kept with the
    ///   token;
    /// - a confirmed address gets the account notice, and no token;
    /// - either way, if this address was sent an email less than the resend interval ago, the
    ///   row is `suppressed`: it sends nothing. Suppressed rows do not count as emails sent.
    ///
    /// Refused at once while the server is known not to take writes, as `/readyz` says.
    pub async fn create_signup(&self, new: NewSignup) -> Result<StoredSignup, StoreError> {
        let _in_flight = self.health.signup_started();
        if let Some(fault) = self.health.fault() {
            return Err(StoreError::Unwritable(fault));
        }
        self.signups.write(new).await
    }

    /// A signup request, by the id its sender was given.
    pub async fn signup(&self, signup_id: &str) -> Result<Option<SignupView>, StoreError> {
        let row = sqlx::query!(
            "SELECT signup_id, created_at, mode, state, attempts, next_attempt_at, sent_at
             FROM email_outbox WHERE signup_id = $1",
            signup_id
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SignupView {
                id: r.signup_id,
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
        let row = sqlx::query!(
            "SELECT u.id, u.status, t.expires_at, t.name
             FROM confirmation_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = $1",
            &hash.0[..]
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(TokenOwner {
                user_id: r.id.to_string(),
                status: r.status.parse()?,
                expires_at: r.expires_at,
                name: r.name,
            })
        })
        .transpose()
    }

    /// Confirms the pending user a token belongs to, who takes the name that token's request
    /// gave (if it gave one). `false` if it was confirmed already, so two clicks racing on one
    /// link (on one instance or two) confirm once and both learn the outcome.
    pub async fn confirm(&self, owner: &TokenOwner, now: i64) -> Result<bool, StoreError> {
        // The id came from `token_owner`, so it parses; if it does not, no user has it.
        let Ok(user_id) = Uuid::parse_str(&owner.user_id) else {
            return Ok(false);
        };
        let done = sqlx::query!(
            "UPDATE users SET status = 'confirmed', confirmed_at = $2, name = COALESCE($3, name)
             WHERE id = $1 AND status = 'pending'",
            user_id,
            now,
            owner.name
        )
        .execute(&self.pool)
        .await;
        Ok(self.wrote(done)?.rows_affected() == 1)
    }
}

/// Signups, written many to a commit: group commit, as SQLite's writer does it.
///
/// A signup alone is six round trips (begin, user, token, outbox row, notification, commit) and
/// a commit that waits for the WAL flush. The signups waiting when a batch starts are written by
/// one statement for all the new addresses among them ([`insert_new_users`]), which commits on
/// its own: no `BEGIN` before it and no `COMMIT` after it, so a batch is one round trip, and the
/// task does not hold a transaction open while it reads the answer and sends the next command
/// (measured on the sending floor bench, a batch spent a third of its time on those: BENCHMARKS.md,
/// 9.5). The others, addresses that have a user, are written after it statement by statement, in
/// a transaction of their own, which sees the users the statement created.
pub(super) struct Signups {
    /// This instance, in its notifications' payloads (see [`PostgresStore::hear_new_emails`]).
    pub(super) instance: Arc<str>,
    /// Told of a server fault that the repeat signups meet after the new ones have committed,
    /// which the batch cannot report as its own failure (see [`write_repeats`]).
    pub(super) health: Arc<WriteHealth>,
}

impl Batch for Signups {
    type Request = NewSignup;
    type Answer = StoredSignup;

    async fn write(
        &self,
        pool: &PgPool,
        signups: &[NewSignup],
    ) -> Result<Vec<Result<StoredSignup, StoreError>>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        // One statement, so it commits whole or not at all. On an error from the server nothing
        // of it is written, and the batcher may write its signups again one by one. (An error
        // on confirmd's side after the commit, such as a row it cannot decode, which the types
        // checked at build time rule out, or the connection lost before the answer, as with
        // any commit, would leave its signups written and answered with an error.)
        let mut written = insert_new_users(&mut conn, &self.instance, signups).await?;
        let again: Vec<&NewSignup> = signups
            .iter()
            .filter(|new| !written.contains_key(&new.signup_id))
            .collect();
        // From here the new addresses are written, so no error may fail the batch: writing them
        // again would find their addresses taken and write each a second email.
        let mut again = write_repeats(&mut conn, &self.instance, &self.health, &again).await;
        Ok(signups
            .iter()
            .map(|new| {
                let answer = match written.remove(&new.signup_id) {
                    Some(stored) => Ok(stored),
                    None => again
                        .remove(&new.signup_id)
                        .expect("a signup not written as new was written again"),
                };
                answer.map(|stored| StoredSignup {
                    group_size: signups.len(),
                    ..stored
                })
            })
            .collect())
    }
}

/// Signups of addresses that have a user (or that a signup earlier in the batch created), by
/// signup id: together in one transaction, or, if that fails (two instances' batches that
/// share two such addresses can deadlock, say), each in a transaction of its own, so only a
/// signup at fault gets the error. A server fault (see [`is_server_fault`]) is told to `health`
/// and refuses the signups not yet written, as the batcher does for a batch.
async fn write_repeats(
    conn: &mut PgConnection,
    instance: &str,
    health: &WriteHealth,
    signups: &[&NewSignup],
) -> HashMap<String, Result<StoredSignup, StoreError>> {
    if signups.is_empty() {
        return HashMap::new();
    }
    let together: Result<Vec<StoredSignup>, StoreError> = async {
        let mut tx = conn.begin().await?;
        let mut answers = Vec::with_capacity(signups.len());
        for new in signups {
            answers.push(write_signup(&mut tx, new).await?);
        }
        notify(&mut tx, instance, signups).await?;
        tx.commit().await?;
        Ok(answers)
    }
    .await;
    let mut fault = match together {
        Ok(answers) => {
            return signups
                .iter()
                .zip(answers)
                .map(|(new, stored)| (new.signup_id.clone(), Ok(stored)))
                .collect();
        }
        Err(error) => server_fault(health, &error),
    };
    let mut answers = HashMap::with_capacity(signups.len());
    for new in signups {
        let answer = match &fault {
            Some(fault) => Err(StoreError::Unwritable(fault.clone())),
            None => {
                let written = async {
                    let mut tx = conn.begin().await?;
                    let stored = write_signup(&mut tx, new).await?;
                    notify(&mut tx, instance, &[new]).await?;
                    tx.commit().await?;
                    Ok(stored)
                }
                .await;
                if let Err(error) = &written {
                    fault = server_fault(health, error);
                }
                written
            }
        };
        answers.insert(new.signup_id.clone(), answer);
    }
    answers
}

/// The fault, if `error` is the server's: told to `health`, for the signups still to write.
fn server_fault(health: &WriteHealth, error: &StoreError) -> Option<String> {
    match error {
        StoreError::Database(error) if is_server_fault(error) => {
            health.failed(error);
            Some(error.to_string())
        }
        _ => None,
    }
}

/// Writes the signups of addresses that have no user yet, with one statement: their users,
/// tokens and outbox rows, and one notification that counts the background rows. Returns them
/// by signup id; a signup missing from the answer found its address taken (by a user already
/// there, by an earlier signup of the same address in `signups`, or by another instance's
/// transaction, which the statement waited for) and wrote nothing.
///
/// The users are inserted in the order of their addresses, so two instances' batches that
/// share new addresses wait on each other in one order. (The repeat signups after it lock their
/// users in the order they arrived: two batches sharing two repeat addresses can deadlock, which
/// the server detects and the batch survives by writing its signups one at a time.)
async fn insert_new_users(
    tx: &mut PgConnection,
    instance: &str,
    signups: &[NewSignup],
) -> Result<HashMap<String, StoredSignup>, sqlx::Error> {
    let mut order: Vec<&NewSignup> = signups.iter().collect();
    order.sort_by(|a, b| a.email.key().cmp(b.email.key()));
    let user_ids: Vec<Uuid> = order.iter().map(|_| Uuid::now_v7()).collect();
    let keys: Vec<&str> = order.iter().map(|n| n.email.key()).collect();
    let recipients: Vec<&str> = order.iter().map(|n| n.email.as_str()).collect();
    let signup_ids: Vec<&str> = order.iter().map(|n| n.signup_id.as_str()).collect();
    let nonces: Vec<&[u8]> = order.iter().map(|n| &n.nonce.0[..]).collect();
    let hashes: Vec<&[u8]> = order.iter().map(|n| &n.token_hash.0[..]).collect();
    let names: Vec<Option<&str>> = order
        .iter()
        .map(|n| n.name.as_ref().map(SubscriberName::as_str))
        .collect();
    let expiries: Vec<i64> = order.iter().map(|n| n.token_expires_at).collect();
    let modes: Vec<&str> = order.iter().map(|n| n.mode.as_str()).collect();
    let leases: Vec<Option<i64>> = order.iter().map(|n| n.claim_for.map(millis)).collect();
    let request_ids: Vec<Option<&str>> = order.iter().map(|n| n.request_id.as_deref()).collect();
    let traces: Vec<Option<&str>> = order.iter().map(|n| n.trace_context.as_deref()).collect();
    let rows = sqlx::query!(
        r#"WITH asked AS (
               SELECT * FROM unnest($1::UUID[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BYTEA[],
                                    $6::BYTEA[], $7::TEXT[], $8::BIGINT[], $9::TEXT[],
                                    $10::BIGINT[], $11::TEXT[], $12::TEXT[])
                   WITH ORDINALITY
                   AS asked(user_id, email, recipient, signup_id, nonce, token_hash, name,
                            token_expires_at, mode, lease_ms, request_id, trace_context, place)
           ), users_new AS (
               INSERT INTO users (id, email, status, created_at)
               SELECT user_id, email, 'pending', confirmd_now_ms() FROM asked ORDER BY place
               ON CONFLICT (email) DO NOTHING
               RETURNING id
           ), fresh AS (
               SELECT asked.* FROM asked JOIN users_new ON users_new.id = asked.user_id
           ), tokens AS (
               INSERT INTO confirmation_tokens (token_hash, user_id, name, created_at, expires_at)
               SELECT token_hash, user_id, name, confirmd_now_ms(), token_expires_at FROM fresh
           ), emails AS (
               -- A sync row is written claimed by its request: in `sending`, leased, with a
               -- claim id.
               INSERT INTO email_outbox
                 (signup_id, user_id, kind, recipient, nonce, token_hash, mode, state, attempts,
                  next_attempt_at, lease_until, claim_id, request_id, trace_context, created_at)
               SELECT signup_id, user_id, 'confirmation', recipient, nonce, token_hash, mode,
                      CASE WHEN lease_ms IS NULL THEN 'queued' ELSE 'sending' END,
                      CASE WHEN lease_ms IS NULL THEN 0 ELSE 1 END,
                      confirmd_now_ms(), confirmd_now_ms() + lease_ms,
                      CASE WHEN lease_ms IS NOT NULL THEN nextval('email_outbox_claims') END,
                      request_id, trace_context, confirmd_now_ms()
               FROM fresh
               RETURNING id, signup_id, claim_id
           )
           -- One notification for the statement's background rows, delivered to the listeners
           -- of every instance when (and only if) this commits.
           SELECT id AS "id!", signup_id AS "signup_id!", claim_id,
                  (SELECT pg_notify($13, $14 || ':' || count(*)) FROM emails
                   WHERE claim_id IS NULL HAVING count(*) > 0)::TEXT AS notified
           FROM emails"#,
        &user_ids,
        &keys as &[&str],
        &recipients as &[&str],
        &signup_ids as &[&str],
        &nonces as &[&[u8]],
        &hashes as &[&[u8]],
        &names as &[Option<&str>],
        &expiries,
        &modes as &[&str],
        &leases as &[Option<i64>],
        &request_ids as &[Option<&str>],
        &traces as &[Option<&str>],
        CHANNEL,
        instance
    )
    .fetch_all(&mut *tx)
    .await?;
    let by_id: HashMap<&str, &NewSignup> =
        order.iter().map(|n| (n.signup_id.as_str(), *n)).collect();
    Ok(rows
        .into_iter()
        .map(|row| {
            let new = by_id[row.signup_id.as_str()];
            let stored = StoredSignup {
                signup_id: row.signup_id.clone(),
                outbox_id: OutboxId(row.id),
                email: new.email.as_str().to_owned(),
                kind: EmailKind::Confirmation,
                group_size: 1,
                claim: row.claim_id.map(|claim_id| Claim {
                    id: OutboxId(row.id),
                    claim_id,
                }),
            };
            (row.signup_id, stored)
        })
        .collect())
}

/// One notification, in the transaction `tx`, for the background rows of `signups`, which `tx`
/// wrote: delivered to the listeners of every instance when (and only if) it commits. One per
/// transaction, not one per row: PostgreSQL delivers a transaction's identical notifications
/// once, so rows notified one by one, each as one email, would be heard as one email.
async fn notify(
    tx: &mut PgConnection,
    instance: &str,
    signups: &[&NewSignup],
) -> Result<(), sqlx::Error> {
    let emails = signups.iter().filter(|new| new.claim_for.is_none()).count();
    if emails > 0 {
        let payload = listener::payload(instance, emails);
        sqlx::query!("SELECT pg_notify($1, $2)::TEXT", CHANNEL, payload)
            .fetch_one(&mut *tx)
            .await?;
    }
    Ok(())
}

/// One signup, statement by statement, in the transaction `tx`: the way for an address that has
/// a user already (or that a signup earlier in the same batch created). The caller notifies.
async fn write_signup(tx: &mut PgConnection, new: &NewSignup) -> Result<StoredSignup, StoreError> {
    let key = new.email.key();
    // At most twice round: the user row can vanish between the two statements only if the
    // pruner deleted it (an expired pending signup) in between, and then the second insert,
    // with a fresh snapshot, creates it.
    let mut attempts_left = 2;
    let (user_id, kind) = loop {
        let created = sqlx::query_scalar!(
            "INSERT INTO users (id, email, status, created_at)
                 VALUES ($1, $2, 'pending', confirmd_now_ms())
                 ON CONFLICT (email) DO NOTHING
                 RETURNING id",
            Uuid::now_v7(),
            key
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = created {
            break (id, EmailKind::Confirmation);
        }
        // Held until commit: a concurrent signup of this address waits here, then reads the
        // email this one wrote.
        let user = sqlx::query!(
            "SELECT id, status FROM users WHERE email = $1 FOR UPDATE",
            key
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user) = user else {
            attempts_left -= 1;
            if attempts_left == 0 {
                return Err(StoreError::Database(sqlx::Error::RowNotFound));
            }
            continue;
        };
        let too_soon = sqlx::query_scalar!(
            r#"SELECT COALESCE(MAX(created_at) > confirmd_now_ms() - $2, FALSE) AS "too_soon!"
                   FROM email_outbox WHERE user_id = $1 AND kind <> 'suppressed'"#,
            user.id,
            new.resend_interval_ms
        )
        .fetch_one(&mut *tx)
        .await?;
        let kind = match (too_soon, user.status.parse()?) {
            (true, _) => EmailKind::Suppressed,
            (false, UserStatus::Confirmed) => EmailKind::AccountNotice,
            (false, UserStatus::Pending) => EmailKind::Confirmation,
        };
        break (user.id, kind);
    };

    let (nonce, token_hash) = match kind {
        EmailKind::Confirmation => {
            let hash = &new.token_hash.0[..];
            sqlx::query!(
                    "INSERT INTO confirmation_tokens (token_hash, user_id, name, created_at, expires_at)
                     VALUES ($1, $2, $3, confirmd_now_ms(), $4)",
                    hash,
                    user_id,
                    new.name.as_ref().map(SubscriberName::as_str),
                    new.token_expires_at
                )
                .execute(&mut *tx)
                .await?;
            (Some(&new.nonce.0[..]), Some(hash))
        }
        EmailKind::AccountNotice | EmailKind::Suppressed => (None, None),
    };

    // A sync row is written claimed by its request: in `sending`, leased, with a claim id.
    let (state, attempts) = match new.claim_for {
        Some(_) => (OutboxState::Sending, 1),
        None => (OutboxState::Queued, 0),
    };
    let lease_ms = new.claim_for.map(millis);
    let row = sqlx::query!(
        "INSERT INTO email_outbox
               (signup_id, user_id, kind, recipient, nonce, token_hash, mode, state, attempts,
                next_attempt_at, lease_until, claim_id, request_id, trace_context, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, confirmd_now_ms(),
                     confirmd_now_ms() + $10,
                     CASE WHEN $10::BIGINT IS NOT NULL THEN nextval('email_outbox_claims') END,
                     $11, $12, confirmd_now_ms())
             RETURNING id, claim_id",
        new.signup_id,
        user_id,
        kind.as_str(),
        // The address as this request typed it: `users.email` holds only its key.
        new.email.as_str(),
        nonce,
        token_hash,
        new.mode.as_str(),
        state.as_str(),
        attempts,
        lease_ms,
        new.request_id.as_deref(),
        new.trace_context.as_deref()
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(StoredSignup {
        signup_id: new.signup_id.clone(),
        outbox_id: OutboxId(row.id),
        email: new.email.as_str().to_owned(),
        kind,
        group_size: 1,
        claim: row.claim_id.map(|claim_id| Claim {
            id: OutboxId(row.id),
            claim_id,
        }),
    })
}
