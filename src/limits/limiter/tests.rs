//! The limiter's unit tests: plans, windows, suspension, and shared quotas against an
//! in-memory store.

use super::*;
use crate::keys::cached_key::CachedKey;
use crate::limits::SuspendConfig;
use std::time::Duration;

/// Decides without a runtime: a limiter without shared quotas never waits.
fn admit(
    l: &Limiter,
    h: KeyHash,
    r: &CachedKey,
    now: SystemTime,
) -> Result<Option<WindowState>, Refusal> {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut fut = std::pin::pin!(l.admit(h, r, now));
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(w)) => Ok(w),
        Poll::Ready(Err(Limited::Rate(refusal))) => Err(refusal),
        Poll::Ready(Err(other)) => panic!("{other:?}"),
        Poll::Pending => panic!("a local limiter waited"),
    }
}

fn record(plan: Option<&str>, env: Environment) -> CachedKey {
    CachedKey::from(&crate::keys::KeyRecord {
        env,
        plan: plan.map(str::to_owned),
        ..crate::keys::KeyRecord::for_tests()
    })
}

fn limiter() -> Limiter {
    let mut plans = std::collections::BTreeMap::new();
    plans.insert(
        "free".to_owned(),
        Limits {
            per_second: Some(2),
            per_hour: Some(5),
            ..Limits::default()
        },
    );
    plans.insert(
        "sandbox".to_owned(),
        Limits {
            per_minute: Some(3),
            ..Limits::default()
        },
    );
    Limiter::new(
        LimitsConfig {
            plans,
            default_plan: Some("free".into()),
            sandbox_plan: Some("sandbox".into()),
            ..LimitsConfig::default()
        },
        100,
    )
}

fn t(secs: u64) -> SystemTime {
    // 2026-11-22T05:00:00Z plus `secs`.
    UNIX_EPOCH + Duration::from_secs(1_795_323_600 + secs)
}

#[test]
fn plans_resolve_by_key_environment_and_override() {
    let l = limiter();
    assert_eq!(
        l.limits_for(&record(None, Environment::LIVE)).per_hour,
        Some(5)
    );
    assert_eq!(
        l.limits_for(&record(None, Environment::TEST)).per_minute,
        Some(3)
    );
    assert_eq!(
        l.limits_for(&record(Some("free"), Environment::TEST))
            .per_hour,
        Some(5)
    );
    let r = CachedKey::from(&crate::keys::KeyRecord {
        limits: Limits {
            per_hour: Some(50),
            ..Limits::default()
        },
        ..crate::keys::KeyRecord::for_tests()
    });
    let limits = l.limits_for(&r);
    assert_eq!((limits.per_hour, limits.per_second), (Some(50), Some(2)));
    let none = Limiter::new(LimitsConfig::default(), 10);
    assert!(none.limits_for(&r).per_second.is_none());
    assert_eq!(
        admit(
            &none,
            KeyHash::of("x"),
            &record(None, Environment::LIVE),
            t(0)
        ),
        Ok(None)
    );
}

#[test]
fn the_tightest_window_is_reported_and_a_refusal_counts_nowhere() {
    let l = limiter();
    let r = record(None, Environment::LIVE);
    let h = KeyHash::of("k");
    let first = admit(&l, h, &r, t(0)).unwrap().unwrap();
    assert_eq!((first.name, first.remaining), ("per_second", 1));
    admit(&l, h, &r, t(0)).unwrap();
    let refused = admit(&l, h, &r, t(0)).unwrap_err();
    assert_eq!(refused.window.name, "per_second");
    assert!(refused.retry_after >= 1);
    // Three more over the next seconds exhaust the hour (5); per-second refusals above
    // did not eat into it.
    for s in 1..=3 {
        admit(&l, h, &r, t(s)).unwrap();
    }
    assert_eq!(l.used(&h, t(3)).unwrap()[0], 5);
    let refused = admit(&l, h, &r, t(10)).unwrap_err();
    assert_eq!(refused.window.name, "per_hour");
    assert_eq!(refused.retry_after, 3600 - 10, "retry when the hour resets");
    // The hourly refusal did not consume a per-second slot either.
    assert_eq!(l.used(&h, t(10)).unwrap()[0], 5);
    // Next hour: admitted again.
    assert!(admit(&l, h, &r, t(3600)).is_ok());
}

#[test]
fn local_share_scales_the_short_windows_only() {
    let mut config = LimitsConfig::default();
    config.plans.insert(
        "p".into(),
        Limits {
            per_second: Some(10),
            per_hour: Some(7),
            ..Limits::default()
        },
    );
    config.default_plan = Some("p".into());
    config.local_share = 0.5;
    let l = Limiter::new(config, 10);
    let r = record(None, Environment::LIVE);
    let h = KeyHash::of("share");
    let admitted = (0..10).filter(|_| admit(&l, h, &r, t(0)).is_ok()).count();
    assert_eq!(admitted, 5, "half of 10/s");
}

