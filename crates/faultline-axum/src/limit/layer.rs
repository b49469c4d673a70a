//! [`LimitLayer`]: every request of a caller is checked against its policies as one decision;
//! every limited response reports them in headers, and a refusal is the catalog's 429.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderName, HeaderValue, Request};
use axum::response::{IntoResponse, Response};
use faultline::limits::{
    self, Kind, LegacyHeaders, Per, Policy, PolicyItem, StateItem, ceil_secs, iso8601,
};
use faultline::{Catalog, DetailsShape, Situation};
use pin_project_lite::pin_project;
use serde_json::{Map, Value};
use smallvec::SmallVec;
use tower::{Layer, Service};

use super::body::{LeaseBody, LeaseGuard};
use super::store::{Check, Decision, LimitStore, StoreError};
use super::subject::{Caller, Subject};
use crate::contract::{Error, Pending};
use crate::metrics::{Counter, Metrics, Outcome};

/// How long the layer waits for the store before answering as [`FailureMode`] says: 250 ms.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(250);

/// What the layer does when the store fails or misses its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailureMode {
    /// Admit the request without limits and log at warn (the default: an outage of the limit
    /// store does not take the API down).
    #[default]
    Open,
    /// Refuse with the catalog's service-unavailable code and `Retry-After`.
    Closed,
}

/// The units a request spends on quota policies, when an outer layer knows it (default 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaCost(pub u64);

/// The names of the headers the layer writes, as sent and as `http` spells them.
const RATELIMIT_POLICY: (&str, HeaderName) = (
    "RateLimit-Policy",
    HeaderName::from_static("ratelimit-policy"),
);
const RATELIMIT: (&str, HeaderName) = ("RateLimit", HeaderName::from_static("ratelimit"));

/// Limits every request of the wrapped routes by the catalog's `[limits]` policies.
///
/// Add it with `Router::route_layer` **inside** the auth layer (a later `route_layer` call
/// wraps an earlier one), so the [`crate::auth::Principal`] is known; the faultline layer
/// renders its refusals.
///
/// # Headers on every limited response
///
/// Every response to a caller the [`Subject`] names carries `RateLimit-Policy` and
/// `RateLimit` (one member per policy applied), and `X-RateLimit-Limit/Remaining/Reset` for the
/// policy closest to refusing when the catalog sets `legacy_headers`: 2xx and errors alike.
///
/// # A refusal is the catalog's code, with the wait rounded up
///
/// A refused request never reaches the handler and spends nothing on any policy. It gets the
/// code of the refusing policy with the longest wait (its `code`, else the one bound to
/// `rate_limited`, `quota_exceeded` or `concurrency_limited`), `Retry-After` in whole seconds
/// rounded up, and details naming the policy: `{"policy", "limit", "remaining", "reset"}`, or
/// for a code of the `quota` shape `{"policy", "limit", "used", "resets_at"}`; a code with an
/// inline shape keeps the members it declares.
///
/// # A concurrency lease never leaks
///
/// The lease is held by the response body and given back when the body ends, or when
/// whatever holds it is dropped: the client disconnecting, the handler panicking or timing
/// out. A process that dies leaves leases that lapse after their time to live.
///
/// # The store failing is never a hang
///
/// A decision that fails, or takes longer than the deadline ([`DEFAULT_DEADLINE`]), is
/// admitted with a warning ([`FailureMode::Open`]) or refused with the catalog's 503 and
/// `Retry-After` ([`FailureMode::Closed`]).
#[derive(Clone)]
pub struct LimitLayer {
    config: Config,
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct Config {
    catalog: Arc<Catalog>,
    store: Arc<dyn LimitStore>,
    policies: Vec<Policy>,
    subject: Arc<dyn Subject>,
    group: Option<String>,
    failure: FailureMode,
    deadline: Duration,
    legacy: bool,
    metrics: Option<Arc<Metrics>>,
}

struct Shared {
    store: Arc<dyn LimitStore>,
    subject: Arc<dyn Subject>,
    policies: Vec<Applied>,
    plans: HashMap<Box<str>, Plan>,
    fallback: Plan,
    group: Option<Box<str>>,
    failure: FailureMode,
    deadline: Duration,
    legacy: bool,
}

/// A policy as the layer applies it: its refusal's error and details shape.
struct Applied {
    policy: Policy,
    code: Option<faultline::ErrorSpec>,
    shape: DetailsShape,
    /// The first part of its bucket keys: `name:`.
    prefix: String,
    /// The first part of its `RateLimit` member, up to the remaining count: `"name";r=`.
    state_prefix: String,
    /// Its decisions by outcome (admitted, refused, failed open, failed closed), when metrics
    /// are on: counters taken once, bumped without a lookup.
    counters: Option<[Counter; 4]>,
}

/// What applies to callers of one tier.
#[derive(Clone)]
struct Plan {
    /// `(policy index, its limit for the tier)`.
    policies: Vec<(usize, u64)>,
    /// `RateLimit-Policy` when every one of them applies (static: see [`static_value`]).
    header: Option<HeaderValue>,
}

impl std::fmt::Debug for LimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitLayer")
            .field(
                "policies",
                &self
                    .config
                    .policies
                    .iter()
                    .map(|p| &p.name)
                    .collect::<Vec<_>>(),
            )
            .field("group", &self.config.group)
            .field("failure", &self.config.failure)
            .field("deadline", &self.config.deadline)
            .finish_non_exhaustive()
    }
}

