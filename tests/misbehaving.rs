//! The gateway in front of services that misbehave (RFC 9112 framing games,
//! endless interim heads, unasked upgrades): the client gets a well-framed
//! answer or a 502 with its request id, and the gateway's memory stays
//! bounded. Also what a client's trailers may carry toward a service.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// A service on a free port that answers each connection with `answer`
/// (after reading the request head, and a chunked body to its end), records
/// the raw request, then closes. Serves at most 64 connections.
struct Scripted {
    port: u16,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Scripted {
    fn start(answer: impl Fn(&mut TcpStream) + Send + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(64) {
                let Ok(mut s) = stream else { return };
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                seen.lock().unwrap().push(read_request(&mut s));
                answer(&mut s);
            }
        });
        Scripted { port, requests }
    }

    fn setup(&self) -> Setup {
        Setup {
            routes: vec![(
                "scripted.toml".into(),
                format!(
                    "service = \"scripted-service\"\nupstream = \"http://127.0.0.1:{}\"\n\n[[route]]\nprefix = \"/s\"\nauth = \"public\"\n",
                    self.port
                ),
            )],
            shipped_routes: false,
            upstream: "first_byte_timeout = \"3s\"".into(),
            ..Setup::default()
        }
    }
}

/// The request head, and a chunked body through its trailer section.
fn read_request(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    let mut until = |got: &mut Vec<u8>, end: &[u8]| {
        while !got.ends_with(end) && got.len() < 1 << 20 {
            match s.read(&mut byte) {
                Ok(1) => got.push(byte[0]),
                _ => return,
            }
        }
    };
    until(&mut got, b"\r\n\r\n");
    if String::from_utf8_lossy(&got)
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        until(&mut got, b"\r\n0\r\n");
        until(&mut got, b"\r\n\r\n");
    }
    got
}

fn answers(bytes: &'static [u8]) -> impl Fn(&mut TcpStream) + Send + 'static {
    move |s| {
        let _ = s.write_all(bytes);
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn transfer_encoding_wins_over_content_length() {
    let up = Scripted::start(answers(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
    ));
    let demo = Demo::start();
    let gw = Gateway::start(&demo, up.setup());
    let resp = gw.get("/s/x", &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"hello world", "{}", resp.text());
    assert_ne!(resp.header("content-length"), Some("3"));
}

#[test]
fn codings_the_gateway_cannot_decode_are_502() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\n\x1f\x8b\x08\x00\x00\r\n0\r\n\r\n"[..],
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let up = Scripted::start(answers(answer));
        let demo = Demo::start();
        let gw = Gateway::start(&demo, up.setup());
        let resp = gw.get("/s/x", &[("X-Request-ID", "coding-1")]);
        assert_eq!(resp.assert_error(502), "coding-1");
        assert_eq!(resp.json()["error"], "upstream sent an invalid response", "{}", resp.text());
    }
}

#[test]
fn a_101_to_a_plain_request_is_502() {
    let up = Scripted::start(answers(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nnot for you",
    ));
    let demo = Demo::start();
    let gw = Gateway::start(&demo, up.setup());
    let resp = gw.get("/s/x", &[("X-Request-ID", "switch-1")]);
    assert_eq!(resp.assert_error(502), "switch-1");
    assert!(!resp.text().contains("not for you"));
}

#[test]
fn endless_interim_heads_cost_a_502_and_bounded_memory() {
    // 24 MB of `100 Continue` heads, or until the gateway hangs up.
    let up = Scripted::start(|s| {
        let heads = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(4096);
        for _ in 0..240 {
            if s.write_all(&heads).is_err() {
                return;
            }
        }
    });
    let demo = Demo::start();
    let gw = Gateway::start(&demo, up.setup());
    assert_eq!(gw.get("/s/warm", &[]).status, 502);
    let before = rss_kib(gw.proc.child.id());
    for n in 0..4 {
        let id = format!("interim-{n}");
        assert_eq!(gw.get("/s/x", &[("X-Request-ID", &id)]).assert_error(502), id);
    }
    let grown = rss_kib(gw.proc.child.id()).saturating_sub(before);
    assert!(grown < 8 << 10, "RSS grew by {grown} KiB over four floods");
}

#[test]
fn client_trailers_carry_nothing_the_head_decides() {
    let up = Scripted::start(answers(b"HTTP/1.1 204 No Content\r\n\r\n"));
    let demo = Demo::start();
    let gw = Gateway::start(&demo, up.setup());
    let resp = gw.raw(
        "POST /s/upload HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\nAuthorization: Bearer stolen\r\nHost: admin.internal\r\nContent-Length: 5\r\n\
         Transfer-Encoding: gzip\r\nX-User-ID: 1\r\nX_Forwarded_For: 6.6.6.6\r\nX-Checksum: 9\r\n\r\n",
    );
    assert_eq!(resp.status, 204, "{}", resp.text());
    let seen = String::from_utf8_lossy(&up.requests.lock().unwrap()[0]).to_ascii_lowercase();
    let (_, trailers) = seen.split_once("\r\n0\r\n").unwrap_or_else(|| panic!("no last chunk: {seen}"));
    assert!(trailers.contains("x-checksum: 9"), "{seen}");
    for gone in [
        "authorization",
        "host",
        "content-length",
        "transfer-encoding",
        "x-user-id",
        "x_forwarded_for",
    ] {
        assert!(!trailers.contains(gone), "{gone} reached the service in a trailer: {trailers}");
    }
}
