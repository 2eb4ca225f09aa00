//! Stored records and sealed values read back from the vault (row 57).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use airlock::vault::records::{self, CredentialRecord, ProposalRecord, ServiceRecord};
    let _ = records::decode::<ServiceRecord>(data);
    let _ = records::decode::<CredentialRecord>(data);
    let _ = records::decode::<ProposalRecord>(data);
    let opener = airlock::vault::seal::Opener::from_secret_bytes([7; 32]);
    let ctx = airlock::vault::seal::SealContext { vault_id: 1, kind: "credential", name: "K" };
    assert!(opener.open(ctx, data).is_err() || data.len() > 61);
});
