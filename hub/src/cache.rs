//! The hub's side of a result cache: what it asks of one. The binary
//! provides the cache (a folder, a Turborepo-protocol server); the hub only
//! says when a module is ready to be looked up and when a result is worth
//! keeping, so a hit never occupies a worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use muster_core::wire::types::Artifact;
use muster_core::{Ended, ModuleIndex};

/// A boxed future, as the cache's methods return.
pub type CacheFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the hub asks of a result cache.
pub trait ResultCache: Send + Sync + 'static {
    /// Looks up a module whose needs have all succeeded. On a hit the cache
    /// has put the entry's artifacts in the hub's store already.
    fn lookup(self: Arc<Self>, lookup: Lookup) -> CacheFuture<Looked>;
    /// Keeps a module's successful result under the key its lookup found.
    fn store(self: Arc<Self>, store: Store) -> CacheFuture<()>;
}

/// A ready module to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub module: ModuleIndex,
    pub id: String,
    /// Each need's result, in the module's `needs` order.
    pub needs: Vec<NeedResult>,
}

/// A need's result as a dependent's key takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedResult {
    pub id: String,
    /// Its own cache key, when it has one.
    pub key: Option<String>,
    pub outputs: std::collections::BTreeMap<String, String>,
    pub artifacts: Vec<Artifact>,
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Looked {
    /// A usable entry: the module succeeds without running.
    Hit {
        key: String,
        ended: Ended,
        /// Its log, replayed marked as cached.
        log: String,
        /// How long the run that made the entry took.
        saved: Duration,
    },
    /// No usable entry: the module runs, and its result is kept under `key`.
    Miss { key: String },
    /// The module cannot be cached (its key could not be made, say why
    /// once in the log): it runs, and is not kept.
    Uncached,
}

/// A result to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    pub id: String,
    pub key: String,
    pub ended: Ended,
    /// Its log as the hub saw it (the cache masks it).
    pub log: String,
}
