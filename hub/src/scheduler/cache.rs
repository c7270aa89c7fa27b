//! The result cache in the state machine: a cacheable module that becomes
//! ready is looked up before anyone may take it (`Effect::CacheLookup`);
//! the answer comes back as `Input::Cached`. A hit finishes the module
//! without a worker and replays its log; a miss makes it dispatchable, and
//! its success is then kept (`Effect::CacheStore`) under the key.

use std::time::Duration;

use muster_core::{Ended, ModuleIndex, ModuleState};

use super::machine::{Effect, Machine};
use super::table::CacheState;
use crate::cache::{Looked, Lookup, NeedResult};
use crate::events::RunEvent;

impl Machine {
    /// Looks up the modules among `changes` that became ready for the first
    /// time and are cacheable.
    pub(super) fn look_up_ready(&mut self, ready: &[ModuleIndex]) {
        if !self.settings.cache {
            return;
        }
        for &module in ready {
            let planned = &self.run.plan().modules[module];
            if !planned.cached() || self.cache[module] != CacheState::Off {
                continue;
            }
            let needs = planned
                .needs
                .iter()
                .map(|&need| {
                    let ended = self.run.state(need).ended().cloned().unwrap_or_default();
                    NeedResult {
                        id: self.run.plan().modules[need].id.clone(),
                        key: self.key_of(need).map(str::to_owned),
                        outputs: ended.outputs,
                        artifacts: ended.artifacts,
                    }
                })
                .collect();
            let lookup = Lookup {
                module,
                id: planned.id.clone(),
                needs,
            };
            self.cache[module] = CacheState::LookingUp;
            self.push(Effect::CacheLookup(lookup));
        }
    }

    /// True while a module may not be dispatched because it is looked up.
    pub(super) fn looking_up(&self, module: ModuleIndex) -> bool {
        self.cache[module] == CacheState::LookingUp
    }

    /// The key a module was looked up under.
    fn key_of(&self, module: ModuleIndex) -> Option<&str> {
        match &self.cache[module] {
            CacheState::Missed(key) | CacheState::Hit { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The answer to a lookup.
    pub(super) fn cached(&mut self, module: ModuleIndex, looked: Looked) {
        if self.cache.get(module) != Some(&CacheState::LookingUp) {
            return;
        }
        match looked {
            Looked::Hit {
                key,
                ended,
                log,
                saved,
            } => {
                let id = self.run.plan().modules[module].id.clone();
                let attempt = self.run.state(module).attempt().unwrap_or(1);
                match self.run.cache_hit(module, ended) {
                    Ok(changes) => {
                        if !log.is_empty() {
                            self.emit(RunEvent::Log {
                                module: id,
                                attempt,
                                stream: muster_core::wire::types::LogStream::Stdout,
                                text: log,
                            });
                        }
                        self.cache[module] = CacheState::Hit { key, saved };
                        self.record(changes);
                    }
                    // Cancelled meanwhile: nothing to finish.
                    Err(_) => self.cache[module] = CacheState::Off,
                }
            }
            Looked::Miss { key } => self.cache[module] = CacheState::Missed(key),
            Looked::Uncached => self.cache[module] = CacheState::Off,
        }
    }

    /// Keeps a module that ran after a miss and succeeded.
    pub(super) fn keep_result(&mut self, module: ModuleIndex, state: &ModuleState) {
        let (CacheState::Missed(key), ModuleState::Succeeded(ended)) = (&self.cache[module], state)
        else {
            return;
        };
        if ended.worker.is_none() {
            return;
        }
        let store = crate::cache::Store {
            id: self.run.plan().modules[module].id.clone(),
            key: key.clone(),
            ended: Ended::clone(ended),
            log: String::new(),
        };
        self.push(Effect::CacheStore(store));
    }

    /// How long cache hits saved, and which modules were hits.
    pub(super) fn cache_note(&self, module: ModuleIndex) -> Option<Duration> {
        match &self.cache[module] {
            CacheState::Hit { saved, .. } => Some(*saved),
            _ => None,
        }
    }
}