proptest::proptest! {
    /// Within one window, Remaining never increases from one admitted request to the
    /// next, Reset is in the future, and Retry-After is never before the reset.
    #[test]
    fn headers_are_consistent(
        per_second in 1u64..20,
        per_hour in 1u64..50,
        steps in proptest::collection::vec(0u64..300, 1..80),
    ) {
        let mut config = LimitsConfig::default();
        config.plans.insert("p".into(), Limits {
            per_second: Some(per_second),
            per_hour: Some(per_hour),
            ..Limits::default()
        });
        config.default_plan = Some("p".into());
        let l = Limiter::new(config, 10);
        let r = record(None, Environment::LIVE);
        let h = KeyHash::of("prop");
        let mut ms = 0u64;
        let mut last_hour_remaining = u64::MAX;
        for step in steps {
            ms += step;
            let now = t(0) + Duration::from_millis(ms);
            match admit(&l, h, &r, now) {
                Ok(Some(w)) => {
                    proptest::prop_assert!(w.reset_secs >= 1 || w.name == "per_second");
                    proptest::prop_assert!(w.remaining <= w.limit);
                    let hour_left = per_hour - l.used(&h, now).unwrap()[0];
                    proptest::prop_assert!(hour_left <= last_hour_remaining);
                    last_hour_remaining = hour_left;
                }
                Ok(None) => proptest::prop_assert!(false, "limits configured"),
                Err(refused) => {
                    proptest::prop_assert_eq!(refused.window.remaining, 0);
                    proptest::prop_assert!(refused.retry_after >= refused.window.reset_secs.max(1));
                    proptest::prop_assert!(refused.retry_after >= 1);
                }
            }
        }
    }
}

#[test]
fn a_key_that_keeps_sending_is_suspended() {
    let mut config = LimitsConfig::default();
    config.plans.insert(
        "p".into(),
        Limits {
            per_minute: Some(1),
            ..Limits::default()
        },
    );
    config.default_plan = Some("p".into());
    config.suspend = Some(SuspendConfig {
        after: 2,
        within: Duration::from_secs(60),
        lasts: Duration::from_secs(600),
    });
    let l = Limiter::new(config, 10);
    let r = record(None, Environment::LIVE);
    let (h, other) = (KeyHash::of("abuser"), KeyHash::of("other"));
    let poll = |h| {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let mut fut = std::pin::pin!(l.admit(h, &r, t(0)));
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => panic!("a local limiter waited"),
        }
    };
    assert!(poll(h).is_ok());
    // Two refusals are tolerated…
    assert!(matches!(poll(h), Err(Limited::Rate(_))));
    assert!(matches!(poll(h), Err(Limited::Rate(_))));
    // …the third suspends, and from then on the key is refused before any window.
    assert_eq!(poll(h), Err(Limited::Suspended { retry_after: 600 }));
    let Err(Limited::Suspended { retry_after }) = poll(h) else {
        panic!("still suspended")
    };
    assert!((599..=600).contains(&retry_after));
    assert!(poll(other).is_ok(), "other keys are not affected");
}

#[test]
fn reconfigure_keeps_the_counters() {
    let l = limiter();
    let r = record(None, Environment::LIVE);
    let h = KeyHash::of("reload");
    admit(&l, h, &r, t(0)).unwrap();
    let mut config = LimitsConfig::default();
    config.plans.insert(
        "free".into(),
        Limits {
            per_hour: Some(2),
            ..Limits::default()
        },
    );
    config.default_plan = Some("free".into());
    l.reconfigure(config);
    assert_eq!(l.limits_for(&r).per_second, None, "the new plan applies");
    assert_eq!(admit(&l, h, &r, t(1)).unwrap().unwrap().remaining, 0);
    assert!(
        admit(&l, h, &r, t(2)).is_err(),
        "the earlier request still counts"
    );
}

mod shared {
    use super::*;
    use crate::limits::lease;
    use crate::limits::shared::{
        Grant, GrantAsk, StoredWindow, SyncState, now_ms as shared_now_ms,
    };
    use crate::vocab::StoreError;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// The quota store's contract, in memory: what `lease.lua` does, for unit tests of
    /// the limiter. (The black-box tests run the real script.)
    #[derive(Default)]
    struct Memory {
        counters: Mutex<HashMap<(String, u64), lease::WindowCounter>>,
        outage: Mutex<lease::Outage>,
        down: AtomicBool,
        grants: AtomicU64,
        live: AtomicU64,
        /// How long each grant takes (ms): a store that answers, but late.
        slow_ms: AtomicU64,
        /// Once armed, the first sidecar to send a second grant request answers late for
        /// the next `late_ms`: every grant it asks for meanwhile takes that long, and is lost
        /// if it gives up first (a link that turns slow right after the sidecar reported).
        late_ms: AtomicU64,
        late: Mutex<Late>,
        /// Seconds the store's clock is ahead of the sidecars'.
        ahead_secs: AtomicU64,
        /// Paused as a SIGSTOPped Redis is: requests queue, in the order they came, and all
        /// run once it resumes, those whose callers gave up included (their replies are lost).
        paused: Mutex<Option<Vec<Queued>>>,
        heartbeats: Mutex<HashMap<String, std::time::Instant>>,
    }

