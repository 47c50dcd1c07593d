//! Property tests (proptest) of every parser that reads bytes another
//! process or a network peer controls. Each must return a value or an
//! error for any input, never panic, and agree with what it was given.
//!
//! The run in `scripts/test` is bounded (proptest's 256 cases a property).
//! A longer run: `PROPTEST_CASES=200000 cargo test --release --test fuzz`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use nginx_drain::auth::{bearer, parse_token, peer_allowed};
use nginx_drain::nginx::procfs::{parse_cmdline, parse_pid_file, parse_stat, parse_status_uid};
use nginx_drain::sockets::netlink::parse_datagram;
use nginx_drain::sockets::procnet::parse_line;
use nginx_drain::sockets::routes::{default_gateways_v4, default_gateways_v6};
use proptest::prelude::*;

/// `n` characters (one of `lens`), mostly hex digits, sometimes any other
/// character but a separator (multibyte ones included).
fn address_chars(lens: Vec<usize>) -> impl Strategy<Value = String> {
    prop::sample::select(lens).prop_flat_map(|n| {
        prop::collection::vec(prop_oneof![8 => "[0-9A-F]", 1 => "[^:\\s]"], n)
            .prop_map(|chars| chars.concat())
    })
}

proptest! {
    #[test]
    fn stat_never_panics(s in ".{0,300}") {
        let _ = parse_stat(&s);
    }

    #[test]
    fn stat_reads_back_what_the_kernel_writes(
        pid in 1i32..4_000_000,
        comm in "[^\n]{0,15}",
        state in prop::sample::select(vec!['R', 'S', 'D', 'Z', 'T', 'I']),
        ppid in 0i32..4_000_000,
        start in any::<u64>(),
    ) {
        let line = format!("{pid} ({comm}) {state} {ppid} 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 {start} 10502144 1670 1844 0 0");
        let s = parse_stat(&line).unwrap();
        prop_assert_eq!((s.pid, s.comm.as_str(), s.state, s.ppid, s.start_ticks), (pid, comm.as_str(), state, ppid, start));
    }

    #[test]
    fn cmdline_never_panics_and_has_no_nul(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        let title = parse_cmdline(&raw);
        prop_assert!(!title.contains('\0'));
    }

    /// Half the cases are what NGINX writes (a pid and a newline, around
    /// the edges of i32), half anything: every case is judged.
    #[test]
    fn pid_file(s in prop_oneof![
        any::<i32>().prop_map(|p| format!("{p}\n")),
        (any::<i64>(), "[ \t\n]{0,3}").prop_map(|(p, ws)| format!("{ws}{p}{ws}")),
        ".{0,64}",
    ]) {
        let expected = s.trim().parse::<i32>().ok().filter(|p| *p > 0);
        prop_assert_eq!(parse_pid_file(&s).ok(), expected, "{:?}", s);
    }

    #[test]
    fn status_uid_never_panics(s in ".{0,300}") {
        let _ = parse_status_uid(&s);
    }

    #[test]
    fn proc_net_tcp_never_panics(s in ".{0,200}") {
        let _ = parse_line(&s);
    }

    /// Lines shaped like the kernel's, whose addresses are 8 or 32
    /// characters of hex digits and sometimes multibyte characters or other
    /// text: a line parses exactly when both addresses are 8 or 32 hex
    /// digits (and never panics on a character that a byte offset cuts).
    #[test]
    fn proc_net_tcp_addresses_of_any_characters(
        local in address_chars(vec![8, 32, 7, 31]),
        peer in address_chars(vec![8, 32]),
        port in any::<u16>(),
    ) {
        let line = format!("   0: {local}:{port:04X} {peer}:0050 01 00000000:00000000 00:00000000 00000000     0        0 7 1");
        let well_formed = |a: &str| (a.len() == 8 || a.len() == 32) && a.bytes().all(|b| b.is_ascii_hexdigit());
        let parsed = parse_line(&line);
        prop_assert_eq!(parsed.is_ok(), well_formed(&local) && well_formed(&peer), "{}", line);
        if let Ok(sock) = parsed {
            prop_assert_eq!(sock.local.port(), port);
        }
    }

    #[test]
    fn proc_net_tcp_reads_back_addresses(a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), lp in any::<u16>(), rp in any::<u16>(), st in 1u8..12, inode in any::<u32>()) {
        let hex = |ip: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(ip));
        let line = format!("   0: {}:{lp:04X} {}:{rp:04X} {st:02X} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0", hex(a), hex(b));
        let s = parse_line(&line).unwrap();
        prop_assert_eq!(s.local, SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), lp));
        prop_assert_eq!(s.peer, SocketAddr::new(IpAddr::V4(Ipv4Addr::from(b)), rp));
        prop_assert_eq!((s.state, s.inode), (st, inode));
    }

    #[test]
    fn proc_net_tcp6_reads_back_addresses(a in any::<[u8; 16]>(), lp in any::<u16>()) {
        let hex: String = a.chunks(4).map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))).collect();
        let line = format!("   0: {hex}:{lp:04X} {hex}:0050 01 00000000:00000000 00:00000000 00000000     0        0 7 1");
        let s = parse_line(&line).unwrap();
        let ip = Ipv6Addr::from(a);
        let expected = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        prop_assert_eq!(s.local, SocketAddr::new(expected, lp));
    }

    #[test]
    fn route_tables_of_any_text_never_panic(s in "(.{0,60}\n){0,6}") {
        let _ = default_gateways_v4(&s);
        let _ = default_gateways_v6(&s);
    }

    #[test]
    fn route_tables_give_back_the_default_gateway_among_other_routes(
        gw in any::<[u8; 4]>().prop_filter("a gateway", |g| *g != [0; 4]),
        gw6 in any::<[u8; 16]>().prop_filter("a gateway", |g| *g != [0; 16]),
        net in any::<[u8; 4]>(),
        before in any::<bool>(),
    ) {
        // A subnet route (no gateway) and the default route, in either order.
        let hex = |ip: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(ip));
        let subnet = format!("eth0\t{}\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0", hex(net));
        let default = format!("eth0\t00000000\t{}\t0003\t0\t0\t0\t00000000\t0\t0\t0", hex(gw));
        let (a, b) = if before { (&default, &subnet) } else { (&subnet, &default) };
        let v4 = format!("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n{a}\n{b}\n");
        prop_assert_eq!(default_gateways_v4(&v4), vec![Ipv4Addr::from(gw)]);
        let hop: String = gw6.iter().map(|b| format!("{b:02x}")).collect();
        let zero = "0".repeat(32);
        let v6 = format!("{zero} 00 {zero} 00 {hop} 00000400 00000001 00000000 00000003 eth0\n{zero} 00 {zero} 00 {zero} 00000000 00000001 00000000 00200200 lo\n");
        prop_assert_eq!(default_gateways_v6(&v6), vec![Ipv6Addr::from(gw6)]);
    }

    #[test]
    fn netlink_datagrams_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), seq in any::<u32>()) {
        let mut out = Vec::new();
        let _ = parse_datagram(&bytes, seq, &mut out);
    }

    #[test]
    fn netlink_headers_with_lying_lengths_never_panic(len in any::<u32>(), ty in any::<u16>(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut msg = Vec::new();
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&[0, 0]);
        msg.extend_from_slice(&1u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&body);
        let mut out = Vec::new();
        let _ = parse_datagram(&msg, 1, &mut out);
    }

    #[test]
    fn token_files(raw in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Some(t) = parse_token(&raw) {
            prop_assert!(!t.is_empty());
            prop_assert!(!t[0].is_ascii_whitespace() && !t[t.len() - 1].is_ascii_whitespace());
        }
    }

    /// Headers that mostly start with a scheme (any case, sometimes
    /// another one): every case is judged against the rule.
    #[test]
    fn authorization_headers(
        scheme in prop::sample::select(vec!["Bearer ", "bearer ", "BEARER ", "BeArEr ", "Basic ", "Bearer", ""]),
        rest in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let raw = [scheme.as_bytes(), &rest].concat();
        let is_bearer = raw.len() >= 7 && raw[..7].eq_ignore_ascii_case(b"bearer ");
        match bearer(&raw) {
            Some(t) => {
                prop_assert!(is_bearer);
                prop_assert_eq!(t, raw[7..].trim_ascii());
            }
            None => prop_assert!(!is_bearer),
        }
    }

    /// Netlink error messages with any code, ACKs and extreme codes among
    /// them: 0 is no error, a negative errno is that errno, anything else is
    /// InvalidData; never a panic or an overflow.
    #[test]
    fn netlink_error_codes(code in prop_oneof![Just(0), Just(i32::MIN), Just(i32::MAX), Just(-1), any::<i32>()], seq in any::<u32>()) {
        let mut payload = code.to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0u8; 16]);
        let mut msg = Vec::new();
        msg.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
        msg.extend_from_slice(&2u16.to_ne_bytes());
        msg.extend_from_slice(&[0, 0]);
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&payload);
        let mut out = Vec::new();
        match parse_datagram(&msg, seq, &mut out) {
            Ok(done) => {
                prop_assert_eq!(code, 0);
                prop_assert!(!done, "an ACK is not the dump's end");
            }
            Err(e) if code < 0 && code != i32::MIN => prop_assert_eq!(e.raw_os_error(), Some(-code)),
            Err(e) => prop_assert_eq!(e.kind(), std::io::ErrorKind::InvalidData),
        }
    }

    #[test]
    fn peer_ranges(ip in any::<[u8; 4]>(), net in any::<[u8; 4]>(), prefix in 0u8..=32) {
        let range: ipnet::IpNet = ipnet::Ipv4Net::new(Ipv4Addr::from(net), prefix).unwrap().into();
        let v4 = IpAddr::V4(Ipv4Addr::from(ip));
        let mapped = IpAddr::V6(Ipv4Addr::from(ip).to_ipv6_mapped());
        prop_assert_eq!(peer_allowed(std::slice::from_ref(&range), v4), range.contains(&v4));
        prop_assert_eq!(peer_allowed(std::slice::from_ref(&range), mapped), range.contains(&v4), "v4-mapped peers match v4 ranges");
    }
}

