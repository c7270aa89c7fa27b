//! What the machine journals: every change it tells its owner, as a
//! journal [`Entry`], placed before the effects that follow from it. The
//! actor holds every effect of an input back until that input's entries
//! are durable, so a worker's `Complete` is answered, and its dependents
//! are assigned, only once the journal has it.

use std::borrow::Cow;

use muster_core::journal::{Entry, ModuleRecord, RunStart, StateName};
use muster_core::mask::Masker;
use muster_core::wire::types::RunOutcome;
use muster_core::{ModuleIndex, ModuleState};

use super::machine::{Effect, Machine};
use crate::events::RunEvent;

/// What the machine needs to journal a run.
#[derive(Debug, Clone)]
pub(crate) struct JournalSettings {
    /// The stint's first record.
    pub start: RunStart,
    /// Secret values never reach the journal: outputs, reasons and notes
    /// go through it first.
    pub masker: Masker,
}

impl Machine {
    /// Journals what `event` says (log text is not journaled).
    pub(super) fn journal_event(&mut self, event: &RunEvent) {
        if self.settings.journal.is_none() {
            return;
        }
        let entry = match event {
            RunEvent::Log { .. } | RunEvent::Note { .. } => return,
            RunEvent::Module {
                module,
                state,
                worker,
                note,
            } => {
                let masker = &self.settings.journal.as_ref().expect("checked").masker;
                let mask = |text: &str| match masker.mask(text) {
                    Cow::Owned(masked) => Some(masked),
                    Cow::Borrowed(_) => None,
                };
                let mut record =
                    ModuleRecord::of(module, state, worker.clone(), note.clone(), &mask);
                if matches!(state, ModuleState::Succeeded(_)) {
                    record.kept_from.clone_from(&self.keeping_from);
                }
                if matches!(state, ModuleState::AwaitingApproval { .. }) {
                    let plan = self.run.plan();
                    let gate = plan
                        .index_of(module)
                        .and_then(|i| plan.modules[i].approval.as_ref());
                    if let Some(gate) = gate {
                        record.approval_inputs.clone_from(&gate.inputs);
                    }
                }
                Entry::Module(record)
            }
            RunEvent::WorkerJoined {
                name,
                capabilities,
                slots,
            } => Entry::WorkerJoined {
                name: name.clone(),
                capabilities: capabilities.clone(),
                slots: *slots,
            },
            RunEvent::WorkerLeft { name, reason } => Entry::WorkerLeft {
                name: name.clone(),
                reason: reason.clone(),
            },
            RunEvent::WorkerAway {
                name, reason, held, ..
            } => Entry::WorkerAway {
                name: name.clone(),
                reason: reason.clone(),
                held: *held,
            },
            RunEvent::WorkerBack { name, kept } => Entry::WorkerBack {
                name: name.clone(),
                kept: *kept,
            },
        };
        self.push(Effect::Journal(entry));
    }

    /// Journals an entry that has no run event of its own.
    pub(super) fn journal(&mut self, entry: impl FnOnce(&Masker) -> Entry) {
        if let Some(settings) = &self.settings.journal {
            let entry = entry(&settings.masker);
            self.push(Effect::Journal(entry));
        }
    }

    /// A resumed run's modules that run again but wait for their needs:
    /// the journal still says how they ended before, so it is told they
    /// are pending again.
    pub(super) fn journal_waiting_reruns(&mut self, reruns: &[ModuleIndex]) {
        for &module in reruns {
            if matches!(self.run.state(module), ModuleState::Pending) {
                let id = self.run.plan().modules[module].id.clone();
                self.journal(|_| {
                    Entry::Module(ModuleRecord {
                        module: id,
                        state: StateName::Pending,
                        ..ModuleRecord::default()
                    })
                });
            }
        }
    }

    /// The stint's first record.
    pub(super) fn journal_start(&mut self) {
        if let Some(settings) = &self.settings.journal {
            let start = settings.start.clone();
            self.push(Effect::Journal(Entry::RunStarted(start)));
        }
    }

    pub(super) fn journal_cancel(&mut self, reason: &str) {
        self.journal(|masker| Entry::CancelRequested {
            reason: masker.mask(reason).into_owned(),
        });
    }

    pub(super) fn journal_finish(&mut self, outcome: RunOutcome, cancelled: Option<&str>) {
        self.journal(|masker| Entry::RunFinished {
            outcome,
            cancelled: cancelled.map(|reason| masker.mask(reason).into_owned()),
        });
    }
}
