//! The result cache as the master uses it (`muster_hub::ResultCache`): a
//! ready module's key from its input files, definition and needs' results
//! (`core::cache`), looked up in a store (`muster_cache`: a local folder or
//! a Turborepo-protocol server). A usable entry puts its artifacts in the
//! hub's store and back at their paths in the workspace, and the module
//! succeeds without running. A module that ran after a miss is kept, its
//! log masked, unless an output holds a secret. What goes wrong with the
//! cache is said once and never stops the run: a module the cache cannot
//! help simply runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_cache::{
    cap_log, hash_inputs, read_entry, sign, verify, write_entry, CacheError, LocalStore, Manifest,
    Store as EntryStore, TurboStore, FORMAT,
};
use muster_core::cache::{plan_key_inputs, Component, KeyInputs, NeedKey};
use muster_core::mask::Masker;
use muster_core::wire::types::Artifact;
use muster_core::{Ended, ModuleIndex, Plan};
use muster_hub::{stored_artifact, CacheFuture, Looked, Lookup, NeedResult, ResultCache, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::cache_policy::WritePolicy;
use crate::failure::Failure;
use crate::flags::CacheFlags;

/// Lookups (input hashing, downloads) at once.
const LOOKUPS_AT_ONCE: usize = 8;

/// The master's result cache.
pub struct CacheService {
    store: Box<dyn EntryStore>,
    plan: Plan,
    /// Module folders are relative to it; inputs are hashed and hits
    /// restored there.
    workdir: PathBuf,
    /// The hub's artifact store.
    artifacts: PathBuf,
    /// Where entries are written before they are stored.
    scratch: PathBuf,
    /// Each module's last key and its components, for `muster cache explain`.
    explain: PathBuf,
    masker: Masker,
    signing_key: Option<Vec<u8>>,
    write: bool,
    lookups: Semaphore,
    /// Each looked-up module's key components, kept until it is stored.
    components: Mutex<HashMap<String, Vec<Component>>>,
    /// Warnings already given, so each is said once.
    said: Mutex<HashSet<String>>,
}

/// Where the cache lives and how it may be used, from the flags.
pub struct CacheSetup<'a> {
    pub flags: &'a CacheFlags,
    /// The state folder (`.muster`): the local cache and explain records.
    pub state_root: &'a Path,
    pub workdir: PathBuf,
    pub artifacts: PathBuf,
    pub masker: Masker,
    pub policy: WritePolicy,
}