impl LimitLayer {
    /// The catalog's policies on `store`, for the caller the auth layer found
    /// ([`super::PrincipalSubject`]), failing open after [`DEFAULT_DEADLINE`].
    #[cfg(feature = "auth")]
    pub fn new(catalog: &Catalog, store: Arc<dyn LimitStore>) -> Self {
        Self::with_subject(catalog, store, super::PrincipalSubject)
    }

    /// The catalog's policies on `store`, for the callers `subject` names.
    pub fn with_subject(
        catalog: &Catalog,
        store: Arc<dyn LimitStore>,
        subject: impl Subject,
    ) -> Self {
        let config = Config {
            catalog: Arc::new(catalog.clone()),
            store,
            policies: catalog.limits().policies.clone(),
            subject: Arc::new(subject),
            group: None,
            failure: FailureMode::Open,
            deadline: DEFAULT_DEADLINE,
            legacy: catalog.limits().legacy_headers,
            metrics: None,
        };
        let shared = Arc::new(compile(&config));
        LimitLayer { config, shared }
    }

    fn rebuilt(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self.shared = Arc::new(compile(&self.config));
        self
    }

    /// Adds `policy`, or replaces the catalog's policy of the same name.
    #[must_use]
    pub fn policy(self, policy: Policy) -> Self {
        self.rebuilt(
            |c| match c.policies.iter_mut().find(|p| p.name == policy.name) {
                Some(slot) => *slot = policy,
                None => c.policies.push(policy),
            },
        )
    }

    /// Drops the policy named `name`.
    #[must_use]
    pub fn without_policy(self, name: &str) -> Self {
        self.rebuilt(|c| c.policies.retain(|p| p.name != name))
    }

    /// The routes wrapped are the route group `group`: only policies for every route or
    /// listing `group` in `routes` apply, and `per = "route_group"` buckets are this group's.
    #[must_use]
    pub fn route_group(self, group: &str) -> Self {
        self.rebuilt(|c| c.group = Some(group.to_owned()))
    }

    /// Finds callers with `subject` instead.
    #[must_use]
    pub fn subject(self, subject: impl Subject) -> Self {
        self.rebuilt(|c| c.subject = Arc::new(subject))
    }

    /// What to do when the store fails or is late.
    #[must_use]
    pub fn on_failure(self, mode: FailureMode) -> Self {
        self.rebuilt(|c| c.failure = mode)
    }

    /// How long to wait for the store.
    #[must_use]
    pub fn deadline(self, deadline: Duration) -> Self {
        self.rebuilt(|c| c.deadline = deadline)
    }

    /// Counts every decision in `metrics`, by policy and outcome
    /// (`faultline_limiter_decisions_total`; see [`crate::metrics`]).
    ///
    /// # Every policy's decisions are counted
    ///
    /// Each policy that applied to a request counts one outcome: admitted, refused (by this
    /// policy: a policy that would have admitted a refused request counts as admitted), or
    /// failed open / failed closed when the store did not answer.
    #[must_use]
    pub fn metrics(self, metrics: Arc<Metrics>) -> Self {
        self.rebuilt(|c| c.metrics = Some(metrics))
    }

    /// Whether to send the legacy `X-RateLimit-*` headers (default: as the catalog says).
    #[must_use]
    pub fn legacy_headers(self, on: bool) -> Self {
        self.rebuilt(|c| c.legacy = on)
    }
}

