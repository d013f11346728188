//! penctl's command line: options, then ADDRESS, then the command words.
//!
//! Options are recognised only before ADDRESS, so every word after it goes to pen unchanged,
//! even one that starts with `-` (`penctl host:port client_acl -5`). Everything penctl 0.34.1
//! accepted means the same here: an address never starts with `-`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::address::Address;
use crate::Error;

/// What penctl 0.34.1 prints, on stdout with exit status 0, when given fewer than two arguments.
pub const USAGE: &str = "usage: penctl host:port command\n";
/// The longest command line (the words joined by single spaces) penctl sends, as in 0.34.1: its
/// buffer held 1024 bytes with the newline and a NUL.
pub const MAX_COMMAND: usize = 1021;
/// How long penctl waits for the connection to pen, unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long penctl waits, in all, for pen's reply, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Fewer than two arguments after the options: print `USAGE`, exit 0.
    Usage,
    Help,
    Version,
    Send(Request),
}

/// One command for one pen.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub address: Address,
    /// The bytes to send: the words joined by single spaces, and a newline.
    pub line: Vec<u8>,
    /// None waits as long as the system lets a connect wait.
    pub connect_timeout: Option<Duration>,
    /// None waits for the end of the reply for ever, as penctl 0.34.1 did.
    pub timeout: Option<Duration>,
}

/// The text of `penctl --help`. man/penctl.1 documents the same options (penctl/tests/man_page.rs
/// checks both).
pub fn help() -> String {
    format!(
        "\
usage: penctl [options] host:port|/path/to/socket command [argument...]

Send one control command to a running pen and print its reply.

ADDRESS is pen's control port (pen -C):
  host:port        a host name or address and a port number or service name;
                   split at the last ':', so ::1:10080 is IPv6 as pen writes it
  [::1]:10080      IPv6 in brackets
  /path/to/socket  anything containing '/' is a Unix socket

Options (only before ADDRESS):
  --connect-timeout SECS  give up if pen does not accept within SECS seconds
                          (default {connect}; 0 waits as long as the system does)
  --timeout SECS          give up if pen's reply has not ended after SECS seconds
                          of waiting for it (default {reply}; 0 waits for ever)
  -h, --help              print this help and exit
  -V, --version           print the version and exit
  --                      end of options

The exit status is 0 when pen's reply was printed (even if it is an error text
from pen), and 1 with a message on stderr when penctl could not deliver the command
or read the whole reply. `man penctl` lists the commands.
",
        connect = DEFAULT_CONNECT_TIMEOUT.as_secs(),
        reply = DEFAULT_TIMEOUT.as_secs(),
    )
}

/// The version line of `penctl --version`.
pub fn version() -> String {
    format!(
        "penctl {} (compatible with penctl 0.34.1)\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Read the arguments (without the program name). Checks everything that can be checked without
/// the network, so a bad command line never opens a connection to pen.
pub fn parse(args: &[OsString]) -> Result<Invocation, Error> {
    let mut connect_timeout = Some(DEFAULT_CONNECT_TIMEOUT);
    let mut timeout = Some(DEFAULT_TIMEOUT);
    let mut rest = args;
    while let Some((first, tail)) = rest.split_first() {
        let word = first.as_bytes();
        if word == b"--" {
            rest = tail;
            break;
        }
        if word.len() < 2 || word[0] != b'-' {
            break;
        }
        rest = tail;
        match word {
            b"-h" | b"--help" => return Ok(Invocation::Help),
            b"-V" | b"--version" => return Ok(Invocation::Version),
            _ => {}
        }
        let (name, attached) = match word.iter().position(|&b| b == b'=') {
            Some(i) => (&word[..i], Some(OsStr::from_bytes(&word[i + 1..]))),
            None => (word, None),
        };
        let (option, slot) = match name {
            b"--timeout" => ("--timeout", &mut timeout),
            b"--connect-timeout" => ("--connect-timeout", &mut connect_timeout),
            _ => return Err(Error::UnknownOption(first.to_string_lossy().into_owned())),
        };
        let value = match attached {
            Some(value) => value,
            None => {
                let (value, tail) = rest.split_first().ok_or(Error::MissingValue(option))?;
                rest = tail;
                value.as_os_str()
            }
        };
        *slot = parse_seconds(option, value)?;
    }
    let [address, words @ ..] = rest else {
        return Ok(Invocation::Usage);
    };
    if words.is_empty() {
        return Ok(Invocation::Usage);
    }
    let address = Address::parse(address)?;
    let line = command_line(words)?;
    Ok(Invocation::Send(Request {
        address,
        line,
        connect_timeout,
        timeout,
    }))
}

/// The words joined by single spaces (empty words included, as 0.34.1 sent them), and `\n`.
pub fn command_line(words: &[OsString]) -> Result<Vec<u8>, Error> {
    let mut line = Vec::with_capacity(MAX_COMMAND + 1);
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            line.push(b' ');
        }
        line.extend_from_slice(word.as_bytes());
        if line.len() > MAX_COMMAND {
            return Err(Error::OverlongList);
        }
    }
    line.push(b'\n');
    Ok(line)
}

