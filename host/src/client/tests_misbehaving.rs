//! The client against services that misbehave: every answer is either
//! framed correctly or refused, and nothing of it reaches the next request
//! on the pool.

use bytes::Bytes;
use http_body_util::BodyExt;

use super::tests::{client, get_req, pause, read_until, scripted, write};
use super::*;

/// Each connection answers every request with `answer`, then (when
/// `close`) closes.
async fn answering(answer: &'static [u8], close: bool) -> (Upstream, Arc<std::sync::atomic::AtomicUsize>) {
    scripted(move |mut s| async move {
        while !read_until(&mut s, b"\r\n\r\n").await.is_empty() {
            write(&mut s, answer).await;
            if close {
                return;
            }
        }
    })
    .await
}

async fn body_of(resp: Response<PooledBody>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

fn bad_response(err: &UpstreamError) -> Option<&HeadError> {
    match err {
        UpstreamError::BadResponse(e) => Some(e),
        _ => None,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn transfer_encoding_frames_the_body_and_its_content_length_is_removed() {
    // The Content-Length (3) would truncate the 11-byte chunked body.
    let (upstream, opened) = answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
        false,
    )
    .await;
    let client = client(Duration::from_secs(60));
    for round in 1..=2 {
        let resp = client.request(&upstream, get_req()).await.unwrap();
        assert!(resp.headers().get(header::CONTENT_LENGTH).is_none(), "{:?}", resp.headers());
        assert_eq!(body_of(resp).await, "hello world");
        // A response that carried both may have been made to smuggle: its
        // connection is not reused.
        assert_eq!(opened.load(Ordering::SeqCst), round);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn transfer_encoding_identity_with_a_length_is_read_to_the_close() {
    let (upstream, _) = answering(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nwhole body",
        true,
    )
    .await;
    let resp = client(Duration::from_secs(60)).request(&upstream, get_req()).await.unwrap();
    assert!(resp.headers().get(header::CONTENT_LENGTH).is_none());
    assert_eq!(body_of(resp).await, "whole body");
}

#[tokio::test(flavor = "current_thread")]
async fn codings_the_gateway_cannot_decode_are_refused_and_the_pool_stays_clean() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\n\x1f\x8b\x08\x00\x00\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08\x00",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let err = refused_then_clean(answer).await;
        assert!(matches!(err, HeadError::TransferCoding), "{answer:?}: {err:?}");
    }
}

/// Sends a request that gets `answer` (refused by the client), then one
/// that gets a good answer: it must come on a connection of its own, clean.
/// Returns why the first was refused.
async fn refused_then_clean(answer: &'static [u8]) -> HeadError {
    let answered = Arc::new(AtomicBool::new(false));
    let (upstream, opened) = scripted(move |mut s| {
        let answered = answered.clone();
        async move {
            while !read_until(&mut s, b"\r\n\r\n").await.is_empty() {
                let good = answered.swap(true, Ordering::SeqCst);
                write(
                    &mut s,
                    if good {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    } else {
                        answer
                    },
                )
                .await;
            }
        }
    })
    .await;
    let client = client(Duration::from_secs(60));
    let err = client.request(&upstream, get_req()).await.unwrap_err();
    let resp = client.request(&upstream, get_req()).await.unwrap();
    assert_eq!(body_of(resp).await, "ok");
    assert_eq!(opened.load(Ordering::SeqCst), 2, "{answer:?}: the refused connection was reused");
    match err {
        UpstreamError::BadResponse(e) => e,
        other => panic!("{answer:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_content_length_list_is_forwarded_as_one_value() {
    let (upstream, opened) = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\nhello", false).await;
    let client = client(Duration::from_secs(60));
    for _ in 0..2 {
        let resp = client.request(&upstream, get_req()).await.unwrap();
        let lengths: Vec<_> = resp.headers().get_all(header::CONTENT_LENGTH).iter().cloned().collect();
        assert_eq!(lengths, ["5"]);
        assert_eq!(body_of(resp).await, "hello");
    }
    assert_eq!(opened.load(Ordering::SeqCst), 1, "an agreeing list keeps the connection");

    let (upstream, _) = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!", true).await;
    let err = client.request(&upstream, get_req()).await.unwrap_err();
    assert!(matches!(bad_response(&err), Some(HeadError::ContentLength)), "{err:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn an_interim_and_the_final_head_in_one_read_do_not_wait_for_more() {
    // Both heads in one write; the connection then stays open and quiet, so
    // a client that waits for more bytes would hang until its timeout.
    let (upstream, _) = scripted(|mut s| async move {
        read_until(&mut s, b"\r\n\r\n").await;
        write(
            &mut s,
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )
        .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let resp = tokio::time::timeout(
        Duration::from_secs(3),
        client(Duration::from_secs(60)).request(&upstream, get_req()),
    )
    .await
    .expect("the buffered final head was not read")
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_of(resp).await, "ok");
}

#[tokio::test(flavor = "current_thread")]
async fn an_endless_stream_of_interim_heads_is_refused() {
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = written.clone();
    let (upstream, _) = scripted(move |mut s| {
        let w = w.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            read_until(&mut s, b"\r\n\r\n").await;
            let heads = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(1000);
            // Bounded: 24 MB at most, or until the client hangs up.
            for _ in 0..1000 {
                if s.write_all(&heads).await.is_err() {
                    return;
                }
                w.fetch_add(heads.len(), Ordering::SeqCst);
            }
        }
    })
    .await;
    let err = client(Duration::from_secs(60)).request(&upstream, get_req()).await.unwrap_err();
    assert!(matches!(bad_response(&err), Some(HeadError::TooManyInterim)), "{err:?}");
    pause().await;
    assert!(
        written.load(Ordering::SeqCst) < 4 << 20,
        "the client kept reading interim heads: {} bytes",
        written.load(Ordering::SeqCst)
    );

    // Up to the limit is fine.
    let heads: &'static [u8] = Box::leak(
        [
            b"HTTP/1.1 100 Continue\r\n\r\n".repeat(h1::MAX_INTERIM),
            b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        ]
        .concat()
        .into_boxed_slice(),
    );
    let (upstream, _) = answering(heads, true).await;
    let resp = client(Duration::from_secs(60)).request(&upstream, get_req()).await.unwrap();
    assert_eq!(resp.status(), 204);
}

#[tokio::test(flavor = "current_thread")]
async fn a_switch_of_protocols_nobody_asked_for_is_refused() {
    let err =
        refused_then_clean(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nsecret bytes").await;
    assert!(matches!(err, HeadError::UnaskedSwitch), "{err:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn hosts_nobody_uses_are_forgotten() {
    let client = client(Duration::from_millis(200));
    let mut upstreams = Vec::new();
    for _ in 0..3 {
        let (upstream, _) = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false).await;
        let resp = client.request(&upstream, get_req()).await.unwrap();
        assert_eq!(body_of(resp).await, "ok");
        upstreams.push(upstream);
    }
    assert_eq!(client.inner.hosts.lock().unwrap().len(), 3);
    // Held by a request: kept while the others' idle connections expire.
    let held = client.inner.host(&upstreams[0]);
    let mut left = usize::MAX;
    for _ in 0..60 {
        left = client.inner.hosts.lock().unwrap().len();
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(left, 1, "hosts with no idle connection and no request were kept");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(client.inner.hosts.lock().unwrap().is_empty());
    // A forgotten host is found again on its next request.
    let resp = client.request(&upstreams[1], get_req()).await.unwrap();
    assert_eq!(body_of(resp).await, "ok");
}
