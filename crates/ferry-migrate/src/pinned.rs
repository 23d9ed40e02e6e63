//! State pinned to one OS thread, driven from async code.
//!
//! ptrace requests must come from the thread that attached, so a frozen source process
//! (`ferry_checkpoint::freeze::Frozen`) and a vessel under construction
//! (`ferry_checkpoint::Builder`) each live on a thread of their own. Async code sends them
//! closures ([`Pinned::call`]) and awaits the result; everything that needs no ptrace (page
//! reads and writes, userfaultfd, the network) stays on the async runtime. Dropping a
//! [`Pinned`] drops the state on its thread (a `Frozen` resumes its process, a vessel dies).

use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

type Job<S> = Box<dyn FnOnce(&mut Option<S>) + Send>;

/// The pinned thread is gone (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the {0} thread ended unexpectedly")]
pub struct PinnedGone(pub String);

pub struct Pinned<S: 'static> {
    name: String,
    tx: Option<mpsc::Sender<Job<S>>>,
    thread: Option<JoinHandle<()>>,
}

impl<S: 'static> Pinned<S> {
    /// Starts a thread named `name` and builds its state there with `init`.
    pub async fn spawn<E: Send + 'static>(
        name: &str,
        init: impl FnOnce() -> Result<S, E> + Send + 'static,
    ) -> Result<Result<Pinned<S>, E>, PinnedGone> {
        let (tx, rx) = mpsc::channel::<Job<S>>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), E>>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut state = match init() {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        Some(s)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut state);
                }
                drop(state);
            })
            .map_err(|_| PinnedGone(name.to_string()))?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(Ok(Pinned {
                name: name.to_string(),
                tx: Some(tx),
                thread: Some(thread),
            })),
            Ok(Err(e)) => {
                let _ = thread.join();
                Ok(Err(e))
            }
            Err(_) => Err(PinnedGone(name.to_string())),
        }
    }

    /// Runs `f` on the pinned thread with the state; `None` once [`Pinned::take`] consumed it.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Option<S>) -> R + Send + 'static,
    ) -> Result<R, PinnedGone> {
        let (tx, rx) = oneshot::channel();
        let job: Job<S> = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        self.tx
            .as_ref()
            .and_then(|t| t.send(job).ok())
            .ok_or_else(|| PinnedGone(self.name.clone()))?;
        rx.await.map_err(|_| PinnedGone(self.name.clone()))
    }
}

impl<S: 'static> Drop for Pinned<S> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not Send: the kind of state this exists for.
    struct Local(std::rc::Rc<u32>, std::thread::ThreadId);

    #[tokio::test]
    async fn runs_calls_on_one_thread() {
        let p = Pinned::spawn("test", || {
            Ok::<_, ()>(Local(std::rc::Rc::new(7), std::thread::current().id()))
        })
        .await
        .unwrap()
        .unwrap();
        let (v, same) = p
            .call(|s| {
                let s = s.as_ref().unwrap();
                (*s.0, s.1 == std::thread::current().id())
            })
            .await
            .unwrap();
        assert_eq!((v, same), (7, true));
        let gone = p.call(|s| s.take().is_some()).await.unwrap();
        assert!(gone);
        assert!(!p.call(|s| s.is_some()).await.unwrap());
    }

    #[tokio::test]
    async fn init_errors_come_back() {
        let r = Pinned::<Local>::spawn("test", || Err::<Local, _>("nope"))
            .await
            .unwrap();
        assert_eq!(r.err(), Some("nope"));
    }
}