fn compile(config: &Config) -> Shared {
    let catalog = &config.catalog;
    let policies: Vec<Applied> = config
        .policies
        .iter()
        .filter(|p| p.applies_to(config.group.as_deref()))
        .map(|policy| {
            let code = policy
                .code_in(catalog)
                .and_then(|c| catalog.get(c))
                .cloned();
            let shape = code
                .as_ref()
                .map_or(DetailsShape::None, |c| c.details.clone());
            let counters = config.metrics.as_ref().map(|metrics| {
                [
                    Outcome::Admitted,
                    Outcome::Refused,
                    Outcome::FailedOpen,
                    Outcome::FailedClosed,
                ]
                .map(|outcome| metrics.limiter_counter(&policy.name, outcome))
            });
            // The core's formatter writes the member; everything before the count is fixed.
            let mut state_prefix =
                limits::format_state_header(&[StateItem::new(&policy.name, 0, None)]);
            state_prefix.pop();
            Applied {
                prefix: format!("{}:", policy.name),
                state_prefix,
                policy: policy.clone(),
                code,
                shape,
                counters,
            }
        })
        .collect();
    let limits = catalog.limits();
    let plan = |tier: &str| {
        let chosen: Vec<(usize, u64)> = policies
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.policy.limit.for_tier(tier).map(|n| (i, n)))
            .collect();
        let items: Vec<PolicyItem> = chosen
            .iter()
            .map(|&(i, n)| policies[i].policy.header_item(n))
            .collect();
        let header = static_value(limits::format_policy_header(&items));
        Plan {
            policies: chosen,
            header,
        }
    };
    let plans = limits
        .tiers
        .iter()
        .map(|t| (t.as_str().into(), plan(t)))
        .collect();
    let fallback = plan(limits.fallback_tier());
    Shared {
        store: Arc::clone(&config.store),
        subject: Arc::clone(&config.subject),
        policies,
        plans,
        fallback,
        group: config.group.as_deref().map(Box::from),
        failure: config.failure,
        deadline: config.deadline,
        legacy: config.legacy,
    }
}

/// `text` as a header value whose copies share no counter: `RateLimit-Policy` goes out on
/// every response, and a shared value's reference count, bumped and dropped by every request
/// on every core, made each core wait for the others' cache line.
///
/// # Each distinct text is kept once
///
/// The text is kept for the life of the process, once per distinct text (a layer rebuilt with
/// the same policies reuses it), so rebuilding layers does not grow memory.
fn static_value(text: String) -> Option<HeaderValue> {
    use std::collections::HashSet;
    use std::sync::{Mutex, PoisonError};
    static KEPT: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    // What `from_static` accepts (visible ASCII and tabs), checked first: a text that is no
    // such value is not kept, and never panics.
    if !text
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return None;
    }
    let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
    let kept = kept.get_or_insert_with(HashSet::new);
    let text: &'static str = match kept.get(text.as_str()) {
        Some(&known) => known,
        None => {
            let leaked: &'static str = Box::leak(text.into_boxed_str());
            kept.insert(leaked);
            leaked
        }
    };
    Some(HeaderValue::from_static(text))
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service made by [`LimitLayer`].
#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for Limit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit").finish_non_exhaustive()
    }
}

/// The checks of one request, inline up to five.
type Checks = SmallVec<[Check; 5]>;
/// `(policy index, limit)` of each check.
type Used = SmallVec<[(usize, u64); 5]>;

/// The headers of a [`Report`]: `(name index, value)`, at most five, inline.
type Headers = SmallVec<[(usize, HeaderValue); 5]>;

/// What an admitted request carries out: the headers to add and the lease to hold.
struct Report {
    headers: Headers,
    guard: Option<LeaseGuard>,
}

/// The header a [`Report`] entry names: 0 `RateLimit-Policy`, 1 `RateLimit`, 2..5 legacy.
fn header_name(i: usize) -> &'static (&'static str, HeaderName) {
    static NAMES: [(&str, HeaderName); 5] = [
        RATELIMIT_POLICY,
        RATELIMIT,
        (
            LegacyHeaders::NAMES[0],
            HeaderName::from_static("x-ratelimit-limit"),
        ),
        (
            LegacyHeaders::NAMES[1],
            HeaderName::from_static("x-ratelimit-remaining"),
        ),
        (
            LegacyHeaders::NAMES[2],
            HeaderName::from_static("x-ratelimit-reset"),
        ),
    ];
    &NAMES[i.min(4)]
}

