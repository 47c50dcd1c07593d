//! `--report-file`: each final report as one line of JSON, written so that a
//! reader (the kubelet reading a termination message) never sees half of it.

use std::io::Write;
use std::path::Path;

use super::{Report, TrafficReport};

/// The kubelet keeps at most this many bytes of a termination message.
pub(crate) const TERMINATION_MESSAGE_LIMIT: usize = 4096;

/// Writes `report` as compact JSON to `path`: to a temporary file in the same
/// directory, then renamed over `path`, so that a reader never sees half a
/// report. Where `path` is a mount point (the kubelet bind-mounts
/// `terminationMessagePath`), renaming over it is impossible; then it is
/// rewritten in place. Reports over 4 KiB (the kubelet's limit for a
/// termination message) lose their timeline first.
///
/// No fsync: the rename is what keeps readers from half a report, and the
/// reader is the kubelet on the same node, through the page cache; a
/// report that must outlive the node is in the logs and the metrics. This
/// runs on the sidecar's one runtime thread, which a disk flush would stall
/// (HTTP, the census) for as long as the disk takes.
pub(crate) fn write(path: &Path, report: &Report) -> std::io::Result<()> {
    let mut body = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    if body.len() > TERMINATION_MESSAGE_LIMIT
        && let Some(t) = &report.traffic
    {
        let mut slim = report.clone();
        slim.traffic = Some(TrafficReport {
            samples: Vec::new(),
            ..t.clone()
        });
        body = serde_json::to_vec(&slim).map_err(std::io::Error::other)?;
    }
    body.push(b'\n');
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let staged = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        std::fs::rename(&tmp, path)
    })();
    match staged {
        Ok(()) => Ok(()),
        Err(_) => {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?;
            f.write_all(&body)
        }
    }
}
