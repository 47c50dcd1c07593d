//! What the master's configuration says about shutting down: its
//! `worker_shutdown_timeout`, after which NGINX closes the connections that
//! have not ended by themselves (WebSockets, streams) and exits.
//!
//! The file is read through `/proc/PID/root` (the master's view of the
//! filesystem, in the pod's other container), at the path its title names
//! (`-c`, relative to `-p`) or, without `-c`, where builds put it: the
//! prefix's `conf/nginx.conf` (`-p`, OpenResty, builds from source) or
//! `/etc/nginx/nginx.conf` (Debian's packages, the official images, both
//! ingress controllers), the first that exists. `worker_shutdown_timeout`
//! is a main-context directive: it is looked for outside every block of
//! that file and of the files it `include`s there (relative to the file's
//! directory, as NGINX resolves them; `*` and `?` in the file name), at
//! most [`MAX_INCLUDE_DEPTH`] deep and [`MAX_FILES`] files. Reading needs
//! the same UID as the master (or CAP_SYS_PTRACE), which the sidecar has
//! anyway to signal it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Master;

/// Where NGINX reads its configuration when no `-c` is given, by build, in
/// the order tried (Debian's packages, the official images, both ingress
/// controllers; OpenResty; builds from source).
pub(crate) const DEFAULT_CONFS: [&str; 3] = [
    "/etc/nginx/nginx.conf",
    "/usr/local/openresty/nginx/conf/nginx.conf",
    "/usr/local/nginx/conf/nginx.conf",
];

/// `include`s are followed this deep...
const MAX_INCLUDE_DEPTH: usize = 8;
/// ...and through at most this many files.
const MAX_FILES: usize = 64;

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

/// The configuration files the master may have been started with, in the
/// order to try, as paths inside its filesystem (see the module's doc).
pub(crate) fn conf_candidates(master: &Master) -> Vec<PathBuf> {
    let args: Vec<&str> = master.title.split_ascii_whitespace().collect();
    let after = |flag: &str| {
        args.windows(2)
            .find(|w| w[0] == flag)
            .map(|w| PathBuf::from(w[1]))
    };
    let prefix = after("-p");
    match (after("-c"), prefix) {
        (Some(c), _) if c.is_absolute() => vec![c],
        (Some(c), Some(p)) => vec![p.join(c)],
        // Relative to the build's prefix, which the title does not name.
        (Some(c), None) => DEFAULT_CONFS
            .iter()
            .filter_map(|d| Path::new(d).parent()?.parent())
            .map(|prefix| prefix.join(&c))
            .collect(),
        (None, Some(p)) => std::iter::once(p.join("conf/nginx.conf"))
            .chain(DEFAULT_CONFS.iter().map(PathBuf::from))
            .collect(),
        (None, None) => DEFAULT_CONFS.iter().map(PathBuf::from).collect(),
    }
}

/// `path` (inside the master's filesystem) as seen from here.
fn through_root(pid: i32, path: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
}

/// Reads the master's `worker_shutdown_timeout`.
pub(crate) fn shutdown_timeout(master: &Master) -> ShutdownTimeout {
    let root = PathBuf::from(format!("/proc/{}/root", master.id.pid));
    let candidates = conf_candidates(master);
    let Some(conf) = candidates
        .iter()
        .find(|c| through_root(master.id.pid, c).is_file())
        .or(candidates.first())
    else {
        return ShutdownTimeout::Unknown("no configuration file to read".into());
    };
    let mut reader = Reader {
        root: &root,
        files: 0,
    };
    match reader.main_directive(conf, "worker_shutdown_timeout", 0) {
        Ok(None) => ShutdownTimeout::Unset,
        Ok(Some((v, file))) => match crate::vocab::parse_nginx_time(&v) {
            Some(d) => ShutdownTimeout::Set(d),
            None => ShutdownTimeout::Unknown(format!(
                "worker_shutdown_timeout {v:?} in {} is not a time",
                file.display()
            )),
        },
        Err(why) => ShutdownTimeout::Unknown(format!("{why}; --worker-shutdown-timeout gives it")),
    }
}

/// Reads a configuration and what it includes, inside `root`.
struct Reader<'a> {
    root: &'a Path,
    files: usize,
}

