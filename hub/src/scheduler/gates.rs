//! Approval gates in the run. A gated module whose needs succeeded waits
//! here, holding no worker, until a decision comes (`Input::Decide`), its
//! timeout passes, or the run is cancelled. Each decision is checked by
//! `muster_core::gate::check`, journaled (bound to the module's definition
//! and its needs' outputs, so a resumed run keeps it only for the same
//! question) before the module moves, and said in the summary.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_core::gate::{self, Decider, Decision, OnTimeout, Refused};
use muster_core::journal::{Entry, GateRecord};
use muster_core::plan::needs_env_name;
use muster_core::{Change, Event, ModuleIndex, ModuleState};

use super::machine::Machine;
use super::table::{Decided, DecisionAnswer, OpenGate, Timer};
use crate::events::RunEvent;

/// How often a run that waits on a gate says so again.
pub(crate) const GATE_REMINDER: Duration = Duration::from_secs(10 * 60);

impl Machine {
    /// Opens `module`'s gate now that its needs succeeded: arms its expiry
    /// and reminder, and returns the line that says what it asks.
    pub(super) fn open_gate(&mut self, module: ModuleIndex) -> String {
        let plan = self.run.plan();
        let m = &plan.modules[module];
        let gate = m.approval.as_ref().expect("only gated modules wait");
        let mut vars = m.env.clone();
        let mut needs = Vec::new();
        for &need in &m.needs {
            let id = plan.modules[need].id.as_str();
            let outputs = self.run.state(need).ended().map(|e| &e.outputs);
            if let Some(outputs) = outputs {
                for (key, value) in outputs {
                    vars.insert(needs_env_name(id, key), value.clone());
                }
            }
            needs.push((id, outputs));
        }
        let empty = BTreeMap::new();
        let needs_outputs =
            gate::needs_digest(needs.iter().map(|(id, o)| (*id, o.unwrap_or(&empty))));
        let prompt = gate::prompt(&gate.prompt, &|name| vars.get(name).cloned());
        let who = gate.deciders();
        let note = format!(
            "{prompt} (who may decide: {who}; expires in {}, then {})",
            humantime::format_duration(gate.timeout),
            gate.on_timeout.word()
        );
        let expires = self.now + gate.timeout;
        let open = OpenGate {
            opened: self.now,
            expires,
            prompt,
            definition: self.definitions.get(module).cloned().unwrap_or_default(),
            needs_outputs,
        };
        self.gates.insert(module, open);
        self.arm(expires, Timer::GateExpires(module));
        self.arm(self.now + GATE_REMINDER, Timer::GateReminder(module));
        note
    }

    /// Gates that opened on the same question an earlier stint of the run
    /// approved take that approval; one asked about something else is
    /// superseded and asks again.
    pub(super) fn take_standing_approvals(&mut self, opened: &[ModuleIndex]) {
        for &module in opened {
            let id = self.module_id(module).to_owned();
            let Some(earlier) = self.standing.remove(&id) else {
                continue;
            };
            let Some(open) = self.gates.get(&module) else {
                continue;
            };
            let by = earlier.by.clone().unwrap_or_else(|| "nobody".to_owned());
            if earlier.definition == open.definition && earlier.needs_outputs == open.needs_outputs
            {
                let note = format!("approved by {by} in an earlier attempt of this run; it stands (same definition, same outputs of its needs)");
                let inputs = earlier.inputs.clone();
                self.settle(module, "approved", Some(by), earlier.reason, inputs, note);
            } else {
                let what = if earlier.definition != open.definition {
                    "its definition changed"
                } else {
                    "the outputs of its needs changed"
                };
                self.emit(RunEvent::Note {
                    module: id,
                    text: format!("the approval by {by} is superseded ({what}): asking again"),
                });
            }
        }
    }

    /// A decision from an approver (or the run token).
    pub(super) fn decide(
        &mut self,
        module_id: &str,
        decider: Decider,
        decision: Decision,
    ) -> Result<DecisionAnswer, Refused> {
        let plan = self.run.plan();
        let module = plan
            .index_of(module_id)
            .ok_or_else(|| Refused::UnknownModule(muster_core::text::escape(module_id)))?;
        let Some(gate) = plan.modules[module].approval.as_ref() else {
            return Err(Refused::NoGate(module_id.to_owned()));
        };
        if !matches!(self.run.state(module), ModuleState::AwaitingApproval { .. }) {
            return Err(match self.decided.get(&module) {
                Some(decided) => Refused::AlreadyDecided {
                    module: module_id.to_owned(),
                    decision: decided.word.to_owned(),
                    by: decided.by.clone().unwrap_or_else(|| "its timeout".into()),
                },
                None => Refused::NotWaiting {
                    module: module_id.to_owned(),
                    state: self.run.state(module).name().to_owned(),
                },
            });
        }
        let env = &self.settings.gate_env;
        gate::check(module_id, gate, &decider, &decision, &|var| {
            env.get(var).cloned()
        })?;
        let by = decider.name().to_owned();
        let answer = DecisionAnswer {
            module: module_id.to_owned(),
            decision: decision.word(),
            by: by.clone(),
        };
        match decision {
            Decision::Approve { inputs, reason } => {
                let mut note = format!("approved by {by}");
                if let Some(reason) = &reason {
                    note = format!("{note}: {reason}");
                }
                self.settle(module, "approved", Some(by), reason, inputs, note);
            }
            Decision::Reject { reason } => {
                let note = format!("rejected by {by}: {reason}");
                self.settle(
                    module,
                    "rejected",
                    Some(by),
                    Some(reason),
                    BTreeMap::new(),
                    note,
                );
            }
        }
        Ok(answer)
    }

