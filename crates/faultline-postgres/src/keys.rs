//! [`PgKeyStore`]: organisations and API keys in PostgreSQL, shared by every process of an API.

use faultline_axum::StoreError;
use faultline_axum::auth::{
    Inserted, KeyAdmin, KeyDigest, KeyLookup, KeyPosition, KeyRecord, KeyStatus, OrgRecord,
    StatusChange, StoreFuture,
};
use tokio_postgres::Row;

use crate::pool::PgPool;

/// The advisory lock class under which key inserts of one organisation are serialised
/// ("keys" in ASCII); the second half of the lock is the hash of the organisation's id.
const CAP_LOCK_CLASS: i32 = 0x6b65_7973;

const FIND_BY_DIGEST: &str = "
SELECT k.id, k.org_id, k.name, k.display_prefix, k.key_sha256, k.scopes, k.status,
       k.expires_at, k.created_at,
       o.id, o.name, o.active, o.deleted_at, o.created_at, o.tier
FROM api_keys k JOIN orgs o ON o.id = k.org_id
WHERE k.key_sha256 = $1";

const KEY: &str = "
SELECT id, org_id, name, display_prefix, key_sha256, scopes, status, expires_at, created_at
FROM api_keys WHERE org_id = $1 AND id = $2";

const LIST_FIRST: &str = "
SELECT id, org_id, name, display_prefix, key_sha256, scopes, status, expires_at, created_at
FROM api_keys WHERE org_id = $1
ORDER BY created_at, id LIMIT $2";

const LIST_AFTER: &str = "
SELECT id, org_id, name, display_prefix, key_sha256, scopes, status, expires_at, created_at
FROM api_keys WHERE org_id = $1 AND (created_at, id) > ($3, $4)
ORDER BY created_at, id LIMIT $2";

const CAP_LOCK: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";

const HELD: &str = "SELECT COUNT(*) FROM api_keys WHERE org_id = $1 AND status <> 'revoked'";

