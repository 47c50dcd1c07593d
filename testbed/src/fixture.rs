//! A real NGINX master with workers, in a temp dir, on a free loopback port.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{find_nginx, free_port};

#[derive(Debug, Clone)]
pub struct NginxOptions {
    pub workers: usize,
    /// Size of the file served at `/blob` (rate-limit it with `?rate=500k`).
    pub blob_bytes: usize,
    /// Extra directives for the main (top-level) context, e.g.
    /// `worker_shutdown_timeout 2s;`.
    pub extra_main: String,
    /// Extra directives for the `http` block.
    pub extra_http: String,
    /// Extra directives for the `server` block (locations).
    pub extra_server: String,
    /// Also listen on a port that speaks cleartext HTTP/2 with prior
    /// knowledge ([`Workdir::h2c_port`]).
    pub h2c: bool,
    /// Further loopback ports to listen on (see [`Workdir::extra_ports`]).
    pub extra_ports: usize,
    /// Also listen on `[::1]`, same port ([`Nginx::addr_v6`]).
    pub ipv6: bool,
    /// `worker_connections` (and a file limit to match).
    pub worker_connections: usize,
    pub binary: Option<PathBuf>,
}

impl Default for NginxOptions {
    fn default() -> Self {
        NginxOptions {
            workers: 2,
            blob_bytes: 1 << 20,
            extra_main: String::new(),
            extra_http: String::new(),
            extra_server: String::new(),
            h2c: false,
            extra_ports: 0,
            ipv6: false,
            worker_connections: 4096,
            binary: None,
        }
    }
}

/// The directory an NGINX runs in; shared by restarts so the pid file stays.
pub struct Workdir {
    dir: tempfile::TempDir,
    pub port: u16,
    pub extra_ports: Vec<u16>,
    /// The HTTP/2 (h2c, prior knowledge) port, with `h2c`.
    pub h2c_port: Option<u16>,
    binary: PathBuf,
    opts: NginxOptions,
}

pub struct Nginx {
    pub work: Arc<Workdir>,
    /// None once handed to a background reaper.
    child: Option<Child>,
    pid: i32,
    reaped: Option<ExitStatus>,
    /// Set by the background reaper when the master is gone.
    bg_reaped: Option<Arc<AtomicBool>>,
    /// When the background reaper saw the master exit.
    bg_exited_at: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Workdir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn pid_file(&self) -> PathBuf {
        self.path().join("nginx.pid")
    }
    pub fn error_log(&self) -> PathBuf {
        self.path().join("error.log")
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    /// The command that starts this NGINX in the foreground.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-e")
            .arg(self.error_log())
            .arg("-p")
            .arg(self.path())
            .arg("-c")
            .arg(self.path().join("nginx.conf"));
        cmd
    }
}

impl Nginx {
    /// Starts NGINX (`daemon off`, so it is our child and we choose when to
    /// reap it) and waits until it accepts connections.
    pub fn start(opts: NginxOptions) -> io::Result<Nginx> {
        Nginx::launch(Nginx::prepare(opts)?)
    }

