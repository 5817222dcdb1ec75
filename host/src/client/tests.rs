//! The client against real sockets: hyper upstreams, and scripted ones
//! that answer byte by byte.

use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use super::*;
use crate::body::full;

/// A local HTTP/1.1 upstream that counts the connections it accepted and
/// the ones the client has since closed.
async fn upstream() -> (Upstream, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (opened, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (o, c) = (opened.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            o.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async { Ok::<_, std::convert::Infallible>(Response::new(full("ok".into()))) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let upstream = Upstream {
        scheme: Scheme::HTTP,
        authority: addr.to_string().parse().unwrap(),
    };
    (upstream, opened, closed)
}

pub(super) fn client(pool_idle_timeout: Duration) -> UpstreamClient {
    UpstreamClient::new(&UpstreamConfig {
        connect_timeout: Duration::from_secs(2),
        first_byte_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        pool_idle_timeout,
        pool_max_idle_per_host: 8,
        max_response_header_bytes: 64 << 10,
    })
}

async fn get(client: &UpstreamClient, upstream: &Upstream) -> Bytes {
    let req = Request::builder()
        .uri("/x")
        .header(http::header::HOST, "up.test")
        .body(full(Bytes::new()))
        .unwrap();
    let resp = client.request(upstream, req).await.unwrap();
    resp.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_is_reused_then_closed_after_the_idle_timeout() {
    let (upstream, opened, closed) = upstream().await;
    let client = client(Duration::from_millis(200));
    for _ in 0..5 {
        assert_eq!(get(&client, &upstream).await, "ok");
    }
    assert_eq!(opened.load(Ordering::SeqCst), 1, "sequential requests share one connection");
    assert_eq!(closed.load(Ordering::SeqCst), 0);
    // The reaper runs every 100 ms here: the connection goes within ~300 ms.
    for _ in 0..40 {
        if closed.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(closed.load(Ordering::SeqCst), 1, "the idle connection was not closed");
    assert_eq!(get(&client, &upstream).await, "ok");
    assert_eq!(opened.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_requests_get_their_own_connections_and_all_return() {
    let (upstream, opened, _) = upstream().await;
    let client = client(Duration::from_secs(60));
    let answers = futures_util::future::join_all((0..4).map(|_| get(&client, &upstream))).await;
    assert!(answers.iter().all(|a| a == "ok"));
    assert_eq!(opened.load(Ordering::SeqCst), 4);
    let host = client.inner.host(&upstream);
    assert_eq!(host.idle.lock().unwrap().len(), 4, "every connection went back to the pool");
    for _ in 0..8 {
        assert_eq!(get(&client, &upstream).await, "ok");
    }
    assert_eq!(opened.load(Ordering::SeqCst), 4, "pooled connections are reused");
}

/// An upstream whose every connection is handed to `serve`; counts them.
pub(super) async fn scripted<F, Fut>(serve: F) -> (Upstream, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let o = opened.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            o.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream));
        }
    });
    let upstream = Upstream {
        scheme: Scheme::HTTP,
        authority: addr.to_string().parse().unwrap(),
    };
    (upstream, opened)
}

/// Reads up to and including the end of `marker`; empty at end of stream.
pub(super) async fn read_until(s: &mut TcpStream, marker: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(marker) {
        if s.read(&mut byte).await.unwrap_or(0) == 0 {
            return Vec::new();
        }
        got.push(byte[0]);
    }
    got
}

pub(super) async fn write(s: &mut TcpStream, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
}

pub(super) async fn pause() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

pub(super) fn get_req() -> Request<GatewayBody> {
    Request::builder().uri("/x").body(crate::body::empty()).unwrap()
}

/// A body sent frame by frame through a channel: its length is unknown.
fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, GatewayBody) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(|b| Ok(http_body::Frame::data(b)))));
    (tx, http_body_util::StreamBody::new(stream).boxed_unsync())
}

