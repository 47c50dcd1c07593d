//! The `nginx-drain` binary: parse flags, set up logging, run. Everything
//! else lives in the library; the demo and the test machinery live in the
//! `testbed` crate and are never linked here.

use std::process::ExitCode;

use clap::Parser;
use nginx_drain::cli::{Cli, Command};
use nginx_drain::{logging, serve};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            logging::init(&args.log);
            match serve::main(&args) {
                Ok(()) => ExitCode::from(serve::exit::OK),
                Err(e) => {
                    // Startup errors are read by people at a terminal as
                    // often as by log pipelines: say it on both.
                    if matches!(e, serve::Error::Config(_)) {
                        eprintln!("nginx-drain: {e}");
                    }
                    tracing::error!("{e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}
