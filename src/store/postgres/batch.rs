//! Batching of the senders' writes: the claims of one instance's workers, and the outcomes they
//! record, each written many to a statement.
//!
//! Every email costs a sender two writes, its claim and its outcome (one, in a drain, where the
//! outcome claims the next row: [`super::outbox`]), and each write alone is a round trip and a
//! commit that waits for the WAL to reach the disk. With 16 workers draining a
//! backlog, 16 claims are in flight at once; written one by one they are 16 commits, written
//! together one. So each kind of write has a task of its own that takes every request waiting
//! when it starts a statement and writes them all with it; a request that arrives alone is
//! written at once, never held back for company. Under load the batches grow by themselves,
//! because requests pile up while the previous statement runs.
//!
//! Every claim in a batch is one a worker asked for while holding an SMTP connection for it
//! (its own row, or, having lost that to another sender, the oldest due one), so no lease
//! starts before its send can: a batch claims as many rows as there are workers ready to send,
//! never more.
//!
//! A batch that fails for the server's sake (connection lost, disk full) fails every request in
//! it: written alone, each would meet the same fault. One that fails for any other reason (a
//! deadlock between two instances' outcome batches, say) is written again one request at a time,
//! so only a request at fault gets the error.

use std::{future::Future, sync::Arc};

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::health::{WriteHealth, is_server_fault};
use crate::{store::StoreError, supervise::Tasks};

/// Most requests written by one statement: bounds the wait of the last one in a batch.
const MAX_BATCH: usize = 64;

/// Requests waiting for their batch beyond which callers wait to hand theirs over.
const QUEUE: usize = 1024;

/// A kind of write that can be batched.
pub(super) trait Batch: Send + Sync + 'static {
    type Request: Send + Sync + 'static;
    type Answer: Send + 'static;

    /// Writes `requests` together, and answers each in order. The outer error failed the whole
    /// batch (nothing of it was written); an inner one is the answer to one request.
    fn write(
        &self,
        pool: &PgPool,
        requests: &[Self::Request],
    ) -> impl Future<Output = Result<Vec<Result<Self::Answer, StoreError>>, sqlx::Error>> + Send;
}

struct Pending<B: Batch> {
    request: B::Request,
    answer: oneshot::Sender<Result<B::Answer, StoreError>>,
}

/// The way to one batching task; cheap to clone.
pub(super) struct Batcher<B: Batch> {
    queue: mpsc::Sender<Pending<B>>,
}

impl<B: Batch> Clone for Batcher<B> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
        }
    }
}

impl<B: Batch> std::fmt::Debug for Batcher<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batcher")
    }
}

impl<B: Batch> Batcher<B> {
    /// Starts the task that writes `B`'s batches, supervised as `name`. It ends when the last
    /// `Batcher` is dropped; after a panic, the requests of the batch in hand get
    /// [`StoreError::WriterStopped`] and the next run writes the rest.
    pub(super) fn start(
        name: &'static str,
        batch: B,
        pool: PgPool,
        health: Arc<WriteHealth>,
        tasks: &Tasks,
    ) -> Batcher<B> {
        let (queue, waiting) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Mutex::new(waiting));
        let batch = Arc::new(batch);
        tokio::spawn(tasks.supervise(name, move || {
            let (batch, pool, health, waiting) =
                (batch.clone(), pool.clone(), health.clone(), waiting.clone());
            async move {
                let mut waiting = waiting.lock().await;
                write_batches(&*batch, &pool, &health, &mut waiting).await;
            }
        }));
        Batcher { queue }
    }

    /// Writes `request` with whatever else waits, and answers once its batch has committed.
    pub(super) async fn write(&self, request: B::Request) -> Result<B::Answer, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Pending { request, answer })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answered.await.map_err(|_| StoreError::WriterStopped)?
    }
}

async fn write_batches<B: Batch>(
    kind: &B,
    pool: &PgPool,
    health: &WriteHealth,
    waiting: &mut mpsc::Receiver<Pending<B>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (requests, answers): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|pending| (pending.request, pending.answer))
            .unzip();
        for (answer, outcome) in answers
            .into_iter()
            .zip(write_or_split(kind, pool, health, &requests).await)
        {
            // The caller may have gone (its task was cancelled): what was written stands.
            let _ = answer.send(outcome);
        }
    }
}

/// Writes a batch, or each of its requests alone if the batch failed for a reason that may be
/// one request's (see the module docs); tells `health` what the writes showed.
async fn write_or_split<B: Batch>(
    kind: &B,
    pool: &PgPool,
    health: &WriteHealth,
    requests: &[B::Request],
) -> Vec<Result<B::Answer, StoreError>> {
    match kind.write(pool, requests).await {
        Ok(answers) => {
            // A batch can commit and still meet a fault in a later statement, which it answers
            // as `Unwritable` after telling `health` (see `signup::write_repeats`).
            if !answers
                .iter()
                .any(|answer| matches!(answer, Err(StoreError::Unwritable(_))))
            {
                health.proven_writable();
            }
            answers
        }
        Err(error) if is_server_fault(&error) || requests.len() == 1 => {
            health.failed(&error);
            let fault = error.to_string();
            let mut answers = Vec::with_capacity(requests.len());
            answers.push(Err(StoreError::Database(error)));
            answers.extend((1..requests.len()).map(|_| Err(StoreError::Unwritable(fault.clone()))));
            answers
        }
        Err(_) => {
            let mut answers = Vec::with_capacity(requests.len());
            let mut fault = None;
            for request in requests {
                // Once the server itself fails, the rest would only meet the same fault, each
                // after its own acquire timeout.
                if let Some(fault) = &fault {
                    answers.push(Err(StoreError::Unwritable(String::clone(fault))));
                    continue;
                }
                let answer = match kind.write(pool, std::slice::from_ref(request)).await {
                    Ok(mut answer) => {
                        health.proven_writable();
                        answer.pop().expect("one answer per request")
                    }
                    Err(error) => {
                        health.failed(&error);
                        if is_server_fault(&error) {
                            fault = Some(error.to_string());
                        }
                        Err(StoreError::Database(error))
                    }
                };
                answers.push(answer);
            }
            answers
        }
    }
}
