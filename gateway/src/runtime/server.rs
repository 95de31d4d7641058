//! The HTTP/1.1 server: accept loop, per-connection limits, graceful shutdown.
//!
//! Each connection gets a bounded head (size and time) and keep-alive. One that has sent
//! nothing yet is only a socket and a small task (about a kilobyte and a half), closed at the
//! header timeout; its first byte starts the HTTP connection, whose head must then come whole
//! within the header timeout too. On shutdown the
//! listener closes, idle connections are told to close, in-flight streams are given
//! `drain_timeout` to finish, and the calls being settled are waited for, so every event is
//! queued before the runtime stops the event writer.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};

use crate::control::Control;
use crate::limits::LISTEN_BACKLOG;
use crate::operator::report;
use crate::runtime::router;

/// Pause after an accept error (out of file descriptors, say) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Listens on `address` with a queue of [`LISTEN_BACKLOG`] connections waiting to be accepted
/// (the standard library's 128 drops the handshakes of a burst of new connections).
pub fn bind(address: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    control: Arc<Control>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let gateway = Arc::clone(&control.gateway);
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(gateway.config.server.header_timeout)
        .max_buf_size(gateway.config.server.header_bytes_max)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        report(&format!("accepting a connection: {e}"));
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let control = Arc::clone(&control);
                let (builder, watcher) = (builder.clone(), graceful.watcher());
                let head_timeout = gateway.config.server.header_timeout;
                tokio::spawn(async move {
                    // Until its first byte a connection costs its socket and this small task;
                    // the HTTP state (buffers, timers) is made once there is a head to read.
                    // One with nothing to say by the header timeout is closed.
                    // (`readable` may wake before there is anything to read; `peek` waits for a
                    // byte, and sees a client that closed without sending one.)
                    match tokio::time::timeout(head_timeout, stream.peek(&mut [0; 1])).await {
                        Ok(Ok(1..)) => {}
                        Ok(Ok(0) | Err(_)) | Err(_) => return,
                    }
                    // Boxed, so the task's own state (which every idle connection pays for)
                    // stays small: the HTTP connection is allocated once it is needed.
                    Box::pin(serve_connection(control, &builder, watcher, stream)).await;
                });
            }
        }
    }
    drop(listener);
    let drain = gateway.config.server.drain_timeout;
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        report(&format!(
            "shutdown: connections still open after {drain:?}; closing them"
        ));
    }
    // Calls whose bodies were cut still finish their tickets (counting off-thread); wait for
    // every in-flight slot to come back so their events are queued before the writer stops.
    let all = u32::try_from(gateway.config.server.requests_in_flight_max).unwrap_or(u32::MAX);
    match tokio::time::timeout(drain, gateway.in_flight.acquire_many(all)).await {
        Ok(Ok(permits)) => drop(permits),
        Ok(Err(_)) | Err(_) => report("shutdown: some calls were still being settled"),
    }
    Ok(())
}

/// Serves HTTP on one connection until it closes, watched for a graceful shutdown.
async fn serve_connection(
    control: Arc<Control>,
    builder: &http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    stream: tokio::net::TcpStream,
) {
    let service = service_fn(move |request| {
        let control = Arc::clone(&control);
        async move { Ok::<_, std::convert::Infallible>(router::handle(control, request).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    // A client that breaks off mid-request is normal; its call is metered by the body's drop,
    // so the error needs no report here.
    let _ = watcher.watch(connection).await;
}
