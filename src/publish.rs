//! The master's side of `muster ci`: the tunnel, the hub's URLs in order
//! of preference, and the discovery record that tells the other instances
//! where to join.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use muster_core::url::redact_url;
use muster_core::wire::types::PROTOCOL_VERSION;
use muster_discovery::record::{DiscoveryRecord, RunState};
use muster_discovery::store::{DiscoveryStore, Written};
use muster_discovery::tunnel::{self, Tunnel, TunnelKind};

use crate::failure::Failure;
use crate::interrupt::wait_for_interrupt;

/// The tunnel `--tunnel` asks for (`none` is `TunnelKind::None`).
pub fn tunnel_kind(value: &str, bore_secret: Option<&str>) -> Result<TunnelKind, Failure> {
    tunnel::parse_tunnel(value, bore_secret).map_err(|e| Failure::Usage(format!("--tunnel: {e}")))
}

/// Opens the tunnel to the hub's `port` and waits until its public URL
/// answers; `None` without a tunnel. Ctrl-C meanwhile drops it (and its
/// process) cleanly.
pub async fn open_tunnel(
    kind: &TunnelKind,
    port: u16,
    timeout: Duration,
) -> Result<Option<Tunnel>, Failure> {
    let opened = tokio::select! {
        opened = tunnel::open(kind, port, timeout) => opened,
        () = wait_for_interrupt() => {
            return Err(Failure::Interrupted("interrupted while the tunnel was starting"));
        }
    };
    opened.map_err(|e| Failure::infrastructure(format!("tunnel: {e}")))
}

/// The hub's URLs in order of preference: this machine's own address
/// (fastest, when runners share a network; `advertise` names it), the
/// tunnel, then loopback (for instances on the same machine).
pub fn hub_urls(
    listen: SocketAddr,
    advertise: Option<&str>,
    port: u16,
    tunnel: Option<&Tunnel>,
) -> Vec<String> {
    let mut urls = Vec::new();
    let direct = match advertise {
        Some(host) => Some(host.to_owned()),
        None if !listen.ip().is_loopback() => outbound_ip().map(|ip| match ip {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }),
        None => None,
    };
    if let Some(host) = direct {
        urls.push(format!("http://{host}:{port}/hub"));
    }
    if let Some(tunnel) = tunnel {
        urls.push(format!("{}/hub", tunnel.url().trim_end_matches('/')));
    }
    urls.push(format!("http://127.0.0.1:{port}/hub"));
    urls.dedup();
    urls
}

/// The address this machine's traffic leaves from: a UDP socket
/// "connected" to a documentation address sends nothing but picks a route.
fn outbound_ip() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// The record of a run whose master started at `started_at` (Unix ms, also
/// its epoch), at `urls`; it carries the token only when given one.
pub fn running_record(
    run_id: &str,
    urls: Vec<String>,
    token: Option<String>,
    started_at: u64,
) -> DiscoveryRecord {
    DiscoveryRecord {
        run_id: run_id.to_owned(),
        urls,
        protocol_version: PROTOCOL_VERSION,
        state: RunState::Running,
        outcome: None,
        started_at,
        epoch: started_at,
        token,
    }
}

/// Writes `record` with `ttl`, retrying a Redis that is not answering yet
/// for up to `patience`; Ctrl-C meanwhile gives up.
pub async fn publish(
    store: &DiscoveryStore,
    record: &DiscoveryRecord,
    ttl: Duration,
    patience: Duration,
) -> Result<(), Failure> {
    let written = tokio::select! {
        written = store.write_within(record, ttl, patience) => written,
        () = wait_for_interrupt() => {
            return Err(Failure::Interrupted("interrupted while waiting for Redis"));
        }
    };
    match written {
        Ok(Written::Yes) => Ok(()),
        Ok(Written::Superseded) => Err(Failure::infrastructure(format!(
            "a newer master already owns run {} in Redis at {}\n  = help: is instance 0 running twice with the same run id?",
            record.run_id,
            store.shown_url()
        ))),
        Err(e) => Err(Failure::infrastructure(format!(
            "cannot publish the hub: {e}"
        ))),
    }
}

/// The hub URLs as they may be printed, comma-separated.
pub fn shown_urls(urls: &[String]) -> String {
    urls.iter()
        .map(|url| redact_url(url))
        .collect::<Vec<_>>()
        .join(", ")
}
