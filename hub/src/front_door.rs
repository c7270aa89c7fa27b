//! The hub's front door: the accept loop and the HTTP/1 connections behind
//! it. The hub may sit behind a public tunnel, so a connection that has not
//! yet shown the token is held only briefly and only in small numbers:
//!
//! - it must send a request carrying the token within the admission
//!   timeout (`--auth-timeout`), headers included, or it is closed;
//! - at most `max_unauthenticated` such connections are held at once; a new
//!   one beyond that closes the oldest, so a flood of silent or slow
//!   sockets can never keep a real worker out. A connection younger than
//!   [`GRACE`] is not closed for room: a thousand workers joining at once
//!   must not evict each other before their first request is read;
//! - accept errors (out of file descriptors) close the oldest waiting
//!   connection and back off instead of spinning.
//!
//! A handler that checks the token marks its connection [`Admission::admit`];
//! from then on only the protocol's own bounds apply (handshake, client
//! timeout, transfer stalls).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long a new connection is safe from eviction (at most the admission
/// timeout).
const GRACE: Duration = Duration::from_secs(2);

/// The front door's limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DoorSettings {
    /// How long a connection has to send a request with the token.
    pub auth_timeout: Duration,
    /// Connections without the token held at once, past their grace.
    pub max_unauthenticated: usize,
    /// Connections without the token held at once, however young: the
    /// bound that keeps them from taking the open-file limit.
    pub ceiling: usize,
}

/// One connection's standing: waiting to show the token, or admitted.
/// Handlers find it in the request's extensions.
#[derive(Debug)]
pub(crate) struct Admission {
    id: u64,
    accepted: tokio::time::Instant,
    admitted: AtomicBool,
    /// Fired when the connection is admitted or evicted, so its task
    /// re-checks its deadline.
    evicted: CancellationToken,
    waiting: Arc<Waiting>,
}

impl Admission {
    /// The connection presented the right token: it is no longer held to
    /// the admission deadline nor counted against the cap.
    pub(crate) fn admit(&self) {
        if !self.admitted.swap(true, Ordering::AcqRel) {
            self.waiting.remove(self.id);
        }
    }

    fn is_admitted(&self) -> bool {
        self.admitted.load(Ordering::Acquire)
    }
}

/// The connections that have not shown the token, oldest first.
#[derive(Debug, Default)]
struct Waiting {
    queue: Mutex<VecDeque<Arc<Admission>>>,
}

impl Waiting {
    /// Adds a new connection; when that makes more than `cap`, the oldest
    /// ones past their grace are evicted, and past `ceiling` the oldest
    /// whatever their age.
    fn add(&self, admission: Arc<Admission>, limits: &DoorSettings, grace: Duration) -> usize {
        let now = admission.accepted;
        let mut queue = self
            .queue
            .lock()
            .expect("the waiting queue is never poisoned");
        queue.push_back(admission);
        let mut evicted = 0;
        loop {
            let over_cap = queue.len() > limits.max_unauthenticated.max(1)
                && queue.front().is_some_and(|a| a.accepted + grace <= now);
            let over_ceiling = queue.len() > limits.ceiling.max(1);
            if !(over_cap || over_ceiling) {
                return evicted;
            }
            if let Some(oldest) = queue.pop_front() {
                oldest.evicted.cancel();
                evicted += 1;
            }
        }
    }

    /// Closes the oldest waiting connection, whatever its age: the hub is
    /// out of file descriptors.
    fn evict_oldest(&self) -> bool {
        let mut queue = self
            .queue
            .lock()
            .expect("the waiting queue is never poisoned");
        queue.pop_front().map(|a| a.evicted.cancel()).is_some()
    }

