//! What the benchmark reads from (and sets on) its own process and others:
//! CPU time, resident memory, the open-file limit, and the machine's load.
//! Linux only.

use std::time::Duration;

/// This process's CPU time so far, user and system together.
pub fn cpu_self() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let (user, system) = (u.user_time(), u.system_time());
            Duration::from_micros(
                (user.tv_sec() * 1_000_000
                    + user.tv_usec()
                    + system.tv_sec() * 1_000_000
                    + system.tv_usec()) as u64,
            )
        })
        .unwrap_or_default()
}

/// A process's resident memory now, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// A process's peak resident memory, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

/// The machine's load average over the last minute: how busy other
/// programs kept it while a scenario ran.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A thousand sockets need more than the usual 1,024 descriptors.
pub fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
