//! Who may call the hook: a bearer token read from a file (a mounted
//! Secret), and the peers allowed ([`Access`]: ranges, and the addresses the
//! kubelet calls this pod from).
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
use std::time::{Duration, Instant};

use ipnet::IpNet;
use subtle::ConstantTimeEq;

use crate::vocab::unmapped;

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
    let peer = unmapped(peer);
    allowed.is_empty() || allowed.iter().any(|n| n.contains(&peer))
}

/// How long a read of the routing tables stands before a peer it does not
/// admit makes it read them again (a CNI may add the route after the
/// sidecar started).
const REREAD_GATEWAYS: Duration = Duration::from_secs(1);

/// Who may call `/prestop` and `/status`: anyone (no rule given), or the
/// peers in `--allow-cidr`, or (`--allow-kubelet`) the addresses the kubelet
/// calls this pod from: the node's (`--node-ip`, the downward API's
/// `status.hostIP`), the pod's default gateways (the node's end of the pod's
/// link, see `sockets::routes`) and loopback (the pod itself, e.g.
/// `nginx-drain check`). No secret to copy, and another pod cannot send from
/// any of them.
///
/// It also keeps what the kubelet's own requests (its User-Agent) showed:
/// kubelet requests that only ever came from addresses this refuses are a
/// wiring problem (the hook would be refused at the first rollout).
pub(crate) struct Access {
    cidrs: Vec<IpNet>,
    /// The addresses the kubelet calls this pod from: admitted with
    /// `--allow-kubelet`, and the only ones (with `--allow-cidr`) a request
    /// with the kubelet's User-Agent is believed from, whatever the rule.
    kubelet: KubeletAddresses,
    allow_kubelet: bool,
    seen: Mutex<KubeletSeen>,
}

struct KubeletAddresses {
    node: Vec<IpAddr>,
    /// When the gateways were last read, and what they were.
    gateways: Mutex<(Instant, Vec<IpAddr>)>,
    read_gateways: Box<dyn Fn() -> Vec<IpAddr> + Send + Sync>,
}

impl KubeletAddresses {
    /// `peer` is loopback, the node's, or a default gateway of the pod (the
    /// routing tables read again, at most once a second, for a peer they
    /// did not hold: a CNI may add the route after the sidecar started).
    fn contains(&self, peer: IpAddr) -> bool {
        let peer = unmapped(peer);
        if peer.is_loopback() || self.node.contains(&peer) {
            return true;
        }
        let mut g = self.gateways.lock().unwrap_or_else(|e| e.into_inner());
        if g.1.contains(&peer) {
            return true;
        }
        if g.0.elapsed() >= REREAD_GATEWAYS {
            *g = (Instant::now(), (self.read_gateways)());
        }
        g.1.contains(&peer)
    }
}

/// What the kubelet's own requests showed of the access rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KubeletSeen {
    /// A kubelet request came from an admitted address.
    pub(crate) admitted: bool,
    /// Addresses kubelet requests came from that the rule refuses.
    pub(crate) refused: Vec<IpAddr>,
}

impl Access {
    /// `allow_kubelet`: also the kubelet's addresses, the node's given in
    /// `node`, the gateways read from this network namespace.
    pub(crate) fn new(cidrs: Vec<IpNet>, allow_kubelet: bool, node: Vec<IpAddr>) -> Access {
        Access::with_gateways(
            cidrs,
            allow_kubelet,
            node,
            Box::new(crate::sockets::routes::default_gateways),
        )
    }

    fn with_gateways(
        cidrs: Vec<IpNet>,
        allow_kubelet: bool,
        node: Vec<IpAddr>,
        read_gateways: Box<dyn Fn() -> Vec<IpAddr> + Send + Sync>,
    ) -> Access {
        let kubelet = KubeletAddresses {
            node: node.into_iter().map(unmapped).collect(),
            gateways: Mutex::new((Instant::now(), read_gateways())),
            read_gateways,
        };
        Access {
            cidrs,
            kubelet,
            allow_kubelet,
            seen: Mutex::default(),
        }
    }

    /// Anyone may call.
    pub(crate) fn is_open(&self) -> bool {
        self.cidrs.is_empty() && !self.allow_kubelet
    }

    /// Only the kubelet's addresses (and `--allow-cidr`) may call.
    pub(crate) fn kubelet_only(&self) -> bool {
        self.allow_kubelet
    }

    /// True when `peer` may call `/prestop` and `/status`.
    pub(crate) fn admits(&self, peer: IpAddr) -> bool {
        if self.is_open() {
            return true;
        }
        self.in_cidrs(peer) || (self.allow_kubelet && self.kubelet.contains(peer))
    }

    /// `peer` is in `--allow-cidr`. (The ranges' match is `peer_allowed`'s,
    /// fuzzed in tests/fuzz.rs.)
    fn in_cidrs(&self, peer: IpAddr) -> bool {
        !self.cidrs.is_empty() && peer_allowed(&self.cidrs, peer)
    }

    /// Whether a request with the kubelet's User-Agent from `peer` may be
    /// believed: `peer` is one of the addresses the kubelet calls this pod
    /// from (loopback, the node's, a default gateway) or in `--allow-cidr`.
    /// Whatever the access rule: with open access, any pod could otherwise
    /// send that User-Agent and have its own connections to NGINX taken for
    /// the kubelet's probes.
    pub(crate) fn may_be_kubelet(&self, peer: IpAddr) -> bool {
        self.in_cidrs(peer) || self.kubelet.contains(peer)
    }

