use std::sync::Mutex;

use super::*;
use crate::config::Config;

/// 2025-06-01T00:00:00Z.
const JUNE_1: u64 = 20_240 * 86_400;

/// A clock the test moves by hand; wall and monotonic time move together.
struct FakeClock {
    wall: SystemTime,
    mono: Instant,
    offset: Mutex<Duration>,
}

impl FakeClock {
    /// Starts `into_day` after midnight of 2025-06-01 (UTC).
    fn at(into_day: Duration) -> Arc<FakeClock> {
        Arc::new(FakeClock {
            wall: UNIX_EPOCH + Duration::from_secs(JUNE_1) + into_day,
            mono: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        })
    }

    fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

impl Clock for Arc<FakeClock> {
    fn now(&self) -> SystemTime {
        self.wall + *self.offset.lock().unwrap()
    }
    fn instant(&self) -> Instant {
        self.mono + *self.offset.lock().unwrap()
    }
}

fn hm(h: u64, m: u64) -> Duration {
    Duration::from_secs(h * 3600 + m * 60)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn route(name: &str, max_calls: u64, max_minutes: u64) -> Route {
    let config = Config::from_toml_str("", std::iter::empty()).unwrap();
    let mut r = Route::clone(config.default_route());
    r.name = name.to_owned();
    r.call.daily_max_calls = max_calls;
    r.call.daily_max_minutes = max_minutes;
    r
}

fn budgets(clock: &Arc<FakeClock>) -> Arc<Budgets> {
    Budgets::open_with(None, Box::new(Arc::clone(clock))).0
}

#[test]
fn calls_limit_refuses_the_next_call_until_midnight_and_spares_other_routes() {
    let clock = FakeClock::at(hm(23, 0));
    let b = budgets(&clock);
    let sales = route("sales", 2, 0);
    let first = b.try_admit(&sales).unwrap();
    drop(first);
    let _second = b.try_admit(&sales).unwrap();
    let refused = b.try_admit(&sales).unwrap_err();
    assert_eq!(refused.limit, Limit::Calls);
    assert_eq!((refused.used, refused.max), (2, 2));
    assert_eq!(refused.retry_after, secs(3600));
    assert_eq!(refused.route, "sales");
    assert_eq!(b.usage("sales").calls, 2, "a refusal is not counted");
    // Another route has its own budget, and no limit at all here.
    for _ in 0..5 {
        drop(b.try_admit(&route("support", 0, 0)).unwrap());
    }
    assert_eq!(b.usage("support").calls, 5);
}

#[test]
fn minutes_limit_counts_running_calls_and_ended_ones() {
    let clock = FakeClock::at(hm(9, 0));
    let b = budgets(&clock);
    let r = route("call", 0, 1);
    let a = b.try_admit(&r).unwrap();
    clock.advance(secs(30));
    let c = b.try_admit(&r).unwrap();
    assert_eq!(b.usage("call").time, secs(30));
    clock.advance(secs(15));
    // 45 s + 15 s running: the minute is used up, though both calls still run.
    let refused = b.try_admit(&r).unwrap_err();
    assert_eq!(refused.limit, Limit::Minutes);
    assert_eq!((refused.used, refused.max), (1, 1));
    drop(a);
    drop(c);
    assert_eq!(
        b.usage("call"),
        Usage {
            calls: 2,
            time: secs(60)
        }
    );
    // Ended calls stop growing.
    clock.advance(secs(100));
    assert_eq!(b.usage("call").time, secs(60));
    assert!(b.try_admit(&r).is_err());
}

#[test]
fn below_the_minutes_limit_a_call_is_admitted() {
    let clock = FakeClock::at(hm(9, 0));
    let b = budgets(&clock);
    let r = route("call", 0, 2);
    let a = b.try_admit(&r).unwrap();
    clock.advance(secs(119));
    drop(a);
    assert!(b.try_admit(&r).is_ok(), "119 s of 120");
}

#[test]
fn a_ticket_charges_its_duration_when_dropped() {
    let clock = FakeClock::at(hm(12, 0));
    let b = budgets(&clock);
    let t = b.try_admit(&route("call", 0, 0)).unwrap();
    assert_eq!(t.route(), "call");
    clock.advance(secs(90));
    drop(t);
    clock.advance(secs(30));
    assert_eq!(
        b.usage("call"),
        Usage {
            calls: 1,
            time: secs(90)
        }
    );
}

#[test]
fn a_cancelled_ticket_uses_nothing() {
    let clock = FakeClock::at(hm(12, 0));
    let b = budgets(&clock);
    let r = route("call", 1, 0);
    let t = b.try_admit(&r).unwrap();
    clock.advance(secs(5));
    t.cancel();
    assert_eq!(b.usage("call"), Usage::default());
    assert!(
        b.try_admit(&r).is_ok(),
        "the cancelled call gave its place back"
    );
}

#[test]
fn midnight_resets_the_counts_and_splits_a_running_call() {
    let clock = FakeClock::at(hm(23, 59));
    let b = budgets(&clock);
    let r = route("call", 1, 0);
    let running = b.try_admit(&r).unwrap();
    assert_eq!(b.try_admit(&r).unwrap_err().retry_after, secs(60));
    clock.advance(secs(60));
    // 00:00:00: a new day. The running call counted as yesterday's call.
    assert_eq!(
        b.usage("call"),
        Usage {
            calls: 0,
            time: Duration::ZERO
        }
    );
    clock.advance(secs(30));
    let today = b.try_admit(&r).unwrap();
    assert_eq!(
        b.usage("call").time,
        secs(30),
        "only the part after midnight"
    );
    clock.advance(secs(10));
    drop(running);
    drop(today);
    assert_eq!(
        b.usage("call"),
        Usage {
            calls: 1,
            time: secs(50)
        }
    );
}

#[test]
fn the_limits_are_those_of_the_route_snapshot() {
    let clock = FakeClock::at(hm(8, 0));
    let b = budgets(&clock);
    drop(b.try_admit(&route("call", 1, 0)).unwrap());
    assert!(b.try_admit(&route("call", 1, 0)).is_err());
    // Reloaded with a higher limit: today's count stays, the new limit applies.
    assert!(b.try_admit(&route("call", 2, 0)).is_ok());
    assert!(b.try_admit(&route("call", 0, 0)).is_ok(), "0: no limit");
    assert_eq!(b.usage("call").calls, 3);
}

#[test]
fn refusals_are_logged_once_a_minute_per_route_with_a_count() {
    let clock = FakeClock::at(hm(10, 0));
    let b = budgets(&clock);
    let r = route("call", 1, 0);
    let _t = b.try_admit(&r).unwrap();
    let other = route("other", 1, 0);
    let _o = b.try_admit(&other).unwrap();
    let log = |route: &Route| b.try_admit(route).unwrap_err().log;
    assert_eq!(log(&r), Some(1));
    assert_eq!(log(&r), None);
    assert_eq!(log(&other), Some(1), "each route has its own minute");
    clock.advance(secs(59));
    assert_eq!(log(&r), None);
    clock.advance(secs(1));
    assert_eq!(log(&r), Some(3), "the two quiet ones and this one");
    assert_eq!(log(&r), None);
}

#[test]
fn state_file_round_trip_keeps_todays_usage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("budgets.json");
    let clock = FakeClock::at(hm(14, 0));
    let (b, loaded) = Budgets::open_with(Some(path.clone()), Box::new(Arc::clone(&clock)));
    assert!(matches!(loaded, Loaded::Missing), "{loaded:?}");
    let ended = b.try_admit(&route("call", 0, 0)).unwrap();
    let running = b.try_admit(&route("sales", 0, 0)).unwrap();
    clock.advance(Duration::from_millis(12_345));
    drop(ended);
    b.save();
    assert!(
        !dir.path().join("budgets.json.tmp").exists(),
        "renamed into place"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["day"], "2025-06-01");
    assert_eq!(json["routes"]["call"]["calls"], 1);
    assert_eq!(json["routes"]["call"]["seconds"], 12.345);
    assert_eq!(
        json["routes"]["sales"]["seconds"], 12.345,
        "running time so far"
    );

    let (again, loaded) = Budgets::open_with(Some(path.clone()), Box::new(Arc::clone(&clock)));
    assert!(
        matches!(loaded, Loaded::Today(ref r) if r.len() == 2),
        "{loaded:?}"
    );
    let want = Usage {
        calls: 1,
        time: Duration::from_millis(12_345),
    };
    assert_eq!(again.usage("call"), want);
    assert_eq!(again.usage("sales"), want);
    drop(running);

    // The next day the file is ignored.
    clock.advance(hm(24, 0));
    let (tomorrow, loaded) = Budgets::open_with(Some(path), Box::new(Arc::clone(&clock)));
    assert!(
        matches!(loaded, Loaded::OtherDay(ref d) if d == "2025-06-01"),
        "{loaded:?}"
    );
    assert_eq!(tomorrow.usage("call"), Usage::default());
}

#[test]
fn a_corrupt_or_unreadable_state_file_starts_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::at(hm(14, 0));
    let today = state_file::day_name(JUNE_1 / 86_400);
    let cases = [
        "{\"version\": 1, \"day\": \"2025-06-01\", \"rou".to_owned(),
        "not json at all".to_owned(),
        format!("{{\"version\": 7, \"day\": \"{today}\", \"routes\": {{}}}}"),
        "{\"version\": 1, \"day\": \"June 1st\", \"routes\": {}}".to_owned(),
        format!(
            "{{\"version\": 1, \"day\": \"{today}\", \"routes\": {{\"call\": {{\"calls\": 1, \"seconds\": -5}}}}}}"
        ),
        format!(
            "{{\"version\": 1, \"day\": \"{today}\", \"routes\": {{\"call\": {{\"calls\": -1, \"seconds\": 5}}}}}}"
        ),
    ];
    for (i, text) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.json"));
        std::fs::write(&path, text).unwrap();
        let (b, loaded) = Budgets::open_with(Some(path.clone()), Box::new(Arc::clone(&clock)));
        assert!(matches!(loaded, Loaded::Unusable(_)), "{text}: {loaded:?}");
        assert_eq!(b.usage("call"), Usage::default());
        // The next save replaces it with a good one.
        drop(b.try_admit(&route("call", 0, 0)).unwrap());
        b.save();
        let (_, loaded) = Budgets::open_with(Some(path), Box::new(Arc::clone(&clock)));
        assert!(matches!(loaded, Loaded::Today(_)), "{loaded:?}");
    }
    // A directory where the file should be: unreadable, and saving fails without panic.
    let (b, loaded) =
        Budgets::open_with(Some(dir.path().to_path_buf()), Box::new(Arc::clone(&clock)));
    assert!(
        matches!(loaded, Loaded::Unusable(StateFileError::Read(_))),
        "{loaded:?}"
    );
    b.save();
    assert!(b.save_failing.load(Ordering::Relaxed));
}

