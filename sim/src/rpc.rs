//! Request/response over turmoil TCP, for the simulated Kafka and Mongo.
//!
//! A frame is a 4-byte big-endian length and a JSON body. One connection
//! carries one request at a time. The client side is a task that owns the
//! connection: callers queue a request and get a receiver, so a caller that
//! drops its future (a cancelled poll) loses nothing — the answer waits in
//! the receiver — and never leaves half a frame on the wire. A failed or
//! timed-out exchange drops the connection; the next request reconnects.
//! Every failure reaches the caller as "unknown outcome": the request may or
//! may not have been carried out, exactly as with a real broker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use turmoil::net::{TcpListener, TcpStream};

/// Largest frame either side accepts.
const MAX_FRAME: usize = 64 << 20;

/// Writes one frame.
pub async fn write_frame<T: Serialize>(s: &mut TcpStream, msg: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    s.write_all(&out).await
}

/// Reads one frame; `None` at a clean end of stream.
pub async fn read_frame<T: DeserializeOwned>(s: &mut TcpStream) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {n} bytes")));
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// Why a call failed. The request may or may not have been carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError(pub String);

type Pending<Q, A> = (Q, Duration, oneshot::Sender<Result<A, CallError>>);

/// The client end: a queue into the task that owns the connection.
pub struct Client<Q, A> {
    tx: mpsc::UnboundedSender<Pending<Q, A>>,
    /// Connections lost so far (the session counter of a consumer).
    losses: Arc<AtomicU64>,
}

impl<Q, A> Client<Q, A>
where
    Q: Serialize + Clone + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
{
    /// Starts the connection task for `addr`. `hello`, when given, is sent
    /// first on every new connection (a consumer's group join) and its
    /// answer discarded.
    pub fn spawn(addr: String, hello: Option<Q>, connect_timeout: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let losses = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(addr, hello, connect_timeout, rx, losses.clone()));
        Self { tx, losses }
    }

    /// Queues `req`; the receiver yields the answer, or an error when the
    /// exchange failed or took longer than `timeout`.
    pub fn call(&self, req: Q, timeout: Duration) -> oneshot::Receiver<Result<A, CallError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError((_, _, tx))) = self.tx.send((req, timeout, tx)) {
            let _ = tx.send(Err(CallError("connection task gone".into())));
        }
        rx
    }

    /// How many connections were lost so far.
    pub fn losses(&self) -> u64 {
        self.losses.load(Ordering::SeqCst)
    }
}

/// Awaits an answer from [`Client::call`].
pub async fn answer<A>(rx: oneshot::Receiver<Result<A, CallError>>) -> Result<A, CallError> {
    rx.await
        .unwrap_or_else(|_| Err(CallError("connection task gone".into())))
}

async fn exchange<Q: Serialize, A: DeserializeOwned>(
    s: &mut TcpStream,
    req: &Q,
) -> std::io::Result<A> {
    write_frame(s, req).await?;
    read_frame(s)
        .await?
        .ok_or_else(|| std::io::Error::other("connection closed by peer"))
}

async fn connect<Q: Serialize, A: DeserializeOwned>(
    addr: &str,
    hello: Option<&Q>,
) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    if let Some(h) = hello {
        let _: A = exchange(&mut s, h).await?;
    }
    Ok(s)
}

async fn run<Q: Serialize, A: DeserializeOwned>(
    addr: String,
    hello: Option<Q>,
    connect_timeout: Duration,
    mut rx: mpsc::UnboundedReceiver<Pending<Q, A>>,
    losses: Arc<AtomicU64>,
) {
    let mut conn: Option<TcpStream> = None;
    while let Some((req, timeout, reply)) = rx.recv().await {
        if conn.is_none() {
            match tokio::time::timeout(connect_timeout, connect::<Q, A>(&addr, hello.as_ref()))
                .await
            {
                Ok(Ok(s)) => conn = Some(s),
                Ok(Err(e)) => {
                    let _ = reply.send(Err(CallError(format!("connect {addr}: {e}"))));
                    continue;
                }
                Err(_) => {
                    let _ = reply.send(Err(CallError(format!("connect {addr}: timed out"))));
                    continue;
                }
            }
        }
        let Some(s) = conn.as_mut() else { continue };
        let result = match tokio::time::timeout(timeout, exchange::<Q, A>(s, &req)).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(CallError(format!("{addr}: {e}"))),
            Err(_) => Err(CallError(format!("{addr}: no answer in {timeout:?}"))),
        };
        if result.is_err() {
            conn = None;
            losses.fetch_add(1, Ordering::SeqCst);
        }
        let _ = reply.send(result);
    }
}

/// What a server does with one request: answer it, or (a fault) close the
/// connection without answering, after having done the work or not.
pub enum Served<A> {
    /// Send this answer.
    Answer(A),
    /// Close the connection without an answer.
    Drop,
}

/// One connection's server-side state.
pub trait Session: 'static {
    /// Request type.
    type Q: DeserializeOwned;
    /// Answer type.
    type A: Serialize;
    /// Handles one request.
    fn handle(&mut self, req: Self::Q) -> Pin<Box<dyn Future<Output = Served<Self::A>> + '_>>;
}

/// Serves `port`: every connection gets its own session from `session`,
/// and its requests are handled one after the other. A connection silent
/// for `idle_timeout` is closed (the peer is presumed dead), which ends the
/// session (a consumer leaves its group).
pub async fn serve<S: Session>(
    port: u16,
    idle_timeout: Duration,
    session: impl Fn() -> S + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let mut handler = session();
        tokio::task::spawn_local(async move {
            loop {
                let req = match tokio::time::timeout(idle_timeout, read_frame::<S::Q>(&mut stream))
                    .await
                {
                    Ok(Ok(Some(q))) => q,
                    _ => return,
                };
                match handler.handle(req).await {
                    Served::Answer(a) => {
                        if write_frame(&mut stream, &a).await.is_err() {
                            return;
                        }
                    }
                    Served::Drop => return,
                }
            }
        });
    }
}