/// The cache for `plan`, or none with `--no-cache` or when no module has
/// inputs.
pub fn open(plan: &Plan, setup: CacheSetup<'_>) -> Result<Option<Arc<CacheService>>, Failure> {
    let flags = setup.flags;
    if flags.no_cache || !plan.modules.iter().any(|m| m.cached()) {
        return Ok(None);
    }
    let store: Box<dyn EntryStore> = match &flags.cache_url {
        Some(url) => {
            let (team, slug) = match flags.cache_team.clone() {
                Some(team) if team.starts_with("team_") => (Some(team), None),
                Some(slug) => (None, Some(slug)),
                None => (None, None),
            };
            Box::new(
                TurboStore::new(url, flags.cache_token.clone(), team, slug)
                    .map_err(|e| Failure::Usage(format!("--cache-url: {e}")))?,
            )
        }
        None => {
            let dir = flags
                .cache_dir
                .clone()
                .unwrap_or_else(|| setup.state_root.join("cache"));
            Box::new(LocalStore::open(&dir, flags.cache_max_size).map_err(Failure::infrastructure)?)
        }
    };
    let scratch = setup.state_root.join("tmp");
    let explain = setup.state_root.join("explain");
    for dir in [&scratch, &explain] {
        std::fs::create_dir_all(dir).map_err(|e| {
            Failure::infrastructure(format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    let signing_key = std::env::var("MUSTER_CACHE_SIGNING_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .map(String::into_bytes);
    crate::report::say(&format!(
        "result cache: {}{}",
        store.describe(),
        if setup.policy.write {
            String::new()
        } else {
            format!("; not writing: {}", setup.policy.why)
        }
    ));
    Ok(Some(Arc::new(CacheService {
        store,
        plan: plan.clone(),
        workdir: setup.workdir,
        artifacts: setup.artifacts,
        scratch,
        explain,
        masker: setup.masker,
        signing_key,
        write: setup.policy.write,
        lookups: Semaphore::new(LOOKUPS_AT_ONCE),
        components: Mutex::new(HashMap::new()),
        said: Mutex::new(HashSet::new()),
    })))
}

impl ResultCache for CacheService {
    fn lookup(self: Arc<Self>, lookup: Lookup) -> CacheFuture<Looked> {
        Box::pin(async move { self.look_up(lookup).await })
    }

    fn store(self: Arc<Self>, store: Store) -> CacheFuture<()> {
        Box::pin(async move { self.keep(store).await })
    }
}

impl CacheService {
    /// Says `text` as a warning, once per `topic`.
    fn warn_once(&self, topic: &str, text: impl FnOnce() -> String) {
        let first = self
            .said
            .lock()
            .expect("not poisoned")
            .insert(topic.to_owned());
        if first {
            eprintln!("muster: warning: {}", text());
        }
    }

    /// A store failure: an unreachable or refusing store is said once for
    /// the run (it goes on without the cache); anything else per module.
    fn store_failed(&self, id: &str, doing: &str, error: &CacheError) {
        if error.is_unreachable() || matches!(error, CacheError::Unauthorized { .. }) {
            let store = self.store.describe();
            self.warn_once("store", || {
                format!("the cache ({store}) cannot be used: {error}; the run goes on without it")
            });
        } else {
            tracing::warn!(module = id, "cache: cannot {doing}: {error}");
            self.warn_once(&format!("{doing} {id}"), || {
                format!("[{id}] cache: cannot {doing}: {error}")
            });
        }
    }

    async fn look_up(&self, lookup: Lookup) -> Looked {
        let _turn = self.lookups.acquire().await.expect("never closed");
        let Some(inputs) = self.key_inputs(&lookup).await else {
            return Looked::Uncached;
        };
        let key = inputs.key().hex;
        self.components
            .lock()
            .expect("not poisoned")
            .insert(lookup.id.clone(), inputs.components());
        let fetched = match self.store.get(&key).await {
            Ok(Some(fetched)) => fetched,
            Ok(None) => return Looked::Miss { key },
            Err(e) => {
                self.store_failed(&lookup.id, "look it up", &e);
                return Looked::Miss { key };
            }
        };
        if let Some(signing_key) = &self.signing_key {
            let signed = match &fetched.tag {
                Some(tag) => verify(signing_key, fetched.path(), tag).unwrap_or(false),
                None => false,
            };
            if !signed {
                let id = lookup.id.clone();
                self.warn_once(&format!("signature {key}"), || {
                    format!(
                        "[{id}] the cache entry {} has a missing or wrong signature                          (MUSTER_CACHE_SIGNING_KEY): not used, the module runs",
                        short(&key)
                    )
                });
                return Looked::Miss { key };
            }
        }
        let planned = &self.plan.modules[lookup.module];
        let folder = self.workdir.join(&planned.cwd);
        let artifacts = self.artifacts.clone();
        let archive = fetched.path().to_owned();
        let entry_key = key.clone();
        let read = tokio::task::spawn_blocking(move || {
            let manifest = read_entry(&archive, &entry_key, &|sha| {
                stored_artifact(&artifacts, sha)
            })?;
            restore(&manifest, &artifacts, &folder)?;
            Ok::<_, CacheError>(manifest)
        })
        .await;
        drop(fetched);
        let manifest = match read {
            Ok(Ok(manifest)) => manifest,
            Ok(Err(e)) => {
                let id = lookup.id.clone();
                self.warn_once(&format!("entry {key}"), || {
                    format!(
                        "[{id}] the cache entry {} is not usable ({e}): the module runs",
                        short(&key)
                    )
                });
                return Looked::Miss { key };
            }
            Err(e) => {
                tracing::warn!("cache: reading an entry panicked: {e}");
                return Looked::Miss { key };
            }
        };
        let saved = Duration::from_millis(manifest.duration_ms);
        Looked::Hit {
            key,
            ended: Ended {
                attempt: 1,
                worker: None,
                duration: Some(saved),
                exit_code: Some(manifest.exit_code),
                reason: None,
                outputs: manifest.outputs,
                artifacts: manifest
                    .artifacts
                    .into_iter()
                    .map(|a| Artifact {
                        path: a.path,
                        size: a.size,
                        sha256: a.sha256,
                        mode: a.mode,
                    })
                    .collect(),
            },
            log: manifest.log,
            saved,
        }
    }

    /// The key's inputs: the module's files hashed, its needs' results.
    async fn key_inputs(&self, lookup: &Lookup) -> Option<KeyInputs> {
        let planned = &self.plan.modules[lookup.module];
        let (cwd, globs) = (planned.cwd.clone(), planned.inputs.clone());
        let workdir = self.workdir.clone();
        let hashed = tokio::task::spawn_blocking(move || hash_inputs(&workdir, &cwd, &globs)).await;
        let files = match hashed {
            Ok(Ok(files)) => files,
            Ok(Err(e)) => {
                let id = lookup.id.clone();
                self.warn_once(&format!("inputs {id}"), || {
                    format!("[{id}] not cached: its inputs cannot be read: {e}")
                });
                return None;
            }
            Err(_) => return None,
        };
        let needs = need_keys(&self.plan, lookup.module, &lookup.needs);
        Some(plan_key_inputs(
            &self.plan,
            lookup.module,
            files,
            needs,
            &|name| std::env::var(name).ok(),
        ))
    }

    async fn keep(&self, store: Store) {
        let components = self
            .components
            .lock()
            .expect("not poisoned")
            .remove(&store.id);
        if !self.write {
            return;
        }
        let masked_output = store
            .ended
            .outputs
            .values()
            .any(|value| self.masker.mask(value) != value.as_str());
        if masked_output {
            let id = store.id.clone();
            self.warn_once(&format!("secret {id}"), || {
                format!("[{id}] not cached: one of its outputs holds a secret value")
            });
            return;
        }
        let manifest = Manifest {
            format: FORMAT,
            key: store.key.clone(),
            module: store.id.clone(),
            exit_code: store.ended.exit_code.unwrap_or(0),
            duration_ms: store.ended.duration.map_or(0, |d| d.as_millis() as u64),
            outputs: store.ended.outputs.clone(),
            artifacts: store
                .ended
                .artifacts
                .iter()
                .map(|a| muster_cache::Artifact {
                    path: a.path.clone(),
                    size: a.size,
                    sha256: a.sha256.clone(),
                    mode: a.mode,
                })
                .collect(),
            log: cap_log(&self.masker.mask(&store.log)).into_owned(),
        };
        let archive = match tempfile::NamedTempFile::new_in(&self.scratch) {
            Ok(file) => file.into_temp_path(),
            Err(e) => {
                tracing::warn!("cache: cannot make a temporary file: {e}");
                return;
            }
        };
        let path = archive.to_path_buf();
        let artifacts = self.artifacts.clone();
        let signing_key = self.signing_key.clone();
        let written = tokio::task::spawn_blocking(move || {
            write_entry(&manifest, &|sha| stored_artifact(&artifacts, sha), &path)?;
            signing_key.map(|key| sign(&key, &path)).transpose()
        })
        .await;
        let tag = match written {
            Ok(Ok(tag)) => tag,
            Ok(Err(e)) => return self.store_failed(&store.id, "write its entry", &e),
            Err(_) => return,
        };
        let duration_ms = store.ended.duration.map_or(0, |d| d.as_millis() as u64);
        if let Err(e) = self
            .store
            .put(&store.key, &archive, tag.as_deref(), duration_ms)
            .await
        {
            return self.store_failed(&store.id, "store its entry", &e);
        }
        if let Some(components) = components {
            let record = ExplainRecord {
                key: store.key.clone(),
                components,
                outputs: store.ended.outputs.clone(),
                artifacts: store
                    .ended
                    .artifacts
                    .iter()
                    .map(|a| (a.path.clone(), a.sha256.clone()))
                    .collect(),
            };
            write_explain(&self.explain, &store.id, &record);
        }
    }
}

/// The first characters of a key, for messages.
fn short(key: &str) -> String {
    format!("{}…", &key[..key.len().min(8)])
}

/// Each need's part of a module's key: its key, its outputs, and the
/// artifacts the module consumes from it.
fn need_keys(plan: &Plan, module: ModuleIndex, needs: &[NeedResult]) -> Vec<NeedKey> {
    let planned = &plan.modules[module];
    planned
        .needs
        .iter()
        .zip(needs)
        .map(|(&need, result)| {
            let consumed = |path: &str| {
                planned
                    .consumes
                    .iter()
                    .filter(|c| c.from == need)
                    .any(|c| c.glob.as_ref().is_none_or(|g| g.is_match(path)))
            };
            NeedKey {
                id: result.id.clone(),
                key: result.key.clone().unwrap_or_default(),
                outputs: result.outputs.clone(),
                artifacts: result
                    .artifacts
                    .iter()
                    .filter(|a| consumed(&a.path))
                    .map(|a| (a.path.clone(), a.sha256.clone()))
                    .collect(),
            }
        })
        .collect()
}

/// Puts an entry's files back where the module left them (under
/// `folder`), from the hub's store where `read_entry` put its blobs.
fn restore(manifest: &Manifest, artifacts: &Path, folder: &Path) -> Result<(), CacheError> {
    use std::os::unix::fs::PermissionsExt;
    for artifact in &manifest.artifacts {
        let target = folder.join(&artifact.path);
        let io = |doing: &'static str, e: std::io::Error| CacheError::Io {
            path: target.clone(),
            doing,
            source: Arc::new(e),
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("make the folder of", e))?;
        }
        let temporary = target.with_file_name(format!(
            ".{}.muster-restoring",
            target
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ));
        std::fs::copy(stored_artifact(artifacts, &artifact.sha256), &temporary)
            .map_err(|e| io("restore", e))?;
        std::fs::set_permissions(
            &temporary,
            std::fs::Permissions::from_mode(artifact.mode & 0o777),
        )
        .map_err(|e| io("set the mode of", e))?;
        std::fs::rename(&temporary, &target).map_err(|e| io("restore", e))?;
    }
    Ok(())
}

/// What `muster cache explain` compares against: the last key stored for a
/// module, what went into it, and what it left for its dependents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExplainRecord {
    pub key: String,
    pub components: Vec<Component>,
    pub outputs: BTreeMap<String, String>,
    pub artifacts: Vec<(String, String)>,
}

fn explain_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{}.json", muster_journal::logs::file_name(id)))
}

fn write_explain(dir: &Path, id: &str, record: &ExplainRecord) {
    let path = explain_path(dir, id);
    let temporary = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(record).expect("records serialize");
    let written =
        std::fs::write(&temporary, json).and_then(|()| std::fs::rename(&temporary, &path));
    if let Err(e) = written {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

/// The last record stored for module `id`, if any.
pub fn read_explain(state_root: &Path, id: &str) -> Option<ExplainRecord> {
    let text = std::fs::read(explain_path(&state_root.join("explain"), id)).ok()?;
    serde_json::from_slice(&text).ok()
}
