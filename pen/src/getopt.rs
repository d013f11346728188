//! The option grammar of pen's smaller tools (penlogd, mergelogs), as their C versions parse it
//! with glibc's getopt: single-letter options, clustered (`-fb`), with attached (`-n5`) or
//! separate (`-n 5`) values, options after positional arguments, and `--` to end them. Long
//! options are limited to `--help` and `--version`.

/// One element of a command line, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// `-x` or `-x VALUE`.
    Opt(char, Option<String>),
    /// `--help` or `--version` (without the dashes).
    Long(&'static str),
    Positional(String),
}

/// A command line the option string does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GetoptError {
    #[error("invalid option -- '{0}'")]
    Unknown(String),
    #[error("option requires an argument -- '{0}'")]
    MissingValue(char),
}

/// Split `args` (without the program name) by `optstring`, getopt's notation: each letter is
/// an option, a letter followed by `:` takes a value.
pub fn parse(optstring: &str, args: &[String]) -> Result<Vec<Arg>, GetoptError> {
    let takes_value = |c: char| -> Option<bool> {
        let at = optstring.find(c).filter(|_| c != ':')?;
        Some(optstring[at + c.len_utf8()..].starts_with(':'))
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        match arg.as_str() {
            "--" => {
                out.extend(args[i..].iter().cloned().map(Arg::Positional));
                break;
            }
            "--help" => out.push(Arg::Long("help")),
            "--version" => out.push(Arg::Long("version")),
            a if a.starts_with("--") => return Err(GetoptError::Unknown(a.to_string())),
            a if a.starts_with('-') && a.len() > 1 => {
                for (at, c) in a[1..].char_indices() {
                    match takes_value(c) {
                        None => return Err(GetoptError::Unknown(c.to_string())),
                        Some(false) => out.push(Arg::Opt(c, None)),
                        Some(true) => {
                            let rest = &a[1 + at + c.len_utf8()..];
                            let value = if !rest.is_empty() {
                                rest.to_string()
                            } else if i < args.len() {
                                i += 1;
                                args[i - 1].clone()
                            } else {
                                return Err(GetoptError::MissingValue(c));
                            };
                            out.push(Arg::Opt(c, Some(value)));
                            break;
                        }
                    }
                }
            }
            a => out.push(Arg::Positional(a.to_string())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn getopt_grammar() {
        let got = parse("dfbj:l:n:", &args("-fb 8000 -n5 -l out -d -- -x")).unwrap();
        assert_eq!(
            got,
            [
                Arg::Opt('f', None),
                Arg::Opt('b', None),
                Arg::Positional("8000".into()),
                Arg::Opt('n', Some("5".into())),
                Arg::Opt('l', Some("out".into())),
                Arg::Opt('d', None),
                Arg::Positional("-x".into()),
            ]
        );
        assert_eq!(
            parse("p:", &args("-pfile - --help")).unwrap(),
            [
                Arg::Opt('p', Some("file".into())),
                Arg::Positional("-".into()),
                Arg::Long("help"),
            ]
        );
        assert_eq!(
            parse("df", &args("-z")),
            Err(GetoptError::Unknown("z".into()))
        );
        assert_eq!(
            parse("df", &args("-:")),
            Err(GetoptError::Unknown(":".into()))
        );
        assert_eq!(
            parse("n:", &args("-n")),
            Err(GetoptError::MissingValue('n'))
        );
        assert!(parse("n:", &args("--frob")).is_err());
    }
}
