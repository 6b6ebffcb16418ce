//! The Redis store against a real redis-server (Debian's package; `make test` installs it):
//! the Lua script must give the numbers `gcra` gives, share state between limiters as
//! replicas do, and fail by policy, quickly, when Redis is gone.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_limits::redis_store::RedisStore;
use keel_limits::{Caller, FailurePolicy, KeyLimits, Limiter, Refusal, Store};

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (make test-deps installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    }
}

async fn limiter(url: &str, limits: KeyLimits, policy: FailurePolicy) -> Arc<Limiter> {
    let store = Arc::new(RedisStore::new(url, Duration::from_millis(200)).unwrap());
    tokio::spawn(store.clone().probe_forever(Duration::from_millis(100)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store.is_up() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Arc::new(Limiter::new(limits, Store::Redis(store), policy))
}

fn caller(id: &str) -> Caller {
    Caller {
        id: Arc::from(id),
        limits: KeyLimits::default(),
    }
}

#[tokio::test]
async fn replicas_share_one_request_budget_per_key() {
    let redis = start_redis();
    let limits = KeyLimits {
        requests_per_minute: Some(5),
        ..Default::default()
    };
    let (a, b) = (
        limiter(&redis.url, limits, FailurePolicy::Open).await,
        limiter(&redis.url, limits, FailurePolicy::Open).await,
    );
    let alice = caller("alice-shared");
    let mut remaining = Vec::new();
    for i in 0..5 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let Ok(admitted) = replica.admit(&alice, false).await else {
            panic!("request {i} is within the limit")
        };
        remaining.push(admitted.readings[0].verdict.remaining);
    }
    assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
    match b.admit(&alice, false).await {
        Err(Refusal::Limited { reading, .. }) => {
            // One request per 12 s; rounding on Redis's clock leaves a little slack.
            let wait = reading.verdict.retry_after_us;
            assert!((11_900_000..=12_000_000).contains(&wait), "{wait}");
        }
        _ => panic!("the sixth request within a minute must be refused"),
    }
    // Another key has a budget of its own.
    assert!(a.admit(&caller("bob-shared"), false).await.is_ok());
}

#[tokio::test]
async fn tokens_are_charged_after_the_work_and_block_once_spent() {
    let redis = start_redis();
    let limits = KeyLimits {
        tokens_per_minute: Some(100),
        ..Default::default()
    };
    let l = limiter(&redis.url, limits, FailurePolicy::Open).await;
    let carol = caller("carol");
    let Ok(admitted) = l.admit(&carol, false).await else {
        panic!("a fresh key has room")
    };
    assert_eq!(admitted.readings[0].verdict.remaining, 100);
    admitted.charge.usage(250, None);
    // The charge settles in the background.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match l.admit(&carol, false).await {
            Err(Refusal::Limited { reading, .. }) => {
                let wait = reading.verdict.retry_after_us;
                assert!((90_000_000..=90_600_000).contains(&wait), "{wait}");
                break;
            }
            _ => assert!(Instant::now() < deadline, "the charge never landed"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_dead_store_fails_open_or_closed_without_waiting() {
    let mut redis = start_redis();
    let limits = KeyLimits {
        requests_per_minute: Some(1000),
        ..Default::default()
    };
    let open = limiter(&redis.url, limits, FailurePolicy::Open).await;
    let closed = limiter(&redis.url, limits, FailurePolicy::Closed).await;
    assert!(open.store_report().1 && closed.store_report().1);
    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    let dave = caller("dave");
    // The first call after the death may spend its timeout finding out; later ones must not.
    let _ = open.admit(&dave, false).await;
    let _ = closed.admit(&dave, false).await;
    let started = Instant::now();
    assert!(open.admit(&dave, false).await.is_ok(), "fail open admits");
    assert!(matches!(
        closed.admit(&dave, false).await,
        Err(Refusal::StoreDown(_))
    ));
    assert!(started.elapsed() < Duration::from_millis(50));
    let (report, serving) = closed.store_report();
    assert!(!serving && report.contains("unreachable"), "{report}");
    assert!(open.store_report().1);
}
