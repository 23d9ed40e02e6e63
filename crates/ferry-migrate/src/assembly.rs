//! A process tree arriving at the destination: one flow per process, rebuilt as one tree.
//!
//! Each flow (see `dest`) hands in its process's image (the root's flow also the manifest)
//! and waits; once every living member's image is in, the tree's vessels and mappings are
//! made on one thread (`TreeRebuild`: members are forked from their parents' vessels, so
//! one tracer holds them all). Each flow then fills its own process's memory, registers its
//! userfaultfd, and says so; once all did, the tree is finished, in tree order. The root's
//! flow starts the whole tree on `Commit`; the others learn their pid from the assembly.
//!
//! Any flow that fails after handing in its image fails the assembly: every other flow
//! stops waiting, and the tree's vessels die with it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_checkpoint::RestoreError;
use ferry_checkpoint::restore::tree::TreeRebuild;
use ferry_image::{ProcessImage, TreeImage};
use ferry_sys::Pid;
use ferry_sys::uffd::Uffd;
use tokio::sync::Notify;

use crate::pinned::Pinned;

/// What a member needs once the tree is built: its pid here and its lazy ranges.
pub(crate) type Built = (Pid, Vec<(u64, u64)>);

pub(crate) struct Assembly {
    id: String,
    state: std::sync::Mutex<State>,
    changed: Notify,
    rebuild: tokio::sync::Mutex<Option<Pinned<TreeRebuild>>>,
}

#[derive(Default)]
struct State {
    tree: Option<TreeImage>,
    /// Images handed in, by the pid they name.
    images: HashMap<i32, Arc<ProcessImage>>,
    building: bool,
    built: Option<HashMap<i32, Built>>,
    /// Members whose memory is in (or registered with a userfaultfd).
    prepared: HashSet<i32>,
    finishing: bool,
    finished: bool,
    /// Image pid → pid here, once the tree runs.
    started: Option<HashMap<i32, Pid>>,
    failed: Option<String>,
}

impl State {
    /// Every living member's image is in.
    fn complete(&self) -> bool {
        self.tree.as_ref().is_some_and(|t| {
            t.members
                .iter()
                .filter(|m| m.zombie.is_none())
                .all(|m| self.images.contains_key(&m.pid))
        })
    }

    fn living(&self) -> usize {
        self.tree.as_ref().map_or(0, |t| {
            t.members.iter().filter(|m| m.zombie.is_none()).count()
        })
    }
}