    #[derive(Default)]
    struct Late {
        armed: bool,
        grants: HashMap<String, u64>,
        /// The sidecar answered late, and until when.
        slow: Option<(String, std::time::Instant)>,
    }

    /// A request waiting for a paused store.
    enum Queued {
        Grant {
            instance: String,
            sender: lease::Sender,
            hash: KeyHash,
            asks: Vec<GrantAsk>,
            reply: tokio::sync::oneshot::Sender<Vec<Grant>>,
        },
        Sync {
            instance: String,
            alive_for: Duration,
            reply: tokio::sync::oneshot::Sender<SyncState>,
        },
    }

    impl Memory {
        /// Requests handed out in every window of every key.
        fn used(&self) -> u64 {
            self.counters.lock().unwrap().values().map(|c| c.used).sum()
        }

        fn answers_late(&self, instance: &str) -> bool {
            let mut late = self.late.lock().unwrap();
            if !late.armed {
                return false;
            }
            let sent = late.grants.entry(instance.to_owned()).or_default();
            *sent += 1;
            if *sent == 2 && late.slow.is_none() {
                let until = std::time::Instant::now()
                    + Duration::from_millis(self.late_ms.load(Ordering::SeqCst));
                late.slow = Some((instance.to_owned(), until));
            }
            late.slow
                .as_ref()
                .is_some_and(|(who, until)| who == instance && std::time::Instant::now() < *until)
        }

        fn pause(&self) {
            *self.paused.lock().unwrap() = Some(Vec::new());
        }

        /// Runs every queued request, in order, then answers at once again.
        fn resume(&self) {
            let queued = self.paused.lock().unwrap().take().unwrap_or_default();
            for request in queued {
                // A caller that gave up has dropped its receiver: the reply is lost.
                match request {
                    Queued::Grant {
                        instance,
                        sender,
                        hash,
                        asks,
                        reply,
                    } => {
                        let _ = reply.send(self.answer(&instance, sender, hash, &asks));
                    }
                    Queued::Sync {
                        instance,
                        alive_for,
                        reply,
                    } => {
                        let _ = reply.send(self.sync_state(&instance, alive_for));
                    }
                }
            }
        }

        fn answer(
            &self,
            instance: &str,
            sender: lease::Sender,
            hash: KeyHash,
            asks: &[GrantAsk],
        ) -> Vec<Grant> {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
                + self.ahead_secs.load(Ordering::SeqCst) * 1_000;
            let now = now_ms / 1_000;
            let mut counters = self.counters.lock().unwrap();
            let mut outage = self.outage.lock().unwrap();
            asks.iter()
                .map(|ask| {
                    let (window, _) = ask.calendar.window(now);
                    let counter = counters
                        .entry((format!("{hash:?}{:?}", ask.calendar), window))
                        .or_default();
                    let in_window = |(w, n): (u64, u64)| if w == window { n } else { 0 };
                    let report = lease::Report {
                        limit: ask.limit,
                        want: ask.want,
                        ack: in_window(ask.ack),
                        fell_back: in_window(ask.fell_back),
                        returned: in_window(ask.returned),
                    };
                    let answer = counter.answer(&mut outage, instance, sender, now_ms, report);
                    Grant {
                        granted: answer.granted,
                        total: answer.total,
                        used: counter.used,
                        window,
                        held: answer.held,
                        hold_left: Duration::from_millis(answer.hold_left_ms),
                        reply: answer.reply,
                    }
                })
                .collect()
        }

        /// `live` 0: the sidecars heard from within `alive_for`, as `sync.lua` counts.
        fn sync_state(&self, instance: &str, alive_for: Duration) -> SyncState {
            let now = std::time::Instant::now();
            let mut heartbeats = self.heartbeats.lock().unwrap();
            heartbeats.insert(instance.to_owned(), now);
            heartbeats.retain(|_, at| now.duration_since(*at) < alive_for);
            let live = match self.live.load(Ordering::SeqCst) {
                0 => heartbeats.len() as u64,
                set => set,
            };
            SyncState {
                live,
                suspended: vec![],
            }
        }
    }

