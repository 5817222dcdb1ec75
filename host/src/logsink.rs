//! Where log lines go: one shared buffer that every thread appends whole
//! lines to, written out by a background thread in batches, at most
//! [`FLUSH_EVERY`] after a batch's first line (like nginx's
//! `access_log ... buffer= flush=`).
//!
//! A request's access-log line costs a lock and a copy: no allocation, no
//! channel message, no thread wake-up per line (one per batch). Nothing is
//! dropped: above [`MAX_BUFFERED`] a writer waits for the batch in flight,
//! so a blocked stdout slows the gateway rather than losing lines. The
//! [`FlushGuard`] writes out what is left when it drops (at exit).

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a batch gathers lines before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A batch this big is written at once.
const HIGH_WATER: usize = 256 << 10;
/// Writers wait while this much is buffered (the output is not keeping up).
const MAX_BUFFERED: usize = 4 << 20;

struct State {
    buf: Vec<u8>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The writer thread waits here for a first line, or for high water.
    wake: Condvar,
    /// Appenders wait here while the buffer is over [`MAX_BUFFERED`].
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn append(&self, line: &[u8]) {
        let mut state = self.lock();
        while state.buf.len() >= MAX_BUFFERED && !state.closed {
            state = self.room.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        let before = state.buf.len();
        state.buf.extend_from_slice(line);
        let wake = before == 0 || (before < HIGH_WATER && state.buf.len() >= HIGH_WATER) || state.closed;
        drop(state);
        if wake {
            self.wake.notify_one();
        }
    }
}

/// A `tracing_subscriber` writer (cloning shares the buffer).
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Writes out the remaining lines and stops the writer thread on drop.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BatchWriter {
    /// Appends whole lines (the access log's fast path).
    pub fn append(&self, lines: &[u8]) {
        self.shared.append(lines);
    }

    /// Starts the writer thread for `out`.
    pub fn new<W: Write + Send + 'static>(out: W) -> (BatchWriter, FlushGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(64 << 10),
                closed: false,
            }),
            wake: Condvar::new(),
            room: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("gatehouse-log".into())
            .spawn(move || write_batches(&worker, out))
            .expect("spawn the log writer thread");
        (
            BatchWriter { shared: shared.clone() },
            FlushGuard {
                shared,
                thread: Some(thread),
            },
        )
    }
}

fn write_batches<W: Write>(shared: &Shared, mut out: W) {
    let mut spare = Vec::with_capacity(64 << 10);
    loop {
        let mut state = shared.lock();
        while state.buf.is_empty() && !state.closed {
            state = shared.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        if state.buf.is_empty() && state.closed {
            return;
        }
        // A batch has begun: let it gather, unless it is already big.
        if state.buf.len() < HIGH_WATER && !state.closed {
            state = shared
                .wake
                .wait_timeout(state, FLUSH_EVERY)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        std::mem::swap(&mut state.buf, &mut spare);
        drop(state);
        shared.room.notify_all();
        // A failed write (stdout closed) cannot be reported anywhere better;
        // the lines are dropped rather than blocking the gateway forever.
        let _ = out.write_all(&spare).and_then(|()| out.flush());
        spare.clear();
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's writer: `tracing_subscriber`'s fmt layer formats an event
/// into its own buffer and writes it with one `write_all`.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { shared: &self.shared }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// An output the test can read while the writer thread owns it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_from_many_threads_all_arrive_whole_and_in_order_per_thread() {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::new(sink.clone());
        const THREADS: usize = 4;
        const LINES: usize = 20_000;
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let writer = writer.clone();
                s.spawn(move || {
                    for i in 0..LINES {
                        let line = format!("thread {t} line {i} {}\n", "x".repeat(i % 97));
                        tracing_subscriber::fmt::MakeWriter::make_writer(&writer)
                            .write_all(line.as_bytes())
                            .unwrap();
                    }
                });
            }
        });
        drop(guard);
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; THREADS];
        for line in out.lines() {
            let mut words = line.split(' ');
            assert_eq!(words.next(), Some("thread"), "torn line {line:?}");
            let t: usize = words.next().unwrap().parse().unwrap();
            words.next();
            let i: usize = words.next().unwrap().parse().unwrap();
            assert_eq!(i, next[t], "thread {t}: out of order or lost");
            assert_eq!(words.next().unwrap().len(), i % 97, "torn line {line:?}");
            next[t] += 1;
        }
        assert_eq!(next, [LINES; THREADS], "every line is written");
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_more() {
        let sink = Sink::default();
        let (writer, _guard) = BatchWriter::new(sink.clone());
        tracing_subscriber::fmt::MakeWriter::make_writer(&writer)
            .write_all(b"hello\n")
            .unwrap();
        let start = Instant::now();
        while sink.0.lock().unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "not written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hello\n");
    }
}
