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

/// The errors counted by `sluice_config_reloads_total` so far (the recorder is shared by every
/// server of this test binary).
async fn failed_reloads(server: &SluiceServer) -> u64 {
    let metrics = http_get(server.http_addr, "/metrics").await.1;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_config_reloads_total{result=\"error\"} "))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// A truncated file (an editor's or a ConfigMap update's write caught half-way) is a failed reload:
/// the tiers keep limiting until a whole file comes back.
#[tokio::test]
async fn a_truncated_file_keeps_the_tiers_serving() {
    let server = SluiceServer::start(&tiers(2), None).await;
    let mut client = server.client().await;
    let failed_before = failed_reloads(&server).await;

    std::fs::write(server.config_path(), "").expect("truncate the config");
    let truncated = Instant::now();
    assert_eventually!(
        failed_reloads(&server).await > failed_before,
        Duration::from_secs(5),
        "the empty file was never counted as a failed reload"
    );
    // The reloader looks every second: past two looks, the empty file has surely been seen.
    tokio::time::sleep(Duration::from_millis(2_200).saturating_sub(truncated.elapsed())).await;
    for n in 0..2 {
        let d = check(&mut client, request(&[("user", "carol")])).await;
        assert!(d.allowed && d.tier == "api" && d.limit == 2, "request {n}: {d:?}");
    }
    let d = check(&mut client, request(&[("user", "carol")])).await;
    assert!(!d.allowed, "the tier still limits with the file empty: {d:?}");

    std::fs::write(server.config_path(), tiers(5)).expect("restore the config");
    assert_eventually!(
        check(&mut client, request(&[("user", "dave")])).await.limit == 5,
        Duration::from_secs(5),
        "the restored file was never loaded"
    );
}

#[tokio::test]
async fn an_edited_envoy_domain_file_is_reloaded_without_a_signal() {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        RateLimitDescriptor, rate_limit_descriptor,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

    let domain = |per_hour: u32| {
        format!(
            "domain: api\ndescriptors:\n  - key: user\n    rate_limit: {{unit: hour, requests_per_unit: {per_hour}}}\n"
        )
    };
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("api.yaml"), domain(2)).expect("write the domain");
    let yaml = format!("envoy:\n  paths: [\"{}\"]\ntiers: []\n", dir.path().display());
    let server = SluiceServer::start(&yaml, None).await;
    let mut client =
        RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr)).await.expect("connect");
    let mut limit = async || {
        let request = RateLimitRequest {
            domain: "api".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![rate_limit_descriptor::Entry { key: "user".into(), value: "ann".into() }],
                ..Default::default()
            }],
            hits_addend: 0,
        };
        let response = client.should_rate_limit(request).await.expect("ShouldRateLimit").into_inner();
        response.statuses[0].current_limit.as_ref().expect("a limit").requests_per_unit
    };
    assert_eq!(limit().await, 2);

    std::fs::write(dir.path().join("api.yaml"), domain(7)).expect("edit the domain");
    let changed = Instant::now();
    while limit().await != 7 {
        assert!(changed.elapsed() < Duration::from_secs(3), "the edited domain file was never reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A mounted ConfigMap, as the Helm chart mounts domain files: each file a symlink through `..data`,
/// which the kubelet points at a new directory in one rename. Sluice sees the new content without a
/// restart.
#[tokio::test]
async fn a_configmap_update_by_symlink_swap_is_reloaded() {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        RateLimitDescriptor, rate_limit_descriptor,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use std::os::unix::fs::symlink;

    let domain = |per_hour: u32| {
        format!(
            "domain: cm\ndescriptors:\n  - key: user\n    rate_limit: {{unit: hour, requests_per_unit: {per_hour}}}\n"
        )
    };
    let mount = tempfile::tempdir().expect("dir");
    let version = |name: &str, per_hour: u32| {
        let dir = mount.path().join(name);
        std::fs::create_dir(&dir).expect("a version directory");
        std::fs::write(dir.join("cm.yaml"), domain(per_hour)).expect("write the domain");
    };
    version("..2026_11_30_v1", 3);
    symlink("..2026_11_30_v1", mount.path().join("..data")).expect("..data");
    symlink("..data/cm.yaml", mount.path().join("cm.yaml")).expect("the file's link");
    let yaml = format!("envoy:\n  paths: [\"{}\"]\ntiers: []\n", mount.path().display());
    let server = SluiceServer::start(&yaml, None).await;
    let mut client =
        RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr)).await.expect("connect");
    let mut limit = async || {
        let request = RateLimitRequest {
            domain: "cm".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![rate_limit_descriptor::Entry { key: "user".into(), value: "ann".into() }],
                ..Default::default()
            }],
            hits_addend: 0,
        };
        let response = client.should_rate_limit(request).await.expect("ShouldRateLimit").into_inner();
        response.statuses[0].current_limit.as_ref().map_or(0, |l| l.requests_per_unit)
    };
    assert_eq!(limit().await, 3);

    // The kubelet's update: a new version directory, a new link, renamed over `..data` at once.
    version("..2026_11_30_v2", 8);
    symlink("..2026_11_30_v2", mount.path().join("..data_tmp")).expect("the new link");
    std::fs::rename(mount.path().join("..data_tmp"), mount.path().join("..data")).expect("swap");
    let changed = Instant::now();
    while limit().await != 8 {
        assert!(changed.elapsed() < Duration::from_secs(3), "the swapped ConfigMap was never reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
