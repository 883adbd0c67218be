//! A raw HTTP/1.1 agent for tests of what agents may send back: it answers every request (any
//! path) with one scripted [`Answer`] written byte by byte — redirects, endless chunked bodies,
//! lying `Content-Length`s — which a well-behaved server framework would not produce. It counts
//! connections, `/execute` requests and bytes written, and stops when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the agent answers to every request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// `code` with `body` (and its true length).
    Status { code: u16, body: String },
    /// `307` to `location`.
    Redirect { location: String },
    /// `200` with `total` bytes in 64 KiB chunks and no `Content-Length`.
    Chunked { total: u64 },
    /// `200` declaring `declared` bytes and sending `actual`.
    Declared { declared: u64, actual: u64 },
}

impl Answer {
    /// A well-formed `/execute` answer.
    pub fn ok() -> Answer {
        Answer::Status {
            code: 200,
            body: r#"{"output": {}}"#.to_owned(),
        }
    }

    pub fn redirect(location: &str) -> Answer {
        Answer::Redirect {
            location: location.to_owned(),
        }
    }
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    executes: AtomicUsize,
    written: AtomicU64,
}

/// The agent, on `127.0.0.1:<free port>`.
pub struct RawAgent {
    addr: SocketAddr,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl RawAgent {
    pub async fn start(answer: Answer) -> RawAgent {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let task = tokio::spawn({
            let counts = Arc::clone(&counts);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    counts.connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve(stream, answer.clone(), Arc::clone(&counts)));
                }
            }
        });
        RawAgent { addr, counts, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted, whatever they asked.
    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::SeqCst)
    }

    /// `POST /execute` requests received.
    pub fn executes(&self) -> usize {
        self.counts.executes.load(Ordering::SeqCst)
    }

    /// Body bytes written so far (the peer's socket buffers took at least this much less).
    pub fn bytes_written(&self) -> u64 {
        self.counts.written.load(Ordering::SeqCst)
    }
}

impl Drop for RawAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head and declared body), answers it and closes the connection.
async fn serve(mut stream: TcpStream, answer: Answer, counts: Arc<Counts>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let Ok(n) = stream.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    if head.starts_with("post /execute") || head.starts_with("post ") && head.contains("/execute ")
    {
        counts.executes.fetch_add(1, Ordering::SeqCst);
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let _ = answer_with(&mut stream, &answer, &counts).await;
    let _ = stream.shutdown().await;
}

async fn answer_with(
    stream: &mut TcpStream,
    answer: &Answer,
    counts: &Counts,
) -> std::io::Result<()> {
    static FILL: [u8; 64 * 1024] = [b'x'; 64 * 1024];
    match answer {
        Answer::Status { code, body } => {
            let head = format!(
                "HTTP/1.1 {code} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            counts
                .written
                .fetch_add(body.len() as u64, Ordering::SeqCst);
        }
        Answer::Redirect { location } => {
            let head = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
        }
        Answer::Chunked { total } => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            stream.write_all(head.as_bytes()).await?;
            let mut sent = 0u64;
            while sent < *total {
                stream
                    .write_all(format!("{:x}\r\n", FILL.len()).as_bytes())
                    .await?;
                stream.write_all(&FILL).await?;
                stream.write_all(b"\r\n").await?;
                sent += FILL.len() as u64;
                counts
                    .written
                    .fetch_add(FILL.len() as u64, Ordering::SeqCst);
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
        Answer::Declared { declared, actual } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\nconnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            let mut sent = 0u64;
            while sent < *actual {
                let n = FILL.len().min((*actual - sent) as usize);
                stream.write_all(&FILL[..n]).await?;
                sent += n as u64;
                counts.written.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    }
    stream.flush().await
}
