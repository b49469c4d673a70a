//! [`Metrics`]: what the contract answered, in the Prometheus text format.
//!
//! An error contract is only kept if someone can see it being broken. One [`Metrics`] is
//! attached to a [`Contract`](crate::Contract) with
//! [`Contract::with_metrics`](crate::Contract::with_metrics); from then on:
//!
//! - every error the one renderer produces is counted by catalog code and status
//!   (`faultline_errors_total`), whoever raised it: a handler, an extractor, a middleware, the
//!   faultline layer or the [`ContractListener`](crate::ContractListener);
//! - every response that leaves the faultline layer is counted by status
//!   (`faultline_responses_total`) and its latency, from the request entering the layer to the
//!   head of the response, goes into a histogram (`faultline_request_duration_seconds`);
//! - store failures behind a response are counted by kind (`faultline_store_errors_total`);
//! - limiters report their decisions by policy and outcome
//!   (`faultline_limiter_decisions_total`) through [`Metrics::limiter_counter`].
//!
//! [`Metrics::render`] writes them all in the Prometheus text exposition format (version
//! 0.0.4); [`Metrics::handler`] serves it, e.g. at `GET /metrics`. Counting costs a few relaxed
//! atomic additions: every series is created up front or once per policy, never per request.
//!
//! # Every code of the catalog has a series from the start
//!
//! A code that was never answered shows `0`, so a rate or an alert on it works before its
//! first occurrence.
//!
//! ```
//! let catalog = faultline::Catalog::from_toml_str(r#"
//! [api]
//! name = "Demo"
//! profile = "flat"
//! code_style = "snake_case"
//! [[errors]]
//! code = "not_found"
//! status = 404
//! category = "Not found"
//! title = "Not found"
//! message = "Nothing here."
//! when = "Always."
//! recovery = "Look elsewhere."
//! retry = "never"
//! "#).unwrap();
//! let metrics = faultline_axum::Metrics::new(&catalog);
//! assert!(metrics.render().contains("faultline_errors_total{code=\"not_found\",status=\"404\"} 0\n"));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use faultline::Catalog;

/// The upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The counters of one served contract; see the [module docs](self).
#[derive(Debug)]
pub struct Metrics {
    /// Every code of the catalog with its status, in catalog order.
    codes: Vec<(String, u16)>,
    /// Code → position in `codes` and `errors`.
    by_code: HashMap<String, usize>,
    errors: Box<[AtomicU64]>,
    /// Errors rendered for a code the catalog does not hold (a contract served with another
    /// catalog than the code was written for); counted, never dropped.
    unknown_code: AtomicU64,
    /// Responses by status, 100–599 (index = status − 100).
    responses: Box<[AtomicU64]>,
    latency: Histogram,
    store_unavailable: AtomicU64,
    store_failed: AtomicU64,
    limiter: RwLock<BTreeMap<(String, Outcome), Arc<AtomicU64>>>,
}

/// A limiter decision, as counted by [`Metrics::limiter_counter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The policy let the request through.
    Admitted,
    /// The policy refused the request.
    Refused,
    /// The limiter's store failed and the request was let through (fail-open).
    FailedOpen,
    /// The limiter's store failed and the request was refused (fail-closed).
    FailedClosed,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::Refused => "refused",
            Outcome::FailedOpen => "failed_open",
            Outcome::FailedClosed => "failed_closed",
        }
    }
}

/// A counter handed out once (e.g. per limiter policy) and then bumped without any lookup.
#[derive(Debug, Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn increment(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Histogram {
    /// One per bucket of [`LATENCY_BUCKETS`], then one for `+Inf` (not cumulative).
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