// The report's headers are inline (no allocation per request): the admitting variant is the
// large one, and the common one.
#[allow(clippy::large_enum_variant)]
enum Judged {
    Admit(Report),
    Refuse(Error),
    Through,
}

impl Shared {
    fn plan(&self, tier: Option<&str>) -> &Plan {
        tier.and_then(|t| self.plans.get(t))
            .unwrap_or(&self.fallback)
    }

    /// The checks of `caller` under `plan`, with the policy index of each.
    fn checks(&self, caller: &Caller, plan: &Plan, cost: u64) -> (Checks, Used) {
        let mut checks = Checks::new();
        let mut used = Used::new();
        for &(i, limit) in &plan.policies {
            let applied = &self.policies[i];
            let policy = &applied.policy;
            let part = match policy.per {
                Per::Key => &*caller.key,
                Per::RouteGroup => self.group.as_deref().unwrap_or("-"),
                Per::Custom => match caller.custom_value(&policy.name) {
                    Some(value) => value,
                    None => continue,
                },
                _ => "",
            };
            // Sized exactly: one allocation per bucket key.
            let mut key = String::with_capacity(applied.prefix.len() + part.len());
            key.push_str(&applied.prefix);
            key.push_str(part);
            let rule = match policy.kind {
                Kind::Rate { window_us } => limits::Rule::Rate { limit, window_us },
                Kind::Quota { period } => limits::Rule::Quota {
                    limit,
                    period,
                    cost,
                },
                Kind::Concurrency { lease_ttl_us } => limits::Rule::Concurrency {
                    limit,
                    lease_ttl_us,
                },
                _ => continue,
            };
            checks.push(Check::new(key, rule));
            used.push((i, limit));
        }
        (checks, used)
    }

    fn headers(&self, plan: &Plan, used: &[(usize, u64)], decision: &Decision) -> Headers {
        let mut out = Headers::new();
        let policy_header = if used.len() == plan.policies.len() {
            plan.header.clone()
        } else {
            let items: Vec<PolicyItem> = used
                .iter()
                .map(|&(i, n)| self.policies[i].policy.header_item(n))
                .collect();
            HeaderValue::try_from(limits::format_policy_header(&items)).ok()
        };
        if let Some(value) = policy_header {
            out.push((0, value));
        }
        // `RateLimit`, written as `limits::format_state_header` writes it (each member's fixed
        // start is precomputed), then the legacy values, all into one buffer: one allocation
        // for every value, each header a slice of it.
        let mut state = String::with_capacity(
            used.iter()
                .map(|&(i, _)| self.policies[i].state_prefix.len() + 26)
                .sum::<usize>()
                + if self.legacy { 60 } else { 0 },
        );
        let mut trio: SmallVec<[(u64, u64, u64); 8]> = SmallVec::new();
        for (n, (&(i, _), o)) in used.iter().zip(decision.outcomes.iter()).enumerate() {
            let applied = &self.policies[i];
            if n > 0 {
                state.push_str(", ");
            }
            state.push_str(&applied.state_prefix);
            limits::push_decimal(&mut state, o.remaining);
            // Concurrency has no reset: the legacy trio speaks for rates and quotas only.
            if !matches!(applied.policy.kind, Kind::Concurrency { .. }) {
                let reset = ceil_secs(o.reset_us);
                state.push_str(";t=");
                limits::push_decimal(&mut state, reset);
                trio.push((o.limit, o.remaining, reset));
            }
        }
        let mut ends: SmallVec<[(usize, usize); 4]> = SmallVec::new();
        ends.push((1, state.len()));
        if self.legacy
            && let Some(legacy) = LegacyHeaders::most_restrictive(&trio)
        {
            for (name, n) in [
                (2, legacy.limit),
                (3, legacy.remaining),
                (4, legacy.reset_secs),
            ] {
                limits::push_decimal(&mut state, n);
                ends.push((name, state.len()));
            }
        }
        // Split off in turn: the last value takes what is left, so with no legacy headers the
        // one buffer becomes the one value as it is (no shared handle to allocate).
        let mut rest = Bytes::from(state);
        let mut start = 0;
        for (name, end) in ends {
            let value = rest.split_to(end - start);
            start = end;
            if let Ok(value) = HeaderValue::from_maybe_shared(value) {
                out.push((name, value));
            }
        }
        out
    }

