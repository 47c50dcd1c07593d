//! `nginx-drain check` and `nginx-drain status`: asking the running sidecar,
//! from inside its container (`kubectl exec POD -c nginx-drain --
//! /nginx-drain check`), whether its wiring is right and what it is doing.
//!
//! They find the `nginx-drain serve` process in the container's view of
//! `/proc` and read its arguments with the same parser (so `--listen` and
//! `--token-file` are the ones it serves with; its environment is the
//! container's, which `kubectl exec` shares), then ask its `/status` over
//! loopback with the bearer token the hook uses. A small blocking HTTP/1.1
//! GET: the image has no curl, and the product needs no HTTP client.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;

use crate::cli::{Cli, Command, InspectArgs, ServeArgs};
use crate::vocab::Check;

/// Why asking the sidecar failed, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "no `nginx-drain serve` process is in view: run this in the sidecar's container (kubectl exec POD -c nginx-drain -- /nginx-drain check), or give --url"
    )]
    NoServer,
    #[error("cannot read the serve process's arguments: {0}")]
    Args(String),
    #[error("cannot reach the sidecar at {addr}: {error}")]
    Unreachable { addr: String, error: std::io::Error },
    #[error("the sidecar at {addr} answered {status} for /status: {body}")]
    Refused {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("the sidecar's /status is not JSON: {0}")]
    NotJson(String),
}

/// Where the sidecar serves and the token its hook needs.
struct Sidecar {
    addr: SocketAddr,
    token: Option<String>,
}

/// The `serve` process of this container: its arguments, parsed.
fn serve_args() -> Result<ServeArgs, InspectError> {
    let me = std::process::id();
    let entries = std::fs::read_dir("/proc").map_err(|e| InspectError::Args(e.to_string()))?;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_serve = args.first().is_some_and(|a| a.ends_with("nginx-drain"))
            && args.get(1).is_some_and(|a| a == "serve");
        if !is_serve {
            continue;
        }
        return match Cli::try_parse_from(&args) {
            Ok(Cli {
                command: Command::Serve(s),
            }) => Ok(*s),
            Ok(_) => Err(InspectError::NoServer),
            Err(e) => Err(InspectError::Args(e.to_string())),
        };
    }
    Err(InspectError::NoServer)
}

