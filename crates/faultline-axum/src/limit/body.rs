//! [`LeaseGuard`] and [`LeaseBody`]: a concurrency lease is given back when the response body
//! ends, or when whatever holds it is dropped (a client gone, a panic, a timeout).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

use super::store::{Lease, LimitStore};

/// Holds a lease and gives it back exactly once: on [`LeaseGuard::release`] or on drop.
///
/// # Dropped means released
///
/// Dropping the guard releases the lease: at once when the store can
/// ([`LimitStore::release_ready`]), else on a task of the current tokio runtime, bounded by
/// the layer's deadline. Without a runtime the lease lapses after its time to live.
pub struct LeaseGuard {
    store: Arc<dyn LimitStore>,
    lease: Option<Lease>,
    deadline: Duration,
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl LeaseGuard {
    /// Guards `lease` of `store`; a release through the store's future gives up after
    /// `deadline`.
    pub fn new(store: Arc<dyn LimitStore>, lease: Lease, deadline: Duration) -> Self {
        LeaseGuard {
            store,
            lease: Some(lease),
            deadline,
        }
    }

    /// Gives the lease back now (a second call does nothing).
    pub fn release(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if self.store.release_ready(&lease) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let store = Arc::clone(&self.store);
                let deadline = self.deadline;
                handle.spawn(async move {
                    match tokio::time::timeout(deadline, store.release(lease)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(cause = %e, "limit lease not released; it will lapse");
                        }
                        Err(_) => tracing::warn!("limit lease release timed out; it will lapse"),
                    }
                });
            }
            Err(_) => tracing::warn!("no runtime to release a limit lease; it will lapse"),
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.release();
    }
}

pin_project! {
    /// A response body holding a lease until its last frame (or an error, or its drop).
    pub struct LeaseBody {
        #[pin]
        inner: Body,
        guard: Option<LeaseGuard>,
    }
}

impl LeaseBody {
    /// `inner`, releasing `guard` when it ends.
    pub fn new(inner: Body, guard: LeaseGuard) -> Self {
        LeaseBody {
            inner,
            guard: Some(guard),
        }
    }
}

impl HttpBody for LeaseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if ended {
            *this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
