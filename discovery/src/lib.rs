//! How the instances of one CI run find each other, with no I/O in the
//! rules and real I/O at the edges: the run's identity and each instance's
//! index from CI variables (`identity`), the discovery record the master
//! keeps in Redis (`record`, `store`), the lease that says which
//! instance is the master and fences an old one out (`lease`), and the public tunnel that makes the
//! master's hub reachable from other runners (`tunnel`).

pub mod identity;
pub mod lease;
pub mod record;
pub mod store;
pub mod tunnel;
