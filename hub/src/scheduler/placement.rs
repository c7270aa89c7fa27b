//! Capability placement: whether some worker could ever take a ready
//! module, the clock for one nobody can take, and the message that says
//! why when that clock runs out.

use muster_core::{ModuleIndex, ModuleState};

use super::machine::Machine;
use super::table::Timer;

/// How many workers a "no worker can take it" message lists.
const WORKERS_LISTED: usize = 8;

impl Machine {
    /// Whether some worker in the table (connected or away) offers every
    /// capability the module requires.
    fn placeable(&self, module: ModuleIndex) -> bool {
        let requires = &self.run.plan().modules[module].requires;
        self.workers.values().any(|w| w.offers(requires))
    }

    /// Starts the capability clock for a ready module nobody can take.
    pub(super) fn check_placeable(&mut self, module: ModuleIndex) {
        if self.unplaceable.contains_key(&module) || self.placeable(module) {
            return;
        }
        self.unplaceable.insert(module, self.now);
        self.arm(
            self.now + self.settings.capability_timeout,
            Timer::NoWorker(module),
        );
    }

    /// Stops the clock of modules a worker that just joined can take.
    pub(super) fn recheck_unplaceable(&mut self) {
        let waiting: Vec<ModuleIndex> = self.unplaceable.keys().copied().collect();
        for module in waiting {
            if self.placeable(module) {
                self.unplaceable.remove(&module);
            }
        }
    }

    /// The capability clock ran out: a module still ready that no worker
    /// can take fails, saying which capability nobody offers.
    pub(super) fn no_worker(&mut self, module: ModuleIndex) {
        let Some(&since) = self.unplaceable.get(&module) else {
            return;
        };
        if since + self.settings.capability_timeout > self.now {
            return;
        }
        self.unplaceable.remove(&module);
        if !matches!(self.run.state(module), ModuleState::Ready { .. }) || self.placeable(module) {
            return;
        }
        let reason = self.no_worker_reason(module);
        let changes = self.run.no_worker(module, reason);
        self.record(changes);
    }

    fn no_worker_reason(&self, module: ModuleIndex) -> String {
        let waited = humantime::format_duration(self.settings.capability_timeout);
        let requires = &self.run.plan().modules[module].requires;
        if self.seen.is_empty() {
            return format!("no worker joined within {waited}");
        }
        let seen: Vec<String> = self
            .seen
            .values()
            .take(WORKERS_LISTED)
            .map(|(name, caps)| format!("{name} ({})", caps.join(", ")))
            .collect();
        let more = self.seen.len().saturating_sub(WORKERS_LISTED);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let what = if requires.is_empty() {
            "no worker is connected".to_owned()
        } else {
            let missing: Vec<&str> = requires
                .iter()
                .filter(|r| !self.workers.values().any(|w| w.capabilities.contains(*r)))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                format!("no single worker offers all of {}", requires.join(", "))
            } else {
                format!("no worker offers {}", missing.join(", "))
            }
        };
        format!(
            "{what} (waited {waited}); workers seen: {}{more}",
            seen.join("; ")
        )
    }
}
