//! Conformance of `DeviceRegistry`: what every registry (embedded SQLite, ScyllaDB) must keep.
//!
//! [`device_registry_suite!`](crate::device_registry_suite) expands to one `#[tokio::test]`
//! per rule, each on a registry of its own opened by the expression given to it (a future
//! of anything that dereferences to a `DeviceRegistry`). Users are fresh ids, so suites may
//! share one database.

use esh_common::{ids, Device, Millis, Platform};

use crate::devices::{DeviceOutcome, DeviceRegistry};
use crate::error::ErrorKind;

/// Devices a user may hold in these tests.
const LIMIT: usize = 3;

fn user() -> String {
    format!("mobile-{}", ids::new_id())
}

fn token(name: &str) -> String {
    format!("{name}-{}", ids::new_id())
}

async fn register(registry: &dyn DeviceRegistry, user: &str, platform: Platform, token: &str) -> Device {
    registry.register(user, platform, token, Millis::now(), LIMIT).await.expect("register").device
}

/// Req 3.1: a new token is stored for its user, active with no failures, and answered as created.
pub async fn a_new_token_is_stored_active_req_3_1(registry: &dyn DeviceRegistry) {
    let user = user();
    let token = token("fcm");
    let registered = registry.register(&user, Platform::Android, &token, Millis(7), LIMIT).await.expect("register");
    assert!(registered.created);
    let expected = Device {
        user_id: user.clone(),
        platform: Platform::Android,
        token,
        active: true,
        failures: 0,
        created_at: Millis(7),
    };
    assert_eq!(registered.device, expected);
    assert_eq!(registry.devices(&user).await.expect("devices"), vec![expected]);
    assert!(registry.devices(&self::user()).await.expect("devices").is_empty());
}

/// Registering a token the caller holds is not a new device; it is active again.
pub async fn registering_an_own_token_again_changes_nothing_but_reactivates(registry: &dyn DeviceRegistry) {
    let user = user();
    let token = token("apns");
    let first = register(registry, &user, Platform::Ios, &token).await;
    let gone = registry.record_outcomes(&[(first.clone(), DeviceOutcome::Unregistered)], 3).await.expect("record");
    assert!(!gone[0].active);
    let again = registry.register(&user, Platform::Ios, &token, Millis::now(), LIMIT).await.expect("register");
    assert!(!again.created);
    assert_eq!(again.device, Device { active: true, ..first.clone() });
    assert_eq!(registry.devices(&user).await.expect("devices"), vec![again.device]);
}

/// A token belongs to one user: registering it elsewhere moves it.
pub async fn a_token_moves_to_the_user_who_registers_it(registry: &dyn DeviceRegistry) {
    let (alice, bob) = (user(), user());
    let token = token("shared");
    register(registry, &alice, Platform::Android, &token).await;
    let moved = registry.register(&bob, Platform::Android, &token, Millis::now(), LIMIT).await.expect("register");
    assert!(moved.created);
    assert!(registry.devices(&alice).await.expect("devices").is_empty());
    assert_eq!(registry.devices(&bob).await.expect("devices"), vec![moved.device]);
    assert!(!registry.remove(&alice, &token).await.expect("remove"), "alice no longer holds it");
    assert_eq!(registry.devices(&bob).await.expect("devices").len(), 1);
}

/// At most `max_devices` tokens a user; the own tokens can still be registered again.
pub async fn a_user_holds_at_most_max_devices(registry: &dyn DeviceRegistry) {
    let user = user();
    let tokens: Vec<String> = (0..LIMIT).map(|i| token(&format!("t{i}"))).collect();
    for token in &tokens {
        register(registry, &user, Platform::Android, token).await;
    }
    let refused = registry.register(&user, Platform::Ios, &token("extra"), Millis::now(), LIMIT).await;
    assert_eq!(refused.expect_err("over the limit").kind(), ErrorKind::Conflict);
    let again = registry.register(&user, Platform::Android, &tokens[0], Millis::now(), LIMIT).await.expect("own");
    assert!(!again.created);
    // A token moving in counts against the limit too.
    let other = self::user();
    let theirs = token("theirs");
    register(registry, &other, Platform::Ios, &theirs).await;
    let refused = registry.register(&user, Platform::Ios, &theirs, Millis::now(), LIMIT).await;
    assert_eq!(refused.expect_err("over the limit").kind(), ErrorKind::Conflict);
    assert_eq!(registry.devices(&other).await.expect("devices").len(), 1, "a refused move leaves the token");
    assert!(registry.remove(&user, &tokens[1]).await.expect("remove"));
    registry.register(&user, Platform::Ios, &theirs, Millis::now(), LIMIT).await.expect("room again");
}

