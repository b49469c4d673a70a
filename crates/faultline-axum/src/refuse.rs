//! [`RefuseOr`]: the response future of a middleware that either lets a request through or
//! refuses it on the spot.
//!
//! Written once here and shared by every guarding middleware (keys, scopes, and the limit and
//! idempotency middlewares to come), so that none of them boxes the inner future or writes its
//! own state machine.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;

use crate::contract::Error;

pin_project! {
    /// Either the inner service's future, or a refusal ready at once.
    ///
    /// # A refusal never calls the inner service
    ///
    /// [`RefuseOr::refuse`] holds the error's response and nothing else: the request it refuses
    /// is dropped without reaching the wrapped service.
    ///
    /// ```
    /// use faultline::Situation;
    /// use faultline_axum::refuse::RefuseOr;
    /// # tokio_test_block_on(async {
    /// let refused = RefuseOr::<std::future::Ready<_>>::refuse(
    ///     faultline_axum::Error::bound(Situation::MissingApiKey),
    /// );
    /// let response = refused.await.unwrap();
    /// // The faultline layer renders it; until then it is a marked 500.
    /// assert_eq!(response.status(), 500);
    /// # });
    /// # fn tokio_test_block_on(f: impl std::future::Future<Output = ()>) {
    /// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    /// # }
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct RefuseOr<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Allowed { #[pin] future: F },
        // Boxed: axum moves the future several times on every request, and an unboxed
        // response (about 130 bytes) would make every allowed request's future that big.
        Refused { response: Option<Box<Response>> },
    }
}

impl<F> RefuseOr<F> {
    /// Lets the request through: the inner service's future, polled in place (not boxed).
    pub fn allow(future: F) -> Self {
        RefuseOr {
            state: State::Allowed { future },
        }
    }

    /// Refuses the request with `error`, which the faultline layer renders.
    pub fn refuse(error: Error) -> Self {
        RefuseOr {
            state: State::Refused {
                response: Some(Box::new(error.into_response())),
            },
        }
    }
}

impl<F> std::fmt::Debug for RefuseOr<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Allowed { .. } => "allowed",
            State::Refused { .. } => "refused",
        };
        f.debug_tuple("RefuseOr").field(&state).finish()
    }
}

impl<F> Future for RefuseOr<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Allowed { future } => future.poll(cx),
            StateProj::Refused { response } => Poll::Ready(Ok(*response
                .take()
                .expect("RefuseOr polled after completion"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline::Situation;

    #[test]
    fn the_future_is_no_bigger_than_the_inner_one_and_a_pointer() {
        type Inner = std::future::Ready<Result<Response, Infallible>>;
        assert!(
            std::mem::size_of::<RefuseOr<Inner>>()
                <= std::mem::size_of::<Inner>() + std::mem::size_of::<usize>(),
            "{} bytes",
            std::mem::size_of::<RefuseOr<Inner>>()
        );
        // A small inner future (a boxed handler's) stays small.
        type Boxed = std::pin::Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;
        assert!(std::mem::size_of::<RefuseOr<Boxed>>() <= 24);
    }

    #[tokio::test]
    async fn an_allowed_request_gets_the_inner_answer() {
        let inner = std::future::ready(Ok::<_, Infallible>(
            (axum::http::StatusCode::IM_A_TEAPOT, "inner").into_response(),
        ));
        let response = RefuseOr::allow(inner).await.unwrap();
        assert_eq!(response.status(), 418);
    }

    #[tokio::test]
    async fn a_refused_request_carries_the_error_for_the_renderer() {
        let response =
            RefuseOr::<std::future::Ready<_>>::refuse(Error::bound(Situation::ScopeDenied))
                .await
                .unwrap();
        let pending = response
            .extensions()
            .get::<crate::contract::Pending>()
            .expect("the refusal is marked for rendering");
        let error = pending.take().expect("the error is there to be rendered");
        assert_eq!(error.plain_situation(), Some(Situation::ScopeDenied));
    }
}
