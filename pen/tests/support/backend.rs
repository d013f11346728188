//! Backends in threads on port 0 (`Backend`: echo, named, custom handlers), a port that
//! refuses (`Dead`) and one that never answers (`Blackhole`).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::*;

/// A listener of either family.
pub enum AnyListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl AnyListener {
    fn accept(&self) -> io::Result<Stream> {
        match self {
            AnyListener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            AnyListener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }
}

/// Where a backend listens.
#[derive(Debug, Clone)]
pub enum BackendAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

type Handler = Arc<dyn Fn(Stream) + Send + Sync>;

/// Counts live threads; the count drops when the guard does, even on panic.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(live: &Arc<AtomicUsize>) -> LiveGuard {
        live.fetch_add(1, Ordering::SeqCst);
        LiveGuard(live.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A backend server: an accept thread and one thread per connection running `handler`.
/// Dropping it closes the listener and shuts down every open connection, then waits (bounded)
/// for its threads to end.
pub struct Backend {
    pub addr: BackendAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    open: Arc<Mutex<HashMap<usize, Stream>>>,
}

impl Backend {
    /// A TCP backend on 127.0.0.1, port 0.
    pub fn tcp(handler: impl Fn(Stream) + Send + Sync + 'static) -> Backend {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind backend");
        Backend::serve(AnyListener::Tcp(l), Arc::new(handler))
    }

    /// A TCP backend on 127.0.0.1, port 0, whose connections have `tuning`. It is set on the
    /// listener, before it listens: accepted sockets inherit it, and the handshake announces it.
    pub fn tcp_tuned(tuning: Tuning, handler: impl Fn(Stream) + Send + Sync + 'static) -> Backend {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        tuning.apply(&socket).expect("backend socket options");
        socket
            .bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())
            .expect("bind backend");
        socket.listen(128).expect("listen");
        Backend::serve(AnyListener::Tcp(socket.into()), Arc::new(handler))
    }

    /// Run `handler` for every connection accepted on `listener`.
    pub fn serve(listener: AnyListener, handler: Handler) -> Backend {
        let addr = match &listener {
            AnyListener::Tcp(l) => BackendAddr::Tcp(l.local_addr().expect("local addr")),
            AnyListener::Unix(_, p) => BackendAddr::Unix(p.clone()),
        };
        let backend = Backend {
            addr,
            accepted: Arc::default(),
            stop: Arc::default(),
            live: Arc::default(),
            open: Arc::default(),
        };
        let (stop, live, open, accepted) = (
            backend.stop.clone(),
            backend.live.clone(),
            backend.open.clone(),
            backend.accepted.clone(),
        );
        let guard = LiveGuard::new(&live);
        thread::spawn(move || {
            let _guard = guard;
            let mut next_id = 0;
            loop {
                let stream = listener.accept();
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else {
                    // EMFILE and the like: do not spin.
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                stream.set_timeouts(Some(IO_TIMEOUT * 6));
                let id = next_id;
                next_id += 1;
                if let Ok(clone) = stream.try_clone() {
                    open.lock().unwrap().insert(id, clone);
                }
                let (open, handler) = (open.clone(), handler.clone());
                let guard = LiveGuard::new(&live);
                thread::spawn(move || {
                    let _guard = guard;
                    handler(stream);
                    open.lock().unwrap().remove(&id);
                });
            }
        });
        backend
    }

    /// Its address as a pen server spec (`127.0.0.1:PORT`, `[::1]:PORT` or the socket path).
    pub fn spec(&self) -> String {
        match &self.addr {
            BackendAddr::Tcp(SocketAddr::V4(a)) => a.to_string(),
            BackendAddr::Tcp(SocketAddr::V6(a)) => format!("[{}]:{}", a.ip(), a.port()),
            BackendAddr::Unix(p) => p.display().to_string(),
        }
    }

    /// `spec()` plus extra fields (`":1:2"`, `":0:0:3"`).
    pub fn spec_with(&self, fields: &str) -> String {
        format!("{}{fields}", self.spec())
    }

    pub fn port(&self) -> u16 {
        match &self.addr {
            BackendAddr::Tcp(sa) => sa.port(),
            BackendAddr::Unix(_) => panic!("a Unix backend has no port"),
        }
    }

    /// Connections currently open on the backend side.
    pub fn open_connections(&self) -> usize {
        self.open.lock().unwrap().len()
    }

    // -- the usual behaviours --

    /// Reads until it has at least one byte, answers `NAME\n`, then holds the connection until
    /// the peer closes.
    pub fn named(name: &str) -> Backend {
        Backend::tcp(named_handler(name))
    }

    pub fn named_v6(name: &str) -> Backend {
        let l = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind [::1]:0");
        Backend::serve(AnyListener::Tcp(l), Arc::new(named_handler(name)))
    }

    pub fn named_unix(path: &Path, name: &str) -> Backend {
        let l = UnixListener::bind(path).expect("bind unix backend");
        Backend::serve(
            AnyListener::Unix(l, path.to_path_buf()),
            Arc::new(named_handler(name)),
        )
    }

    /// Echoes everything; half-closes after the peer's EOF.
    pub fn echo() -> Backend {
        Backend::tcp(echo_until_eof)
    }

    /// Speaks first: writes `text`, then holds the connection until the peer closes.
    pub fn banner(text: &'static str) -> Backend {
        Backend::tcp(move |mut s| {
            if s.write_all(text.as_bytes()).is_ok() {
                let _ = drain(&mut s);
            }
        })
    }

    fn stop_and_wait(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept thread.
        match &self.addr {
            BackendAddr::Tcp(sa) => {
                let _ = TcpStream::connect_timeout(sa, Duration::from_secs(1));
            }
            BackendAddr::Unix(p) => {
                let _ = UnixStream::connect(p);
            }
        }
        for s in self.open.lock().unwrap().values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let live = self.live.clone();
        let done = poll_until(Duration::from_secs(5), || {
            (live.load(Ordering::SeqCst) == 0).then_some(())
        });
        if done.is_none() {
            eprintln!(
                "warning: {} backend threads still running after 5 s",
                live.load(Ordering::SeqCst)
            );
        }
        if let BackendAddr::Unix(p) = &self.addr {
            let _ = fs::remove_file(p);
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop_and_wait();
    }
}

fn named_handler(name: &str) -> impl Fn(Stream) + Send + Sync + 'static {
    let reply = format!("{name}\n");
    move |mut s: Stream| {
        let mut b = [0u8; 1];
        if !matches!(s.read(&mut b), Ok(1)) {
            return;
        }
        if s.write_all(reply.as_bytes()).is_ok() {
            let _ = drain(&mut s);
        }
    }
}

/// A port where connects are refused: a socket bound to 127.0.0.1 that does not listen (so no
/// other process can take the port). `revive` makes it listen.
pub struct Dead {
    socket: Socket,
    pub addr: SocketAddr,
}

impl Dead {
    pub fn new() -> Dead {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())
            .expect("bind");
        let addr = socket
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet");
        Dead { socket, addr }
    }

    pub fn spec(&self) -> String {
        self.addr.to_string()
    }

    /// Start listening on the same port, as a `named` backend.
    pub fn revive(self, name: &str) -> Backend {
        self.socket.listen(128).expect("listen");
        let l: TcpListener = self.socket.into();
        Backend::serve(AnyListener::Tcp(l), Arc::new(named_handler(name)))
    }
}

impl Default for Dead {
    fn default() -> Self {
        Dead::new()
    }
}

/// A listener whose accept queue is full, so further SYNs are dropped and connects hang: the
/// loopback stand-in for an unreachable host.
pub struct Blackhole {
    _listener: Socket,
    _fillers: Vec<TcpStream>,
    pub addr: SocketAddr,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        listener
            .bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())
            .expect("bind");
        listener.listen(0).expect("listen");
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        // Fill the queue until a connect no longer completes.
        for _ in 0..16 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => fillers.push(s),
                Err(_) => {
                    return Blackhole {
                        _listener: listener,
                        _fillers: fillers,
                        addr,
                    }
                }
            }
        }
        panic!("could not fill the accept queue of a backlog-0 listener");
    }

    pub fn spec(&self) -> String {
        self.addr.to_string()
    }
}

