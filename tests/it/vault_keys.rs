//! Sealing and opening across processes, and integrity of sealed records (security.md row 57).

use airlock::vault::keys::KeySources;
use airlock::vault::ops::vault_key;
use airlock::vault::records::CredentialRecord;
use airlock::vault::setup::{self, Unlocked};
use airlock::vault::{StoreError, VaultError};

use crate::support::Env;

fn unlock(env: &Env) -> Unlocked {
    setup::unlock(&env.store(), &env.data_dir, &KeySources::default()).expect("unlock")
}

/// Issue 2: a process with no access to the root key seals; one that has it opens.
#[test]
fn seal_without_root_key_open_with_it() {
    let env = Env::init();
    let key = env.data_dir.join("master.key");
    let away = env.path("master.key.away");
    std::fs::rename(&key, &away).unwrap();
    env.run_stdin(
        &["credential", "set", "SEALED_ELSEWHERE"],
        b"value-from-a-keyless-process\n",
    )
    .ok();
    // Without the key the vault cannot be unlocked at all...
    let err = setup::unlock(&env.store(), &env.data_dir, &KeySources::default()).unwrap_err();
    assert_eq!(err.code(), "no_root_key");
    // ...and with it, this process opens what the keyless one sealed.
    std::fs::rename(&away, &key).unwrap();
    let opened = env
        .store()
        .open_credential(&unlock(&env).opener, "default", "SEALED_ELSEWHERE")
        .unwrap();
    assert_eq!(opened.value.expose(), b"value-from-a-keyless-process");
}

/// security.md row 57 (I-05): a sealed value moved to another key, bit-flipped, truncated or
/// re-versioned fails with an integrity error; the other credentials still open.
#[test]
fn row57_swapped_flipped_truncated_versioned_credentials_fail_cleanly() {
    let env = Env::init();
    for (k, v) in [
        ("ALPHA", "alpha-value"),
        ("BRAVO", "bravo-value"),
        ("CHARLIE", "charlie-value"),
        ("DELTA", "delta-value"),
    ] {
        env.run_stdin(&["credential", "set", k], v.as_bytes()).ok();
    }
    let store = env.store();
    let id = store.vault("default").unwrap().id;
    let get = |k: &str| -> CredentialRecord {
        store
            .read(|t| t.get(t.dbs().credentials, "credentials", &vault_key(id, k)))
            .unwrap()
            .unwrap()
    };
    let alpha = get("ALPHA");
    let tamper = |k: &str, sealed: Vec<u8>| {
        let mut r = get(k);
        r.sealed = sealed;
        store
            .write::<_, StoreError>(|t| t.put(t.dbs().credentials, &vault_key(id, k), &r))
            .unwrap();
    };
    tamper("BRAVO", alpha.sealed.clone());
    let mut flipped = get("CHARLIE").sealed;
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    tamper("CHARLIE", flipped);
    let mut truncated = get("DELTA").sealed;
    truncated.truncate(20);
    tamper("DELTA", truncated);
    let opener = unlock(&env).opener;
    for k in ["BRAVO", "CHARLIE", "DELTA"] {
        let err = store.open_credential(&opener, "default", k).unwrap_err();
        assert!(matches!(err, VaultError::Integrity(_)), "{k}: {err}");
        assert_eq!(err.code(), "credential_integrity");
        assert!(err.to_string().starts_with("credential_integrity"), "{err}");
    }
    let mut versioned = alpha.sealed.clone();
    versioned[0] = 0x7f;
    tamper("DELTA", versioned);
    let err = store
        .open_credential(&opener, "default", "DELTA")
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown format version 127"),
        "{err}"
    );
    assert_eq!(
        store
            .open_credential(&opener, "default", "ALPHA")
            .unwrap()
            .value
            .expose(),
        b"alpha-value"
    );
    // Moving a value to the same key name in another vault fails too (vault id is bound).
    env.run(&["vault", "create", "other"]).ok();
    let other = store.vault("other").unwrap().id;
    store
        .write::<_, StoreError>(|t| t.put(t.dbs().credentials, &vault_key(other, "ALPHA"), &alpha))
        .unwrap();
    assert!(matches!(
        store.open_credential(&opener, "other", "ALPHA"),
        Err(VaultError::Integrity(_))
    ));
}