fn target(args: &InspectArgs) -> Result<Sidecar, InspectError> {
    if let Some(addr) = args.url {
        return Ok(Sidecar {
            addr,
            token: read_token(args.token_file.as_ref())?,
        });
    }
    let serve = serve_args()?;
    // Listening everywhere: ask on loopback, in the family it listens on.
    let ip = match serve.listen.ip() {
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    Ok(Sidecar {
        addr: SocketAddr::new(ip, serve.listen.port()),
        token: read_token(args.token_file.as_ref().or(serve.token_file.as_ref()))?,
    })
}

/// The token the sidecar serves with, read as the sidecar reads it (one
/// token, surrounding whitespace dropped, an empty file refused).
fn read_token(path: Option<&PathBuf>) -> Result<Option<String>, InspectError> {
    path.map(|p| {
        crate::auth::read_token(p)
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .map_err(|e| InspectError::Args(e.to_string()))
    })
    .transpose()
}

/// GET `path` (HTTP/1.1, `Connection: close`); the status and body.
fn get(t: &Sidecar, path: &str) -> Result<(u16, String), InspectError> {
    let unreachable = |error| InspectError::Unreachable {
        addr: t.addr.to_string(),
        error,
    };
    let mut s = TcpStream::connect_timeout(&t.addr, Duration::from_secs(5)).map_err(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(unreachable)?;
    let auth = t
        .token
        .as_ref()
        .map(|tok| format!("Authorization: Bearer {tok}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: nginx-drain-inspect\r\n{auth}Connection: close\r\n\r\n",
        t.addr
    )
    .map_err(unreachable)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(unreachable)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn status_json(t: &Sidecar) -> Result<Value, InspectError> {
    let (status, body) = get(t, "/status")?;
    if status != 200 {
        return Err(InspectError::Refused {
            addr: t.addr.to_string(),
            status,
            body: body.trim().to_string(),
        });
    }
    serde_json::from_str(&body).map_err(|e| InspectError::NotJson(e.to_string()))
}

/// `nginx-drain check`: each wiring check with ok or FAIL and its fix, then
/// what the sidecar sees. The exit code: 0 when all pass, 1 when any fails,
/// 2 when the sidecar cannot be asked.
pub fn check(args: &InspectArgs) -> Result<u8, InspectError> {
    let t = target(args)?;
    let s = status_json(&t)?;
    if args.json {
        println!("{s}");
        return Ok(u8::from(
            s["problems"].as_array().is_some_and(|p| !p.is_empty()),
        ));
    }
    println!("nginx-drain check: the sidecar at {}", t.addr);
    let problems = s["problems"].as_array().cloned().unwrap_or_default();
    for check in Check::ALL {
        match problems.iter().find(|p| p["check"] == check.as_str()) {
            Some(p) => println!(
                "  FAIL  {check}{}: {}",
                if p["blocking"] == true {
                    " (blocking)"
                } else {
                    ""
                },
                p["message"].as_str().unwrap_or_default()
            ),
            None => println!("  ok    {check}"),
        }
    }
    println!("{}", summary(&s));
    let blocking = problems.iter().filter(|p| p["blocking"] == true).count();
    if problems.is_empty() {
        println!("result: every check passed");
        Ok(0)
    } else {
        println!(
            "result: {} problem{} ({blocking} blocking{})",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            if blocking > 0 {
                ": the hook cannot drain NGINX until it is fixed"
            } else {
                ""
            }
        );
        Ok(1)
    }
}

/// `nginx-drain status`: `/status`, readably (or as it is, `--json`).
pub fn status(args: &InspectArgs) -> Result<u8, InspectError> {
    let t = target(args)?;
    let s = status_json(&t)?;
    if args.json {
        println!("{s}");
    } else {
        println!("{}", summary(&s));
    }
    Ok(0)
}

/// The state, NGINX, the traffic and the last drain, in a few lines.
fn summary(s: &Value) -> String {
    let mut out = Vec::new();
    out.push(format!(
        "state: {} ({})",
        s["state"].as_str().unwrap_or("?"),
        s["detail"].as_str().unwrap_or("")
    ));
    match s["master"]["pid"].as_i64() {
        Some(pid) => out.push(format!(
            "nginx: master pid {pid} {:?}, {} worker{}",
            s["master"]["title"].as_str().unwrap_or(""),
            s["workers"].as_array().map_or(0, Vec::len),
            if s["workers"].as_array().map_or(0, Vec::len) == 1 {
                ""
            } else {
                "s"
            }
        )),
        None => out.push("nginx: no master in view".into()),
    }
    let t = &s["traffic"];
    if t.is_object() {
        let requests = if t["requests_seen"].as_bool() == Some(false) {
            "requests on open connections not seen".to_string()
        } else {
            format!(
                "{} requests/s on open connections",
                t["requests_per_second_last_minute"]
            )
        };
        out.push(format!(
            "traffic: census {}, arrivals seen {}, ports {}, open {}, {} new connections/s and {requests} over the last minute, kubelet {}",
            t["census"].as_str().unwrap_or("?"),
            t["arrivals_seen"].as_str().unwrap_or("?"),
            t["ports"],
            t["open"],
            t["arrivals_per_second_last_minute"],
            t["kubelet_peers"]
        ));
    }
    if let Some(d) = s["drain"].as_object() {
        out.push(format!(
            "drain {}: phase {}, {} ms since the hook",
            d.get("drain_id").and_then(Value::as_str).unwrap_or("?"),
            d.get("phase").and_then(Value::as_str).unwrap_or("?"),
            d.get("elapsed_ms").unwrap_or(&Value::Null)
        ));
    }
    if let Some(r) = s["last_report"].as_object() {
        out.push(format!(
            "last drain {}: {}: {}",
            r.get("drain_id").and_then(Value::as_str).unwrap_or("?"),
            r.get("outcome").and_then(Value::as_str).unwrap_or("?"),
            r.get("message").and_then(Value::as_str).unwrap_or("")
        ));
    }
    if s["undrained_exits"].as_u64().is_some_and(|n| n > 0) {
        out.push(format!(
            "undrained exits: {} (NGINX exited with no drain: see the log)",
            s["undrained_exits"]
        ));
    }
    out.join("\n")
}