    /// Writes the configuration and content without starting NGINX, for
    /// tests that start it themselves (e.g. inside a PID namespace).
    pub fn prepare(opts: NginxOptions) -> io::Result<Arc<Workdir>> {
        let binary = find_nginx(opts.binary.as_deref()).map_err(io::Error::other)?;
        let dir = tempfile::Builder::new().prefix("nginx-drain-").tempdir()?;
        // Workers run as `nobody` when the master is root: let them read.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let port = free_port();
        let www = dir.path().join("www");
        std::fs::create_dir(&www)?;
        std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755))?;
        let blob: Vec<u8> = (0..opts.blob_bytes).map(|i| (i % 251) as u8).collect();
        std::fs::write(www.join("blob"), blob)?;
        std::fs::set_permissions(www.join("blob"), std::fs::Permissions::from_mode(0o644))?;
        let extra_ports = (0..opts.extra_ports).map(|_| free_port()).collect();
        let h2c_port = opts.h2c.then(free_port);
        let work = Arc::new(Workdir {
            dir,
            port,
            extra_ports,
            h2c_port,
            binary,
            opts,
        });
        std::fs::write(work.path().join("nginx.conf"), config(&work))?;
        Ok(work)
    }

    /// Starts a fresh master in the same directory, port and pid file, as a
    /// restarted container would.
    pub fn restart(&self) -> io::Result<Nginx> {
        Nginx::launch(self.work.clone())
    }

    fn launch(work: Arc<Workdir>) -> io::Result<Nginx> {
        let _ = std::fs::remove_file(work.pid_file());
        let child = work
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pid = child.id() as i32;
        let mut nginx = Nginx {
            work,
            child: Some(child),
            pid,
            reaped: None,
            bg_reaped: None,
            bg_exited_at: Arc::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = nginx.child.as_mut().expect("child").try_wait()? {
                return Err(io::Error::other(format!(
                    "nginx exited at startup ({status}); see {}",
                    nginx.work.error_log().display()
                )));
            }
            let pid_written = std::fs::read_to_string(nginx.work.pid_file())
                .is_ok_and(|s| s.trim() == pid.to_string());
            if pid_written && std::net::TcpStream::connect(nginx.addr()).is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("nginx did not start within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.work.port))
    }
    /// `[::1]`, same port (with [`NginxOptions::ipv6`]).
    pub fn addr_v6(&self) -> SocketAddr {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.work.port))
    }
    pub fn pid(&self) -> i32 {
        self.pid
    }
    pub fn pid_file(&self) -> PathBuf {
        self.work.pid_file()
    }
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.work.error_log()).unwrap_or_default()
    }
    /// How many times the master logged receiving SIGQUIT.
    pub fn sigquit_count(&self) -> usize {
        self.error_log()
            .lines()
            .filter(|l| l.contains("signal 3 (SIGQUIT) received"))
            .count()
    }

    /// Reaps the master from a thread as soon as it exits, as a prompt PID 1
    /// would. Afterwards [`Nginx::wait_exit`] only reports.
    pub fn reap_in_background(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let flag = Arc::new(AtomicBool::new(false));
        self.bg_reaped = Some(flag.clone());
        let at = self.bg_exited_at.clone();
        std::thread::spawn(move || {
            let _ = child.wait();
            *at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            flag.store(true, Ordering::SeqCst);
        });
    }

    /// When the master exited, as the background reaper saw it.
    pub fn exited_at(&self) -> Option<Instant> {
        *self.bg_exited_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gone_in_background(&self) -> bool {
        self.bg_reaped
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    pub fn signal(&self, sig: Signal) -> nix::Result<()> {
        if self.reaped.is_some() || self.gone_in_background() {
            return Err(nix::errno::Errno::ESRCH);
        }
        kill(Pid::from_raw(self.pid), sig)
    }

    /// True while the master has not exited. A zombie has exited.
    pub fn is_running(&self) -> bool {
        if self.reaped.is_some() || self.gone_in_background() {
            return false;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(s) => nginx_drain::nginx::procfs::parse_stat(&s).is_ok_and(|st| !st.is_zombie()),
            Err(_) => false,
        }
    }

    /// True when the master has exited but has not been reaped yet.
    pub fn is_zombie(&self) -> bool {
        self.reaped.is_none()
            && std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .ok()
                .and_then(|s| nginx_drain::nginx::procfs::parse_stat(&s).ok())
                .is_some_and(|st| st.is_zombie())
    }

    /// Reaps the master if it has exited; waits up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.reaped {
                return Some(s);
            }
            let bg_gone = self.gone_in_background();
            match self.child.as_mut() {
                Some(child) => {
                    if let Ok(Some(s)) = child.try_wait() {
                        self.reaped = Some(s);
                        return Some(s);
                    }
                }
                None if bg_gone => {
                    return Some(std::os::unix::process::ExitStatusExt::from_raw(0));
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Pids of the master's children right now, with their titles.
    pub fn workers(&self) -> Vec<nginx_drain::nginx::Worker> {
        nginx_drain::nginx::workers(&nginx_drain::nginx::ProcId {
            pid: self.pid,
            start_ticks: 0,
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Never signal a pid that was already reaped: it may be recycled.
        if self.reaped.is_none() && !self.gone_in_background() {
            let workers = self.workers();
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            for w in workers {
                let _ = kill(Pid::from_raw(w.pid), Signal::SIGKILL);
            }
            if let Some(child) = self.child.as_mut() {
                let _ = child.wait();
            }
        }
    }
}

fn config(work: &Workdir) -> String {
    let d = work.path().display();
    let o = &work.opts;
    format!(
        r#"daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log notice;
worker_rlimit_nofile {rlimit};
{extra_main}
events {{ worker_connections {wc}; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp-body;
    proxy_temp_path {d}/tmp-proxy;
    fastcgi_temp_path {d}/tmp-fastcgi;
    uwsgi_temp_path {d}/tmp-uwsgi;
    scgi_temp_path {d}/tmp-scgi;
    default_type application/octet-stream;
    {extra}
    server {{
        listen 127.0.0.1:{port} reuseport;{extra_listen}
        root {d}/www;
        location = /blob {{ limit_rate $arg_rate; }}
        location / {{ return 200 "ok\n"; }}
        {extra_server}
    }}
}}
"#,
        workers = o.workers,
        wc = o.worker_connections,
        rlimit = o.worker_connections * 2 + 64,
        port = work.port,
        extra = o.extra_http,
        extra_main = o.extra_main,
        extra_server = o.extra_server,
        extra_listen = work
            .extra_ports
            .iter()
            .map(|p| format!("\n        listen 127.0.0.1:{p} reuseport;"))
            .chain(
                work.h2c_port
                    .map(|p| format!("\n        listen 127.0.0.1:{p} reuseport http2;")),
            )
            .chain(
                o.ipv6
                    .then(|| format!("\n        listen [::1]:{} reuseport;", work.port)),
            )
            .collect::<String>(),
    )
}
