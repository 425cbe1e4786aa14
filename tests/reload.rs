//! Hot reload under load: a changed file is swapped in within a second with no failed RPC and the
//! counts kept; a broken file keeps the old limits serving and counts a failed reload.

mod common;

use std::time::{Duration, Instant};

use common::{Load, SluiceServer, check, http_get, request};

fn tiers(limit: u64) -> String {
    format!("tiers:\n  - name: api\n    key: [user]\n    limit: {limit}\n    window: 1h\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_file_is_swapped_in_and_a_broken_one_is_refused() {
    let server = SluiceServer::start(&tiers(3), None).await;
    let mut client = server.client().await;
    let load = Load::start(server.grpc_addr, 4, Duration::from_millis(2), |c, n| {
        request(&[("user", &format!("load-{c}-{}", n % 10))])
    });

    for _ in 0..3 {
        assert!(check(&mut client, request(&[("user", "alice")])).await.allowed);
    }
    assert!(!check(&mut client, request(&[("user", "alice")])).await.allowed, "3 per hour");

    std::fs::write(server.config_path(), tiers(10)).expect("rewrite the config");
    let changed = Instant::now();
    let d = loop {
        let d = check(&mut client, request(&[("user", "alice")])).await;
        if d.limit == 10 {
            break d;
        }
        assert!(changed.elapsed() < Duration::from_secs(3), "the new limit never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(changed.elapsed() < Duration::from_millis(1_500), "took {:?}", changed.elapsed());
    assert!(d.allowed);
    assert_eq!(d.remaining, 10 - 3 - 1, "alice's three earlier requests still count");

    std::fs::write(server.config_path(), "tiers:\n  - name: api\n    limit: ten\n")
        .expect("break the config");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let d = check(&mut client, request(&[("user", "bob")])).await;
    assert_eq!(d.limit, 10, "the old configuration keeps serving");
    let metrics = http_get(server.http_addr, "/metrics").await.1;
    assert!(metrics.contains("sluice_config_reloads_total{result=\"error\"}"), "{metrics}");
    assert!(metrics.contains("sluice_config_reloads_total{result=\"ok\"}"), "{metrics}");

    let (seen, failed) = load.finish().await;
    assert!(failed.is_empty(), "{} failed RPCs during the reloads: {:?}", failed.len(), failed.first());
    assert!(seen.len() > 100);
}
