//! The real `esh` binary on the Kafka log (`ESH_LOG=kafka://…` on a `tansu` broker the test
//! starts, or `ESH_TEST_KAFKA`): a one-way message reaches an online socket and history,
//! and kill -9 loses no accepted message.
#![cfg(feature = "kafka")]

mod common;

use std::time::Duration;

use common::durability::{
    assert_no_problems, check_nothing_lost, check_same_ids_on_repeat, join, retry_unanswered, setup_users,
    start_senders, Ledger,
};
use common::{data_dir, Process};
use esh_backends::testsuite::kafka::KafkaBroker;

fn kafka_env(broker: &KafkaBroker) -> Vec<(String, String)> {
    let mut env = vec![("ESH_LOG".to_owned(), broker.url()), ("ESH_LOG_PARTITIONS".to_owned(), "4".to_owned())];
    env.extend(broker.client_env());
    env
}

/// Req 1.1, 1.2, 5.1 over Kafka: a one-way message to an online mobile user arrives on its
/// socket, its ack makes it `delivered`, and it is in both users' one-way history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_way_message_over_kafka_reaches_an_online_socket_and_history() {
    let broker = KafkaBroker::start();
    let (_keep, dir) = data_dir();
    let esh = Process::start(&dir, &kafka_env(&broker)).await;
    let business = esh.api.business("acme").await;
    let mobile = esh.api.mobile("mona").await;
    let mut socket = esh.api.connect(&mobile).await;
    let sent = common::id(&esh.api.one_way(&business, "mona", "over kafka").await);
    let received = socket.receive_acking(1).await;
    assert_eq!(common::id(&received[0]), sent);
    assert_eq!(received[0]["content"], "over kafka");
    esh.api.wait_status(&business, &sent, "delivered").await;
    for token in [&business, &mobile] {
        let history = esh.api.get(token, "/v1/one-way-messages").await.body;
        let ids: Vec<String> = history["items"].as_array().expect("items").iter().map(common::id).collect();
        assert_eq!(ids, std::slice::from_ref(&sent), "{history}");
    }
}

/// Req 4.3, 4.6, 6.1 over Kafka: SIGKILL during concurrent keyed sends, twice; after the
/// restarts every `202` is readable and arrives on its recipient's socket, and each key
/// sent again gets the id of its first `202`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_accepted_message_survives_kill_9_over_kafka() {
    let broker = KafkaBroker::start();
    let env = kafka_env(&broker);
    let (_keep, dir) = data_dir();
    let mut esh = Process::start(&dir, &env).await;
    let (business, _) = setup_users(&esh.api).await;
    let ledger = Ledger::new();
    for round in 1..=2 {
        let retried = retry_unanswered(&esh.api, &business, &ledger).await;
        let senders = start_senders(&esh.api, &business, &format!("kafka-r{round}"), &ledger);
        ledger.wait_accepted(round * 100 + retried).await;
        esh.kill_hard().await;
        join(senders).await;
        esh = Process::start(&dir, &env).await;
    }
    retry_unanswered(&esh.api, &business, &ledger).await;
    let accepted = ledger.accepted();
    let lost = check_nothing_lost(&esh.api, &business, &accepted, "kafka").await;
    let repeated = check_same_ids_on_repeat(&esh.api, &business, &accepted).await;
    assert_no_problems("accepted messages after kill -9 over kafka", &lost);
    assert_no_problems("keys sent again after kill -9 over kafka", &repeated);
    let status = esh.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "clean exit after SIGTERM: {status}");
}
