//! The `pen` daemon: parse the command line, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use pen::cli::{self, Invocation};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match cli::parse(&args) {
        Ok(Invocation::Run(options)) => options,
        Ok(Invocation::Check(options)) => {
            for notice in &options.notices {
                eprintln!("{notice}");
            }
            pen::logging::init(options.debug);
            return match pen::run::check(&options) {
                Ok(checked) => {
                    eprint!("{}", checked.replies);
                    println!("{}", checked.summary);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pen: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Ok(Invocation::Usage | Invocation::Help) => {
            print!("{}", cli::usage());
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Version) => {
            println!(
                "pen {} (compatible with pen 0.34.1)",
                env!("CARGO_PKG_VERSION")
            );
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::ExitWith(text)) => {
            eprintln!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("pen: {e}");
            return ExitCode::FAILURE;
        }
    };
    for notice in &options.notices {
        eprintln!("{notice}");
    }
    for reply in &options.replies {
        print!("{reply}");
    }
    pen::logging::init(options.debug);
    pen::dump::set_ascii(options.ascii);
    match pen::run::run(*options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