/// Seconds as a plain decimal number (`5`, `0.25`); 0 means no limit.
fn parse_seconds(option: &'static str, text: &OsStr) -> Result<Option<Duration>, Error> {
    let bad = || Error::BadSeconds {
        option,
        value: text.to_string_lossy().into_owned(),
    };
    let text = text.to_str().ok_or_else(bad)?;
    let plain = text.bytes().any(|b| b.is_ascii_digit())
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|&b| b == b'.').count() <= 1;
    if !plain {
        return Err(bad());
    }
    let secs: f64 = text.parse().map_err(|_| bad())?;
    let limit = Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
    Ok((!limit.is_zero()).then_some(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    fn send(words: &[&str]) -> Request {
        match parse(&os(words)) {
            Ok(Invocation::Send(request)) => request,
            other => panic!("{words:?}: {other:?}"),
        }
    }

    #[test]
    fn fewer_than_two_arguments_is_usage() {
        for words in [
            &[][..],
            &["127.0.0.1:10080"],
            &["--timeout", "3", "x:1"],
            &["--", "x:1"],
        ] {
            assert_eq!(parse(&os(words)).unwrap(), Invocation::Usage, "{words:?}");
        }
    }

    #[test]
    fn help_and_version() {
        for words in [&["--help"][..], &["-h", "x"], &["--timeout", "1", "--help"]] {
            assert_eq!(parse(&os(words)).unwrap(), Invocation::Help, "{words:?}");
        }
        assert_eq!(parse(&os(&["-V"])).unwrap(), Invocation::Version);
        assert_eq!(parse(&os(&["--version"])).unwrap(), Invocation::Version);
        assert!(version().starts_with("penctl "));
        assert!(help().starts_with("usage: penctl"));
    }

    #[test]
    fn words_are_joined_by_single_spaces_with_a_newline() {
        let r = send(&["127.0.0.1:10080", "server", "1", "weight", "3"]);
        assert_eq!(r.line, b"server 1 weight 3\n");
        assert_eq!(send(&["h:1", "a", "", "b"]).line, b"a  b\n");
        assert_eq!(send(&["h:1", "client_acl", "-5"]).line, b"client_acl -5\n");
        // Options after ADDRESS belong to the command.
        assert_eq!(
            send(&["h:1", "--timeout", "3"]).line,
            b"--timeout 3\n".to_vec()
        );
        assert_eq!(send(&["--", "h:1", "x"]).line, b"x\n");
    }

    #[test]
    fn timeouts() {
        let r = send(&["h:1", "x"]);
        assert_eq!(r.connect_timeout, Some(DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(r.timeout, Some(DEFAULT_TIMEOUT));
        let r = send(&["--timeout", "0.25", "--connect-timeout=2", "h:1", "x"]);
        assert_eq!(r.timeout, Some(Duration::from_millis(250)));
        assert_eq!(r.connect_timeout, Some(Duration::from_secs(2)));
        let r = send(&["--timeout=0", "--connect-timeout", "0", "h:1", "x"]);
        assert_eq!((r.timeout, r.connect_timeout), (None, None));
        for bad in [
            "",
            "x",
            "-1",
            "1e3",
            "inf",
            "NaN",
            "1.2.3",
            ".",
            "99999999999999999999999",
        ] {
            let err = parse(&os(&["--timeout", bad, "h:1", "x"])).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::BadSeconds {
                        option: "--timeout",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
        let err = parse(&os(&["--timeout"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "option '--timeout' needs a number of seconds"
        );
    }

    #[test]
    fn unknown_options_are_named() {
        let err = parse(&os(&["-x", "h:1", "servers"])).unwrap_err();
        assert_eq!(err.to_string(), "unknown option '-x' (see penctl --help)");
        let err = parse(&os(&["--timeouts=3", "h:1", "servers"])).unwrap_err();
        assert!(err.to_string().contains("'--timeouts=3'"), "{err}");
    }

    #[test]
    fn the_command_may_be_1021_characters_and_no_more() {
        let ok = "x".repeat(MAX_COMMAND);
        assert_eq!(send(&["h:1", &ok]).line.len(), MAX_COMMAND + 1);
        let (a, b) = ("a".repeat(500), "b".repeat(520));
        assert_eq!(send(&["h:1", &a, &b]).line.len(), MAX_COMMAND + 1);
        let b = "b".repeat(521);
        let long = "x".repeat(MAX_COMMAND + 1);
        for words in [&["h:1", &a, &b][..], &["h:1", &long]] {
            let err = parse(&os(words)).unwrap_err();
            assert_eq!(err.to_string(), "Overlong argument list");
        }
    }

    #[test]
    fn non_utf8_words_are_sent_as_they_are() {
        use std::os::unix::ffi::OsStringExt;
        let words = vec![
            OsString::from("h:1"),
            OsString::from_vec(vec![0xff, b'a']),
            OsString::from_vec(vec![0xfe]),
        ];
        match parse(&words).unwrap() {
            Invocation::Send(r) => assert_eq!(r.line, vec![0xff, b'a', b' ', 0xfe, b'\n']),
            other => panic!("{other:?}"),
        }
        let bad = vec![OsString::from_vec(b"--timeout=\xff".to_vec())];
        assert!(parse(&bad).is_err());
    }
}
