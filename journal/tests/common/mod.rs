//! A real `redis-server` for the Redis journal's tests, as the workspace's
//! `tests/common` starts one (copied small: this crate's tests cannot
//! reach that module). `scripts/test.sh` installs redis-server.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server gets to start.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A loopback `redis-server` on a free port, its files in a temporary
/// folder; killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Without persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// With extra arguments, e.g. `["--requirepass", "pw"]`. Redis cannot
    /// take port 0: a free port is picked, and another if it was taken
    /// before redis-server bound it.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let child = spawn(port, dir.path(), &extra);
            let mut server = RedisServer {
                child,
                port,
                extra: extra.clone(),
                dir,
            };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Stops it (as a crash would) and starts it again on the same port
    /// with the same files: what it persisted comes back.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(self.port, self.dir.path(), &self.extra);
        assert!(self.wait_ready(), "redis-server did not start again");
    }

    /// Stops it; its port is then closed.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// True when it answers `PING`; false when it exited (its bind failed).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if self.child.try_wait().expect("wait").is_some() {
                return false;
            }
            if answers(self.port) {
                return true;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(port: u16, dir: &Path, extra: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (scripts/test.sh installs it)")
}

/// `PING` gets `+PONG` (or `-NOAUTH` with a password).
fn answers(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && (reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH"))
}

/// A loopback port nobody listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