impl Blackhole {
    /// Start accepting again: the next connection that is not one of the fillers (pen's, once
    /// the kernel retries its SYN) goes to `handler`, in a thread. Waits for it at most 10 s.
    pub fn open(self, handler: impl FnOnce(TcpStream) + Send + 'static) -> thread::JoinHandle<()> {
        let fillers: Vec<SocketAddr> = self
            ._fillers
            .iter()
            .filter_map(|f| f.local_addr().ok())
            .collect();
        let listener = self._listener;
        thread::spawn(move || {
            listener.set_nonblocking(true).expect("nonblocking");
            let mut kept = Vec::new(); // fillers, closed when the thread ends
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, from)) => {
                        let s: TcpStream = s.into();
                        s.set_nonblocking(false).expect("blocking");
                        if from.as_socket().is_some_and(|a| fillers.contains(&a)) {
                            kept.push(s);
                            continue;
                        }
                        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                        handler(s);
                        return;
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    }
}

impl Default for Blackhole {
    fn default() -> Self {
        Blackhole::new()
    }
}

/// A channel to get a result out of a backend handler (the first connection's, typically).
pub fn channel<T: Send + 'static>() -> (Arc<Mutex<mpsc::Sender<T>>>, mpsc::Receiver<T>) {
    let (tx, rx) = mpsc::channel();
    (Arc::new(Mutex::new(tx)), rx)
}

// ---- a server that dies and comes back ---------------------------------------------------------

impl Backend {
    /// Stop this TCP backend and keep its port refusing connects: to pen, the server has died.
    /// `revive` on the result brings it back on the same port.
    pub fn kill(self) -> Dead {
        let BackendAddr::Tcp(addr) = &self.addr else {
            panic!("kill: not a TCP backend");
        };
        let addr = *addr;
        drop(self);
        Dead::at(addr)
    }
}

impl Dead {
    /// A refusing port at `addr`, which a listener has just given up. SO_REUSEADDR lets it share
    /// the port with that listener's connections in TIME_WAIT, never with a listening socket; the
    /// retries cover the moment the old listener's thread takes to close it.
    pub fn at(addr: SocketAddr) -> Dead {
        let socket = wait_until(
            &format!("{addr} to be free"),
            Duration::from_secs(5),
            || {
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).ok()?;
                s.set_reuse_address(true).ok()?;
                s.bind(&addr.into()).ok()?;
                Some(s)
            },
        );
        Dead { socket, addr }
    }
}
