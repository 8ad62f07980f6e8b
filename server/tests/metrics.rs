//! `GET /metrics` of the whole platform: the series of every stage on the main listener.
//! A test binary of its own, so the process's one recorder holds only this platform's
//! series and the gauges can be compared exactly.

mod common;

use common::{eventually, Api, Harness};

async fn scrape(api: &Api) -> String {
    let response = api.http.get(format!("{}/metrics", api.base)).send().await.expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    response.text().await.expect("metrics text")
}

/// The value of one series (`name{labels}` exactly as rendered), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_follow_sockets_and_the_router_backlog() {
    let harness = Harness::start().await;
    let business = harness.business("metrics-b").await;
    let mobile = harness.mobile("metrics-m").await;

    let text = scrape(&harness).await;
    assert_eq!(value(&text, "esh_deliverer_open_sockets"), Some(0.0), "{text}");
    assert_eq!(value(&text, "esh_deliverer_dead_letters_total"), Some(0.0), "{text}");
    assert!(value(&text, "esh_store_projection_lag_records").is_some(), "{text}");
    for priority in ["high", "normal", "low"] {
        assert!(value(&text, &format!(r#"esh_router_lag_records{{priority="{priority}"}}"#)).is_some(), "{text}");
    }

    let socket = harness.connect(&mobile).await;
    let second = harness.connect(&mobile).await;
    eventually("two open sockets", || async {
        (value(&scrape(&harness).await, "esh_deliverer_open_sockets") == Some(2.0)).then_some(())
    })
    .await;

    harness.one_way(&business, "metrics-m", "counted").await;
    harness.wait_routed().await;
    let text = scrape(&harness).await;
    assert_eq!(value(&text, r#"esh_router_lag_records{priority="normal"}"#), Some(0.0), "{text}");
    assert_eq!(value(&text, r#"esh_ingest_messages_accepted_total{kind="one_way"}"#), Some(1.0), "{text}");

    drop(socket);
    drop(second);
    eventually("no open socket", || async {
        (value(&scrape(&harness).await, "esh_deliverer_open_sockets") == Some(0.0)).then_some(())
    })
    .await;
}
