//! A real browser for tests: headless Chromium (Debian's `chromium`,
//! installed with apt-get when missing), driven over the Chrome DevTools
//! Protocol on a WebSocket of its own.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use std::io::{BufRead, BufReader, Read, Write};

use super::Proc;

/// Installs Debian's `chromium` unless it is there already.
pub fn ensure_chromium() {
    super::ensure_debian_package("chromium", "chromium", "the browser tests");
}

/// A headless Chromium with its own profile, killed when dropped (its
/// helper processes end with it).
pub struct Browser {
    proc: Proc,
    devtools: u16,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn launch() -> Browser {
        ensure_chromium();
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--window-size=1400,1100",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank");
        let (proc, lines) = Proc::spawn(cmd, |l| l.starts_with("DevTools listening on ws://"));
        let line = lines.last().unwrap();
        let port = line
            .trim_start_matches("DevTools listening on ws://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no DevTools port in {line:?}"));
        Browser {
            proc,
            devtools: port,
            _profile: profile,
        }
    }

    /// The DevTools WebSocket of the first page.
    fn page(&self) -> String {
        // DevTools keeps the connection open: read the head, then its length.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.devtools)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /json/list HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut reader = BufReader::new(s);
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).unwrap();
        let list: Value = serde_json::from_slice(&body).unwrap();
        list.as_array()
            .and_then(|l| l.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target: {list}"))
            .to_string()
    }

    /// Runs `method` on the first page and returns its result.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.devtools)).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(self.page(), stream)
            .await
            .expect("DevTools WebSocket");
        ws.send(Message::text(json!({"id": 1, "method": method, "params": params}).to_string()))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(text) = msg {
                    let v: Value = serde_json::from_str(text.as_str()).unwrap();
                    if v["id"] == 1 {
                        return v;
                    }
                }
            }
            panic!("DevTools closed");
        })
        .await
        .expect("DevTools answered within 60s");
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns
    /// its value.
    pub async fn evaluate(&self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(result.get("exceptionDetails").is_none(), "the page threw: {result}");
        result["result"]["value"].clone()
    }

    /// Opens `url` in the page.
    pub async fn navigate(&self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// Evaluates `expression` every 100 ms until it is truthy (at most
    /// `limit`), and returns its value; `None` if it never was.
    pub async fn wait_until(&self, expression: &str, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let result = self
                .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true}))
                .await;
            let value = result["result"]["value"].clone();
            if !(value.is_null() || value == false || value == "" || value == 0) {
                return Some(value);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Saves a PNG screenshot of the page to `path`.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}