    #[async_trait::async_trait]
    impl QuotaStore for Memory {
        async fn grant(
            &self,
            instance: &str,
            sender: lease::Sender,
            hash: KeyHash,
            asks: Vec<GrantAsk>,
        ) -> Result<Vec<Grant>, StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("down".into()));
            }
            self.grants.fetch_add(1, Ordering::SeqCst);
            let slow = if self.answers_late(instance) {
                self.late_ms.load(Ordering::SeqCst)
            } else {
                self.slow_ms.load(Ordering::SeqCst)
            };
            if slow > 0 {
                tokio::time::sleep(Duration::from_millis(slow)).await;
            }
            let (reply, answered) = tokio::sync::oneshot::channel();
            if let Some(queue) = self.paused.lock().unwrap().as_mut() {
                queue.push(Queued::Grant {
                    instance: instance.to_owned(),
                    sender,
                    hash,
                    asks,
                    reply,
                });
            } else {
                return Ok(self.answer(instance, sender, hash, &asks));
            }
            answered
                .await
                .map_err(|_| StoreError::Unavailable("gone".into()))
        }

        async fn sync(
            &self,
            instance: &str,
            alive_for: Duration,
            _: Vec<(KeyHash, Duration)>,
        ) -> Result<SyncState, StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("down".into()));
            }
            let (reply, answered) = tokio::sync::oneshot::channel();
            if let Some(queue) = self.paused.lock().unwrap().as_mut() {
                queue.push(Queued::Sync {
                    instance: instance.to_owned(),
                    alive_for,
                    reply,
                });
            } else {
                return Ok(self.sync_state(instance, alive_for));
            }
            answered
                .await
                .map_err(|_| StoreError::Unavailable("gone".into()))
        }

        async fn usage(&self, _: KeyHash) -> Result<Vec<StoredWindow>, StoreError> {
            Ok(vec![])
        }
    }

    /// Waits (a bounded while) for the sync loop to bring `done` about.
    async fn until(done: impl Fn() -> bool) {
        for _ in 0..1_000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the sync loop never got there");
    }

    fn sidecar(store: &Arc<Memory>, per_hour: u64) -> Limiter {
        sidecar_waiting(store, per_hour, Duration::from_secs(5))
    }

    fn sidecar_waiting(store: &Arc<Memory>, per_hour: u64, timeout: Duration) -> Limiter {
        sidecar_falling_back(store, per_hour, timeout, QuotaFallback::Budget)
    }

    fn sidecar_falling_back(
        store: &Arc<Memory>,
        per_hour: u64,
        timeout: Duration,
        fallback: QuotaFallback,
    ) -> Limiter {
        sidecar_syncing(
            store,
            per_hour,
            timeout,
            fallback,
            Duration::from_millis(20),
        )
    }

    fn sidecar_syncing(
        store: &Arc<Memory>,
        per_hour: u64,
        timeout: Duration,
        fallback: QuotaFallback,
        sync_every: Duration,
    ) -> Limiter {
        let mut config = LimitsConfig::default();
        config.plans.insert(
            "p".into(),
            Limits {
                per_hour: Some(per_hour),
                ..Limits::default()
            },
        );
        config.default_plan = Some("p".into());
        let settings = SharedSettings {
            timeout,
            sync_every,
            fallback,
        };
        Limiter::new(config, 10).with_shared_quotas(
            store.clone(),
            settings,
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn sidecars_sharing_a_quota_admit_exactly_the_limit() {
        let store = Arc::new(Memory::default());
        store.live.store(3, Ordering::SeqCst);
        let sidecars: Vec<Limiter> = (0..3).map(|_| sidecar(&store, 500)).collect();
        let r = record(None, Environment::LIVE);
        let h = KeyHash::of("shared");
        let mut admitted = 0;
        for i in 0..1_500 {
            let now = SystemTime::now();
            if sidecars[i % 3].admit(h, &r, now).await.is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 500);
        let grants = store.grants.load(Ordering::SeqCst);
        assert!(grants < 200, "{grants} grants for 500 requests");
    }

    #[tokio::test]
    async fn an_unreachable_store_falls_back_to_a_share_and_reports_it_later() {
        let store = Arc::new(Memory::default());
        store.live.store(2, Ordering::SeqCst);
        let l = sidecar(&store, 100);
        let r = record(None, Environment::LIVE);
        let h = KeyHash::of("fallback");
        // Let the first sync see two sidecars.
        let shared = l.shared.clone().unwrap();
        until(|| shared.live() == 2).await;
        store.down.store(true, Ordering::SeqCst);
        let mut admitted = 0;
        for _ in 0..80 {
            if l.admit(h, &r, SystemTime::now()).await.is_ok() {
                admitted += 1;
            }
        }
        assert!(shared.in_fallback());
        assert_eq!(admitted, 50, "half of 100 with two sidecars last seen");

        store.down.store(false, Ordering::SeqCst);
        until(|| !shared.in_fallback()).await;
        let after = l.admit(h, &r, SystemTime::now()).await;
        assert!(after.is_ok(), "{after:?}");
        let used = store.used();
        assert!(
            used >= 51,
            "the fallback's 50 were reported with the next grant: {used}"
        );
    }

    /// One sidecar's grants answer later than `[store] timeout` (a busy machine, or a
    /// partition between it and Redis) while the other's answer in time: that sidecar cannot
    /// tell this from an outage, and the other goes on being granted the rest of the quota.
    /// `a` admits on its own, `b` spends the rest, then both spend until refused. (The
    /// in-memory store drops a grant its caller gave up on; Redis runs it late, which the
    /// black-box tests in `tests/limits.rs` cover.) Returns what was admitted, what `a`
    /// admitted alone, and the refusals while `a`'s grants were late.
    async fn one_sidecar_answered_late(
        limit: u64,
        fallback: QuotaFallback,
    ) -> (u64, u64, Vec<Limited>, Arc<Memory>) {
        let store = Arc::new(Memory::default());
        store.live.store(2, Ordering::SeqCst);
        let timeout = Duration::from_millis(50);
        let (a, b) = (
            sidecar_falling_back(&store, limit, timeout, fallback),
            sidecar_falling_back(&store, limit, timeout, fallback),
        );
        for l in [&a, &b] {
            let shared = l.shared.clone().unwrap();
            until(|| shared.live() == 2).await;
        }
        let r = record(None, Environment::LIVE);
        let h = KeyHash::of("late");
        let mut admitted = 0;
        // A few through leases on each.
        for l in [&a, &b, &a, &b] {
            admitted += u64::from(l.admit(h, &r, SystemTime::now()).await.is_ok());
        }
        // `a`'s grants now answer late.
        store.slow_ms.store(200, Ordering::SeqCst);
        let mut refused = Vec::new();
        for _ in 0..30 {
            match a.admit(h, &r, SystemTime::now()).await {
                Ok(_) => admitted += 1,
                Err(why) => refused.push(why),
            }
        }
        store.slow_ms.store(0, Ordering::SeqCst);
        let alone = a.state.get(&h).unwrap().leases().hour.fell_back().1;
        // `b` spends the rest; then both until refused.
        for l in [&b, &a] {
            for _ in 0..200 {
                admitted += u64::from(l.admit(h, &r, SystemTime::now()).await.is_ok());
            }
        }
        // What `a` admitted alone is reported by its next sync.
        until(|| store.used() >= admitted).await;
        eprintln!(
            "per_hour = {limit}, {fallback:?}: {admitted} admitted, {alone} alone, {} refused \
             while grants were late",
            refused.len()
        );
        (admitted, alone, refused, store)
    }

    /// `quota_fallback = "budget"` (the default): the window can end over its limit, by at
    /// most what the sidecar answered late admitted alone, and that by at most its budget,
    /// half its share of what its last grant said was left; Redis hears of every one.
    #[tokio::test]
    async fn a_sidecar_whose_grants_answer_late_overshoots_by_at_most_its_budget() {
        const LIMIT: u64 = 100;
        let (admitted, alone, refused, store) =
            one_sidecar_answered_late(LIMIT, QuotaFallback::Budget).await;
        assert!(alone > 0, "the late sidecar never admitted alone");
        assert!(
            !refused.is_empty(),
            "the late sidecar's budget never ran out"
        );
        assert!(
            refused
                .iter()
                .all(|r| matches!(r, Limited::Rate(r) if r.window.name == "per_hour")),
            "{refused:?}"
        );
        let budget = lease::fallback_budget(LIMIT, 2);
        assert!(alone <= budget, "{alone} admitted alone, budget {budget}");
        assert!(
            admitted <= LIMIT + alone,
            "{admitted} admitted against a limit of {LIMIT}, {alone} of them alone"
        );
        assert_eq!(store.used(), admitted, "Redis heard of every admission");
    }

    /// `quota_fallback = "refuse"`: the sidecar answered late refuses once its lease is
    /// spent (503 `quota_store_unavailable`, retry after one sync), so the window never
    /// ends over its limit; once grants answer in time, the quota is spent to the last
    /// request.
    #[tokio::test]
    async fn refusing_instead_of_falling_back_never_overshoots() {
        const LIMIT: u64 = 100;
        let (admitted, alone, refused, store) =
            one_sidecar_answered_late(LIMIT, QuotaFallback::Refuse).await;
        assert_eq!(alone, 0, "nothing is admitted alone");
        assert!(!refused.is_empty(), "the late sidecar refused nothing");
        assert!(
            refused
                .iter()
                .all(|r| *r == Limited::StoreUnreachable { retry_after: 1 }),
            "{refused:?}"
        );
        assert_eq!(admitted, LIMIT);
        assert_eq!(store.used(), LIMIT);
    }

    /// With `quota_fallback = "refuse"`, a refusal means this request's grant went
    /// unanswered: after one failed grant the sidecar still asks (no sidecar-wide refusals
    /// until the next sync), and at a window's edge, where the store answers for the window
    /// its clock is already in, it waits for its own clock instead of refusing.
    #[tokio::test]
    async fn a_sidecar_that_refuses_does_so_only_for_an_unanswered_grant() {
        let store = Arc::new(Memory::default());
        store.live.store(1, Ordering::SeqCst);
        let l = sidecar_syncing(
            &store,
            1_000,
            Duration::from_millis(200),
            QuotaFallback::Refuse,
            Duration::from_secs(3_600),
        );
        let shared = l.shared.clone().unwrap();
        let r = record(None, Environment::LIVE);
        // The store is down: the first request for a key is refused, and the sidecar knows
        // the store is down (the next sync is an hour away).
        store.down.store(true, Ordering::SeqCst);
        let first = l.admit(KeyHash::of("a"), &r, SystemTime::now()).await;
        assert_eq!(first, Err(Limited::StoreUnreachable { retry_after: 3_600 }));
        assert!(shared.in_fallback());
        // Back: the next key's request asks, and is granted, before any sync.
        store.down.store(false, Ordering::SeqCst);
        let next = l.admit(KeyHash::of("b"), &r, SystemTime::now()).await;
        assert!(next.is_ok(), "{next:?}");

        // The store's clock is in the next hour, for a moment.
        store.ahead_secs.store(3_600, Ordering::SeqCst);
        let catch_up = {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                store.ahead_secs.store(0, Ordering::SeqCst);
            })
        };
        let at_the_edge = l.admit(KeyHash::of("c"), &r, SystemTime::now()).await;
        catch_up.await.unwrap();
        assert!(at_the_edge.is_ok(), "{at_the_edge:?}");
        let alone = l
            .metrics
            .as_ref()
            .unwrap()
            .limits
            .decided_alone
            .with_label_values(&["refused"])
            .get();
        assert_eq!(
            alone, 1,
            "only the first request was refused for want of the store"
        );
    }

    /// A request that two subjects (the key, and the key on its route) both admitted on
    /// their own counts once as admitted alone, and one whose route then refuses counts not
    /// at all.
    #[tokio::test]
    async fn what_is_decided_alone_is_counted_once_per_request() {
        let store = Arc::new(Memory::default());
        store.live.store(1, Ordering::SeqCst);
        let l = sidecar_syncing(
            &store,
            1_000,
            Duration::from_millis(50),
            QuotaFallback::Budget,
            Duration::from_secs(3_600),
        );
        let r = record(None, Environment::LIVE);
        let h = KeyHash::of("routed");
        let route_limits = Limits {
            per_hour: Some(2),
            ..Limits::default()
        };
        let route = || {
            Some(RouteLimit {
                limits: &route_limits,
                id: "GET /report",
            })
        };
        let alone = |outcome| {
            l.metrics
                .as_ref()
                .unwrap()
                .limits
                .decided_alone
                .with_label_values(&[outcome])
                .get()
        };
        store.down.store(true, Ordering::SeqCst);
        for _ in 0..2 {
            let admitted = l.admit_with_route(h, &r, route(), SystemTime::now()).await;
            assert!(admitted.is_ok(), "{admitted:?}");
        }
        assert_eq!(alone("admitted"), 2, "one per request, not one per subject");
        // The route's share (2 of 2) is spent: refused, and not counted as admitted.
        let third = l.admit_with_route(h, &r, route(), SystemTime::now()).await;
        assert!(matches!(third, Err(Limited::Rate(_))), "{third:?}");
        assert_eq!(alone("admitted"), 2);
        assert_eq!(alone("refused"), 0);
    }

    /// What a sidecar admitted on its own while its grants answered late reaches the store
    /// once they answer in time again, even with no more traffic: the sync that queues the
    /// report may come while the grant that would carry it still fails.
    #[tokio::test]
    async fn admissions_made_alone_while_grants_are_late_are_reported_without_more_traffic() {
        let store = Arc::new(Memory::default());
        store.live.store(2, Ordering::SeqCst);
        let a = Arc::new(sidecar_waiting(&store, 1_000, Duration::from_millis(50)));
        let shared = a.shared.clone().unwrap();
        until(|| shared.live() == 2).await;
        let r = Arc::new(record(None, Environment::LIVE));
        let h = KeyHash::of("late");
        assert!(a.admit(h, &*r, SystemTime::now()).await.is_ok());
        // Grants answer after the sidecar gave up on them; syncs still answer in time.
        store.slow_ms.store(120, Ordering::SeqCst);
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (a, r) = (a.clone(), r.clone());
                tokio::spawn(async move {
                    for _ in 0..20 {
                        let _ = a.admit(h, &*r, SystemTime::now()).await;
                        tokio::time::sleep(Duration::from_millis(7)).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        store.slow_ms.store(0, Ordering::SeqCst);
        let state = a.state.get(&h).unwrap();
        let alone = state.leases().hour.fell_back().1;
        assert!(alone > 0, "nothing was admitted alone");
        let heard = || {
            let counters = store.counters.lock().unwrap();
            counters
                .values()
                .flat_map(|c| c.sidecars.values().map(|t| t.fell_back))
                .max()
                .unwrap_or(0)
        };
        until(|| heard() == alone).await;
    }

    /// Three sidecars spend one quota while the store pauses as a SIGSTOPped Redis does
    /// (requests queue and all run, late, when it resumes), at the scale of the black-box
    /// test (`tests/limits.rs`, `quota_across_a_redis_pause`) with times shrunk forty-fold.
    /// Just after it resumes, one sidecar's link turns slow right after it reported: its
    /// grants answer later than the timeout for a moment, and it admits alone again. Every
    /// sidecar reports within the hold here, so the window must end exactly at its limit
    /// (before the hold covered sidecars that had reported: 6 to 21 over in every round).
    /// Half the rounds begin the pause inside the hold of an outage a moment before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_store_and_a_late_grant_after_it_cost_no_quota() {
        const LIMIT: u64 = 1_200;
        let sync_every = Duration::from_millis(25);
        let timeout = sync_every * 3 / 4;
        let mut over = Vec::new();
        for round in 0..10 {
            let store = Arc::new(Memory::default());
            let sidecars: Arc<Vec<Limiter>> = Arc::new(
                (0..3)
                    .map(|_| {
                        sidecar_syncing(&store, LIMIT, timeout, QuotaFallback::Budget, sync_every)
                    })
                    .collect(),
            );
            for l in sidecars.iter() {
                let shared = l.shared.clone().unwrap();
                until(|| shared.live() == 3).await;
            }
            let r = Arc::new(record(None, Environment::LIVE));
            let h = KeyHash::of("paused");
            let admitted = Arc::new(AtomicU64::new(0));
            let resumed = Arc::new(AtomicBool::new(false));
            let workers: Vec<_> = (0..12usize)
                .map(|w| {
                    let (sidecars, r) = (sidecars.clone(), r.clone());
                    let (admitted, resumed) = (admitted.clone(), resumed.clone());
                    tokio::spawn(async move {
                        let l = &sidecars[w % 3];
                        let mut refused_since: Option<std::time::Instant> = None;
                        loop {
                            match l.admit(h, &*r, SystemTime::now()).await {
                                Ok(_) => {
                                    admitted.fetch_add(1, Ordering::SeqCst);
                                    refused_since = None;
                                }
                                Err(_) if !resumed.load(Ordering::SeqCst) => {}
                                Err(_) => {
                                    if refused_since
                                        .get_or_insert_with(std::time::Instant::now)
                                        .elapsed()
                                        > sync_every * 3
                                    {
                                        return;
                                    }
                                }
                            }
                            tokio::time::sleep(Duration::from_micros(250)).await;
                        }
                    })
                })
                .collect();
            while admitted.load(Ordering::SeqCst) < LIMIT / 3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if round % 2 == 1 {
                // An outage some sidecar reported a moment before (a grant that answered
                // late): the store is still holding for it when the pause begins.
                *store.outage.lock().unwrap() = lease::Outage {
                    back_ms: Some(shared_now_ms()),
                };
                tokio::time::sleep(sync_every * 2).await;
            }
            store.pause();
            tokio::time::sleep(sync_every * 3).await;
            store.resume();
            resumed.store(true, Ordering::SeqCst);
            store
                .late_ms
                .store((sync_every * 2).as_millis() as u64, Ordering::SeqCst);
            store.late.lock().unwrap().armed = true;
            let alone = || {
                sidecars
                    .iter()
                    .map(|l| l.state.get(&h).map_or(0, |s| s.leases().hour.fell_back().1))
                    .sum::<u64>()
            };
            tokio::time::sleep(timeout).await;
            let alone_at_resume = alone();
            for w in workers {
                w.await.unwrap();
            }
            let admitted = admitted.load(Ordering::SeqCst);
            let after = alone() - alone_at_resume;
            eprintln!(
                "round {round}: {admitted} admitted of {LIMIT}, {} alone ({after} after the \
                 pause), store used {}",
                alone(),
                store.used()
            );
            if admitted > LIMIT {
                over.push((round, admitted, after));
            }
        }
        assert!(
            over.is_empty(),
            "(round, admitted, alone after the pause): {over:?}"
        );
    }

    #[tokio::test]
    async fn a_stopping_sidecar_hands_back_what_it_did_not_spend() {
        let store = Arc::new(Memory::default());
        store.live.store(1, Ordering::SeqCst);
        let l = sidecar(&store, 1_000);
        let r = record(None, Environment::LIVE);
        for key in ["a", "b"] {
            for _ in 0..3 {
                assert!(
                    l.admit(KeyHash::of(key), &r, SystemTime::now())
                        .await
                        .is_ok()
                );
            }
        }
        let used = || store.used();
        assert!(
            used() > 6,
            "the leases hold more than was spent: {}",
            used()
        );
        assert_eq!(l.surrender_leases(Duration::from_secs(5)).await, 2);
        assert_eq!(used(), 6, "only what was admitted stays counted");
        // Nothing left to hand back the second time.
        assert_eq!(l.surrender_leases(Duration::from_secs(5)).await, 0);
        assert_eq!(used(), 6);
    }
}

#[test]
fn a_key_counted_in_this_process_alone_stays_small() {
    // One per key on a plan, up to `[cache] capacity` of them; leases only when shared.
    assert!(std::mem::size_of::<KeyState>() <= 64);
    let state = KeyState::default();
    assert!(state.leases.get().is_none());
    let _ = state.leases().get(Calendar::Hour);
    assert!(state.leases.get().is_some());
}

/// Decides a request with a route's limits on top, without a runtime.
fn admit_route(
    l: &Limiter,
    h: KeyHash,
    r: &CachedKey,
    route: RouteLimit<'_>,
    now: SystemTime,
) -> Result<Option<WindowState>, Refusal> {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut fut = std::pin::pin!(l.admit_with_route(h, r, Some(route), now));
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(w)) => Ok(w),
        Poll::Ready(Err(Limited::Rate(refusal))) => Err(refusal),
        Poll::Ready(Err(other)) => panic!("{other:?}"),
        Poll::Pending => panic!("a local limiter waited"),
    }
}

