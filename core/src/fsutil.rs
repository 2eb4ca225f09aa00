//! Small file-system helpers with durable semantics: atomic replace, directories created once,
//! and the permissions of what airlock creates inside a data dir ([`Modes`]).
//!
//! [`write_atomic`] writes a temporary file in the same directory, fsyncs it, renames it over
//! the target and fsyncs the directory, so a crash leaves the old or the new file, never an empty
//! or missing one (SECURITY-TESTS.md row 59). Nothing here interprets file contents.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replaces `path` with `bytes`, created with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Permissions for the directories and LMDB files airlock creates inside a data dir: private
/// (0700, 0600) unless the data dir itself gives its group full access, as packaging's
/// `/var/lib/airlock` (2770 airlock:airlock) does so that the admin process and operators in
/// group `airlock` share the environments; then 0770 and 0660. Others never get access, and key
/// files stay 0600 either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modes {
    pub dir: u32,
    pub file: u32,
}

impl Modes {
    pub const PRIVATE: Self = Self {
        dir: 0o700,
        file: 0o600,
    };
    pub const GROUP: Self = Self {
        dir: 0o770,
        file: 0o660,
    };

    /// The modes for things created under `data_dir`.
    pub fn of(data_dir: &Path) -> Self {
        match fs::metadata(data_dir) {
            Ok(m) if m.permissions().mode() & 0o070 == 0o070 => Self::GROUP,
            _ => Self::PRIVATE,
        }
    }
}

/// Creates `dir` (and parents) with exactly `mode` if it does not exist and says whether it did;
/// an existing directory keeps the mode its owner gave it.
pub fn ensure_dir(dir: &Path, mode: u32) -> std::io::Result<bool> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(false),
        Ok(_) => Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Refuses a directory every user may write to (a missing one is fine).
pub fn refuse_world_writable(dir: &Path) -> std::io::Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.permissions().mode() & 0o002 != 0 => Err(std::io::Error::other(
            "writable by every user; remove that (chmod o-w) and start again",
        )),
        _ => Ok(()),
    }
}

/// Sets LMDB's `data.mdb` and `lock.mdb` in `dir` to `mode` (LMDB creates them through the
/// umask). Only for environments this process just created.
pub fn set_lmdb_modes(dir: &Path, mode: u32) -> std::io::Result<()> {
    for name in ["data.mdb", "lock.mdb"] {
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Group-shared only when the data dir grants its group everything; existing dirs keep
    /// their mode.
    #[test]
    fn modes_follow_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        assert!(ensure_dir(&d, 0o700).unwrap());
        assert_eq!(Modes::of(&d), Modes::PRIVATE);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o2770)).unwrap();
        assert!(!ensure_dir(&d, 0o700).unwrap());
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o2770
        );
        assert_eq!(Modes::of(&d), Modes::GROUP);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(Modes::of(&d), Modes::PRIVATE);
        assert!(refuse_world_writable(&d).is_ok());
        assert!(refuse_world_writable(&d.join("missing")).is_ok());
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(refuse_world_writable(&d).is_err());
    }
}
