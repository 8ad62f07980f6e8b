//! Arbitrary bytes as a bearer token: verification must refuse them with a 401 and never
//! panic, whichever key (platform secret, RS256, ES256) the header points at.
//! Run with `cargo fuzz run verify_token` from `common/`.

#![no_main]

use std::sync::OnceLock;

use esh_common::auth::test_issuer::TestKey;
use esh_common::auth::{ExternalKeys, TokenKeys};
use esh_common::ErrorCode;
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static TokenKeys {
    static KEYS: OnceLock<TokenKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut external = ExternalKeys::default();
        for key in [TestKey::rs256("rsa"), TestKey::es256("ec")] {
            external.add_pem(&key.kid, key.public_pem().as_bytes()).expect("test key");
        }
        TokenKeys::hs256(b"fuzz secret").with_external(external)
    })
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    if let Err(error) = keys().verify(&token) {
        assert_eq!(error.code, ErrorCode::Unauthenticated);
    }
});