#[test]
fn the_tighter_of_key_and_route_is_reported() {
    let w = |name, remaining, reset_secs| WindowState {
        name,
        limit: 10,
        remaining,
        reset_secs,
        window_secs: 3600,
    };
    // (key's window, route's window) -> reported
    let table = [
        (None, None, None),
        (Some(w("per_hour", 5, 10)), None, Some(w("per_hour", 5, 10))),
        (None, Some(w("per_hour", 5, 10)), Some(w("per_hour", 5, 10))),
        // Fewer remaining wins...
        (
            Some(w("per_second", 1, 1)),
            Some(w("per_hour", 3, 900)),
            Some(w("per_second", 1, 1)),
        ),
        (
            Some(w("per_day", 90, 1)),
            Some(w("per_hour", 3, 900)),
            Some(w("per_hour", 3, 900)),
        ),
        // ...and on a tie, the earlier reset (as among one key's windows); the key's on a
        // full tie.
        (
            Some(w("per_minute", 3, 10)),
            Some(w("per_hour", 3, 900)),
            Some(w("per_minute", 3, 10)),
        ),
        (
            Some(w("per_hour", 3, 900)),
            Some(w("per_minute", 3, 10)),
            Some(w("per_minute", 3, 10)),
        ),
        (
            Some(w("per_hour", 3, 900)),
            Some(w("route", 3, 900)),
            Some(w("per_hour", 3, 900)),
        ),
    ];
    for (i, (key, route, want)) in table.into_iter().enumerate() {
        assert_eq!(tighter(key, route), want, "row {i}");
    }
}