    /// The gate's timeout passed without a decision.
    pub(super) fn gate_expired(&mut self, module: ModuleIndex) {
        if !matches!(self.run.state(module), ModuleState::AwaitingApproval { .. }) {
            return;
        }
        let gate = self.run.plan().modules[module]
            .approval
            .as_ref()
            .expect("only gated modules wait");
        let note = format!(
            "no decision within {}: on_timeout = \"{}\"",
            humantime::format_duration(gate.timeout),
            gate.on_timeout.word()
        );
        self.settle(module, "expired", None, None, BTreeMap::new(), note);
    }

    /// The run still waits on this gate: say so again, with the time left.
    pub(super) fn gate_reminder(&mut self, module: ModuleIndex) {
        let Some(open) = self.gates.get(&module) else {
            return;
        };
        let left = open.expires.saturating_duration_since(self.now);
        let gate = self.run.plan().modules[module]
            .approval
            .as_ref()
            .expect("only gated modules wait");
        let text = format!(
            "still waiting for approval: {} (who may decide: {}; {} left)",
            open.prompt,
            gate.deciders(),
            humantime::format_duration(Duration::from_secs(left.as_secs()))
        );
        self.arm(self.now + GATE_REMINDER, Timer::GateReminder(module));
        let module = self.module_id(module).to_owned();
        self.emit(RunEvent::Note { module, text });
    }

    /// Closes `module`'s gate with `word` (`approved`, `rejected` or
    /// `expired`): journals the decision, then moves the module.
    fn settle(
        &mut self,
        module: ModuleIndex,
        word: &'static str,
        by: Option<String>,
        reason: Option<String>,
        inputs: BTreeMap<String, String>,
        note: String,
    ) {
        let open = self.gates.remove(&module).expect("a waiting gate is open");
        let m = &self.run.plan().modules[module];
        let gate = m.approval.as_ref().expect("only gated modules wait");
        let approves = match word {
            "approved" => true,
            "expired" => gate.on_timeout == OnTimeout::Approve,
            _ => false,
        };
        let event = if approves {
            Event::Approve {
                gate_only: gate.gate_only,
                outputs: inputs.clone(),
            }
        } else if word == "expired" && gate.on_timeout == OnTimeout::Skip {
            Event::SkipGate {
                reason: note.clone(),
            }
        } else {
            Event::Reject {
                reason: note.clone(),
            }
        };
        let record = GateRecord {
            module: m.id.clone(),
            decision: word.to_owned(),
            by: by.clone(),
            reason,
            inputs: inputs.clone(),
            definition: open.definition,
            needs_outputs: open.needs_outputs,
        };
        self.journal(|masker| {
            let mask = |text: &String| masker.mask(text).into_owned();
            Entry::GateDecided(GateRecord {
                reason: record.reason.as_ref().map(mask),
                inputs: record
                    .inputs
                    .iter()
                    .map(|(k, v)| (k.clone(), mask(v)))
                    .collect(),
                ..record
            })
        });
        self.decided.insert(
            module,
            Decided {
                word,
                by,
                after: self.now.saturating_duration_since(open.opened),
                inputs,
            },
        );
        let mut changes: Vec<Change> = self
            .run
            .decide_gate(module, event)
            .expect("an open gate's module waits for its decision");
        if let Some(first) = changes.first_mut() {
            first.note = Some(note);
        }
        self.record(changes);
    }

    /// The approver's inputs as the command's environment.
    pub(super) fn approval_env(&self, module: ModuleIndex) -> Vec<(String, String)> {
        self.decided
            .get(&module)
            .map(|d| {
                d.inputs
                    .iter()
                    .map(|(k, v)| (gate::input_env_name(k), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The approver's inputs, which a gated module's result carries as
    /// outputs (its own outputs of the same name win).
    pub(super) fn approval_outputs(
        &self,
        module: ModuleIndex,
    ) -> Option<&BTreeMap<String, String>> {
        self.decided.get(&module).map(|d| &d.inputs)
    }

    /// How the gate was decided, for the summary.
    pub(super) fn gate_summary(&self, module: ModuleIndex) -> Option<String> {
        self.decided.get(&module).map(Decided::describe)
    }
}