#[test]
fn the_valid_file_for_today_is_read_as_written_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    std::fs::write(
        &path,
        r#"{"version": 1, "day": "2025-06-01", "routes": {"call": {"calls": 3, "seconds": 600}}}"#,
    )
    .unwrap();
    let clock = FakeClock::at(hm(14, 0));
    let (b, _) = Budgets::open_with(Some(path), Box::new(Arc::clone(&clock)));
    let refused = b.try_admit(&route("call", 0, 10)).unwrap_err();
    assert_eq!(
        (refused.limit, refused.used, refused.max),
        (Limit::Minutes, 10, 10)
    );
    assert!(b.try_admit(&route("call", 0, 11)).is_ok());
}

#[test]
fn day_names_match_the_calendar() {
    assert_eq!(state_file::day_name(0), "1970-01-01");
    assert_eq!(state_file::day_name(JUNE_1 / 86_400), "2025-06-01");
    assert_eq!(state_file::day_name(JUNE_1 / 86_400 + 30), "2025-07-01");
}

#[tokio::test]
async fn the_saver_writes_after_changes_and_stops_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("budgets.json");
    let clock = FakeClock::at(hm(14, 0));
    let (b, _) = Budgets::open_with(Some(path.clone()), Box::new(Arc::clone(&clock)));
    let stop = CancellationToken::new();
    let saver = tokio::spawn(Arc::clone(&b).run_saver(stop.clone()));
    let mut saves = b.saves.subscribe();
    let t = b.try_admit(&route("call", 0, 0)).unwrap();
    clock.advance(secs(7));
    drop(t);
    let read = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    // The admission may be saved on its own first; the hang-up follows within the
    // (paused) second.
    let saved = async {
        loop {
            saves.changed().await.unwrap();
            let n = *saves.borrow_and_update();
            if read()["routes"]["call"]["seconds"] == 7.0 {
                break n;
            }
        }
    };
    // A hang guard, not a timing threshold.
    let n = tokio::time::timeout(Duration::from_secs(30), saved)
        .await
        .expect("the saver never wrote the hang-up");
    assert!(n <= 2, "one save per change at most: {n}");
    assert_eq!(read()["routes"]["call"]["calls"], 1);
    stop.cancel();
    saver.await.unwrap();
    // Nothing changed since: the saver wrote nothing more before it stopped.
    assert_eq!(*saves.borrow(), n);
}
