//! A real headless browser for tests: Debian's `chromium`, driven through `chromedriver` (package
//! `chromium-driver`) over the WebDriver protocol. The test page stays loaded while the test
//! watches it change, which is what a dashboard that updates itself needs to be tested with.
//!
//! Chromium runs headless, with `--no-sandbox` (its sandbox refuses to run as root, and CI runs
//! as root). Every wait is bounded; the session is deleted (which ends chromium) and chromedriver
//! is stopped by its PID when the `Browser` is dropped, even when a test panics.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http;
use crate::{free_port, listens, stop_child, Drain};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long chromedriver and a new chromium may take to start (a cold start on a busy 2-core
/// machine takes seconds).
pub const BROWSER_START: Duration = Duration::from_secs(60);
/// Attempts to start chromedriver on a fresh port.
const START_ATTEMPTS: usize = 3;

/// A chromedriver with one chromium session.
pub struct Browser {
    driver: Option<Child>,
    driver_stderr: Drain,
    addr: SocketAddr,
    session: Option<String>,
}

impl Browser {
    /// Start chromedriver and a headless chromium. Fails the test, saying what to install, when
    /// either is missing: `.ci/run` installs both.
    pub fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).is_file(),
                "{bin} is missing: this test runs the dashboard in a real headless browser. \
                 Install it with `apt-get install -y chromium chromium-driver` (.ci/run does)"
            );
        }
        let mut failures = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("can't run {CHROMEDRIVER}: {e}"));
            let driver_stderr = Drain::start(driver.stderr.take().expect("piped stderr"));
            let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
            let pid = driver.id();
            let deadline = Instant::now() + BROWSER_START;
            while !listens(pid, addr) && Instant::now() < deadline {
                if let Ok(Some(_)) = driver.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let mut browser = Browser {
                driver: Some(driver),
                driver_stderr,
                addr: addr.into(),
                session: None,
            };
            if !listens(pid, addr) {
                failures.push_str(&format!("\n  port {port}: {}", browser.stop_driver()));
                continue;
            }
            browser.new_session();
            return browser;
        }
        panic!("chromedriver did not start:{failures}");
    }

    fn new_session(&mut self) {
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--window-size=1400,1000",
                    ],
                },
            }},
        });
        let value = self.call("POST", "/session", Some(capabilities));
        let id = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {value}"));
        self.session = Some(id.to_string());
    }

    /// One WebDriver command; returns its `value`, or panics with the driver's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let reply = http::request(self.addr, method, path, body.as_deref())
            .unwrap_or_else(|e| panic!("chromedriver {method} {path}: {e}"));
        let value: Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("chromedriver {method} {path}: {e}: {}", reply.body));
        assert_eq!(reply.status, 200, "chromedriver {method} {path}: {value}");
        value["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        let id = self.session.as_deref().expect("a session");
        format!("/session/{id}{rest}")
    }

    /// Load `url` and wait until the document has loaded.
    pub fn open(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        );
    }

    /// Run `script` (the body of a function) in the page and return what it returns.
    pub fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Evaluate `script` until `pred` accepts its value, for at most `limit`; returns that value,
    /// or panics with the last one.
    pub fn wait_for(&self, script: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.eval(script);
            if pred(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "after {limit:?} the page still gives {value} for: {script}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Delete the session (chromium exits) and stop chromedriver; returns its stderr.
    fn stop_driver(&mut self) -> String {
        if self.session.is_some() {
            let path = self.session_path("");
            let _ = http::request(self.addr, "DELETE", &path, None);
            self.session = None;
        }
        if let Some(mut driver) = self.driver.take() {
            let _ = stop_child(&mut driver);
        }
        self.driver_stderr.collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.stop_driver();
    }
}