#[test]
fn a_route_limit_counts_per_key_on_top_of_the_plan_and_a_refusal_counts_nowhere() {
    let l = limiter(); // free: per_second 2, per_hour 5
    let r = record(None, Environment::LIVE);
    let (a, b) = (KeyHash::of("a"), KeyHash::of("b"));
    let exports = Limits {
        per_hour: Some(2),
        ..Limits::default()
    };
    let route = RouteLimit {
        limits: &exports,
        id: "route POST /v1/exports",
    };
    // Two exports an hour for key a; the route's window is the tighter one once it is down
    // to none.
    assert_eq!(
        admit_route(&l, a, &r, route, t(0))
            .unwrap()
            .unwrap()
            .remaining,
        1
    );
    let second = admit_route(&l, a, &r, route, t(1)).unwrap().unwrap();
    assert_eq!((second.remaining, second.window_secs), (0, 3600));
    let refused = admit_route(&l, a, &r, route, t(2)).unwrap_err();
    assert_eq!(refused.window.limit, 2);
    // The refused export was given back to the plan: 2 of its 5 an hour spent.
    assert_eq!(l.used(&a, t(3)).unwrap()[0], 2);
    // Another key has exports of its own.
    assert!(admit_route(&l, b, &r, route, t(3)).is_ok());
    // And the plan still binds on the route: key b spends its hour elsewhere.
    for s in 4..8 {
        admit(&l, b, &r, t(s)).unwrap();
    }
    let plan = admit_route(&l, b, &r, route, t(9)).unwrap_err();
    assert_eq!(plan.window.limit, 5, "the plan refused it");
    // Another route's counters are apart.
    let other = RouteLimit {
        limits: &exports,
        id: "route POST /v1/imports",
    };
    assert_ne!(route.subject(a), other.subject(a));
    assert_ne!(route.subject(a), a);
}
