//! The limit layer and the in-memory limit store.
#![cfg(feature = "limit")]

use faultline_axum::limit::{MemoryLimitStore, suite};

#[tokio::test]
async fn the_memory_store_passes_the_suite() {
    suite::all(&MemoryLimitStore::new()).await;
}

#[tokio::test]
async fn the_memory_store_passes_the_suite_with_one_shard() {
    let store =
        MemoryLimitStore::with_shards(1, std::sync::Arc::new(faultline::clock::SystemClock));
    suite::all(&store).await;
}

#[tokio::test]
async fn the_store_trait_is_dyn_compatible() {
    let store: std::sync::Arc<dyn faultline_axum::limit::LimitStore> =
        std::sync::Arc::new(MemoryLimitStore::new());
    suite::all(&*store).await;
    suite::all(&store).await;
}
