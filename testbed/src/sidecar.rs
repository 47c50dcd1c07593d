//! The `nginx-drain serve` binary as a child process, the way a pod runs it.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::free_port;

pub struct Sidecar {
    child: Child,
    pub addr: SocketAddr,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
    status: Option<ExitStatus>,
}

impl Sidecar {
    /// Starts `bin serve --listen 127.0.0.1:<free port> ARGS...` and waits
    /// until `/healthz` answers.
    pub fn spawn(bin: &Path, args: &[&str]) -> io::Result<Sidecar> {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .args(args);
        Sidecar::spawn_command(cmd, addr)
    }

    /// The sidecar for a testbed NGINX: its pid file, and only its port
    /// counted (tests share the machine's network namespace).
    pub fn for_nginx(bin: &Path, nginx: &super::Nginx, extra: &[&str]) -> io::Result<Sidecar> {
        let pid_file = nginx.pid_file();
        let port = nginx.addr().port().to_string();
        let mut args = vec![
            "--nginx-pid-file",
            pid_file.to_str().unwrap_or_default(),
            "--port",
            &port,
        ];
        args.extend_from_slice(extra);
        Sidecar::spawn(bin, &args)
    }

    /// Starts a prepared command (e.g. wrapped in `unshare`) that serves on `addr`.
    pub fn spawn_command(mut cmd: Command, addr: SocketAddr) -> io::Result<Sidecar> {
        let dir = tempfile::tempdir()?;
        let log_path = dir.path().join("sidecar.log");
        let log = std::fs::File::create(&log_path)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("NGINX_DRAIN_LOG_LEVEL", "debug");
        let child = cmd.spawn()?;
        let mut sc = Sidecar {
            child,
            addr,
            log_path,
            _log_dir: dir,
            status: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = sc.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "the sidecar exited at startup ({s}):\n{}",
                    sc.log()
                )));
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(sc);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "the sidecar did not listen on {addr} within 10 s:\n{}",
                    sc.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) -> nix::Result<()> {
        kill(Pid::from_raw(self.pid()), sig)
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the sidecar to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
