//! Bounds on the gRPC transport: message size, streams per connection, header size, keepalive,
//! idle and age limits (`server.*` in the configuration).
//!
//! A peer that stops answering pings, or a connection that sends nothing at all for
//! `idle_timeout` (say, one that never finishes the HTTP/2 handshake), is closed, so idle sockets
//! cannot pile up.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Duration, Instant, Sleep};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::Connected;

use crate::config::Transport;

/// The HTTP/2 settings and timers of `transport` on a server builder.
pub fn configure<L>(
    builder: tonic::transport::Server<L>,
    transport: &Transport,
) -> tonic::transport::Server<L> {
    let mut builder = builder
        .max_concurrent_streams(transport.max_concurrent_streams)
        .http2_max_header_list_size(transport.max_header_list_bytes)
        .http2_keepalive_interval(transport.keepalive_interval)
        .http2_keepalive_timeout(Some(transport.keepalive_timeout));
    if let Some(age) = transport.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    builder
}

/// tonic refuses a request message over the bound with OUT_OF_RANGE and its own wording; gRPC
/// says RESOURCE_EXHAUSTED for this, and an operator needs the name of the setting to raise.
pub fn name_message_bound(max: usize) -> impl Fn(http::Response<Body>) -> http::Response<Body> + Clone {
    move |mut response| {
        let headers = response.headers_mut();
        let too_large = headers.get("grpc-status").is_some_and(|v| v == "11")
            && headers.get("grpc-message").and_then(|m| m.to_str().ok()).is_some_and(|m| {
                m.contains("message%20length%20too%20large") || m.contains("message length too large")
            });
        if too_large {
            let message = format!("the request message exceeds server.max_message_bytes ({max} bytes)");
            headers.insert("grpc-status", http::HeaderValue::from_static("8"));
            if let Ok(value) = http::HeaderValue::from_str(&message) {
                headers.insert("grpc-message", value);
            }
        }
        response
    }
}

/// A connection closed when it has sent nothing for `idle` (reads failing with `TimedOut`).
#[derive(Debug)]
pub struct IdleTimeout<S> {
    inner: S,
    idle: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, idle: Option<Duration>) -> Self {
        let timer = idle.map(|idle| Box::pin(tokio::time::sleep(idle)));
        IdleTimeout { inner, idle, timer }
    }

    /// The stream it bounds.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if let (Some(timer), Some(idle), true) =
                    (this.timer.as_mut(), this.idle, buf.filled().len() > before)
                {
                    timer.as_mut().reset(Instant::now() + idle);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "idle connection closed",
                ))),
                _ => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for IdleTimeout<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
