//! The `nginx-drain` binary: parse flags, set up logging, run. Everything
//! else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use nginx_drain::cli::{Cli, Command};
use nginx_drain::{logging, serve};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            logging::init(&args.log);
            let (config, http_opts, listener) = match serve::prepare(&args) {
                Ok(x) => x,
                Err(serve::ConfigError(msg)) => {
                    eprintln!("nginx-drain: {msg}");
                    tracing::error!("{msg}");
                    return ExitCode::from(serve::exit::CONFIG);
                }
            };
            // One thread is plenty: the sidecar waits on a few file
            // descriptors, and a small runtime keeps its memory small.
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("nginx-drain: cannot start the async runtime: {e}");
                    return ExitCode::from(serve::exit::FAILURE);
                }
            };
            rt.block_on(serve::run(config, http_opts, listener))
        }
        Command::Demo(args) => {
            logging::init(&args.log);
            nginx_drain::demo::main(args)
        }
    }
}
