//! Who may call the hook: a bearer token read from a file (a mounted
//! Secret), and the peer ranges allowed.
//!
//! Invariant kept here: authentication never turns itself off. An unreadable
//! or empty file is a startup error, and a failed re-read keeps the last
//! good token.
//!
//! Kubernetes rotates a mounted Secret by swapping a symlink, so the file is
//! checked on every authenticated request (one `stat`) and re-read when it
//! changed. If a re-read fails, the last good token stays in force: a broken
//! rotation never turns authentication off, and never locks the kubelet out.

use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::IpNet;
use subtle::ConstantTimeEq;

/// The identity of the file's current content, as far as `stat` can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

fn version(path: &Path) -> io::Result<Version> {
    // Follows symlinks: the target changes when the Secret is rotated.
    let m = std::fs::metadata(path)?;
    Ok(Version {
        dev: m.dev(),
        ino: m.ino(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        len: m.len(),
    })
}

/// Why a token file cannot be used. Either stops the sidecar at startup
/// (exit 2); at run time the last good token is kept instead.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "cannot read token file {} ({source}): mount the Secret there and make it readable for the sidecar's user",
        path.display()
    )]
    Unreadable { path: PathBuf, source: io::Error },
    #[error(
        "token file {} is empty: put the bearer token in it (authentication is never turned off by an empty file)",
        path.display()
    )]
    Empty { path: PathBuf },
}

/// Reads and validates a token file: one token, surrounding whitespace
/// (a trailing newline) ignored.
pub(crate) fn read_token(path: &Path) -> Result<Vec<u8>, TokenError> {
    let raw = std::fs::read(path).map_err(|source| TokenError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    parse_token(&raw).ok_or_else(|| TokenError::Empty {
        path: path.to_path_buf(),
    })
}

/// The token in a file's bytes, or None when there is none.
pub fn parse_token(raw: &[u8]) -> Option<Vec<u8>> {
    let t = raw.trim_ascii();
    (!t.is_empty()).then(|| t.to_vec())
}

pub(crate) struct TokenFile {
    path: PathBuf,
    state: Mutex<(Version, Vec<u8>)>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TokenFile {
    /// Loads the token; an unreadable or empty file is an error (exit 2).
    pub(crate) fn load(path: &Path) -> Result<TokenFile, TokenError> {
        let v = version(path).map_err(|source| TokenError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let token = read_token(path)?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            state: Mutex::new((v, token)),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// True when `header` (the Authorization header's value) carries the
    /// current token. The comparison takes the same time wherever the
    /// first differing byte is.
    pub(crate) fn accepts(&self, header: Option<&[u8]>) -> bool {
        self.refresh();
        let Some(presented) = header.and_then(bearer) else {
            return false;
        };
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        bool::from(presented.ct_eq(&state.1))
    }

    fn refresh(&self) {
        let Ok(now) = version(&self.path) else {
            tracing::error!(path = %self.path.display(), "token file unreadable: keeping the last token");
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 == now {
            return;
        }
        match read_token(&self.path) {
            Ok(t) => {
                *state = (now, t);
                tracing::info!(path = %self.path.display(), "token file changed: new token in force");
            }
            Err(e) => tracing::error!("{e}; keeping the last token"),
        }
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
pub fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ")).then(|| rest.trim_ascii())
}

/// True when `peer` is in one of `allowed`, or when no range is listed.
pub fn peer_allowed(allowed: &[IpNet], peer: IpAddr) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    allowed.is_empty() || allowed.iter().any(|n| n.contains(&peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[test]
    fn tokens_in_files() {
        assert_eq!(parse_token(b"s3cret\n"), Some(b"s3cret".to_vec()));
        assert_eq!(parse_token(b" \n\t"), None);
    }

    #[test]
    fn accepts_only_the_token_and_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "one\n").unwrap();
        let tf = TokenFile::load(&p).unwrap();
        assert!(tf.accepts(Some(b"Bearer one")));
        assert!(!tf.accepts(Some(b"Bearer on")));
        assert!(!tf.accepts(Some(b"Bearer one1")));
        assert!(!tf.accepts(None));
        let q = dir.path().join("token.new");
        std::fs::write(&q, "two").unwrap();
        std::fs::rename(&q, &p).unwrap();
        assert!(tf.accepts(Some(b"Bearer two")));
        assert!(!tf.accepts(Some(b"Bearer one")));
        // A broken rotation keeps the last good token.
        std::fs::write(&p, "").unwrap();
        assert!(tf.accepts(Some(b"Bearer two")));
    }

    #[test]
    fn empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "\n").unwrap();
        assert!(
            TokenFile::load(&p)
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
        assert!(
            TokenFile::load(&dir.path().join("nope"))
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
    }

    #[test]
    fn peers() {
        let allowed: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(peer_allowed(&allowed, "10.1.2.3".parse().unwrap()));
        assert!(peer_allowed(&allowed, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(!peer_allowed(&allowed, "192.168.0.1".parse().unwrap()));
        assert!(peer_allowed(&[], "192.168.0.1".parse().unwrap()));
    }
}
