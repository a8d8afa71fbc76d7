//! Supervision of confirmd's long-lived internal tasks: the group-commit writer, the delivery
//! workers, the sweeper and the pruner.
//!
//! A bare `tokio::spawn` swallows a panic: the task is gone, its `JoinHandle` holds the panic
//! nobody reads, and the service goes on answering as if nothing happened (every signup 503 with
//! a dead writer, and the health checks green). [`Tasks::supervise`] runs a task's body and, when
//! it panics, logs the panic, counts it in `confirmd_task_restarts_total{task}`, marks the task
//! down (so `/readyz` answers 503) for a short pause, and starts the body again. A body that
//! panics again and again is restarted at most once per [`MAX_PAUSE`], never in a hot loop.
//!
//! Restarting is safe for all of them because none keeps state of its own across iterations:
//! the outbox table is the queue, a claimed row's lease brings it back, and the writer's queue of
//! signups lives outside its body (the signups of the group in hand when it panicked get an error
//! answer, since their reply channels are dropped with the body).

use std::{
    collections::BTreeMap,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::FutureExt;
use prometheus::{IntCounterVec, Opts};
use tracing::{error, info};

/// The pause before the first restart; it doubles at each panic that follows a short run.
const FIRST_PAUSE: Duration = Duration::from_millis(200);

/// The longest pause between two restarts of a task that keeps panicking.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// A run at least this long resets the pause: the task was healthy, the panic is a new one.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The supervised tasks of one application: whether each is up, and how often each restarted.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

struct Inner {
    /// Per task name: how many copies of it are running now, and how many should be. A task
    /// is healthy when both agree (the worker pool registers one copy per worker).
    state: Mutex<BTreeMap<&'static str, Copies>>,
    restarts: IntCounterVec,
}

#[derive(Debug, Default, Clone, Copy)]
struct Copies {
    expected: usize,
    running: usize,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("state", &self.inner.state.lock().expect("not poisoned"))
            .finish_non_exhaustive()
    }
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new()
    }
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks {
            inner: Arc::new(Inner {
                state: Mutex::new(BTreeMap::new()),
                restarts: IntCounterVec::new(
                    Opts::new(
                        "confirmd_task_restarts_total",
                        "Internal tasks restarted after a panic, by task",
                    ),
                    &["task"],
                )
                .expect("valid counter"),
            }),
        }
    }

    /// The restart counter, for the application's metrics registry.
    pub fn restarts_counter(&self) -> IntCounterVec {
        self.inner.restarts.clone()
    }

    /// How many times `task` was restarted.
    pub fn restarts(&self, task: &str) -> u64 {
        self.inner.restarts.with_label_values(&[task]).get()
    }

    /// The tasks that are not all running (panicked and waiting for their restart, or stopped),
    /// for `/readyz`. Empty when every supervised task is up.
    pub fn down(&self) -> Vec<&'static str> {
        let state = self.inner.state.lock().expect("not poisoned");
        state
            .iter()
            .filter(|(_, copies)| copies.running < copies.expected)
            .map(|(name, _)| *name)
            .collect()
    }

    fn update(&self, task: &'static str, change: impl FnOnce(&mut Copies)) {
        let mut state = self.inner.state.lock().expect("not poisoned");
        change(state.entry(task).or_default());
    }

    /// Runs `body` until it returns, starting it again each time it panics (see the module
    /// docs). `body` is called once per run; whatever must survive a restart lives outside it.
    /// The task counts as expected from the moment this is called, so spawn the returned future
    /// right away.
    pub fn supervise<F, Fut>(
        &self,
        task: &'static str,
        mut body: F,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.update(task, |c| c.expected += 1);
        let tasks = self.clone();
        async move {
            let mut pause = FIRST_PAUSE;
            loop {
                tasks.update(task, |c| c.running += 1);
                let started = tokio::time::Instant::now();
                let run = AssertUnwindSafe(body()).catch_unwind().await;
                tasks.update(task, |c| c.running -= 1);
                let Err(panic) = run else {
                    // Finished on its own terms (shutdown): no longer expected to run.
                    tasks.update(task, |c| c.expected -= 1);
                    return;
                };
                if started.elapsed() >= HEALTHY_RUN {
                    pause = FIRST_PAUSE;
                }
                tasks.inner.restarts.with_label_values(&[task]).inc();
                error!(
                    task,
                    panic = panic_message(&panic),
                    restart_in_ms = pause.as_millis() as u64,
                    "internal task panicked; restarting it"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
                info!(task, "restarting internal task");
            }
        }
    }
}

/// The text of a panic's payload: `panic!` with a literal gives a `&str`, with a format a
/// `String`.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_once_is_restarted_counted_and_down_meanwhile() {
        let tasks = Tasks::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let supervised = tasks.supervise("flaky", {
            let runs = runs.clone();
            move || {
                let run = runs.fetch_add(1, Ordering::SeqCst);
                let mut released = released.clone();
                async move {
                    if run == 0 {
                        panic!("injected");
                    }
                    // The second run stays up until the test lets it finish.
                    released.wait_for(|done| *done).await.unwrap();
                }
            }
        });
        let handle = tokio::spawn(supervised);

        // Down while waiting for its restart, and counted.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tasks.restarts("flaky") == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never restarted");
            tokio::task::yield_now().await;
        }
        assert_eq!(tasks.down(), vec!["flaky"]);

        // Up again after the pause.
        while runs.load(Ordering::SeqCst) < 2 || !tasks.down().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "never came back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(tasks.restarts("flaky"), 1);

        // A body that returns is finished, not restarted.
        release.send(true).unwrap();
        handle.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(tasks.down().is_empty());
    }

    #[test]
    fn the_panic_message_is_read_from_either_payload() {
        let literal: Box<dyn std::any::Any + Send> = Box::new("boom");
        let formatted: Box<dyn std::any::Any + Send> = Box::new(format!("boom {}", 2));
        assert_eq!(panic_message(literal.as_ref()), "boom");
        assert_eq!(panic_message(formatted.as_ref()), "boom 2");
    }
}
