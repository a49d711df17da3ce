//! A real S3-compatible server for tests: moto's `moto_server` (from PyPI; `scripts/setup.sh`
//! installs it), started on loopback once per test process and stopped by a watchdog when the
//! process ends. Never a fake: requests go over HTTP to a server that implements S3.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The port of this process's moto server (started on first use).
///
/// # Panics
/// If moto is not installed or does not start within a minute.
pub fn moto() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let found = Command::new("python3")
            .args(["-c", "import moto.server"])
            .output()
            .expect("python3");
        assert!(
            found.status.success(),
            "moto's server not found: pip install 'moto[server]' (scripts/setup.sh does)"
        );
        // The watchdog shell outlives this call on purpose (it stops moto when the test
        // process is gone); nothing waits for it.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "python3 -m moto.server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
                 while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill $m",
                me = std::process::id()
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("sh");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        port
    })
}

/// A raw HTTP request to the server, with a dummy SigV4 `Authorization` header (moto does not
/// check signatures, but refuses some requests without one: objects named `*.json`); returns
/// the status.
///
/// # Panics
/// If the server cannot be reached or answers nonsense.
pub fn http(method: &str, path: &str, body: &[u8]) -> u16 {
    let resp = request(method, path, body);
    String::from_utf8_lossy(&resp[..resp.len().min(64)])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("an HTTP status")
}

/// The whole raw response (status line, headers, body) to a request.
///
/// # Panics
/// If the server cannot be reached.
pub fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let port = moto();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("moto listens");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
         SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .expect("a request");
    s.write_all(body).expect("a request body");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    resp
}

/// The keys of every object in `bucket` (one listing page: up to 1000).
///
/// # Panics
/// If the server cannot be reached.
pub fn keys(bucket: &str) -> Vec<String> {
    let resp = request("GET", &format!("/{bucket}?list-type=2"), b"");
    String::from_utf8_lossy(&resp)
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next().map(str::to_string))
        .collect()
}

/// Creates bucket `name` and returns its URL (`s3://name`).
///
/// # Panics
/// If the server refuses.
pub fn bucket(name: &str) -> String {
    assert_eq!(http("PUT", &format!("/{name}"), b""), 200, "bucket {name}");
    format!("s3://{name}")
}

/// The environment that points an S3 client (tidemark's, through `object_store`) at the server.
pub fn env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", moto())),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

/// A TCP proxy between a client and the S3 server that can stop forwarding (an outage):
/// `down` cuts every open connection and refuses new ones until `up`.
pub struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    /// Starts forwarding loopback connections to `target` (a port on 127.0.0.1).
    ///
    /// # Panics
    /// If no port can be bound.
    pub fn start(target: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (flag, list, count) = (up.clone(), conns.clone(), refused.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !flag.load(Ordering::SeqCst) {
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                {
                    let mut l = list.lock().unwrap();
                    l.push(client.try_clone().unwrap());
                    l.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Proxy {
            port,
            up,
            conns,
            refused,
        }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The proxy's address, as `AWS_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Connections refused while it was down: the client tried to reach the server during
    /// the outage (whether a run then failed, or the client's own retries outlasted it,
    /// depends on their random backoff).
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forwards new connections again.
    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