impl Reader<'_> {
    /// The value of main-context directive `name` in `conf` or the files
    /// it includes at its top level, with the file that sets it (the last
    /// one, as NGINX reads them in order).
    fn main_directive(
        &mut self,
        conf: &Path,
        name: &str,
        depth: usize,
    ) -> Result<Option<(String, PathBuf)>, String> {
        self.files += 1;
        if self.files > MAX_FILES || depth > MAX_INCLUDE_DEPTH {
            return Err(format!(
                "nginx's configuration includes more than {MAX_FILES} files or nests deeper than {MAX_INCLUDE_DEPTH} (at {})",
                conf.display()
            ));
        }
        let seen = self.root.join(conf.strip_prefix("/").unwrap_or(conf));
        let text = std::fs::read_to_string(&seen)
            .map_err(|e| format!("cannot read nginx's configuration {} ({e})", seen.display()))?;
        let mut found = None;
        for words in main_statements(&text) {
            match words.first().map(String::as_str) {
                Some(n) if n == name => {
                    if let Some(v) = words.get(1) {
                        found = Some((v.clone(), seen.clone()));
                    }
                }
                Some("include") => {
                    let Some(pattern) = words.get(1) else {
                        continue;
                    };
                    let dir = conf.parent().unwrap_or(Path::new("/"));
                    for file in self.expand(&dir.join(pattern)) {
                        if let Some(f) = self.main_directive(&file, name, depth + 1)? {
                            found = Some(f);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(found)
    }

    /// The files an `include` names: the path itself, or, with `*` or `?`
    /// in its file name, the matching files of its directory in order.
    fn expand(&self, path: &Path) -> Vec<PathBuf> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.contains(['*', '?']) {
            return vec![path.to_path_buf()];
        }
        let dir = path.parent().unwrap_or(Path::new("/"));
        let seen = self.root.join(dir.strip_prefix("/").unwrap_or(dir));
        let mut names: Vec<String> = std::fs::read_dir(&seen)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && wildcard(&name, n))
            .collect();
        names.sort();
        names.into_iter().map(|n| dir.join(n)).collect()
    }
}

/// Whether `name` matches `pattern`'s `*` (any run) and `?` (any one).
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with backtracking on the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// The simple directives outside every block of an nginx configuration,
/// as words (comments and quotes understood).
pub(crate) fn main_statements(text: &str) -> Vec<Vec<String>> {
    let mut depth = 0usize;
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut out = Vec::new();
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
                if depth == 0 && !words.is_empty() {
                    out.push(std::mem::take(&mut words));
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
    out
}

/// The value of a directive at the top level of one configuration file
/// (outside every block), the last one if repeated; `include` not
/// followed.
#[cfg(test)]
pub(crate) fn top_level(text: &str, name: &str) -> Option<String> {
    main_statements(text)
        .into_iter()
        .filter(|w| w.first().is_some_and(|n| n == name))
        .filter_map(|w| w.get(1).cloned())
        .next_back()
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

    fn master(title: &str) -> Master {
        Master {
            id: ProcId {
                pid: 42,
                start_ticks: 1,
            },
            title: title.into(),
        }
    }

    #[test]
    fn the_conf_path_comes_from_the_title() {
        let m = |t: &str| conf_candidates(&master(t));
        let p = |s: &[&str]| s.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            m("nginx: master process /usr/sbin/nginx -c /tmp/x/nginx.conf"),
            p(&["/tmp/x/nginx.conf"])
        );
        assert_eq!(
            m("nginx: master process nginx -g daemon off;"),
            p(&DEFAULT_CONFS)
        );
        assert_eq!(
            m("nginx: master process nginx -p /srv/ -c conf/n.conf"),
            p(&["/srv/conf/n.conf"])
        );
        // Without -c, -p names where a build with a relative conf path
        // (OpenResty, builds from source) reads it.
        assert_eq!(
            m("nginx: master process nginx -p /srv/")[0],
            PathBuf::from("/srv/conf/nginx.conf")
        );
    }

    /// `worker_shutdown_timeout` set in a file the main configuration
    /// includes at its top level (relative to its directory, by a mask) is
    /// found; one inside a block's include is not the main one.
    #[test]
    fn includes_at_the_top_level_are_followed() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc/nginx");
        std::fs::create_dir_all(etc.join("main.d")).unwrap();
        std::fs::create_dir_all(etc.join("conf.d")).unwrap();
        std::fs::write(
            etc.join("nginx.conf"),
            "user nginx;\ninclude main.d/*.conf;\nhttp { include conf.d/*.conf; }\n",
        )
        .unwrap();
        std::fs::write(etc.join("main.d/10-pid.conf"), "pid /run/nginx.pid;\n").unwrap();
        std::fs::write(
            etc.join("main.d/20-shutdown.conf"),
            "worker_shutdown_timeout 7s;\n",
        )
        .unwrap();
        std::fs::write(etc.join("conf.d/x.conf"), "worker_shutdown_timeout 99s;\n").unwrap();
        let mut r = Reader {
            root: root.path(),
            files: 0,
        };
        let found = r
            .main_directive(
                Path::new("/etc/nginx/nginx.conf"),
                "worker_shutdown_timeout",
                0,
            )
            .unwrap()
            .unwrap();
        assert_eq!(found.0, "7s");
        assert!(found.1.ends_with("main.d/20-shutdown.conf"), "{found:?}");
        // An include of itself ends at the limit, with the reason.
        std::fs::write(etc.join("loop.conf"), "include loop.conf;\n").unwrap();
        let mut r = Reader {
            root: root.path(),
            files: 0,
        };
        let e = r
            .main_directive(
                Path::new("/etc/nginx/loop.conf"),
                "worker_shutdown_timeout",
                0,
            )
            .unwrap_err();
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn masks_match_as_globs_do() {
        assert!(wildcard("*.conf", "a.conf"));
        assert!(wildcard("*", "x"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("*.conf", "a.conf.bak"));
        assert!(wildcard("*-*.conf", "10-x.conf"));
        assert!(!wildcard("x*", "ax"));
    }
}