    fn remove(&self, id: u64) {
        let mut queue = self
            .queue
            .lock()
            .expect("the waiting queue is never poisoned");
        if let Some(at) = queue.iter().position(|a| a.id == id) {
            queue.remove(at);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.lock().unwrap().len()
    }
}

/// Accepts connections until `shutdown` fires, serving `app` on each.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    settings: DoorSettings,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> io::Result<()> {
    let waiting = Arc::new(Waiting::default());
    let next_id = AtomicU64::new(1);
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return Ok(()),
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                backoff.reset();
                accepted
            }
            Err(e) => {
                // Out of descriptors, most likely: a socket without a token
                // gives its one up.
                waiting.evict_oldest();
                let pause = backoff.next();
                if backoff.should_log() {
                    tracing::warn!(
                        "accept error: {e}; pausing {}ms before accepting again",
                        pause.as_millis()
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
        };
        // Small messages go out at once: without TCP_NODELAY, Nagle's
        // algorithm and delayed ACKs stall a dispatch round trip for 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let admission = Arc::new(Admission {
            id: next_id.fetch_add(1, Ordering::Relaxed),
            accepted: tokio::time::Instant::now(),
            admitted: AtomicBool::new(false),
            evicted: CancellationToken::new(),
            waiting: waiting.clone(),
        });
        let grace = GRACE.min(settings.auth_timeout);
        let evicted = waiting.add(admission.clone(), &settings, grace);
        if evicted > 0 {
            tracing::debug!(
                "closed {evicted} connection(s) without a token: more than {} waiting",
                settings.max_unauthenticated
            );
        }
        let connection = connection(
            tcp,
            peer,
            app.clone(),
            admission,
            settings,
            shutdown.clone(),
        );
        tracker.spawn(connection);
    }
}

/// Serves HTTP/1 (and WebSocket upgrades) on one connection until it ends,
/// misses its admission deadline, is evicted, or the hub shuts down.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    admission: Arc<Admission>,
    settings: DoorSettings,
    shutdown: CancellationToken,
) {
    let for_requests = admission.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(for_requests.clone());
        app.clone().oneshot(request.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.auth_timeout);
    let serving = builder
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(serving);
    let deadline = tokio::time::sleep(settings.auth_timeout);
    tokio::pin!(deadline);
    let mut closing = false;
    loop {
        let waiting = !admission.is_admitted();
        tokio::select! {
            ended = serving.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                break;
            }
            () = &mut deadline, if waiting => {
                if !admission.is_admitted() {
                    tracing::debug!(%peer, "closing a connection that sent no request with the token within {:?}", settings.auth_timeout);
                    break;
                }
            }
            () = admission.evicted.cancelled(), if waiting => {
                if !admission.is_admitted() {
                    tracing::debug!(%peer, "closing a connection without a token to make room");
                    break;
                }
            }
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                serving.as_mut().graceful_shutdown();
            }
        }
    }
    // Closed before admission (or after serving): it no longer waits.
    admission.admit();
}

/// Pauses after failed accepts (out of file descriptors): 10 ms doubling
/// to 1 s, logged at most every 10 s, so a full fd table neither spins nor
/// floods stderr.
#[derive(Default)]
struct AcceptBackoff {
    pause: Option<Duration>,
    logged: Option<std::time::Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const CAP: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        let pause = match self.pause {
            None => Self::FIRST,
            Some(p) => (p * 2).min(Self::CAP),
        };
        self.pause = Some(pause);
        pause
    }

    const LOG_EVERY: Duration = Duration::from_secs(10);

    fn should_log(&mut self) -> bool {
        let log = self.logged.is_none_or(|at| at.elapsed() >= Self::LOG_EVERY);
        if log {
            self.logged = Some(std::time::Instant::now());
        }
        log
    }

    /// After a successful accept; the log's clock keeps running.
    fn reset(&mut self) {
        self.pause = None;
    }
}

