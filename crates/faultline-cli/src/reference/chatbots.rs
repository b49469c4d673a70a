//! Chatbots: create, read, list, change and delete, each state change decided and written in
//! one transaction.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use faultline_axum::auth::Principal;
use faultline_axum::idempotency::IdempotencyClaim;
use faultline_axum::{Error, Path, Query, ValidJson};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::store::{ChatbotRow, Record};
use super::{AppState, cursor, errors, not_blank, now, storage};

/// A chatbot as the API shows it.
#[derive(Debug, Serialize)]
pub(super) struct Chatbot {
    id: String,
    name: String,
    status: String,
    created_at: String,
    updated_at: String,
}

impl From<ChatbotRow> for Chatbot {
    fn from(row: ChatbotRow) -> Self {
        Chatbot {
            id: row.id,
            name: row.name,
            status: row.status,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The states a chatbot can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Status {
    Draft,
    Active,
    Paused,
    Archived,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Active => "active",
            Status::Paused => "paused",
            Status::Archived => "archived",
        }
    }

    /// The state machine: archived is terminal; a chatbot never goes back to draft.
    fn can_become(from: &str, to: Status) -> bool {
        match (from, to) {
            (f, t) if f == t.as_str() => true,
            ("draft", Status::Active | Status::Paused | Status::Archived) => true,
            ("active", Status::Paused | Status::Archived) => true,
            ("paused", Status::Active | Status::Archived) => true,
            _ => false,
        }
    }
}

// Types and lengths are in the schema; the rule that a name is not blank is garde's. Both
// land in the same `invalid_payload` details.
/// The body of `POST /v1/chatbots`.
#[derive(Debug, Deserialize, JsonSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateChatbot {
    #[schemars(length(min = 1, max = 100))]
    #[garde(custom(not_blank))]
    name: String,
    #[garde(skip)]
    status: Option<Status>,
}

/// The body of `PATCH /v1/chatbots/{id}`.
#[derive(Debug, Deserialize, JsonSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateChatbot {
    #[schemars(length(min = 1, max = 100))]
    #[garde(inner(custom(not_blank)))]
    name: Option<String>,
    #[garde(skip)]
    status: Option<Status>,
}

/// The query of `GET /v1/chatbots`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    #[schemars(range(min = 1, max = 100))]
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Why a change of a chatbot was not written (decided inside the store's transaction).
#[derive(Debug)]
enum Refused {
    /// Not in the key's organisation, or no such id.
    NotFound,
    /// Deleted.
    Gone,
    /// The state machine does not allow it.
    Transition { current: String, requested: Status },
}

impl From<Refused> for Error {
    fn from(refused: Refused) -> Self {
        match refused {
            // What `Principal::scope` answers for a foreign or unknown id.
            Refused::NotFound => Error::bound(faultline::Situation::ResourceNotFound),
            Refused::Gone => gone(),
            Refused::Transition { current, requested } => {
                errors::conflict(errors::ConflictDetails {
                    reason: Some(format!(
                        "A chatbot cannot go from {current} to {}.",
                        requested.as_str()
                    )),
                    current: Some(current),
                    requested: Some(requested.as_str().to_owned()),
                })
                .with_message("This status change is not allowed.")
                .into()
            }
        }
    }
}

fn gone() -> Error {
    errors::gone()
        .with_message("This chatbot was deleted.")
        .into()
}

/// A live chatbot of the principal's organisation, from what the store found.
fn live(principal: &Principal, found: Option<ChatbotRow>) -> Result<ChatbotRow, Refused> {
    let row = found
        .filter(|row| principal.owns(row))
        .ok_or(Refused::NotFound)?;
    if row.deleted_at.is_some() {
        return Err(Refused::Gone);
    }
    Ok(row)
}

/// `POST /v1/chatbots`.
///
/// # The chatbot and its idempotency record commit together
///
/// With an `Idempotency-Key`, the answer is recorded in the same transaction as the row: a
/// failure after the insert leaves neither, and a claim lost meanwhile (its lease ended and a
/// retry took it over) rolls the insert back and answers `idempotency_in_progress`.
pub(super) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    claim: Option<IdempotencyClaim>,
    ValidJson(input): ValidJson<CreateChatbot>,
) -> Result<Response, Error> {
    let ts = now();
    let row = ChatbotRow {
        id: Uuid::new_v4().to_string(),
        org_id: principal.org_id.to_string(),
        name: input.name.trim().to_owned(),
        status: input.status.unwrap_or(Status::Draft).as_str().to_owned(),
        created_at: ts.clone(),
        updated_at: ts,
        deleted_at: None,
    };
    let saved = row.clone();
    let body = serde_json::to_vec(&Chatbot::from(row)).map_err(Error::internal)?;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let in_store = state.records_in_store;
    let record = claim.as_ref().filter(|_| in_store).map(|claim| Record {
        token: claim.token().clone(),
        response: claim.response(StatusCode::CREATED, &headers, body.clone()),
        now: claim.now_millis(),
        retention: claim.retention(),
    });
    let recorded = state
        .store
        .create_chatbot(saved, record)
        .await
        .map_err(storage)?;
    if !recorded {
        // Rolled back: another request's record holds the key, and the layer answers what it
        // means (a replay, a conflict, or in progress) instead of this.
        if let Some(claim) = &claim {
            claim.superseded();
        }
        return Err(Error::bound(faultline::Situation::IdempotencyInProgress)
            .with_header("Retry-After", "1"));
    }
    if let Some(claim) = claim.as_ref().filter(|_| in_store) {
        claim.completed();
    }
    Ok((StatusCode::CREATED, headers, body).into_response())
}

