//! [`ContractListener`]: catalog errors even for requests hyper refuses before axum sees them.
//!
//! When the bytes on a connection are not a readable HTTP/1 request (a bad header line, too
//! many headers, a URI too long), hyper answers by itself with an empty 400, 431 or 414: no
//! code, no request id. A server that accepts through [`ContractListener`] sends the catalog's
//! error instead, rendered by the same [`Contract`].
//!
//! ```no_run
//! # async fn run(contract: std::sync::Arc<faultline_axum::Contract>, app: axum::Router) {
//! let tcp = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! let listener = faultline_axum::ContractListener::new(tcp, contract);
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::serve::Listener;
use faultline::Situation;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::contract::Contract;
use crate::request_id::RequestId;

/// Wraps an axum [`Listener`] so that hyper's own refusals become catalog errors.
#[derive(Debug)]
pub struct ContractListener<L> {
    inner: L,
    contract: Arc<Contract>,
}

impl<L> ContractListener<L> {
    /// Accepts through `inner`, rendering refusals with `contract`.
    pub fn new(inner: L, contract: Arc<Contract>) -> Self {
        ContractListener { inner, contract }
    }
}

impl<L: Listener> Listener for ContractListener<L> {
    type Io = ContractIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        let io = ContractIo {
            inner: io,
            contract: Arc::clone(&self.contract),
            replacement: None,
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection accepted by [`ContractListener`].
///
/// # Every answer on the connection carries a code
///
/// Every response that faultline's layer finished carries the request-id header. A response
/// head written without it, with an error status, can only be hyper's automatic answer to a
/// request it could not parse; that head is replaced, whole, by the catalog's error.
pub struct ContractIo<I> {
    inner: I,
    contract: Arc<Contract>,
    /// The catalog answer being written in place of hyper's, and how much of it is out.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<I> std::fmt::Debug for ContractIo<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContractIo").finish_non_exhaustive()
    }
}

impl<I> ContractIo<I> {
    /// The catalog answer for hyper's automatic response in `buf`, if `buf` holds one.
    fn replacement_for(&self, buf: &[u8]) -> Option<Vec<u8>> {
        let status = hyper_refusal_status(buf, self.contract.request_id_header().as_str())?;
        let situation = match status {
            431 => Situation::RequestHeadersTooLarge,
            _ => Situation::MalformedRequest,
        };
        // A catalog without the binding keeps hyper's answer rather than mislabel it.
        self.contract.catalog().bound(situation)?;
        let error = self.contract.bound(situation);
        let id = RequestId::generate(&self.contract.catalog().api.request_id_prefix);
        let mut headers = axum::http::HeaderMap::new();
        let (status, body) = self.contract.render_into(&error, &id, "/", &mut headers);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("Error")
        )
        .into_bytes();
        for (name, value) in &headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!(
                "content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&body);
        Some(out)
    }
}

/// The status of an HTTP/1 response head in `buf` that is an error and lacks `id_header`.
/// Allocates nothing: it runs on every response the connection writes.
fn hyper_refusal_status(buf: &[u8], id_header: &str) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.")?;
    let digits = rest.get(2..5)?;
    // hyper answers by itself with these three statuses only; any other head is ours.
    let status = match digits {
        b"400" => 400,
        b"414" => 414,
        b"431" => 431,
        _ => return None,
    };
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    let carries_id = buf[..head_end].split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > id_header.len()
            && line[..id_header.len()].eq_ignore_ascii_case(id_header.as_bytes())
            && line[id_header.len()] == b':'
    });
    (!carries_id).then_some(status)
}

impl<I: AsyncRead + Unpin> AsyncRead for ContractIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> ContractIo<I> {
    /// Writes the replacement out, then reports the `claimed` bytes of hyper's answer as
    /// written: hyper keeps offering the same buffers until told they all went.
    fn write_replacement(
        &mut self,
        cx: &mut Context<'_>,
        claimed: usize,
    ) -> Poll<io::Result<usize>> {
        if let Some((bytes, written)) = &mut self.replacement {
            while *written < bytes.len() {
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
        }
        self.replacement = None;
        Poll::Ready(Ok(claimed))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ContractIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replacement.is_none() {
            match self.replacement_for(buf) {
                Some(bytes) => self.replacement = Some((bytes, 0)),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        self.write_replacement(cx, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper queues a response head as the first slice; its own refusals have no body.
        if self.replacement.is_none() {
            match bufs.first().and_then(|head| self.replacement_for(head)) {
                Some(bytes) => self.replacement = Some((bytes, 0)),
                None => return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            }
        }
        let claimed = bufs.iter().map(|b| b.len()).sum();
        self.write_replacement(cx, claimed)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::hyper_refusal_status;

    #[test]
    fn only_error_heads_without_a_request_id_are_hyper_refusals() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_refusal_status(hyper, "x-request-id"), Some(431));
        let ours = b"HTTP/1.1 404 Not Found\r\nX-Request-Id: req_1\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(hyper_refusal_status(ours, "x-request-id"), None);
        let not_hyper = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_refusal_status(not_hyper, "x-request-id"), None);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_refusal_status(ok, "x-request-id"), None);
        assert_eq!(
            hyper_refusal_status(b"{\"partial\": 1}", "x-request-id"),
            None
        );
        // A request id inside a body does not count: only the head is read.
        let body_only = b"HTTP/1.1 400 Bad Request\r\n\r\nx-request-id: nope";
        assert_eq!(hyper_refusal_status(body_only, "x-request-id"), Some(400));
    }
}
