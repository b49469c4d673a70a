//! Categories: a tree per organisation, nested at most [`MAX_CATEGORY_DEPTH`] levels, deleted
//! whole (with `?cascade=true`) up to [`MAX_CASCADE`] categories at a time.

use axum::extract::State;
use axum::http::StatusCode;
use faultline::Situation;
use faultline_axum::auth::Principal;
use faultline_axum::{Error, Path, Problems, Query, ValidJson};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::store::{CategoryRow, Deleted, InsertRefused, MAX_CASCADE, MAX_CATEGORY_DEPTH};
use super::{AppState, errors, not_blank, now, storage};

/// The body of `POST /v1/categories`.
#[derive(Debug, Deserialize, JsonSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateCategory {
    #[schemars(length(min = 1, max = 100))]
    #[garde(custom(not_blank))]
    name: String,
    #[garde(skip)]
    parent_id: Option<Uuid>,
}

/// A category as the API shows it.
#[derive(Debug, Serialize)]
pub(super) struct Category {
    id: String,
    name: String,
    parent_id: Option<String>,
    created_at: String,
}

impl From<CategoryRow> for Category {
    fn from(row: CategoryRow) -> Self {
        Category {
            id: row.id,
            name: row.name,
            parent_id: row.parent_id,
            created_at: row.created_at,
        }
    }
}

/// `POST /v1/categories`.
///
/// # Names are not blank, trees are not deep
///
/// A name of white space only is refused like a chatbot's (`invalid_payload`, the same garde
/// rule); a category that would sit below level [`MAX_CATEGORY_DEPTH`] is refused with
/// `invalid_payload` on `parent_id`.
pub(super) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ValidJson(input): ValidJson<CreateCategory>,
) -> Result<(StatusCode, axum::Json<Category>), Error> {
    let row = CategoryRow {
        id: Uuid::new_v4().to_string(),
        org_id: principal.org_id.to_string(),
        parent_id: input.parent_id.map(|p| p.to_string()),
        name: input.name.trim().to_owned(),
        created_at: now(),
    };
    let saved = row.clone();
    let inserted = state.store.insert_category(saved).await.map_err(storage)?;
    match inserted {
        Ok(()) => Ok((StatusCode::CREATED, axum::Json(row.into()))),
        // A parent of another organisation is answered like one that does not exist.
        Err(InsertRefused::ParentNotFound) => Err(errors::unprocessable()
            .with_message("A referenced resource does not exist.")
            .into()),
        Err(InsertRefused::TooDeep) => {
            let mut problems = Problems::default();
            problems.field(
                "parent_id",
                "/parent_id",
                format!("Categories nest at most {MAX_CATEGORY_DEPTH} levels deep."),
            );
            Err(Error::invalid(Situation::ValidationFailed, problems))
        }
    }
}

/// `GET /v1/categories/{id}`.
pub(super) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Category>, Error> {
    let found = state
        .store
        .get_category(id.to_string())
        .await
        .map_err(storage)?;
    Ok(axum::Json(principal.scope(found)?.into()))
}

/// The query of `DELETE /v1/categories/{id}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteCategoryQuery {
    cascade: Option<bool>,
}

/// `DELETE /v1/categories/{id}[?cascade=true]`.
///
/// # A delete is whole, bounded, and ends with its request
///
/// The check and the delete are one transaction; a category with more than [`MAX_CASCADE`]
/// descendants is refused with `conflict` (nothing deleted); a request that hits its deadline
/// rolls its delete back.
pub(super) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(query): Query<DeleteCategoryQuery>,
) -> Result<StatusCode, Error> {
    let id = id.to_string();
    let cascade = query.cascade.unwrap_or(false);
    let org_id = principal.org_id.to_string();
    let deleted = state
        .store
        .delete_category(org_id, id, cascade)
        .await
        .map_err(storage)?;
    match deleted {
        // What `Principal::scope` answers for a foreign or unknown id.
        Deleted::NotFound => Err(Error::bound(Situation::ResourceNotFound)),
        Deleted::HasChildren => Err(errors::category_not_empty().into()),
        Deleted::TooLarge => Err(errors::conflict(errors::ConflictDetails {
            current: None,
            requested: None,
            reason: Some(format!(
                "This category has more than {MAX_CASCADE} subcategories in all; delete some of them first."
            )),
        })
        .with_message("This category tree is too large to delete at once.")
        .into()),
        Deleted::Done(_) => Ok(StatusCode::NO_CONTENT),
    }
}
