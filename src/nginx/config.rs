//! What the master's configuration says about shutting down: its
//! `worker_shutdown_timeout`, after which NGINX closes the connections that
//! have not ended by themselves (WebSockets, streams) and exits.
//!
//! The file is read through `/proc/PID/root` (the master's view of the
//! filesystem, in the pod's other container), at the path its title names
//! (`-c`, relative to `-p`) or NGINX's usual `/etc/nginx/nginx.conf`. Only
//! directives at the top level of that file are read: that is where
//! ingress-nginx, NGINX Inc's controller and the official images put it.
//! Reading needs the same UID as the master (or CAP_SYS_PTRACE), which the
//! sidecar has anyway to signal it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Master;

/// Where NGINX reads its configuration when no `-c` is given (Debian's
/// packages, the official images, both ingress controllers).
pub(crate) const DEFAULT_CONF: &str = "/etc/nginx/nginx.conf";

/// What the sidecar knows of the master's worker shutdown timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ShutdownTimeout {
    /// Set to this long.
    Set(Duration),
    /// Not set: NGINX waits for every connection, however long.
    Unset,
    /// The configuration could not be read; the reason, in words.
    Unknown(String),
}

/// As the report shows it (`connections.worker_shutdown_timeout`) and the
/// logs: `20s`, `unset`, or `unknown: why`.
impl std::fmt::Display for ShutdownTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShutdownTimeout::Set(d) => write!(f, "{}", humantime::format_duration(*d)),
            ShutdownTimeout::Unset => f.write_str("unset"),
            ShutdownTimeout::Unknown(why) => write!(f, "unknown: {why}"),
        }
    }
}

impl ShutdownTimeout {
    /// As the operator gave it (`--worker-shutdown-timeout`), else `read`.
    pub(crate) fn given_or(
        given: Option<Duration>,
        read: impl FnOnce() -> ShutdownTimeout,
    ) -> Self {
        given.map_or_else(read, ShutdownTimeout::Set)
    }

    pub(crate) fn duration(&self) -> Option<Duration> {
        match self {
            ShutdownTimeout::Set(d) => Some(*d),
            _ => None,
        }
    }
}

/// The configuration file the master was started with, as seen from here.
pub(crate) fn conf_path(master: &Master) -> PathBuf {
    let args: Vec<&str> = master.title.split_ascii_whitespace().collect();
    let after = |flag: &str| {
        args.windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].to_string())
    };
    let conf = after("-c").unwrap_or_else(|| DEFAULT_CONF.to_string());
    let conf = Path::new(&conf);
    let conf = match after("-p") {
        Some(prefix) if conf.is_relative() => Path::new(&prefix).join(conf),
        _ => conf.to_path_buf(),
    };
    let root = PathBuf::from(format!("/proc/{}/root", master.id.pid));
    root.join(conf.strip_prefix("/").unwrap_or(&conf))
}

/// Reads the master's `worker_shutdown_timeout`.
pub(crate) fn shutdown_timeout(master: &Master) -> ShutdownTimeout {
    let path = conf_path(master);
    match std::fs::read_to_string(&path) {
        Ok(text) => match top_level(&text, "worker_shutdown_timeout") {
            None => ShutdownTimeout::Unset,
            Some(v) => match parse_time(&v) {
                Some(d) => ShutdownTimeout::Set(d),
                None => ShutdownTimeout::Unknown(format!(
                    "worker_shutdown_timeout {v:?} in {} is not a time",
                    path.display()
                )),
            },
        },
        Err(e) => ShutdownTimeout::Unknown(format!(
            "cannot read nginx's configuration {} ({e}); --worker-shutdown-timeout gives it",
            path.display()
        )),
    }
}

/// The value of a directive at the top level of an nginx configuration
/// (outside every block), the last one if repeated. Comments and quotes
/// are understood; `include` is not followed.
pub(crate) fn top_level(text: &str, name: &str) -> Option<String> {
    let mut depth = 0usize;
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut found = None;
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    let flush = |word: &mut String, words: &mut Vec<String>| {
        if !word.is_empty() {
            words.push(std::mem::take(word));
        }
    };
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        word.push(n);
                    }
                }
                _ if c == q => quote = None,
                _ => word.push(c),
            }
            continue;
        }
        match c {
            '#' => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
                flush(&mut word, &mut words);
            }
            '"' | '\'' => quote = Some(c),
            ';' => {
                flush(&mut word, &mut words);
                if depth == 0 && words.first().is_some_and(|w| w == name) {
                    found = words.get(1).cloned();
                }
                words.clear();
            }
            '{' => {
                flush(&mut word, &mut words);
                depth += 1;
                words.clear();
            }
            '}' => {
                flush(&mut word, &mut words);
                depth = depth.saturating_sub(1);
                words.clear();
            }
            c if c.is_whitespace() => flush(&mut word, &mut words),
            c => word.push(c),
        }
    }
    found
}

/// An nginx time: `30s`, `1m30s`, `500ms`, or a bare number of seconds.
pub(crate) fn parse_time(v: &str) -> Option<Duration> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok().map(Duration::from_secs);
    }
    humantime::parse_duration(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nginx::ProcId;

    #[test]
    fn reads_the_top_level_directive_only() {
        let conf = r#"
# worker_shutdown_timeout 1s;
user www-data;
worker_shutdown_timeout 240s ;
events { worker_connections 1024; }
http {
    # a block's own directive of the same name is not the main one
    server { location / { return 200 "worker_shutdown_timeout 5s;"; } }
}
"#;
        assert_eq!(
            top_level(conf, "worker_shutdown_timeout").as_deref(),
            Some("240s")
        );
        assert_eq!(top_level("events {}\n", "worker_shutdown_timeout"), None);
        assert_eq!(
            top_level(
                "http { worker_shutdown_timeout 9s; }",
                "worker_shutdown_timeout"
            ),
            None
        );
    }

    #[test]
    fn nginx_times() {
        assert_eq!(parse_time("240s"), Some(Duration::from_secs(240)));
        assert_eq!(parse_time("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_time("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_time("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_time("soon"), None);
    }

    #[test]
    fn the_conf_path_comes_from_the_title() {
        let m = |title: &str| Master {
            id: ProcId {
                pid: 42,
                start_ticks: 1,
            },
            title: title.into(),
        };
        assert_eq!(
            conf_path(&m(
                "nginx: master process /usr/sbin/nginx -c /tmp/x/nginx.conf"
            )),
            PathBuf::from("/proc/42/root/tmp/x/nginx.conf")
        );
        assert_eq!(
            conf_path(&m("nginx: master process nginx -g daemon off;")),
            PathBuf::from("/proc/42/root/etc/nginx/nginx.conf")
        );
        assert_eq!(
            conf_path(&m("nginx: master process nginx -p /srv/ -c conf/n.conf")),
            PathBuf::from("/proc/42/root/srv/conf/n.conf")
        );
    }
}
