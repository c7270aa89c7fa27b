//! Everything the hub and a worker say to each other, in one place both
//! depend on:
//! - [`signalr`]: SignalR JSON framing, the handshake and the message types;
//! - [`types`]: the payloads of the hub's methods (`Registration`,
//!   `Assignment`, `Report`, …);
//! - [`calls`]: the hub's methods, one enum per direction (`WorkerCall`,
//!   `HubCall`), to and from SignalR invocations;
//! - [`http`]: the HTTP half: routes and the URLs of the hub's endpoints;
//! - [`limits`]: the sizes both ends must agree on.
//!
//! `docs/protocol.md` is the prose for all of it.

pub mod calls;
pub mod http;
pub mod limits;
pub mod signalr;
pub mod types;