    fn judge(
        &self,
        plan: &Plan,
        used: &[(usize, u64)],
        result: Result<Decision, StoreError>,
    ) -> Judged {
        let decision = match result {
            Ok(decision) if decision.outcomes.len() == used.len() => decision,
            Ok(_) => {
                return self.failed(
                    used,
                    StoreError::new("the limit store answered a different number of checks"),
                );
            }
            Err(e) => return self.failed(used, e),
        };
        for (&(i, _), outcome) in used.iter().zip(&decision.outcomes) {
            if let Some(counters) = &self.policies[i].counters {
                counters[usize::from(!outcome.admitted)].increment();
            }
        }
        let headers = self.headers(plan, used, &decision);
        if decision.admitted {
            let guard = decision
                .lease
                .map(|lease| LeaseGuard::new(Arc::clone(&self.store), lease, self.deadline));
            return Judged::Admit(Report { headers, guard });
        }
        // The refusing policy with the longest wait speaks for the refusal.
        let Some(decisive) = decision.refusing().max_by(|&a, &b| {
            decision.outcomes[a]
                .retry_after_us
                .cmp(&decision.outcomes[b].retry_after_us)
                .then(b.cmp(&a))
        }) else {
            return self.failed(
                used,
                StoreError::new("the limit store refused without a refusing check"),
            );
        };
        let applied = &self.policies[used[decisive].0];
        let outcome = &decision.outcomes[decisive];
        let mut error = match &applied.code {
            Some(spec) if applied.policy.code.is_some() => Error::from(spec.to_error()),
            _ => Error::bound(applied.policy.situation()),
        };
        error = error.with_header("Retry-After", decision.retry_after_secs().to_string());
        for (i, value) in headers {
            if let Ok(text) = value.to_str() {
                error = error.with_header(header_name(i).0, text.to_owned());
            }
        }
        Judged::Refuse(error.with_details(details(applied, outcome)))
    }

    fn failed(&self, used: &[(usize, u64)], error: StoreError) -> Judged {
        let slot = match self.failure {
            FailureMode::Open => 2,
            FailureMode::Closed => 3,
        };
        for &(i, _) in used {
            if let Some(counters) = &self.policies[i].counters {
                counters[slot].increment();
            }
        }
        match self.failure {
            FailureMode::Open => {
                tracing::warn!(cause = %error, "limit store failed; request admitted without limits");
                Judged::Through
            }
            FailureMode::Closed => {
                let wait = error
                    .retry_after()
                    .unwrap_or(crate::store::DEFAULT_UNAVAILABLE_RETRY_AFTER);
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                // The faultline layer logs the cause with the request id and counts it.
                Judged::Refuse(
                    Error::bound(Situation::ServiceUnavailable)
                        .with_header("Retry-After", seconds.max(1).to_string())
                        .with_cause(error),
                )
            }
        }
    }
}

/// The details of a refusal by `applied`, in its code's shape.
fn details(applied: &Applied, outcome: &limits::Outcome) -> Value {
    let mut all = Map::new();
    all.insert(
        "policy".to_owned(),
        Value::from(applied.policy.name.clone()),
    );
    all.insert("limit".to_owned(), Value::from(outcome.limit));
    all.insert("remaining".to_owned(), Value::from(outcome.remaining));
    all.insert("reset".to_owned(), Value::from(ceil_secs(outcome.reset_us)));
    if let Some(used) = outcome.used {
        all.insert("used".to_owned(), Value::from(used));
    }
    if let Some(at) = outcome.resets_at_us {
        all.insert("resets_at".to_owned(), Value::from(iso8601(at)));
    }
    let keep: Vec<&str> = match &applied.shape {
        DetailsShape::Quota => vec!["policy", "limit", "used", "resets_at"],
        DetailsShape::Object(fields) => fields.iter().map(|f| f.name.as_str()).collect(),
        _ => vec!["policy", "limit", "remaining", "reset"],
    };
    all.retain(|k, _| keep.contains(&k.as_str()));
    if applied.shape == DetailsShape::Quota {
        // The quota shape's members are required: a rate policy raising it still fills them.
        all.entry("used")
            .or_insert(Value::from(outcome.limit - outcome.remaining));
        all.entry("resets_at")
            .or_insert(Value::from(iso8601(outcome.reset_us)));
    }
    Value::Object(all)
}