/// `GET /v1/chatbots/{id}`.
pub(super) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Chatbot>, Error> {
    let found = state
        .store
        .get_chatbot(id.to_string())
        .await
        .map_err(storage)?;
    Ok(axum::Json(live(&principal, found)?.into()))
}

/// `PATCH /v1/chatbots/{id}`.
///
/// # A change never undoes a concurrent one
///
/// The row is read, checked (organisation, not deleted, allowed transition) and written in one
/// transaction: a PATCH racing a DELETE either lands before it or answers `gone`; a PATCH
/// racing an archive either lands before it or answers `conflict`.
pub(super) async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    ValidJson(input): ValidJson<UpdateChatbot>,
) -> Result<axum::Json<Chatbot>, Error> {
    let ts = now();
    let changed = state
        .store
        .change_chatbot(id.to_string(), move |found| {
            let mut row = live(&principal, found)?;
            if let Some(status) = input.status {
                if !Status::can_become(&row.status, status) {
                    return Err(Refused::Transition {
                        current: row.status,
                        requested: status,
                    });
                }
                row.status = status.as_str().to_owned();
            }
            if let Some(name) = input.name {
                row.name = name.trim().to_owned();
            }
            row.updated_at = ts;
            Ok(row)
        })
        .await
        .map_err(storage)??;
    Ok(axum::Json(changed.into()))
}

/// `DELETE /v1/chatbots/{id}`: marks the chatbot deleted (it answers `gone` from then on).
pub(super) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, Error> {
    let ts = now();
    state
        .store
        .change_chatbot(id.to_string(), move |found| {
            let mut row = live(&principal, found)?;
            row.deleted_at = Some(ts.clone());
            row.updated_at = ts;
            Ok::<_, Refused>(row)
        })
        .await
        .map_err(storage)??;
    Ok(StatusCode::NO_CONTENT)
}

/// A page of chatbots.
#[derive(Debug, Serialize)]
pub(super) struct Page {
    data: Vec<Chatbot>,
    next_cursor: Option<String>,
}

/// `GET /v1/chatbots`: live chatbots of the organisation, oldest first, a page at a time.
pub(super) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<Page>, Error> {
    let limit = query.limit.unwrap_or(20);
    let after = match &query.cursor {
        None => None,
        Some(cursor) => {
            let position = cursor::open(
                &state.cursor_key,
                &principal.org_id,
                cursor,
                state.auth.clock().now(),
                2,
            )
            .ok_or_else(errors::invalid_cursor)?;
            let [created_at, id]: [String; 2] =
                position.try_into().map_err(|_| errors::invalid_cursor())?;
            Some((created_at, id))
        }
    };
    // One extra row tells whether another page follows.
    let mut rows = state
        .store
        .list_chatbots(principal.org_id.to_string(), after, limit + 1)
        .await
        .map_err(storage)?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|last| {
            cursor::sign(
                &state.cursor_key,
                &principal.org_id,
                &[&last.created_at, &last.id],
                state.auth.clock().now(),
            )
        })
    } else {
        None
    };
    Ok(axum::Json(Page {
        data: rows.into_iter().map(Chatbot::from).collect(),
        next_cursor,
    }))
}
