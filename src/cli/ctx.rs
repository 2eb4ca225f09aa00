//! What every command shares: the resolved data dir, the config file, the actor name for audit
//! records, and helpers to open the store and read stdin.

use std::io::Read;
use std::path::PathBuf;

use super::{CliError, GlobalArgs};
use crate::config::FileConfig;
use crate::secret::{self, Secret};
use crate::vault::keys::KeySources;
use crate::vault::{Store, StoreOptions};

/// Values on stdin larger than this are refused (no credential is this large).
const MAX_STDIN: u64 = 64 * 1024;

/// The resolved global context of one command.
#[derive(Debug)]
pub struct Ctx {
    pub data_dir: PathBuf,
    pub file: FileConfig,
    /// The config file in use, if any (passed on to the admin process).
    pub config_path: Option<PathBuf>,
    pub actor: String,
}

impl Ctx {
    pub fn new(global: &GlobalArgs) -> Result<Self, CliError> {
        let file = match &global.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let data_dir = global
            .data_dir
            .clone()
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("./airlock-data"));
        Ok(Self {
            data_dir,
            file,
            config_path: global.config.clone(),
            actor: cli_actor(),
        })
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            map_size_mib: self
                .file
                .map_size_mib
                .unwrap_or(crate::vault::store::DEFAULT_MAP_SIZE_MIB),
        }
    }

    /// Opens the store; on a fleet node (`store_url` set) it first catches up with the fleet, and
    /// its writes go through the fleet.
    pub fn open_store(&self) -> Result<Store, CliError> {
        let mut store = Store::open(&self.data_dir, self.store_options())?;
        if let Some(fleet) = self.file.fleet("cli")? {
            // What the command reads is what the fleet has; with the store down, what this node
            // has (writes then fail on their own).
            if store.fleet_marker()?.is_some()
                && let Err(e) = fleet.catch_up(&store)
            {
                eprintln!("airlock: warning: reading this node's copy of the vault: {e}");
            }
            store.attach_fleet(std::sync::Arc::new(fleet));
        }
        Ok(store)
    }

    /// Root key sources from the environment and flags (passphrase file, then
    /// `$AIRLOCK_PASSPHRASE`).
    pub fn key_sources(
        &self,
        master_key_file: Option<PathBuf>,
        passphrase_file: Option<PathBuf>,
    ) -> Result<KeySources, CliError> {
        let passphrase = match passphrase_file {
            Some(path) => {
                let raw = std::fs::read(&path).map_err(|source| CliError::Io {
                    what: path.display().to_string(),
                    source,
                })?;
                Some(
                    secret::value_from_stdin(raw)
                        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?,
                )
            }
            None => {
                std::env::var_os("AIRLOCK_PASSPHRASE").map(|p| Secret::new(p.into_encoded_bytes()))
            }
        };
        Ok(KeySources {
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            master_key_file,
            passphrase,
        })
    }
}

/// All of stdin, at most `limit` bytes (one more is read to notice a longer input).
pub(super) fn read_stdin(limit: u64) -> Result<Secret, CliError> {
    let mut raw = Vec::new();
    std::io::stdin()
        .take(limit + 1)
        .read_to_end(&mut raw)
        .map_err(|source| CliError::Io {
            what: "stdin".into(),
            source,
        })?;
    Ok(Secret::new(raw))
}

/// Reads one value from stdin (the rules of `secret::value_from_stdin`).
pub(super) fn read_stdin_value(what: &str) -> Result<Secret, CliError> {
    let raw = read_stdin(MAX_STDIN)?;
    if raw.len() as u64 > MAX_STDIN {
        return Err(CliError::Usage(format!(
            "{what}: the value on stdin is larger than 64 KiB"
        )));
    }
    secret::value_from_stdin(raw.expose().to_vec())
        .map_err(|e| CliError::Usage(format!("{what}: {e}")))
}

/// `cli uid=1000(alice)`: who made a change from the command line.
fn cli_actor() -> String {
    let uid = rustix::process::getuid().as_raw();
    match std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        Ok(user) if !user.is_empty() && user.len() < 64 => format!("cli uid={uid}({user})"),
        _ => format!("cli uid={uid}"),
    }
}
