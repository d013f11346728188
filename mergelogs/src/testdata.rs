//! Test data shared by the merge's and the window's tests.

/// Transcript 15's pen log: six records, one malformed line, a gap of 1100 s before the last.
pub const PEN_LOG: &str = "\
203.0.113.1 1700000000 10.0.0.1 GET /index.html HTTP/1.0
203.0.113.2 1700000001 10.0.0.2 GET /index.html HTTP/1.0
203.0.113.3 1700000005 10.0.0.1 GET /a.png HTTP/1.1
203.0.113.4 1700000300 10.0.0.1 GET /index.html HTTP/1.0
203.0.113.5 1700000900 10.0.0.2 GET /late HTTP/1.0
bogus line
203.0.113.6 1700002000 10.0.0.1 GET /far HTTP/1.0
";
