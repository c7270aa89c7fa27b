//! The no-op workers: the `swarm` subcommand (many worker connections in
//! one process) and [`Swarm`], which starts such processes for a scenario
//! and kills them when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use muster_worker::{WorkerConfig, WorkerEvent, WorkerObserver};
use tokio_util::sync::CancellationToken;

use crate::system::raise_open_files;

/// The token the benchmark's hubs expect and its workers present.
pub const TOKEN: &str = "bench-token";

/// Worker processes (this binary, `swarm`), killed on drop.
pub struct Swarm(Vec<Child>);

impl Swarm {
    pub fn spawn(hub: &str, processes: u32, per_process: u32) -> Result<Swarm> {
        let me = std::env::current_exe()?;
        let children = (0..processes)
            .map(|_| {
                Command::new(&me)
                    .args(["swarm", "--hub", hub, "--token", TOKEN, "--count"])
                    .arg(per_process.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Swarm(children))
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `swarm` subcommand: `count` no-op workers joined to `hub`, until
/// the process is killed.
pub fn swarm(hub: &str, token: &str, count: u32) -> Result<()> {
    raise_open_files();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let tasks: Vec<_> = (0..count)
            .map(|i| {
                let config = WorkerConfig {
                    hub: hub.to_owned(),
                    token: token.to_owned(),
                    name: format!("bench-{}-{i}", std::process::id()),
                    capabilities: Vec::new(),
                    slots: 1,
                    workdir: std::env::temp_dir(),
                    connect_timeout: Duration::from_secs(30),
                    reconnect_timeout: Duration::from_secs(30),
                    transfer_stall_timeout: Duration::from_secs(60),
                    noop: true,
                    observer: std::sync::Arc::new(SwarmView),
                    locator: None,
                };
                tokio::spawn(muster_worker::run(config, stop.child_token()))
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
    Ok(())
}

/// What a swarm worker says (a lost hub) goes to stderr, as the `muster`
/// binary shows it; no-op workers transfer nothing.
#[derive(Debug)]
struct SwarmView;

impl WorkerObserver for SwarmView {
    fn event(&self, event: WorkerEvent) {
        eprintln!("muster: {event}");
    }
}
