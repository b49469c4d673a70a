//! API key verification on a cache hit, beside its parts (checksum, SHA-256).
#![allow(missing_docs)] // criterion_group! generates an undocumented public function
#![allow(clippy::expect_used)] // a broken fixture should stop the benchmark

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use faultline_axum::auth::{
    Authenticator, KeyDigest, KeyFormat, KeyManager, MemoryKeyStore, NewKey,
};

fn verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let format = KeyFormat::new("cb", "live").expect("valid format");
    let store = Arc::new(MemoryKeyStore::new());
    let auth = Arc::new(Authenticator::new(format.clone(), store.clone()).with_cache_ttl(3600));
    let keys = KeyManager::new(Arc::clone(&auth), store);
    let key = runtime.block_on(async {
        let org = keys.ensure_org("bench").await.expect("org");
        let new = NewKey::new("bench", ["chatbots:read", "chatbots:write"]);
        let (_, key) = keys.create_key(&org.id, new).await.expect("key");
        // The first verification fills the cache.
        auth.verify(key.expose()).await.expect("valid key");
        key
    });
    let raw = key.expose().to_owned();
    c.bench_function("verify/cache_hit", |b| {
        b.iter(|| {
            auth.verify_cached(black_box(&raw))
                .expect("cached")
                .expect("valid")
        });
    });
    c.bench_function("verify/checksum_only", |b| {
        b.iter(|| format.check(black_box(&raw)));
    });
    c.bench_function("verify/sha256_only", |b| {
        b.iter(|| KeyDigest::of(black_box(&raw)));
    });
}

criterion_group!(benches, verify);
criterion_main!(benches);