/// The soft limit on open files, if it can be read.
pub(crate) fn open_file_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// The caps on connections without a token: `configured` (kept under a
/// quarter of the open-file limit) once they are past their grace, and half
/// the limit however young, so they leave room for workers, files and Redis
/// even where the limit is low.
pub(crate) fn unauthenticated_caps(configured: usize, open_files: Option<u64>) -> (usize, usize) {
    let part = |divisor: u64| open_files.map_or(usize::MAX, |limit| (limit / divisor) as usize);
    let cap = configured.min(part(4)).max(1);
    (cap, part(2).max(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(id: u64, waiting: &Arc<Waiting>) -> Arc<Admission> {
        Arc::new(Admission {
            id,
            accepted: tokio::time::Instant::now(),
            admitted: AtomicBool::new(false),
            evicted: CancellationToken::new(),
            waiting: waiting.clone(),
        })
    }

    #[test]
    fn the_oldest_waiting_connection_makes_room_for_a_new_one() {
        let waiting = Arc::new(Waiting::default());
        let all: Vec<_> = (1..=4).map(|id| admission(id, &waiting)).collect();
        let limits = |cap| DoorSettings {
            auth_timeout: Duration::from_secs(10),
            max_unauthenticated: cap,
            ceiling: 100,
        };
        for a in &all[..3] {
            assert_eq!(waiting.add(a.clone(), &limits(3), Duration::ZERO), 0);
        }
        // Admitted connections stop counting.
        all[1].admit();
        assert_eq!(waiting.len(), 2);
        assert_eq!(waiting.add(all[3].clone(), &limits(2), Duration::ZERO), 1);
        assert!(all[0].evicted.is_cancelled());
        assert!(!all[2].evicted.is_cancelled() && !all[3].evicted.is_cancelled());
        // Admitting twice, or after eviction, is harmless.
        all[0].admit();
        all[1].admit();
        assert_eq!(waiting.len(), 2);
        // Out of descriptors: the oldest goes, however young.
        assert!(waiting.evict_oldest());
        assert!(all[2].evicted.is_cancelled());
    }

    #[test]
    fn young_connections_are_not_evicted_for_room() {
        let waiting = Arc::new(Waiting::default());
        let all: Vec<_> = (1..=6).map(|id| admission(id, &waiting)).collect();
        let limits = DoorSettings {
            auth_timeout: Duration::from_secs(10),
            max_unauthenticated: 2,
            ceiling: 5,
        };
        for a in &all[..5] {
            assert_eq!(waiting.add(a.clone(), &limits, Duration::from_secs(60)), 0);
        }
        assert_eq!(waiting.len(), 5);
        assert!(all.iter().all(|a| !a.evicted.is_cancelled()));
        // The ceiling holds whatever their age.
        assert_eq!(
            waiting.add(all[5].clone(), &limits, Duration::from_secs(60)),
            1
        );
        assert!(all[0].evicted.is_cancelled());
    }

    #[test]
    fn the_cap_leaves_most_file_descriptors_to_workers() {
        assert_eq!(unauthenticated_caps(256, None), (256, usize::MAX));
        assert_eq!(unauthenticated_caps(256, Some(1_048_576)), (256, 524_288));
        assert_eq!(unauthenticated_caps(256, Some(1024)), (256, 512));
        assert_eq!(unauthenticated_caps(256, Some(256)), (64, 128));
        assert_eq!(unauthenticated_caps(256, Some(2)), (1, 1));
    }

    #[test]
    fn accept_errors_back_off_to_a_cap_and_log_rarely() {
        let mut backoff = AcceptBackoff::default();
        let pauses: Vec<Duration> = (0..10).map(|_| backoff.next()).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert_eq!(pauses[9], AcceptBackoff::CAP);
        let mut logged = 0;
        for _ in 0..100 {
            backoff.next();
            logged += usize::from(backoff.should_log());
            backoff.reset();
        }
        assert_eq!(logged, 1, "errors between successes are logged once");
        backoff.reset();
        assert_eq!(backoff.next(), AcceptBackoff::FIRST);
    }
}
