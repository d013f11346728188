//! The start of the log tools' `main` (mergelogs, penlogd): what a command line asks for, and
//! the answers to usage, `--version` and a bad command line, given the same way by each tool.

use std::process::ExitCode;

/// What a tool's command line asks for.
#[derive(Debug)]
pub enum Invocation<T> {
    Run(T),
    /// No arguments or `--help`: print the usage text.
    Usage,
    Version,
}

/// The options to run with; or, when the command line asked for usage or the version or was
/// wrong, that answer printed (the error on stderr with `program: ` before it and the usage
/// text after) and the exit status to end with.
pub fn options<T>(
    program: &str,
    usage: &str,
    parsed: anyhow::Result<Invocation<T>>,
) -> Result<T, ExitCode> {
    match parsed {
        Ok(Invocation::Run(options)) => Ok(options),
        Ok(Invocation::Usage) => {
            print!("{usage}");
            Err(ExitCode::SUCCESS)
        }
        Ok(Invocation::Version) => {
            // Every crate of the workspace has the workspace's version.
            println!(
                "{program} {} (compatible with pen 0.34.1)",
                env!("CARGO_PKG_VERSION")
            );
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{program}: {e:#}\n\n{usage}");
            Err(ExitCode::FAILURE)
        }
    }
}
