//! One semantic suite, run against both stores with the same instants: the in-process store and a
//! real redis-server running lua/decide.lua. Whatever holds for one must hold for the other.

mod common;

use common::RedisServer;
use sluice::algorithm::adaptive::Adaptive;
use sluice::algorithm::baseline::Baseline;
use sluice::algorithm::{Algorithm, Quota};
use sluice::check::{AdaptiveCheck, Answer, Check, Failure, FailureMode, Mode};
use sluice::store::local::LocalStore;
use sluice::store::redis::RedisStore;

/// Instants are synthetic milliseconds; 0 would mean "Redis TIME", so start far from it.
const T0: u64 = 1_000_000_000;

enum Subject {
    Local(LocalStore),
    Redis(RedisStore, RedisServer),
}

impl Subject {
    fn local() -> Subject {
        Subject::Local(LocalStore::default())
    }

    async fn redis() -> Subject {
        let server = RedisServer::start();
        let store = server.store().await;
        Subject::Redis(store, server)
    }

    async fn decide(&self, checks: &[Check], mode: Mode, now: u64) -> Answer {
        match self {
            Subject::Local(s) => s.decide_at(checks, mode, now),
            Subject::Redis(s, _) => s.decide_at(checks, mode, now).await.expect("redis decision"),
        }
    }

    async fn consume(&self, checks: &[Check], now: u64) -> Answer {
        self.decide(checks, Mode::Consume, now).await
    }

    /// Marks a reputation key bad for an hour.
    fn set_reputation(&self, key: &str) {
        match self {
            Subject::Local(s) => s.set_reputation_at(key, 3_600_000, T0),
            Subject::Redis(_, server) => {
                let _: () = server.cmd(redis::cmd("SET").arg(key).arg("bad").arg("PX").arg(3_600_000));
            }
        }
    }

    async fn report(&self, keys: &[(String, u64)], now: u64) {
        let failures: Vec<Failure> = keys
            .iter()
            .map(|(key, window_ms)| Failure {
                key: key.clone(),
                window_ms: *window_ms,
                adaptive: true,
                penalty: None,
            })
            .collect();
        match self {
            Subject::Local(s) => s.report_failures_at(&failures, now),
            Subject::Redis(s, _) => s.report_failures_at(&failures, now).await.expect("report"),
        }
    }
}

fn check(key: &str, algorithm: Algorithm, limit: u64, window_ms: u64) -> Check {
    let quota = Quota { limit, window_ms, cost: 1 };
    Check::plain(format!("sluice:{{{key}}}"), algorithm, quota, FailureMode::Local)
}

fn adaptive(mut c: Check, client_factors: u8, reputation: &[&str]) -> Check {
    c.adaptive = Some(AdaptiveCheck {
        settings: Adaptive::default(),
        client_factors,
        reputation: reputation.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>().into(),
    });
    c
}

const ALGORITHMS: [Algorithm; 3] = [Algorithm::SlidingWindow, Algorithm::SlidingLog, Algorithm::FixedWindow];

async fn admits_exactly_the_limit(s: Subject) {
    for algorithm in ALGORITHMS {
        let c = [check(&format!("t:{algorithm}"), algorithm, 7, 60_000)];
        let mut allowed = 0;
        for i in 0..12 {
            let o = s.consume(&c, T0 + i).await;
            if o.admitted {
                allowed += 1;
                assert_eq!(o.verdicts[0].remaining, 7 - allowed, "{algorithm}");
            } else {
                assert_eq!(o.verdicts[0].remaining, 0, "{algorithm}");
                assert!(o.verdicts[0].retry_after_ms > 0, "{algorithm}");
            }
        }
        assert_eq!(allowed, 7, "{algorithm}");
    }
}

async fn all_or_nothing_across_tiers(s: Subject) {
    for algorithm in ALGORITHMS {
        let wide = check(&format!("wide:{algorithm}"), algorithm, 5, 60_000);
        let narrow = check(&format!("narrow:{algorithm}"), algorithm, 3, 60_000);
        let both = [wide.clone(), narrow];
        let admitted = {
            let mut n = 0;
            for i in 0..6 {
                if s.consume(&both, T0 + i).await.admitted {
                    n += 1;
                }
            }
            n
        };
        assert_eq!(admitted, 3, "{algorithm}: the narrow tier admits three");
        // The three denials consumed nothing in the wide tier: it still has two left.
        let o = s.consume(std::slice::from_ref(&wide), T0 + 10).await;
        assert!(o.admitted && o.verdicts[0].remaining == 1, "{algorithm}: {o:?}");
        assert!(s.consume(std::slice::from_ref(&wide), T0 + 11).await.admitted, "{algorithm}");
        assert!(!s.consume(std::slice::from_ref(&wide), T0 + 12).await.admitted, "{algorithm}");
    }
}

