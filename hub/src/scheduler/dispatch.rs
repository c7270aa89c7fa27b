//! Dispatch policy: push ready modules to connected workers with free slots
//! and the capabilities the module requires, most free slots first, a
//! worker that did not start a module's last attempt last; and the
//! `Assignment` a worker gets (environment with the needs' outputs, the
//! artifacts it consumes).

use std::collections::BTreeMap;

use muster_core::plan::needs_env_name;
use muster_core::wire::calls::HubCall;
use muster_core::wire::types::{Assignment, Consumed};
use muster_core::{Event, ModuleIndex};

use super::machine::Machine;

impl Machine {
    /// Pushes ready modules to workers that can take them, spreading load
    /// to the worker with the most free slots.
    pub(super) fn dispatch(&mut self) {
        if self.run.is_cancelled() {
            return;
        }
        // A pass can skip a module whose only capable worker an earlier
        // module of the same pass filled; another pass, with the slots as
        // they are now, places what is left.
        while self.dispatch_pass() {}
    }

    /// Assigns up to one module per free slot; true when it assigned some
    /// and skipped some, so another pass may place more.
    fn dispatch_pass(&mut self) -> bool {
        if !self.run.has_ready() {
            return false;
        }
        let mut free: u64 = self
            .workers
            .values()
            .filter(|w| w.connected)
            .map(|w| u64::from(w.slots.saturating_sub(w.held)))
            .sum();
        // Only as many ready modules as there are free slots, and only those
        // some worker could take: collecting the whole ready set on every
        // command made dispatch quadratic in the number of ready modules.
        let plan = self.run.plan();
        let ready: Vec<ModuleIndex> = self
            .run
            .ready()
            .filter(|&m| !self.looking_up(m))
            .filter(|&m| {
                let requires = &plan.modules[m].requires;
                self.workers.values().any(|w| w.can_take(requires))
            })
            .take(usize::try_from(free).unwrap_or(usize::MAX))
            .collect();
        let (mut assigned, mut skipped) = (false, false);
        for module in ready {
            if free == 0 {
                break;
            }
            let requires = &self.run.plan().modules[module].requires;
            let passed_over = self.passed_over.get(&module);
            let Some((&id, _)) = self
                .workers
                .iter()
                .filter(|(_, w)| w.can_take(requires))
                .max_by_key(|(id, w)| {
                    let fresh = passed_over.is_none_or(|p| !p.contains(*id));
                    (fresh, w.slots - w.held, std::cmp::Reverse(**id))
                })
            else {
                skipped = true;
                continue;
            };
            let changes = self
                .run
                .handle(module, Event::Assign { worker: id })
                .expect("a ready module can be assigned");
            let attempt = self.run.state(module).attempt().unwrap_or(1);
            let assignment = self.assignment(module, attempt);
            self.send(id, HubCall::Assign(assignment));
            self.record(changes);
            free -= 1;
            assigned = true;
        }
        assigned && skipped && free > 0
    }

    pub(super) fn assignment(&self, module: ModuleIndex, attempt: u32) -> Assignment {
        let plan = self.run.plan();
        let m = &plan.modules[module];
        let mut env = m.env.clone();
        let mut needs = BTreeMap::new();
        for &need in &m.needs {
            let id = &plan.modules[need].id;
            let outputs = self
                .run
                .state(need)
                .ended()
                .map(|e| e.outputs.clone())
                .unwrap_or_default();
            for (key, value) in &outputs {
                env.insert(needs_env_name(id, key), value.clone());
            }
            needs.insert(id.clone(), outputs);
        }
        env.extend(self.approval_env(module));
        Assignment {
            module_id: m.id.clone(),
            attempt,
            command: m.run.clone(),
            shell: m.shell.clone(),
            cwd: m.cwd.clone(),
            env,
            timeout_ms: m.timeout.as_millis() as u64,
            needs,
            secrets: m.secrets.clone(),
            produces: m.produces.clone(),
            consumes: self.consumed(module),
        }
    }

    /// The artifacts a module takes from its needs: every file a consumed
    /// need produced, or those whose path matches the consume's glob.
    fn consumed(&self, module: ModuleIndex) -> Vec<Consumed> {
        let plan = self.run.plan();
        let mut consumed = Vec::new();
        for consume in &plan.modules[module].consumes {
            let from = &plan.modules[consume.from].id;
            let produced = self.run.state(consume.from).ended().map(|e| &e.artifacts);
            for artifact in produced.into_iter().flatten() {
                // Compiled once, when the pipeline was read.
                if consume
                    .glob
                    .as_ref()
                    .is_none_or(|g| g.is_match(&artifact.path))
                {
                    consumed.push(Consumed {
                        from: from.clone(),
                        artifact: artifact.clone(),
                    });
                }
            }
        }
        consumed
    }
}