    /// A request with the kubelet's User-Agent came from `peer`; true when
    /// the rule admits it.
    pub(crate) fn note_kubelet(&self, peer: IpAddr) -> bool {
        let ok = self.admits(peer);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let peer = unmapped(peer);
        if ok {
            seen.admitted = true;
        } else if !seen.refused.contains(&peer) && seen.refused.len() < 8 {
            seen.refused.push(peer);
        }
        ok
    }

    /// The rule names at least one address the kubelet could call from
    /// (loopback aside).
    pub(crate) fn knows_an_address(&self) -> bool {
        let k = &self.kubelet;
        !self.cidrs.is_empty()
            || (self.allow_kubelet
                && (!k.node.is_empty()
                    || !k
                        .gateways
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .1
                        .is_empty()))
    }

    /// What the kubelet's requests showed, judged by the rule as it is
    /// now: an address refused before the CNI added the pod's default
    /// route (the kubelet probes as soon as the container starts) is
    /// admitted once the route is read, and is no wiring problem then.
    pub(crate) fn kubelet_seen(&self) -> KubeletSeen {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let before = seen.refused.len();
        seen.refused.retain(|p| !self.admits(*p));
        if seen.refused.len() < before {
            seen.admitted = true;
            let mut kept = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            kept.admitted = true;
            kept.refused.retain(|p| seen.refused.contains(p));
        }
        seen
    }

    /// The rule in words, for logs and refusals.
    pub(crate) fn describe(&self) -> String {
        if self.is_open() {
            return "any peer".into();
        }
        let list = |v: &[IpAddr]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let mut parts = Vec::new();
        if self.allow_kubelet {
            let k = &self.kubelet;
            let g = k.gateways.lock().unwrap_or_else(|e| e.into_inner());
            parts.push(format!(
                "the kubelet's addresses (node: {}; default gateway: {}; loopback)",
                list(&k.node),
                list(&g.1)
            ));
        }
        if !self.cidrs.is_empty() {
            let c: Vec<String> = self.cidrs.iter().map(ToString::to_string).collect();
            parts.push(format!("--allow-cidr {}", c.join(", ")));
        }
        parts.join(" and ")
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_kubelets_addresses_and_only_they_are_admitted() {
        let gateways = Arc::new(Mutex::new(vec![ip("10.244.1.1")]));
        let g = gateways.clone();
        let access = Access::with_gateways(
            Vec::new(),
            true,
            vec![ip("192.168.5.7")],
            Box::new(move || g.lock().unwrap().clone()),
        );
        assert!(!access.is_open());
        for admitted in [
            "10.244.1.1",
            "192.168.5.7",
            "127.0.0.1",
            "::1",
            "::ffff:10.244.1.1",
        ] {
            assert!(access.admits(ip(admitted)), "{admitted}");
        }
        // Another pod on the same bridge, another node's address.
        for refused in ["10.244.1.9", "192.168.5.8", "::ffff:10.244.1.9"] {
            assert!(!access.admits(ip(refused)), "{refused}");
        }
        // The kubelet probed before the CNI added the route: refused then.
        assert!(!access.note_kubelet(ip("::ffff:10.244.1.254")));
        assert_eq!(access.kubelet_seen().refused, [ip("10.244.1.254")]);
        // A route added after the start is found on a later miss, and the
        // kubelet's earlier refusal is no wiring problem any more.
        gateways.lock().unwrap().push(ip("10.244.1.254"));
        std::thread::sleep(REREAD_GATEWAYS);
        assert_eq!(
            access.kubelet_seen(),
            KubeletSeen {
                admitted: true,
                refused: Vec::new()
            }
        );
        assert!(access.admits(ip("10.244.1.254")));
        assert!(
            access.describe().contains("10.244.1.254"),
            "{}",
            access.describe()
        );
    }

    /// With open access anyone may call, but a request that says it is the
    /// kubelet's (its User-Agent) is believed only from where the kubelet
    /// calls: another pod cannot make its own connections look like probes.
    #[test]
    fn only_the_kubelets_addresses_may_be_the_kubelet_whatever_the_rule() {
        let open = Access::with_gateways(
            Vec::new(),
            false,
            vec![ip("192.168.5.7")],
            Box::new(|| vec![ip("10.244.1.1")]),
        );
        assert!(open.is_open() && open.admits(ip("10.244.1.9")));
        for kubelet in [
            "10.244.1.1",
            "192.168.5.7",
            "127.0.0.1",
            "::ffff:10.244.1.1",
        ] {
            assert!(open.may_be_kubelet(ip(kubelet)), "{kubelet}");
        }
        assert!(!open.may_be_kubelet(ip("10.244.1.9")), "another pod");
        let cidr = Access::new(vec!["10.214.1.1/32".parse().unwrap()], false, Vec::new());
        assert!(cidr.may_be_kubelet(ip("10.214.1.1")));
    }

    #[test]
    fn kubelet_requests_only_from_refused_addresses_are_remembered() {
        let access = Access::with_gateways(Vec::new(), true, Vec::new(), Box::new(Vec::new));
        assert!(!access.note_kubelet(ip("10.213.1.1")));
        assert_eq!(
            access.kubelet_seen(),
            KubeletSeen {
                admitted: false,
                refused: vec![ip("10.213.1.1")]
            }
        );
        assert!(access.note_kubelet(ip("127.0.0.1")));
        assert!(access.kubelet_seen().admitted);
        // A range admits too, and no rule admits anyone.
        let cidr = Access::new(vec!["10.0.0.0/8".parse().unwrap()], false, Vec::new());
        assert!(cidr.admits(ip("10.1.2.3")) && !cidr.admits(ip("11.1.2.3")));
        assert!(Access::new(Vec::new(), false, Vec::new()).admits(ip("11.1.2.3")));
    }

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