/// Adds the report's headers to `response` (to the pending error, when the faultline layer
/// has yet to render it) and hands the lease to its body.
fn finish(mut response: Response, report: Report) -> Response {
    if let Some(pending) = response.extensions_mut().remove::<Pending>() {
        if let Some(mut error) = pending.take() {
            for (i, value) in &report.headers {
                if let Ok(text) = value.to_str() {
                    error = error.with_header(header_name(*i).0, text.to_owned());
                }
            }
            response = error.into_response();
        } else {
            response.extensions_mut().insert(pending);
        }
    } else {
        let headers = response.headers_mut();
        // Room for these and the few the faultline layer adds, so the map grows once at most.
        headers.reserve(report.headers.len() + 2);
        for (i, value) in report.headers {
            headers.insert(header_name(i).1.clone(), value);
        }
    }
    match report.guard {
        Some(guard) => response.map(|body| Body::new(LeaseBody::new(body, guard))),
        None => response,
    }
}

type BoxResponse = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

pin_project! {
    /// The response future of [`Limit`].
    pub struct LimitFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        /// Not limited (no caller, no policy, or the store failed open).
        Through { #[pin] future: F },
        /// Admitted from a store that answered at once: the inner future, not boxed.
        Admitted { #[pin] future: F, report: Option<Report> },
        /// Refused at once.
        Refused { response: Option<Response> },
        /// The store had to be awaited: decision, then the inner call (boxed).
        Deciding { future: BoxResponse },
    }
}

impl<F> std::fmt::Debug for LimitFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitFuture").finish_non_exhaustive()
    }
}

impl<F> Future for LimitFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Through { future } => future.poll(cx),
            StateProj::Admitted { future, report } => match future.poll(cx) {
                Poll::Ready(Ok(response)) => Poll::Ready(Ok(match report.take() {
                    Some(report) => finish(response, report),
                    None => response,
                })),
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => Poll::Pending,
            },
            StateProj::Refused { response } => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| Error::bound(Situation::Internal).into_response()))),
            StateProj::Deciding { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, B> Service<Request<B>> for Limit<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = LimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let through = |future| LimitFuture {
            state: State::Through { future },
        };
        let (parts, body) = request.into_parts();
        let caller = self.shared.subject.identify(&parts);
        let cost = parts.extensions.get::<QuotaCost>().map_or(1, |c| c.0);
        let request = Request::from_parts(parts, body);
        let Some(caller) = caller else {
            return through(self.inner.call(request));
        };
        let plan = self.shared.plan(caller.tier.as_deref());
        let (checks, used) = self.shared.checks(&caller, plan, cost);
        if checks.is_empty() {
            return through(self.inner.call(request));
        }
        if let Some(result) = self.shared.store.decide_ready(&caller.org, &checks, None) {
            return match self.shared.judge(plan, &used, result) {
                Judged::Admit(report) => LimitFuture {
                    state: State::Admitted {
                        future: self.inner.call(request),
                        report: Some(report),
                    },
                },
                Judged::Refuse(error) => LimitFuture {
                    state: State::Refused {
                        response: Some(error.into_response()),
                    },
                },
                Judged::Through => through(self.inner.call(request)),
            };
        }
        // The service that was polled ready is the one that must be called.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let shared = Arc::clone(&self.shared);
        LimitFuture {
            state: State::Deciding {
                future: Box::pin(async move {
                    let decided = tokio::time::timeout(
                        shared.deadline,
                        shared.store.decide(&caller.org, &checks, None),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(StoreError::unavailable(
                            "the limit store missed its deadline",
                        ))
                    });
                    let plan = shared.plan(caller.tier.as_deref());
                    match shared.judge(plan, &used, decided) {
                        Judged::Admit(report) => {
                            let response = inner.call(request).await?;
                            Ok(finish(response, report))
                        }
                        Judged::Refuse(error) => Ok(error.into_response()),
                        Judged::Through => inner.call(request).await,
                    }
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_values_are_kept_once_per_text() {
        let text = || "\"per_minute\";q=60;w=60".to_owned();
        let first = static_value(text()).expect("a header value");
        let second = static_value(text()).expect("a header value");
        assert_eq!(first, "\"per_minute\";q=60;w=60");
        assert_eq!(
            first.as_bytes().as_ptr(),
            second.as_bytes().as_ptr(),
            "one copy of each text"
        );
        let other = static_value("\"per_hour\";q=600;w=3600".to_owned()).expect("a header value");
        assert_ne!(first.as_bytes().as_ptr(), other.as_bytes().as_ptr());
    }

    #[test]
    fn a_text_that_is_no_static_value_is_refused_without_a_panic() {
        assert!(static_value("line\nbreak".to_owned()).is_none());
        assert!(static_value("caf\u{e9}".to_owned()).is_none());
        assert!(static_value("tab\tand spaces ok".to_owned()).is_some());
    }
}
