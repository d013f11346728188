//! `penctl`: parse the arguments, deliver the command, map errors to exit status 1.

use std::io::{self, Write};
use std::process::ExitCode;

use penctl::args::{self, Invocation};
use penctl::{exchange, Error};

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().skip(1).collect();
    let request = match args::parse(&argv) {
        Ok(Invocation::Send(request)) => request,
        Ok(Invocation::Usage) => return print(args::USAGE),
        Ok(Invocation::Help) => return print(&args::help()),
        Ok(Invocation::Version) => return print(&args::version()),
        Err(e) => return fail(&e),
    };
    match exchange::run(&request, &mut io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Print a text of penctl's own on stdout. A closed stdout is not worth a message.
fn print(text: &str) -> ExitCode {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// One line on stderr, exit status 1. When stdout is a pipe whose reader has gone (`penctl ...
/// | head -1`), the reader has what it wanted: exit 1 without a message, where penctl 0.34.1
/// was killed by SIGPIPE.
fn fail(e: &Error) -> ExitCode {
    if !matches!(e, Error::Stdout(io::ErrorKind::BrokenPipe)) {
        let _ = writeln!(io::stderr().lock(), "{e}");
    }
    ExitCode::FAILURE
}