/// The real HTTP server, in a thread of its own, with no NGINX behind it.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // The real `serve` wiring, with no NGINX behind it.
                let dir = tempfile::tempdir().unwrap();
                let pid_file = format!(
                    "--nginx-pid-file={}",
                    dir.path().join("nginx.pid").display()
                );
                let cli = nginx_drain::cli::Cli::try_parse_from([
                    "nginx-drain",
                    "serve",
                    "--listen=127.0.0.1:0",
                    &pid_file,
                    "--drain-timeout=5s",
                    "--max-delay=1s",
                    "--census=proc",
                    "--port=1",
                    "--on-failure=status",
                ])
                .unwrap();
                let nginx_drain::cli::Command::Serve(args) = cli.command else {
                    unreachable!("a serve command line")
                };
                let prepared = nginx_drain::serve::prepare(&args).unwrap();
                tx.send(prepared.listener.local_addr().unwrap()).unwrap();
                let _ = nginx_drain::serve::run(prepared, std::future::pending()).await;
                drop(dir);
            });
        });
        rx.recv().unwrap()
    })
}

/// Sends `bytes` and reads the answer until the server closes. With
/// `half_close`, the write side is shut first, so that a partial request
/// ends at once (hyper closes on EOF) instead of at the header timeout.
fn exchange(addr: SocketAddr, bytes: &[u8], half_close: bool) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary request paths, methods and headers: every answer is a
    /// well-formed HTTP response (or a closed connection), and the server
    /// keeps answering /healthz.
    #[test]
    fn http_paths_and_headers(
        method in prop::sample::select(vec!["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "BREW"]),
        path in "/[ -~]{0,64}",
        header in "[A-Za-z-]{1,20}",
        value in "[ -~]{0,80}",
        auth in prop::option::of("[ -~]{0,80}"),
    ) {
        let addr = server();
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{header}: {value}\r\n{auth}Connection: close\r\n\r\n");
        let resp = exchange(addr, req.as_bytes(), false);
        prop_assert!(resp.is_empty() || resp.starts_with("HTTP/1.1 "), "{resp}");
        let health = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false);
        prop_assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    }

    #[test]
    fn http_raw_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let addr = server();
        let resp = exchange(addr, &bytes, true);
        prop_assert!(resp.is_empty() || resp.starts_with("HTTP/1."), "{resp}");
        let health = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false);
        prop_assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    }
}