fn zeros(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Metrics {
    /// Counters for every code of `catalog`, all at zero.
    pub fn new(catalog: &Catalog) -> Self {
        let codes: Vec<(String, u16)> = catalog
            .errors()
            .iter()
            .map(|spec| (spec.code.clone(), spec.status))
            .collect();
        let by_code = codes
            .iter()
            .enumerate()
            .map(|(i, (code, _))| (code.clone(), i))
            .collect();
        Metrics {
            errors: zeros(codes.len()),
            codes,
            by_code,
            unknown_code: AtomicU64::new(0),
            responses: zeros(500),
            latency: Histogram {
                buckets: zeros(LATENCY_BUCKETS.len() + 1),
                sum_nanos: AtomicU64::new(0),
                count: AtomicU64::new(0),
            },
            store_unavailable: AtomicU64::new(0),
            store_failed: AtomicU64::new(0),
            limiter: RwLock::new(BTreeMap::new()),
        }
    }

    /// The position of `code` among the catalog's codes, for [`Metrics::error_at`].
    pub(crate) fn code_index(&self, code: &str) -> Option<usize> {
        self.by_code.get(code).copied()
    }

    /// Counts one error answered with `code`.
    pub fn error(&self, code: &str) {
        match self.code_index(code) {
            Some(index) => self.error_at(index),
            None => {
                self.unknown_code.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts one error answered with the code at `index` (from [`Metrics::code_index`]).
    pub(crate) fn error_at(&self, index: usize) {
        if let Some(counter) = self.errors.get(index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many errors were answered with `code` so far.
    pub fn errors_answered(&self, code: &str) -> u64 {
        self.code_index(code)
            .and_then(|i| self.errors.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts one response with `status` that took `elapsed`.
    pub fn response(&self, status: u16, elapsed: Duration) {
        if let Some(counter) = status
            .checked_sub(100)
            .and_then(|i| self.responses.get(usize::from(i)))
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.latency.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.latency.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many responses with `status` left the faultline layer so far.
    pub fn responses_sent(&self, status: u16) -> u64 {
        status
            .checked_sub(100)
            .and_then(|i| self.responses.get(usize::from(i)))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts one store failure behind a response: `unavailable` (busy, unreachable, timed
    /// out: answered 503) or not (a defect: answered 500).
    pub fn store_error(&self, unavailable: bool) {
        let counter = if unavailable {
            &self.store_unavailable
        } else {
            &self.store_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counter of `policy`'s decisions with `outcome`, created at zero the first time it is
    /// asked for. A limiter asks once per policy and outcome and keeps the [`Counter`].
    pub fn limiter_counter(&self, policy: &str, outcome: Outcome) -> Counter {
        let key = (policy.to_owned(), outcome);
        if let Some(found) = self
            .limiter
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Counter(Arc::clone(found));
        }
        let mut map = self.limiter.write().unwrap_or_else(PoisonError::into_inner);
        Counter(Arc::clone(map.entry(key).or_default()))
    }

    /// Every series in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096 + 64 * self.codes.len());
        header(
            &mut out,
            "faultline_errors_total",
            "counter",
            "Errors answered, by catalog code and HTTP status.",
        );
        for ((code, status), count) in self.codes.iter().zip(self.errors.iter()) {
            let _ = writeln!(
                out,
                "faultline_errors_total{{code=\"{}\",status=\"{status}\"}} {}",
                escape(code),
                count.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "faultline_errors_unknown_code_total",
            "counter",
            "Errors rendered with a code the served catalog does not hold.",
        );
        let _ = writeln!(
            out,
            "faultline_errors_unknown_code_total {}",
            self.unknown_code.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "faultline_responses_total",
            "counter",
            "Responses that left the faultline layer, by HTTP status.",
        );
        for (i, count) in self.responses.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            if count > 0 {
                let _ = writeln!(
                    out,
                    "faultline_responses_total{{status=\"{}\"}} {count}",
                    i + 100
                );
            }
        }
        header(
            &mut out,
            "faultline_request_duration_seconds",
            "histogram",
            "Time from a request entering the faultline layer to its response head.",
        );
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(self.latency.buckets.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "faultline_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.latency.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "faultline_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = Duration::from_nanos(self.latency.sum_nanos.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "faultline_request_duration_seconds_sum {}",
            sum.as_secs_f64()
        );
        let _ = writeln!(out, "faultline_request_duration_seconds_count {cumulative}");
        header(
            &mut out,
            "faultline_store_errors_total",
            "counter",
            "Store failures behind a response, by kind (unavailable: 503; failed: 500).",
        );
        let _ = writeln!(
            out,
            "faultline_store_errors_total{{kind=\"unavailable\"}} {}",
            self.store_unavailable.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "faultline_store_errors_total{{kind=\"failed\"}} {}",
            self.store_failed.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "faultline_limiter_decisions_total",
            "counter",
            "Rate, quota and concurrency decisions, by policy and outcome.",
        );
        for ((policy, outcome), count) in self
            .limiter
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "faultline_limiter_decisions_total{{policy=\"{}\",outcome=\"{}\"}} {}",
                escape(policy),
                outcome.as_str(),
                count.load(Ordering::Relaxed)
            );
        }
        out
    }

    /// An axum handler that answers [`Metrics::render`]'s text:
    /// `router.route("/metrics", get(metrics.handler()))`.
    pub fn handler(
        self: &Arc<Self>,
    ) -> impl Fn() -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
        let metrics = Arc::clone(self);
        move || {
            let mut response = metrics.render().into_response();
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
            std::future::ready(response)
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format wants it: backslash, double quote and new line escaped.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::from_toml_str(include_str!("../../../examples/catalogs/chatbots.toml"))
            .expect("valid")
    }

    #[test]
    fn errors_are_counted_by_code_with_their_status() {
        let metrics = Metrics::new(&catalog());
        metrics.error("not_found");
        metrics.error("not_found");
        metrics.error("rate_limited");
        metrics.error("no_such_code");
        let text = metrics.render();
        assert!(text.contains("faultline_errors_total{code=\"not_found\",status=\"404\"} 2\n"));
        assert!(text.contains("faultline_errors_total{code=\"rate_limited\",status=\"429\"} 1\n"));
        assert!(text.contains("faultline_errors_unknown_code_total 1\n"));
        assert_eq!(metrics.errors_answered("not_found"), 2);
    }

    #[test]
    fn the_histogram_is_cumulative_and_counts_every_response() {
        let metrics = Metrics::new(&catalog());
        metrics.response(200, Duration::from_micros(300));
        metrics.response(200, Duration::from_millis(3));
        metrics.response(503, Duration::from_secs(60));
        let text = metrics.render();
        assert!(text.contains("faultline_responses_total{status=\"200\"} 2\n"));
        assert!(text.contains("faultline_responses_total{status=\"503\"} 1\n"));
        assert!(text.contains("faultline_request_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("faultline_request_duration_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("faultline_request_duration_seconds_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("faultline_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("faultline_request_duration_seconds_count 3\n"));
        assert!(text.contains("faultline_request_duration_seconds_sum 60.0033\n"));
    }

    #[test]
    fn limiter_counters_are_shared_per_policy_and_outcome() {
        let metrics = Metrics::new(&catalog());
        let a = metrics.limiter_counter("org \"minute\"", Outcome::Refused);
        let b = metrics.limiter_counter("org \"minute\"", Outcome::Refused);
        a.increment();
        b.increment();
        assert_eq!(a.get(), 2);
        assert!(metrics.render().contains(
            "faultline_limiter_decisions_total{policy=\"org \\\"minute\\\"\",outcome=\"refused\"} 2\n"
        ));
    }

    #[test]
    fn every_sample_line_is_well_formed() {
        let metrics = Metrics::new(&catalog());
        metrics.response(201, Duration::from_millis(1));
        metrics.store_error(true);
        let text = metrics.render();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(name.starts_with("faultline_"), "{line}");
            assert_eq!(
                name.matches('{').count(),
                name.matches('}').count(),
                "{line}"
            );
        }
        assert!(text.contains("faultline_store_errors_total{kind=\"unavailable\"} 1\n"));
    }
}
