//! [`Path`]: path parameters whose parse failure is the catalog's invalid path id.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use faultline::Situation;
use serde::de::DeserializeOwned;

use crate::contract::Error;

/// Path parameters; a value that does not parse (e.g. an id that is not a UUID) is the
/// catalog's invalid path id.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|_| Error::bound(Situation::InvalidPathId))
    }
}