/// Lines that manifests are made of, and some that break them: anchors,
/// aliases, merges, tags, flow and block collections, block scalars,
/// document markers, directives, tabs and any other text.
fn manifest_lines() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        4 => prop::sample::select(vec![
            "apiVersion: apps/v1", "kind: Deployment", "kind: List", "kind: ConfigMap", "kind: Pod",
            "kind: CloneSet", "metadata: {name: web, namespace: a}", "items:", "- kind: Deployment",
            "spec:", "  template:", "    spec:", "      containers:", "      - name: nginx",
            "        image: nginx:1.27", "        securityContext: {runAsUser: 101}",
            "      - {name: nginx, image: 'nginx:1.27', ports: [{containerPort: 80}]}",
            "      terminationGracePeriodSeconds: 0644", "      shareProcessNamespace: no",
            "        lifecycle:", "          preStop:", "            exec: {command: [sleep, '5']}",
            "        args: [--configmap=$(POD_NAMESPACE)/c]", "data:", "  worker-shutdown-timeout: 10s",
            "base: &b {runAsUser: 101}", "  <<: *b", "<<: [*b]", "x: !!str 0644", "y: !!int 12",
            "z: !custom {a: 1}", "s: |+", "  kept", "", "f: >-", "  folded", "---", "--- # doc", "...",
            "%YAML 1.1", "? complex", ": value", "- - nested", "  -", "key:", "\tindented",
            "a: [1, 2,", "  3]", "b: {c: d,", "  e: f}", "# comment", "q: 'it''s'", "r: \"\\u00e9\"",
        ]).prop_map(str::to_string),
        1 => ".{0,20}",
    ];
    prop::collection::vec(line, 0..24).prop_map(|l| l.join("\n"))
}