#[tokio::test(flavor = "current_thread")]
async fn chunked_responses_are_decoded_across_reads_with_their_trailers() {
    let (upstream, opened) = scripted(|mut s| async move {
        while !read_until(&mut s, b"\r\n\r\n").await.is_empty() {
            for piece in [
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"[..],
                b"lo\r",
                b"\n3;ext=1\r\nabc\r\n0\r\nX-Sum",
                b": 9\r\n\r",
                b"\n",
            ] {
                write(&mut s, piece).await;
                pause().await;
            }
        }
    })
    .await;
    let client = client(Duration::from_secs(60));
    for _ in 0..2 {
        let resp = client.request(&upstream, get_req()).await.unwrap();
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-sum"], "9");
        assert_eq!(collected.to_bytes(), "helloabc");
    }
    assert_eq!(opened.load(Ordering::SeqCst), 1, "the connection was reused");
}

#[tokio::test(flavor = "current_thread")]
async fn a_body_delimited_by_close_is_read_to_the_end_and_its_connection_not_reused() {
    let (upstream, opened) = scripted(|mut s| async move {
        read_until(&mut s, b"\r\n\r\n").await;
        write(&mut s, b"HTTP/1.1 200 OK\r\n\r\nab").await;
        pause().await;
        write(&mut s, b"c").await;
    })
    .await;
    let client = client(Duration::from_secs(60));
    for _ in 0..2 {
        let resp = client.request(&upstream, get_req()).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "abc");
    }
    assert_eq!(opened.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn interim_responses_are_skipped() {
    let (upstream, _) = scripted(|mut s| async move {
        read_until(&mut s, b"\r\n\r\n").await;
        write(
            &mut s,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        )
        .await;
        pause().await;
        write(&mut s, b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok").await;
    })
    .await;
    let resp = client(Duration::from_secs(60)).request(&upstream, get_req()).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert!(!resp.headers().contains_key("link"));
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
}

#[tokio::test(flavor = "current_thread")]
async fn an_early_answer_arrives_while_the_upload_waits_and_the_connection_is_dropped() {
    let (upstream, opened) = scripted(|mut s| async move {
        while !read_until(&mut s, b"\r\n\r\n").await.is_empty() {
            write(&mut s, b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n").await;
        }
    })
    .await;
    let client = client(Duration::from_secs(60));
    let (tx, body) = channel_body();
    tx.send(Bytes::from_static(b"first part")).await.unwrap();
    let req = Request::builder().method("POST").uri("/upload").body(body).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(&upstream, req))
        .await
        .expect("the answer came before the body ended")
        .unwrap();
    assert_eq!(resp.status(), 413);
    drop(resp);
    client.request(&upstream, get_req()).await.unwrap();
    assert_eq!(opened.load(Ordering::SeqCst), 2, "a connection with a half-sent body is not reused");
}

#[tokio::test(flavor = "current_thread")]
async fn request_and_response_bodies_stream_at_the_same_time() {
    // The upstream answers at once, then echoes each chunk as it comes.
    let (upstream, _) = scripted(|mut s| async move {
        let head = read_until(&mut s, b"\r\n\r\n").await;
        assert!(String::from_utf8_lossy(&head).contains("transfer-encoding: chunked"));
        write(&mut s, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await;
        loop {
            let size_line = read_until(&mut s, b"\r\n").await;
            let chunk = read_until(&mut s, b"\r\n").await;
            if size_line == b"0\r\n" || chunk.is_empty() {
                write(&mut s, b"0\r\n\r\n").await;
                return;
            }
            let mut echo = size_line;
            echo.extend_from_slice(&chunk);
            write(&mut s, &echo).await;
        }
    })
    .await;
    let client = client(Duration::from_secs(60));
    let (tx, body) = channel_body();
    let req = Request::builder().method("POST").uri("/echo").body(body).unwrap();
    let resp = client.request(&upstream, req).await.unwrap();
    let mut body = resp.into_body();
    for word in ["one", "two", "three"] {
        tx.send(Bytes::from(word)).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the echo came back before the upload ended")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), word);
    }
    drop(tx);
    assert!(body.frame().await.is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn a_switch_of_protocols_hands_over_the_connection() {
    let (upstream, _) = scripted(|mut s| async move {
        read_until(&mut s, b"\r\n\r\n").await;
        write(
            &mut s,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nearly",
        )
        .await;
        let ping = read_until(&mut s, b"ping").await;
        write(&mut s, &ping).await;
    })
    .await;
    let req = Request::builder()
        .uri("/ws")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(crate::body::empty())
        .unwrap();
    let resp = client(Duration::from_secs(60)).request(&upstream, req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let (mut io, early) = resp.extensions().get::<UpstreamUpgrade>().unwrap().take().unwrap();
    assert_eq!(early, "early");
    write(&mut io, b"ping").await;
    assert_eq!(read_until(&mut io, b"ping").await, b"ping");
}

#[tokio::test(flavor = "current_thread")]
async fn malformed_answers_are_errors_of_their_own_kind() {
    for (answer, bad_response) in [
        (&b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..], true),
        (b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\nContent-Le", false),
    ] {
        let (upstream, _) = scripted(move |mut s| async move {
            read_until(&mut s, b"\r\n\r\n").await;
            write(&mut s, answer).await;
        })
        .await;
        let err = client(Duration::from_secs(60)).request(&upstream, get_req()).await.unwrap_err();
        assert_eq!(err.is_bad_response(), bad_response, "{answer:?}: {err:?}");
        if !bad_response {
            assert!(matches!(err, UpstreamError::Truncated), "{err:?}");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_the_upstream_closed_is_not_used_even_for_a_post() {
    let (upstream, opened) = scripted(|mut s| async move {
        read_until(&mut s, b"\r\n\r\n").await;
        // Answers as if the connection could stay, then closes it.
        write(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    })
    .await;
    let client = client(Duration::from_secs(60));
    let resp = client.request(&upstream, get_req()).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let post = Request::builder()
        .method("POST")
        .uri("/x")
        .body(full(Bytes::from_static(b"{}")))
        .unwrap();
    let resp = client.request(&upstream, post).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(opened.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn request_bodies_are_framed_from_their_size() {
    // The upstream sends back what it read: head and body, raw.
    let (upstream, _) = scripted(|mut s| async move {
        let mut raw = read_until(&mut s, b"\r\n\r\n").await;
        let chunked = String::from_utf8_lossy(&raw).contains("transfer-encoding: chunked");
        if chunked {
            raw.extend(read_until(&mut s, b"0\r\n").await);
            raw.extend(read_until(&mut s, b"\r\n\r\n").await);
        } else {
            raw.extend(read_until(&mut s, b"}").await);
        }
        let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", raw.len()).into_bytes();
        answer.extend(raw);
        write(&mut s, &answer).await;
    })
    .await;
    let client = client(Duration::from_secs(60));
    let sent = |req| async {
        String::from_utf8(
            client
                .request(&upstream, req)
                .await
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    };

    let req = Request::builder()
        .method("PUT")
        .uri("/known")
        .header("transfer-encoding", "chunked")
        .body(full(Bytes::from_static(b"{\"a\":1}")))
        .unwrap();
    let raw = sent(req).await;
    assert!(raw.starts_with("PUT /known HTTP/1.1\r\n"), "{raw}");
    assert!(raw.contains("content-length: 7\r\n") && !raw.contains("transfer-encoding"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n{\"a\":1}"), "{raw}");

    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", HeaderValue::from_static("7"));
    let frames = futures_util::stream::iter([
        Ok::<_, crate::body::BoxError>(http_body::Frame::data(Bytes::from_static(b"{\"b\""))),
        Ok(http_body::Frame::data(Bytes::from_static(b":2}"))),
        Ok(http_body::Frame::trailers(trailers)),
    ]);
    let req = Request::builder()
        .method("POST")
        .uri("/streamed")
        .header("content-length", "99")
        .body(http_body_util::StreamBody::new(frames).boxed_unsync())
        .unwrap();
    let raw = sent(req).await;
    assert!(
        raw.contains("transfer-encoding: chunked\r\n") && !raw.contains("content-length"),
        "{raw}"
    );
    assert!(raw.ends_with("\r\n\r\n4\r\n{\"b\"\r\n3\r\n:2}\r\n0\r\nx-sum: 7\r\n\r\n"), "{raw}");
}
