//! A real `turborepo-remote-cache` server (from npm, run by node) on a
//! free loopback port with local storage, for the cache's tests and the
//! binary's. `scripts/test.sh` installs it in `tests/cache-server`.
//! Included with `#[path]` by `cache/tests/turbo_server.rs` and
//! `tests/cache_remote.rs`.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The token the server accepts.
pub const TOKEN: &str = "test-token";

/// A `turborepo-remote-cache` server on a free loopback port, storing in
/// a temporary folder; killed on drop.
pub struct TurboServer {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl TurboServer {
    /// The server takes no port 0: a free port is picked, and another if
    /// it was taken before the server bound it.
    pub fn start() -> TurboServer {
        let cli = server_cli();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let log = fs::File::create(dir.path().join("server.log")).expect("log file");
            let child = Command::new("node")
                .arg(&cli)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("NODE_ENV", "production")
                .env("HOST", "127.0.0.1")
                .env("PORT", port.to_string())
                .env("TURBO_TOKEN", TOKEN)
                .env("STORAGE_PROVIDER", "local")
                .env("STORAGE_PATH", dir.path().join("storage"))
                .env("STORAGE_PATH_USE_TMP_FOLDER", "false")
                // Without a key of its own the server drops x-artifact-tag.
                .env("TURBO_REMOTE_CACHE_SIGNATURE_KEY", "server keeps tags")
                .env("LOG_LEVEL", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("node runs (scripts/test.sh installs it)");
            let mut server = TurboServer { child, port, dir };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("turborepo-remote-cache did not start on any of 5 free ports");
    }

    /// True once the server answers its status route; false if it
    /// exited (its port was taken). Waits at most 30 s.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                eprintln!("turborepo-remote-cache exited ({status}):\n{}", self.log());
                return false;
            }
            if status_answers(self.port) {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "turborepo-remote-cache did not answer within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for TurboServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's entry point, installed by `scripts/test.sh`.
fn server_cli() -> PathBuf {
    // From the workspace root, whichever package's tests include this.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = if root.join("tests/cache-server").exists() {
        root.to_path_buf()
    } else {
        root.join("..")
    };
    let folder = root.join("tests/cache-server");
    let cli = folder.join("node_modules/turborepo-remote-cache/dist/cli.js");
    assert!(
        cli.exists(),
        "{} is missing: run scripts/test.sh, or `npm ci` in {}",
        cli.display(),
        folder.display()
    );
    cli
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// One plain HTTP request to the status route, bounded by short timeouts.
fn status_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(2));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let request = b"GET /v8/artifacts/status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request).is_err() {
        return false;
    }
    let mut answer = Vec::with_capacity(1024);
    let _ = stream.take(1024).read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200")
}
