//! Pause, resume and status per site and for `all`, and scheduled resumes (also across a
//! restart).

use backbeat::clock::iso8601_ms;
use serde_json::{json, Value};

use crate::common::api::{TestApi, T0};

#[tokio::test]
async fn pause_resume_and_status_per_site_and_all() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let control = api.engine.as_ref().unwrap().control.clone();
    let mut rx = control.subscribe("site1");
    assert!(!rx.borrow().paused);
    let r = api.call("POST", "crr/pause/site1", None).await;
    assert_eq!((r.status, r.json()), (200, json!({})));
    assert!(rx.has_changed().unwrap());
    assert!(rx.borrow_and_update().paused);
    assert_eq!(
        api.get_json("crr/status").await,
        json!({"site1": "disabled", "site2": "enabled"})
    );
    assert_eq!(
        api.get_json("crr/status/site1").await,
        json!({"site1": "disabled"})
    );
    assert_eq!(api.call("POST", "crr/pause", None).await.status, 200);
    assert_eq!(
        api.get_json("crr/status/all").await,
        json!({"site1": "disabled", "site2": "disabled"})
    );
    assert_eq!(api.call("POST", "crr/resume/site2", None).await.status, 200);
    assert_eq!(
        api.get_json("crr/status").await,
        json!({"site1": "disabled", "site2": "enabled"})
    );
    assert_eq!(api.call("POST", "crr/resume/all", None).await.status, 200);
    assert_eq!(
        api.get_json("crr/status").await,
        json!({"site1": "enabled", "site2": "enabled"})
    );
    assert!(!rx.borrow_and_update().paused);
    // The state survives a restart.
    assert_eq!(api.call("POST", "crr/pause/site2", None).await.status, 200);
    let api = api.restart().await;
    assert_eq!(
        api.get_json("crr/status").await,
        json!({"site1": "enabled", "site2": "disabled"})
    );
    let control = api.engine.as_ref().unwrap().control.clone();
    assert!(control.subscribe("site2").borrow().paused);
    api.stop().await;
}

async fn wait_for(api: &TestApi, route: &str, want: Value) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = api.get_json(route).await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{route}: {got} != {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn scheduled_resume_fires_also_after_a_restart() {
    let now = T0 + 123;
    let api = TestApi::start(&["site1", "site2"], now).await;
    assert_eq!(api.call("POST", "crr/pause", None).await.status, 200);
    // Default 6 h with an empty body, {} or hours 0; fractional hours accepted.
    for (site, body, hours) in [
        ("site1", &b""[..], 6.0),
        ("site1", b"{}", 6.0),
        ("site1", b"{\"hours\":0}", 6.0),
        ("site2", b"{\"hours\":1.5}", 1.5),
    ] {
        let r = api
            .call("POST", &format!("crr/resume/{site}/schedule"), Some(body))
            .await;
        assert_eq!((r.status, r.json()), (200, json!({})));
        let at = iso8601_ms(now + (hours * 3_600_000.0) as u64);
        assert_eq!(
            api.get_json(&format!("crr/resume/{site}")).await,
            json!({ site: at })
        );
    }
    assert_eq!(
        api.get_json("crr/resume").await,
        json!({"site1": iso8601_ms(now + 6 * 3_600_000), "site2": iso8601_ms(now + 5_400_000)})
    );
    // Cancel site1's schedule; site1 stays paused.
    assert_eq!(
        api.call("DELETE", "crr/resume/site1/schedule", None)
            .await
            .status,
        200
    );
    assert_eq!(
        api.get_json("crr/resume/site1/schedule").await,
        json!({"site1": "none"})
    );
    // Restart, then let site2's time come: it resumes, site1 does not.
    let api = api.restart().await;
    api.clock.advance(5_400_000);
    wait_for(
        &api,
        "crr/status",
        json!({"site1": "disabled", "site2": "enabled"}),
    )
    .await;
    assert_eq!(
        api.get_json("crr/resume").await,
        json!({"site1": "none", "site2": "none"})
    );
    // A manual resume cancels a schedule; a past-due schedule fires at start.
    assert_eq!(
        api.call("POST", "crr/resume/site1/schedule", Some(b"{\"hours\":1}"))
            .await
            .status,
        200
    );
    assert_eq!(api.call("POST", "crr/resume/site1", None).await.status, 200);
    assert_eq!(
        api.get_json("crr/resume/site1").await,
        json!({"site1": "none"})
    );
    assert_eq!(api.call("POST", "crr/pause/site1", None).await.status, 200);
    assert_eq!(
        api.call(
            "POST",
            "crr/resume/site1/schedule",
            Some(b"{\"hours\":0.5}")
        )
        .await
        .status,
        200
    );
    let mut api = api;
    if let Some(e) = api.engine.take() {
        e.stop().await;
    }
    api.clock.advance(3_600_000);
    let api = api.restart().await;
    wait_for(&api, "crr/status/site1", json!({"site1": "enabled"})).await;
    api.stop().await;
}