/// Removing takes only the caller's own token.
pub async fn removing_takes_only_the_own_token(registry: &dyn DeviceRegistry) {
    let (alice, bob) = (user(), user());
    let token = token("t");
    register(registry, &alice, Platform::Android, &token).await;
    assert!(!registry.remove(&bob, &token).await.expect("remove"));
    assert_eq!(registry.devices(&alice).await.expect("devices").len(), 1);
    assert!(registry.remove(&alice, &token).await.expect("remove"));
    assert!(!registry.remove(&alice, &token).await.expect("remove twice"));
    assert!(registry.devices(&alice).await.expect("devices").is_empty());
    // The token is free again for anyone.
    assert!(registry.register(&bob, Platform::Android, &token, Millis::now(), LIMIT).await.expect("register").created);
}

/// Req 3.5: three failures in a row deactivate a device; a success in between starts the
/// count afresh.
pub async fn three_failures_in_a_row_deactivate_and_a_success_resets_req_3_5(registry: &dyn DeviceRegistry) {
    let user = user();
    let device = register(registry, &user, Platform::Ios, &token("t")).await;
    let record = |outcome| {
        let device = device.clone();
        async move { registry.record_outcomes(&[(device, outcome)], 3).await.expect("record").remove(0) }
    };
    assert_eq!(record(DeviceOutcome::Failed).await.failures, 1);
    assert_eq!(record(DeviceOutcome::Failed).await.failures, 2);
    let reset = record(DeviceOutcome::Accepted).await;
    assert_eq!((reset.failures, reset.active), (0, true));
    record(DeviceOutcome::Failed).await;
    record(DeviceOutcome::Failed).await;
    let third = record(DeviceOutcome::Failed).await;
    assert_eq!((third.failures, third.active), (3, false));
    assert_eq!(registry.devices(&user).await.expect("devices"), vec![third]);
}

/// A token the provider declares unregistered is inactive at once; outcomes for a token
/// that moved meanwhile do not touch its new holder.
pub async fn unregistered_deactivates_at_once_and_moved_tokens_are_skipped(registry: &dyn DeviceRegistry) {
    let (alice, bob) = (user(), user());
    let gone = register(registry, &alice, Platform::Android, &token("gone")).await;
    let changed = registry.record_outcomes(&[(gone, DeviceOutcome::Unregistered)], 3).await.expect("record");
    assert_eq!((changed[0].active, changed[0].failures), (false, 0));

    let moving = register(registry, &alice, Platform::Android, &token("moving")).await;
    register(registry, &bob, Platform::Android, &moving.token).await;
    let changed = registry.record_outcomes(&[(moving.clone(), DeviceOutcome::Unregistered)], 3).await.expect("record");
    assert!(changed.is_empty());
    let held = registry.devices(&bob).await.expect("devices");
    assert!(held[0].active, "bob's device is untouched");
}

/// Expands to one `#[tokio::test]` per rule of the `DeviceRegistry` contract; `$open` is
/// evaluated afresh for each and must be a future of a value that dereferences to
/// `dyn DeviceRegistry` (e.g. `Arc<dyn DeviceRegistry>`).
#[macro_export]
macro_rules! device_registry_suite {
    ($open:expr) => {
        $crate::device_registry_suite!(@tests $open;
            a_new_token_is_stored_active_req_3_1,
            registering_an_own_token_again_changes_nothing_but_reactivates,
            a_token_moves_to_the_user_who_registers_it,
            a_user_holds_at_most_max_devices,
            removing_takes_only_the_own_token,
            three_failures_in_a_row_deactivate_and_a_success_resets_req_3_5,
            unregistered_deactivates_at_once_and_moved_tokens_are_skipped,
        );
    };
    (@tests $open:expr; $($rule:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $rule() {
                let registry = $open.await;
                $crate::testsuite::devices::$rule(&*registry).await;
            }
        )*
    };
}
