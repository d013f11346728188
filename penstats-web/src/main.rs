//! The `penstats-web` binary: parse the command line, run the service, map errors to exit codes.

use std::process::ExitCode;

use penstats_web::args::{self, Invocation};

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let config = match args::parse(&argv) {
        Ok(Invocation::Run(config)) => config,
        Ok(Invocation::Help) => {
            print!("{}", args::help());
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Version) => {
            print!("{}", args::version());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("penstats-web: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Two worker threads: the service polls one pen and serves a few browsers.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("penstats-web: can't start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(penstats_web::service::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("penstats-web: {e:#}");
            ExitCode::FAILURE
        }
    }
}