proptest! {
    /// `inject` reads any stream without panicking; what it writes, it
    /// reads again, and injecting it again changes nothing.
    #[test]
    fn inject_reads_any_stream_and_is_idempotent(text in manifest_lines()) {
        let opts = nginx_drain::cli::WiringArgs {
            image: "nginx-drain:fuzz".into(),
            uid: Some(101),
            ..Default::default()
        };
        if let Ok(out) = nginx_drain::inject::inject(&text, &opts) {
            let again = nginx_drain::inject::inject(&out.output, &opts)
                .map_err(|e| TestCaseError::fail(format!("its own output refused: {e}\n{}", out.output)))?;
            prop_assert_eq!(again.output, out.output);
        }
    }
}

/// A Deployment written in one of the many ways people write one: block or
/// flow lists and mappings, k8s-style or indented lists, anchors and
/// merges, an existing preStop or an empty `lifecycle:`, comments and
/// blank lines between lines, CRLF, no final line break.
fn written_deployment() -> impl Strategy<Value = String> {
    (
        0usize..3,
        0usize..4,
        0usize..4,
        0usize..3,
        prop::collection::vec(prop::sample::select(vec!["", "# c", "  # indented", "\t", "   "]), 12),
        any::<bool>(),
        any::<bool>(),
        0usize..3,
    )
        .prop_map(|(list, container, lifecycle, sc, gaps, crlf, final_break, grace)| {
            // The container's keys at column 0, nested ones indented.
            let lc = match lifecycle {
                0 => String::new(),
                1 => "\nlifecycle:\n  preStop:\n    exec: {command: [sleep, '5']}".into(),
                2 => "\nlifecycle:".into(),
                _ => "\nlifecycle: {preStop: {exec: {command: [/wait-shutdown]}}}".into(),
            };
            let sc = match sc {
                0 => "\nsecurityContext: {runAsUser: 101}",
                1 => "\nsecurityContext:\n  runAsUser: 101 # the image's user",
                _ => "\nsecurityContext:\n  <<: *sc",
            };
            let body = format!("name: nginx\nimage: nginx:1.27{sc}{lc}");
            let item = |dash: &str| {
                let pad = " ".repeat(dash.len());
                let anchor = if container == 1 { format!("&nginx\n{pad}") } else { String::new() };
                format!("      containers:\n{dash}{anchor}{}", body.replace('\n', &format!("\n{pad}")))
            };
            let containers = match (list, container) {
                (_, 3) => "      containers: [{name: nginx, image: 'nginx:1.27', securityContext: {runAsUser: 101}}]".to_string(),
                (0, _) => item("      - "),
                (1, _) => item("        - "),
                (_, _) => item("      -   "),
            };
            let grace = ["", "      terminationGracePeriodSeconds: 60\n", "      terminationGracePeriodSeconds: 0100\n"][grace];
            let lines = [
                "apiVersion: apps/v1".to_string(),
                "kind: Deployment".into(),
                "metadata: {name: web}".into(),
                "x-defaults:".into(),
                "  sc: &sc {runAsUser: 101, allowPrivilegeEscalation: false}".into(),
                "spec:".into(),
                "  template:".into(),
                "    spec:".into(),
                format!("{grace}{containers}"),
                "      volumes: [{name: c, configMap: {name: c, defaultMode: 0644}}]".into(),
            ];
            let mut text = String::new();
            for (i, l) in lines.iter().enumerate() {
                text.push_str(l);
                text.push('\n');
                if !gaps[i].is_empty() && i + 1 < lines.len() && !lines[i].ends_with(':') {
                    text.push_str(gaps[i]);
                    text.push('\n');
                }
            }
            if !final_break {
                text.pop();
            }
            if crlf {
                text = text.replace('\n', "\r\n");
            }
            text
        })
}

proptest! {
    /// However a Deployment is written, inject wires it without writing it
    /// anew, keeps all its text, and injecting again changes nothing.
    #[test]
    fn inject_wires_any_way_a_deployment_is_written(text in written_deployment()) {
        let opts = nginx_drain::cli::WiringArgs {
            image: "nginx-drain:fuzz".into(),
            ..Default::default()
        };
        let out = nginx_drain::inject::inject(&text, &opts)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert!(out.output.contains("nginx-drain:fuzz"), "{}", out.output);
        prop_assert!(!out.notes.iter().any(|n| n.contains("written anew")), "{:?}\n{}\n{}", out.notes, text, out.output);
        let again = nginx_drain::inject::inject(&out.output, &opts)
            .map_err(|e| TestCaseError::fail(format!("its own output refused: {e}\n{}", out.output)))?;
        prop_assert_eq!(&again.output, &out.output);
    }
}