impl Assembly {
    pub(crate) fn new(id: &str) -> Arc<Assembly> {
        Arc::new(Assembly {
            id: id.to_string(),
            state: std::sync::Mutex::new(State::default()),
            changed: Notify::new(),
            rebuild: tokio::sync::Mutex::new(None),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, String> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| "the tree's assembly is poisoned".to_string())?;
        Ok(f(&mut s))
    }

    /// Waits until `ready` gives an answer, the assembly fails, or `timeout` passes.
    async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&State) -> Option<Result<T, String>>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.changed.notified();
            let answer = self.with(|s| match &s.failed {
                Some(why) => Some(Err(why.clone())),
                None => ready(s),
            })?;
            if let Some(a) = answer {
                return a;
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| format!("the tree's other processes did not arrive ({what})"))?;
            let _ = tokio::time::timeout(left, n).await;
        }
    }

    /// Fails the tree: every flow stops waiting, the vessels die.
    pub(crate) fn fail(&self, why: &str) {
        let _ = self.with(|s| {
            if s.failed.is_none() && s.started.is_none() {
                s.failed = Some(why.to_string());
            }
        });
        self.changed.notify_waiters();
    }

    /// Hands in a member's image (the root's with the manifest) and waits until the tree is
    /// built; returns the member's pid here and its lazy ranges.
    pub(crate) async fn build(
        self: &Arc<Assembly>,
        image: Arc<ProcessImage>,
        tree: Option<TreeImage>,
        timeout: Duration,
    ) -> Result<Built, String> {
        let me = image.control.pid;
        let build_now = self.with(|s| {
            if let Some(t) = tree {
                s.tree = Some(t);
            }
            s.images.insert(me, image);
            let now = s.complete() && !s.building;
            s.building |= now;
            now.then(|| (s.tree.clone(), s.images.clone()))
        })?;
        if let Some((Some(tree), images)) = build_now {
            let made = self.make(tree, images).await;
            self.with(|s| match made {
                Ok(built) => s.built = Some(built),
                Err(e) => s.failed = Some(e),
            })?;
            self.changed.notify_waiters();
        } else {
            self.changed.notify_waiters();
        }
        self.wait("building", timeout, |s| {
            s.built.as_ref().map(|b| {
                b.get(&me)
                    .cloned()
                    .ok_or_else(|| format!("pid {me} is no living process of the tree"))
            })
        })
        .await
    }

    /// The vessels and mappings of every member, on a thread of the tree's own.
    async fn make(
        &self,
        tree: TreeImage,
        images: HashMap<i32, Arc<ProcessImage>>,
    ) -> Result<HashMap<i32, Built>, String> {
        // What a peer sent is checked as an image read from disk is, before any process
        // exists: the manifest, then each image with the socket ends other members hold.
        ferry_image::validate_tree(&tree).map_err(|e| format!("{e} (the tree's manifest)"))?;
        let elsewhere = tree.split_ends();
        for (pid, image) in &images {
            ferry_image::validate::validate_in_tree(image, &elsewhere)
                .map_err(|e| format!("{e} (the image of pid {pid})"))?;
        }
        let origin = format!("migration {}", self.id);
        let pinned = Pinned::spawn("ferry-tree", move || {
            let ordered: Vec<Option<&ProcessImage>> = tree
                .members
                .iter()
                .map(|m| {
                    m.zombie
                        .is_none()
                        .then(|| images.get(&m.pid).map(|i| i.as_ref()))
                        .flatten()
                })
                .collect();
            TreeRebuild::new(Path::new(&origin), &tree, &ordered)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e: RestoreError| e.to_string())?;
        let built = pinned
            .call(|r| {
                let Some(r) = r.as_mut() else {
                    return HashMap::new();
                };
                r.members()
                    .into_iter()
                    .map(|(image_pid, i)| {
                        let lazy = r.member_mut(i).map(|b| b.lazy_ranges()).unwrap_or_default();
                        (image_pid, (r.pid(i), lazy))
                    })
                    .collect()
            })
            .await
            .map_err(|e| e.to_string())?;
        *self.rebuild.lock().await = Some(pinned);
        Ok(built)
    }

    /// Creates member `image_pid`'s userfaultfd from inside it, with `make`.
    pub(crate) async fn make_uffd(
        &self,
        image_pid: i32,
        make: impl FnOnce(&mut ferry_checkpoint::Builder) -> Result<Uffd, String> + Send + 'static,
    ) -> Result<Uffd, String> {
        let rebuild = self.rebuild.lock().await;
        let Some(r) = rebuild.as_ref() else {
            return Err("the tree is not built".into());
        };
        r.call(move |r| {
            let r = r.as_mut().ok_or("the tree is gone")?;
            let i = r.index_of(image_pid).ok_or("no such member")?;
            make(r.member_mut(i).ok_or("the member is gone")?)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Member `image_pid` has its memory; once every member has, the tree is finished (in
    /// tree order, still stopped). Waits for that.
    pub(crate) async fn prepared(&self, image_pid: i32, timeout: Duration) -> Result<(), String> {
        let finish_now = self.with(|s| {
            s.prepared.insert(image_pid);
            let now = s.prepared.len() == s.living() && !s.finishing;
            s.finishing |= now;
            now
        })?;
        if finish_now {
            let done = {
                let rebuild = self.rebuild.lock().await;
                match rebuild.as_ref() {
                    Some(r) => r
                        .call(|r| match r.as_mut() {
                            Some(r) => r.finish().map_err(|e| e.to_string()),
                            None => Err("the tree is gone".into()),
                        })
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r),
                    None => Err("the tree is not built".into()),
                }
            };
            self.with(|s| match done {
                Ok(()) => s.finished = true,
                Err(e) => s.failed = Some(e),
            })?;
        }
        self.changed.notify_waiters();
        self.wait("finishing", timeout, |s| s.finished.then_some(Ok(())))
            .await
    }

    /// Starts the tree (children first), on the root's `Commit`; returns the root's pid.
    pub(crate) async fn start(&self) -> Result<Pid, String> {
        let pinned = self.rebuild.lock().await.take();
        let started = match pinned {
            Some(r) => r
                .call(|r| match r.take() {
                    Some(r) => {
                        let living = r.members();
                        r.start().map_err(|e| e.to_string()).map(|members| {
                            living
                                .into_iter()
                                .map(|(image_pid, i)| (image_pid, members[i].0))
                                .collect::<HashMap<i32, Pid>>()
                        })
                    }
                    None => Err("the tree is gone".into()),
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r),
            None => Err("the tree is not built".into()),
        };
        let root = self.with(|s| match started {
            Ok(pids) => {
                let root = s
                    .tree
                    .as_ref()
                    .and_then(|t| pids.get(&t.root().pid).copied());
                s.started = Some(pids);
                root.ok_or_else(|| "the tree has no root".to_string())
            }
            Err(e) => {
                s.failed = Some(e.clone());
                Err(e)
            }
        })?;
        self.changed.notify_waiters();
        root
    }

    /// Waits until the tree runs; returns member `image_pid`'s pid here.
    pub(crate) async fn started(&self, image_pid: i32, timeout: Duration) -> Result<Pid, String> {
        self.wait("starting", timeout, |s| {
            s.started.as_ref().map(|p| {
                p.get(&image_pid)
                    .copied()
                    .ok_or_else(|| format!("pid {image_pid} did not start with the tree"))
            })
        })
        .await
    }
}
