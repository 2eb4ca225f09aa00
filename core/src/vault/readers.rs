//! Stale LMDB reader slots (SECURITY-TESTS.md row 54): a process killed while holding a read
//! transaction leaves its slot in the shared reader table, and enough of them exhaust it.
//! [`reclaim`] runs LMDB's `mdb_reader_check`, which frees the slots of dead processes; the
//! store calls it on every open. lmdb-rkv does not wrap it, so this is the one module that
//! uses `unsafe`.

#![allow(unsafe_code)]

/// Frees reader slots held by dead processes; returns how many.
pub fn reclaim(env: &lmdb::Environment) -> Result<usize, lmdb::Error> {
    let mut dead: std::os::raw::c_int = 0;
    // SAFETY: `env.env()` is the open MDB_env owned by `env`, valid for this whole call;
    // mdb_reader_check only inspects and clears the shared reader table and writes the count
    // of cleared slots into `dead`, a live local.
    let rc = unsafe { lmdb_sys::mdb_reader_check(env.env(), &mut dead) };
    if rc == 0 {
        Ok(usize::try_from(dead).unwrap_or(0))
    } else {
        Err(lmdb::Error::from_err_code(rc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reclaim_on_a_fresh_environment_finds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let env = lmdb::Environment::new().open(dir.path()).unwrap();
        assert_eq!(reclaim(&env).unwrap(), 0);
    }
}
