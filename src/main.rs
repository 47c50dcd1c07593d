//! The `nginx-drain` binary: parse flags, set up logging, run. Everything
//! else lives in the library; the demo and the test machinery live in the
//! `testbed` crate and are never linked here.

use std::process::ExitCode;

use clap::Parser;
use nginx_drain::cli::{Cli, Command};
use nginx_drain::{inspect, logging, serve};

fn main() -> ExitCode {
    return_large_allocations_to_the_kernel();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print as clap prints them; a bad flag is
            // an error in the log format the operator chose (JSON lines
            // stay JSON), exit 2.
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
            logging::early_error(&args, &e.to_string());
            return ExitCode::from(serve::exit::CONFIG);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            logging::init(args.log.log_format, &args.log.log_level);
            match serve::main(&args) {
                Ok(()) => ExitCode::from(serve::exit::OK),
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Check(args) => inspected(inspect::check(&args)),
        Command::Status(args) => inspected(inspect::status(&args)),
        Command::Inject(args) => injected(&args),
        Command::Webhook(args) => {
            logging::init(args.log.log_format, &args.log.log_level);
            match nginx_drain::webhook::main(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::from(serve::exit::CONFIG)
                }
            }
        }
    }
}

/// `inject`: the stream to stdout, what was done to stderr; exit 2 with the
/// fix when the input cannot be wired (nothing is written then).
fn injected(args: &nginx_drain::cli::InjectArgs) -> ExitCode {
    use std::io::{Read, Write};
    let mut input = String::new();
    let read = match args.file.as_deref() {
        None => std::io::stdin().read_to_string(&mut input).map(|_| ()),
        Some(p) if p.as_os_str() == "-" => std::io::stdin().read_to_string(&mut input).map(|_| ()),
        Some(p) => std::fs::read_to_string(p).map(|s| input = s),
    };
    if let Err(e) = read {
        let from = args
            .file
            .as_deref()
            .map_or_else(|| "stdin".to_string(), |p| p.display().to_string());
        eprintln!("nginx-drain inject: cannot read {from}: {e}");
        return ExitCode::from(serve::exit::CONFIG);
    }
    match nginx_drain::inject::inject(&input, &args.wiring) {
        Ok(done) => {
            for n in &done.notes {
                eprintln!("nginx-drain inject: {n}");
            }
            let mut out = std::io::stdout().lock();
            if out
                .write_all(done.output.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return ExitCode::from(serve::exit::CONFIG);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nginx-drain inject: {e}");
            ExitCode::from(serve::exit::CONFIG)
        }
    }
}

fn inspected(r: Result<u8, inspect::InspectError>) -> ExitCode {
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("nginx-drain: {e}");
            ExitCode::from(serve::exit::CONFIG)
        }
    }
}

/// The census map of a busy pod is one large allocation (2 MiB at 100k
/// connections) that is replaced whenever it grows. glibc's malloc raises
/// its mmap threshold after the first such free, and from then on keeps
/// freed large blocks in the heap: resident memory that nothing uses. A
/// fixed threshold keeps large blocks in mmap, returned when freed.
fn return_large_allocations_to_the_kernel() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tuning parameter; called before any
    // other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