async fn retry_after_is_exact(s: Subject) {
    for algorithm in ALGORITHMS {
        let c = [check(&format!("retry:{algorithm}"), algorithm, 4, 1_000)];
        // Spread the four over the window so the answer depends on which one leaves first.
        for (i, at) in [10, 200, 450, 800].into_iter().enumerate() {
            assert!(s.consume(&c, T0 + at).await.admitted, "{algorithm} #{i}");
        }
        let denied = s.consume(&c, T0 + 900).await;
        assert!(!denied.admitted, "{algorithm}");
        let retry = denied.verdicts[0].retry_after_ms;
        assert!(retry > 0, "{algorithm}");
        assert!(
            !s.decide(&c, Mode::DryRun, T0 + 900 + retry - 1).await.admitted,
            "{algorithm}: retry - 1 ms must still deny"
        );
        assert!(
            s.consume(&c, T0 + 900 + retry).await.admitted,
            "{algorithm}: retrying after {retry} ms must pass"
        );
        if algorithm == Algorithm::SlidingLog {
            // Exact: the oldest entry (at 10) leaves the window at 1010.
            assert_eq!(retry, 110);
        }
    }
}

async fn sliding_not_fixed(s: Subject) {
    // Ten requests at the very end of one window, then the next window begins.
    let c = [check("sliding", Algorithm::SlidingWindow, 10, 1_000)];
    let start = T0 - T0 % 1_000 + 1_000;
    for i in 0..10 {
        assert!(s.consume(&c, start + 990 + i % 5).await.admitted);
    }
    // 10 ms into the next window the previous one still weighs 10 * 990/1000 = 9.9: nothing passes.
    assert!(!s.consume(&c, start + 1_010).await.admitted, "no double burst at the boundary");
    // Halfway, the previous weighs 5: exactly five pass.
    let mut admitted = 0;
    for _ in 0..10 {
        if s.consume(&c, start + 1_500).await.admitted {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "weighted formula at half a window");
    // A window later the five of the previous window weigh 2.5; after this request 6.5 units are
    // left, reported as 6.
    let o = s.decide(&c, Mode::DryRun, start + 2_500).await;
    assert_eq!(o.verdicts[0].remaining, 6, "floor(10 - 5 * 0.5 - 1)");
}

/// envoyproxy/ratelimit's counting: windows aligned to the epoch, the limit again at once in the
/// next window (the double burst the sliding window avoids), and the reset always the window's end.
async fn fixed_is_fixed(s: Subject) {
    let c = [check("fixed", Algorithm::FixedWindow, 10, 1_000)];
    let start = T0 - T0 % 1_000 + 1_000;
    for i in 0..10 {
        let o = s.consume(&c, start + 990 + i % 5).await;
        assert!(o.admitted);
        assert_eq!(o.verdicts[0].reset_after_ms, 1_000 - 990 - i % 5, "the end of the window");
    }
    let denied = s.consume(&c, start + 999).await;
    assert!(!denied.admitted);
    assert_eq!((denied.verdicts[0].retry_after_ms, denied.verdicts[0].reset_after_ms), (1, 1));
    let mut admitted = 0;
    for _ in 0..12 {
        admitted += usize::from(s.consume(&c, start + 1_010).await.admitted);
    }
    assert_eq!(admitted, 10, "the whole limit again right after the edge");
    // A look at a fresh key: allowed, nothing counted, and still a reset that is not 0.
    let mut look = check("fixed:look", Algorithm::FixedWindow, 1, 60_000);
    look.quota.cost = 0;
    let o = s.consume(&[look], T0).await;
    assert!(o.admitted);
    assert_eq!(o.verdicts[0].reset_after_ms, 60_000 - T0 % 60_000);
}

async fn dry_run_and_shadow_consume_as_documented(s: Subject) {
    let c = [check("dry", Algorithm::SlidingWindow, 2, 60_000)];
    for i in 0..5 {
        let o = s.decide(&c, Mode::DryRun, T0 + i).await;
        assert!(o.admitted && o.verdicts[0].remaining == 1, "a dry run changes nothing");
    }
    let mut shadow = check("shadow", Algorithm::SlidingLog, 1, 60_000);
    shadow.shadow = true;
    let enforcing = check("enforcing", Algorithm::SlidingLog, 3, 60_000);
    let both = [shadow, enforcing];
    let first = s.consume(&both, T0).await;
    assert!(first.admitted && first.verdicts[0].allowed);
    let second = s.consume(&both, T0 + 1).await;
    assert!(second.admitted, "a shadow tier never denies");
    assert!(!second.verdicts[0].allowed, "but it reports that it would have");
    assert!(s.consume(&both, T0 + 2).await.admitted);
    assert!(!s.consume(&both, T0 + 3).await.admitted, "the enforcing tier still limits");
}

async fn cost_counts_units(s: Subject) {
    for algorithm in ALGORITHMS {
        let mut c = check(&format!("cost:{algorithm}"), algorithm, 10, 60_000);
        c.quota.cost = 4;
        let c = [c];
        assert_eq!(s.consume(&c, T0).await.verdicts[0].remaining, 6);
        assert_eq!(s.consume(&c, T0 + 1).await.verdicts[0].remaining, 2);
        let denied = s.consume(&c, T0 + 2).await;
        assert!(!denied.admitted);
        assert_eq!(denied.verdicts[0].remaining, 2, "{algorithm}: two units are left, not enough for four");
    }
}

macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod in_process {
            $(#[tokio::test] async fn $test() { super::$test(super::Subject::local()).await })*
        }
        mod on_redis {
            $(#[tokio::test] async fn $test() { super::$test(super::Subject::redis().await).await })*
        }
    };
}

async fn each_factor_adds_its_weight(s: Subject) {
    use sluice::algorithm::adaptive::{BURST, DENY_RANGE, FAILED_LOGINS, PARAMETERS, REPUTATION, USER_AGENT};
    // Client-side factors arrive as bits; the store adds nothing of its own here.
    for (bits, score) in [
        (0, 0),
        (USER_AGENT, 20),
        (PARAMETERS, 40),
        (DENY_RANGE, 50),
        (USER_AGENT | PARAMETERS | DENY_RANGE, 100),
    ] {
        let c = [adaptive(check(&format!("f:{bits}"), Algorithm::SlidingWindow, 100, 60_000), bits, &[])];
        let o = s.consume(&c, T0).await;
        assert_eq!((o.verdicts[0].score, o.verdicts[0].factors), (score, bits), "bits {bits}");
        assert_eq!(o.verdicts[0].limit, 100 - u64::from(score) / 2, "bits {bits}");
    }
    // Reputation: set on the IP's key.
    s.set_reputation("sluice:{rep}:ip:192.0.2.66");
    let c =
        [adaptive(check("f:rep", Algorithm::SlidingWindow, 100, 60_000), 0, &["sluice:{rep}:ip:192.0.2.66"])];
    let o = s.consume(&c, T0).await;
    assert_eq!((o.verdicts[0].score, o.verdicts[0].factors), (50, REPUTATION));
    // Burst: more than 2 x limit attempts in the window (denied ones count as attempts).
    let c = [adaptive(check("f:burst", Algorithm::SlidingLog, 3, 60_000), 0, &[])];
    for i in 0..6 {
        assert_eq!(s.consume(&c, T0 + i).await.verdicts[0].score, 0, "attempt {i}");
    }
    let o = s.consume(&c, T0 + 6).await;
    assert_eq!((o.verdicts[0].score, o.verdicts[0].factors), (30, BURST), "the 7th attempt is a burst");
    // Failed logins: three reported failures on the tier-key.
    let c = [adaptive(check("f:fail", Algorithm::SlidingWindow, 100, 60_000), 0, &[])];
    for _ in 0..3 {
        assert_eq!(s.consume(&c, T0).await.verdicts[0].score, 0);
        s.report(&[(c[0].key.clone(), 60_000)], T0).await;
    }
    let o = s.consume(&c, T0 + 1).await;
    assert_eq!((o.verdicts[0].score, o.verdicts[0].factors), (30, FAILED_LOGINS));
    // ...and they are forgotten a window after the first.
    assert_eq!(s.consume(&c, T0 + 60_000).await.verdicts[0].score, 0);
}

async fn missing_user_agent_and_bad_reputation_shrink_100_to_65(s: Subject) {
    use sluice::algorithm::adaptive::USER_AGENT;
    s.set_reputation("sluice:{rep}:ip:198.51.100.9");
    let c = [adaptive(
        check("shrink", Algorithm::SlidingWindow, 100, 60_000),
        USER_AGENT,
        &["sluice:{rep}:ip:198.51.100.9"],
    )];
    for i in 1..=65 {
        let o = s.consume(&c, T0 + i).await;
        assert!(o.admitted, "request {i}");
        assert_eq!(o.verdicts[0].score, 70);
    }
    let o = s.consume(&c, T0 + 66).await;
    assert!(!o.admitted, "the 66th is denied");
    assert_eq!(o.verdicts[0].limit, 65);
}

async fn a_steady_heavy_key_earns_a_higher_limit_up_to_the_cap(s: Subject) {
    let mut c = check("heavy", Algorithm::SlidingWindow, 10, 1_000);
    c.baseline = Some(Baseline { sensitivity_percent: 150, max_percent: 300 });
    let c = [c];
    let start = T0 - T0 % 1_000;
    let mut used = Vec::new();
    for w in 0..60 {
        // A steady client: every 50 ms, as much as it is allowed.
        let mut n = 0;
        for t in (0..1_000).step_by(50) {
            while s.consume(&c, start + w * 1_000 + t).await.admitted {
                n += 1;
            }
        }
        used.push(n);
    }
    assert!(used[0] <= 10, "the base limit first: {used:?}");
    let last = *used.last().expect("windows");
    assert!((25..=30).contains(&last), "near the cap of 300% after a while: {used:?}");
    let o = s.decide(&c, Mode::DryRun, start + 60_000).await;
    assert_eq!(o.verdicts[0].limit, 30, "{used:?}");
    // A quiet key stays at the base limit.
    let mut quiet = c[0].clone();
    quiet.key = "sluice:{quiet}".into();
    assert_eq!(s.decide(&[quiet], Mode::DryRun, start + 50_000).await.verdicts[0].limit, 10);
}

on_both_stores!(
    a_steady_heavy_key_earns_a_higher_limit_up_to_the_cap,
    each_factor_adds_its_weight,
    missing_user_agent_and_bad_reputation_shrink_100_to_65,
    admits_exactly_the_limit,
    all_or_nothing_across_tiers,
    retry_after_is_exact,
    sliding_not_fixed,
    fixed_is_fixed,
    dry_run_and_shadow_consume_as_documented,
    cost_counts_units,
);

/// A reload that lengthens a baseline tier's window within the same fold point stores the
/// baseline again, so its key lives 64 of the new windows after its last write, not of the old.
#[tokio::test]
async fn a_baseline_key_follows_a_longer_window() {
    let Subject::Redis(store, server) = Subject::redis().await else { unreachable!() };
    let mut c = check("reload:b", Algorithm::SlidingWindow, 5, 60_000);
    c.baseline = Some(Baseline { sensitivity_percent: 150, max_percent: 300 });
    for now in [T0, T0 + 1_000] {
        assert!(
            store.decide_at(std::slice::from_ref(&c), Mode::Consume, now).await.expect("decision").admitted
        );
    }
    // T0 is 40 s into both a 60 s and a 120 s window: the fold point stays where it is.
    c.quota.window_ms = 120_000;
    assert!(
        store
            .decide_at(std::slice::from_ref(&c), Mode::Consume, T0 + 2_000)
            .await
            .expect("decision")
            .admitted
    );
    let ttl: i64 = server.cmd(redis::cmd("PTTL").arg("sluice:{reload:b}:base"));
    let most = 65 * 120_000 - 42_000;
    assert!(ttl <= most && ttl > most - 10_000, "TTL {ttl}, expected about {most}");
}

/// A reload that lengthens a window keeps what the key counted: its expiry follows the new length
/// at the next check of the key, counted or not (here a look, cost 0), on both window algorithms,
/// though the key goes on counting the window it holds. (Set once a window, the old expiry would
/// drop the counts when the shorter window's came.)
#[tokio::test]
async fn a_window_key_follows_a_longer_window() {
    let Subject::Redis(store, server) = Subject::redis().await else { unreachable!() };
    for (algorithm, suffix) in [(Algorithm::SlidingWindow, "sw"), (Algorithm::FixedWindow, "fw")] {
        for (way, costs) in [("counted", [1, 1]), ("looked", [0, 0])] {
            let name = format!("reload:{suffix}:{way}");
            let mut c = check(&name, algorithm, 5, 5_000);
            // T0 is on a 5 s window's edge: the 5 s window [T0, T0 + 5 s) lies within a 60 s one.
            let t = T0 - T0 % 5_000;
            assert!(
                store.decide_at(std::slice::from_ref(&c), Mode::Consume, t).await.expect("first").admitted
            );
            c.quota.window_ms = 60_000;
            for (now, cost) in [t + 1_000, t + 2_000].into_iter().zip(costs) {
                c.quota.cost = cost;
                let answer =
                    store.decide_at(std::slice::from_ref(&c), Mode::Consume, now).await.expect("after");
                assert!(answer.admitted);
            }
            let key = format!("sluice:{{{name}}}:{suffix}");
            let ttl: i64 = server.cmd(redis::cmd("PTTL").arg(&key));
            // From the window the key holds (it began at t): three new windows for a sliding
            // window, one for a fixed window; far past the old 15 s and 5 s.
            let most = if suffix == "sw" { 3 * 60_000 - 1_000 } else { 60_000 - 1_000 };
            assert!(ttl <= most && ttl > most - 10_000, "{key}: TTL {ttl}, expected about {most}");
            let count: u64 = server.cmd(redis::cmd("HGET").arg(&key).arg("c"));
            assert_eq!(count, 1 + costs.iter().sum::<u64>(), "{key}: the counts are kept");
        }
    }
}

/// Every key the script writes carries a TTL, so nothing in Redis grows without bound, and no
/// shorter than its state matters. The second decision, later in the same windows, takes the
/// paths that write a count alone (`HINCRBY`) and leave the expiry as the first one set it.
#[tokio::test]
async fn redis_keys_expire() {
    let Subject::Redis(store, server) = Subject::redis().await else { unreachable!() };
    let mut baseline = check("ttl:b", Algorithm::SlidingWindow, 5, 60_000);
    baseline.baseline = Some(Baseline { sensitivity_percent: 150, max_percent: 300 });
    let checks = [
        check("ttl:w", Algorithm::SlidingWindow, 5, 60_000),
        check("ttl:l", Algorithm::SlidingLog, 5, 30_000),
        check("ttl:f", Algorithm::FixedWindow, 5, 60_000),
        baseline,
        adaptive(check("ttl:a", Algorithm::SlidingWindow, 5, 60_000), 0, &[]),
    ];
    for now in [T0, T0 + 1_000] {
        assert!(store.decide_at(&checks, Mode::Consume, now).await.expect("decision").admitted);
    }
    let mut keys: Vec<String> = server.cmd(redis::cmd("KEYS").arg("*"));
    keys.sort();
    let expected = ["a}:att", "a}:sw", "b}:base", "b}:sw", "f}:fw", "l}:log", "l}:seq", "w}:sw"];
    assert_eq!(keys, expected.map(|k| format!("sluice:{{ttl:{k}")), "{keys:?}");
    // T0 is 40 s into a 60 s window. The TTLs, in ms from T0, and the least each must keep (a
    // test may take a few seconds): a sliding window's key three windows from the start of its
    // window; a fixed window's until its window ends; a log's a window from its last entry; a
    // baseline's 65 windows from the start of its window, so at least 64 after its last write; an
    // adaptive attempts counter a window from its first unit.
    for key in keys {
        let ttl: i64 = server.cmd(redis::cmd("PTTL").arg(&key));
        let most = match key.rsplit(':').next() {
            Some("sw") => 140_000,
            Some("fw") => 20_000,
            Some("log" | "seq") => 30_000,
            Some("base") => 65 * 60_000 - 40_000,
            Some("att") => 60_000,
            other => panic!("unexpected key {other:?}"),
        };
        assert!(ttl <= most && ttl > most - 10_000, "{key} has TTL {ttl}, expected about {most}");
    }
}