const INSERT_KEY: &str = "
INSERT INTO api_keys
    (id, org_id, name, display_prefix, key_sha256, scopes, status, expires_at, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// The status change as one statement: the check and the update cannot be separated.
const SET_STATUS: &str = "
UPDATE api_keys SET status = $3
WHERE org_id = $1 AND id = $2 AND (status = $3 OR status = ANY($4))
RETURNING id, org_id, name, display_prefix, key_sha256, scopes, status, expires_at, created_at";

const INSERT_ORG: &str = "
INSERT INTO orgs (id, name, active, deleted_at, created_at, tier)
VALUES ($1, $2, $3, $4, $5, $6)";

const ORG_BY_NAME: &str =
    "SELECT id, name, active, deleted_at, created_at, tier FROM orgs WHERE name = $1";

const SET_ORG_ACTIVE: &str = "UPDATE orgs SET active = $2 WHERE id = $1";

const SET_ORG_TIER: &str = "UPDATE orgs SET tier = $2 WHERE id = $1";

const COUNT_ORGS: &str = "SELECT COUNT(*) FROM orgs";

/// Organisations and API keys in the tables `orgs` and `api_keys` (created by
/// [`crate::migrate()`]). Only the SHA-256 of each key is written.
///
/// # The per-organisation cap holds across processes
///
/// [`KeyAdmin::insert_key`] counts an organisation's unrevoked keys and inserts the new one in
/// a transaction that first takes a transaction-level advisory lock on the organisation, so
/// two processes creating keys for one organisation at once never both pass the cap.
///
/// # A status change is one statement
///
/// [`KeyAdmin::set_key_status`] is a single `UPDATE … WHERE status allows it RETURNING`: no
/// other writer can slip between the check and the change.
///
/// # Outages are unavailable, within the pool's deadline
///
/// Every statement runs through the [`PgPool`], so an unreachable or stalled server gives
/// [`StoreError::is_unavailable`] (the catalog's 503 with `Retry-After`) within the statement
/// deadline; the pool reconnects by itself when the server is back.
#[derive(Debug, Clone)]
pub struct PgKeyStore {
    pool: PgPool,
}

impl PgKeyStore {
    /// A store on `pool`; the schema must be migrated ([`crate::migrate()`]).
    pub fn new(pool: PgPool) -> Self {
        PgKeyStore { pool }
    }

    /// The pool it uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Data in the tables that this crate did not write.
#[derive(Debug)]
struct Corrupt(&'static str);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unreadable key or organisation row: {}", self.0)
    }
}

impl std::error::Error for Corrupt {}

fn key_from_row(row: &Row) -> Result<KeyRecord, StoreError> {
    let get = |e| StoreError::new(e);
    let id: String = row.try_get(0).map_err(get)?;
    let org_id: String = row.try_get(1).map_err(get)?;
    let digest: &[u8] = row.try_get(4).map_err(get)?;
    let digest: [u8; 32] = digest
        .try_into()
        .map_err(|_| StoreError::new(Corrupt("a key digest is 32 bytes")))?;
    let status: &str = row.try_get(6).map_err(get)?;
    // The table's CHECK allows only known statuses; anything else reads as revoked, the
    // safe reading.
    let status = KeyStatus::parse(status).unwrap_or(KeyStatus::Revoked);
    let mut key = KeyRecord::new(&id, &org_id, KeyDigest(digest), status);
    key.name = row.try_get(2).map_err(get)?;
    key.display_prefix = row.try_get(3).map_err(get)?;
    key.scopes = row.try_get(5).map_err(get)?;
    key.expires_at = row.try_get(7).map_err(get)?;
    key.created_at = row.try_get(8).map_err(get)?;
    Ok(key)
}

fn org_from_row(row: &Row, first: usize) -> Result<OrgRecord, StoreError> {
    let get = |e| StoreError::new(e);
    let id: String = row.try_get(first).map_err(get)?;
    let name: String = row.try_get(first + 1).map_err(get)?;
    let created_at: i64 = row.try_get(first + 4).map_err(get)?;
    let mut org = OrgRecord::new(&id, &name, created_at);
    org.active = row.try_get(first + 2).map_err(get)?;
    org.deleted_at = row.try_get(first + 3).map_err(get)?;
    org.tier = row.try_get(first + 5).map_err(get)?;
    Ok(org)
}

fn count(row: &Row) -> Result<i64, StoreError> {
    row.try_get(0).map_err(StoreError::new)
}

impl PgKeyStore {
    async fn find_now(
        &self,
        digest: KeyDigest,
    ) -> Result<Option<(KeyRecord, OrgRecord)>, StoreError> {
        let digest: &[u8] = &digest.0;
        let row = self
            .pool
            .get()
            .await?
            .query_opt(FIND_BY_DIGEST, &[&digest])
            .await?;
        row.map(|row| Ok((key_from_row(&row)?, org_from_row(&row, 9)?)))
            .transpose()
    }

    async fn insert_key_now(
        &self,
        key: KeyRecord,
        max_per_org: usize,
    ) -> Result<Inserted, StoreError> {
        let mut conn = self.pool.get().await?;
        let mut tx = conn.transaction().await?;
        tx.execute(CAP_LOCK, &[&CAP_LOCK_CLASS, &key.org_id])
            .await?;
        let held = match tx.query_opt(HELD, &[&key.org_id]).await? {
            Some(row) => count(&row)?,
            None => 0,
        };
        if usize::try_from(held).unwrap_or(usize::MAX) >= max_per_org {
            return Ok(Inserted::LimitReached);
        }
        let digest: &[u8] = &key.digest.0;
        tx.execute(
            INSERT_KEY,
            &[
                &key.id,
                &key.org_id,
                &key.name,
                &key.display_prefix,
                &digest,
                &key.scopes,
                &key.status.as_str(),
                &key.expires_at,
                &key.created_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Inserted::Stored)
    }

    async fn key_now(&self, org_id: &str, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(KEY, &[&org_id, &key_id])
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_now(
        &self,
        org_id: &str,
        after: Option<KeyPosition>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut conn = self.pool.get().await?;
        let rows = match after {
            None => conn.query(LIST_FIRST, &[&org_id, &limit]).await?,
            Some(after) => {
                conn.query(LIST_AFTER, &[&org_id, &limit, &after.created_at, &after.id])
                    .await?
            }
        };
        rows.iter().map(key_from_row).collect()
    }

    async fn set_status_now(
        &self,
        org_id: &str,
        key_id: &str,
        from: Vec<&'static str>,
        to: KeyStatus,
    ) -> Result<StatusChange, StoreError> {
        let mut conn = self.pool.get().await?;
        let changed = conn
            .query_opt(SET_STATUS, &[&org_id, &key_id, &to.as_str(), &from])
            .await?;
        if let Some(row) = changed {
            return Ok(StatusChange::Changed(key_from_row(&row)?));
        }
        match conn.query_opt(KEY, &[&org_id, &key_id]).await? {
            Some(row) => Ok(StatusChange::Refused(key_from_row(&row)?)),
            None => Ok(StatusChange::NotFound),
        }
    }

    async fn insert_org_now(&self, org: OrgRecord) -> Result<(), StoreError> {
        self.pool
            .get()
            .await?
            .execute(
                INSERT_ORG,
                &[
                    &org.id,
                    &org.name,
                    &org.active,
                    &org.deleted_at,
                    &org.created_at,
                    &org.tier,
                ],
            )
            .await?;
        Ok(())
    }

    async fn org_by_name_now(&self, name: &str) -> Result<Option<OrgRecord>, StoreError> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(ORG_BY_NAME, &[&name])
            .await?;
        row.map(|row| org_from_row(&row, 0)).transpose()
    }

    async fn update_org(
        &self,
        sql: &'static str,
        org_id: &str,
        value: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Result<bool, StoreError> {
        let changed = self
            .pool
            .get()
            .await?
            .execute(sql, &[&org_id, value])
            .await?;
        Ok(changed > 0)
    }

    async fn count_orgs_now(&self) -> Result<u64, StoreError> {
        let row = self.pool.get().await?.query_opt(COUNT_ORGS, &[]).await?;
        let n = match row {
            Some(row) => count(&row)?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

impl KeyLookup for PgKeyStore {
    fn find_by_digest(&self, digest: KeyDigest) -> StoreFuture<'_, Option<(KeyRecord, OrgRecord)>> {
        Box::pin(self.find_now(digest))
    }
}

impl KeyAdmin for PgKeyStore {
    fn insert_key(&self, key: KeyRecord, max_per_org: usize) -> StoreFuture<'_, Inserted> {
        Box::pin(self.insert_key_now(key, max_per_org))
    }

    fn key(&self, org_id: &str, key_id: &str) -> StoreFuture<'_, Option<KeyRecord>> {
        let (org_id, key_id) = (org_id.to_owned(), key_id.to_owned());
        Box::pin(async move { self.key_now(&org_id, &key_id).await })
    }

    fn list_keys(
        &self,
        org_id: &str,
        after: Option<KeyPosition>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<KeyRecord>> {
        let org_id = org_id.to_owned();
        Box::pin(async move { self.list_now(&org_id, after, limit).await })
    }

    fn set_key_status(
        &self,
        org_id: &str,
        key_id: &str,
        from: &[KeyStatus],
        to: KeyStatus,
    ) -> StoreFuture<'_, StatusChange> {
        let (org_id, key_id) = (org_id.to_owned(), key_id.to_owned());
        let from: Vec<&'static str> = from.iter().map(|s| s.as_str()).collect();
        Box::pin(async move { self.set_status_now(&org_id, &key_id, from, to).await })
    }

    fn insert_org(&self, org: OrgRecord) -> StoreFuture<'_, ()> {
        Box::pin(self.insert_org_now(org))
    }

    fn org_by_name(&self, name: &str) -> StoreFuture<'_, Option<OrgRecord>> {
        let name = name.to_owned();
        Box::pin(async move { self.org_by_name_now(&name).await })
    }

    fn set_org_active(&self, org_id: &str, active: bool) -> StoreFuture<'_, bool> {
        let org_id = org_id.to_owned();
        Box::pin(async move { self.update_org(SET_ORG_ACTIVE, &org_id, &active).await })
    }

    fn count_orgs(&self) -> StoreFuture<'_, u64> {
        Box::pin(self.count_orgs_now())
    }

    fn set_org_tier(&self, org_id: &str, tier: Option<&str>) -> StoreFuture<'_, bool> {
        let org_id = org_id.to_owned();
        let tier = tier.map(str::to_owned);
        Box::pin(async move { self.update_org(SET_ORG_TIER, &org_id, &tier).await })
    }
}
