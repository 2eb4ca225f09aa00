//! `airlock init`, `airlock serve` and `airlock ca export`.

use super::{CliError, Ctx, InitArgs};
use crate::vault::records::KeyMode;
use crate::vault::setup::{self, CA_CERT_FILE, InitOutcome};

pub(super) fn run(ctx: &Ctx, args: InitArgs) -> Result<(), CliError> {
    let sources = ctx.key_sources(args.master_key_file, args.passphrase_file)?;
    let dir = ctx.data_dir.display();
    match setup::init(&ctx.data_dir, &sources, ctx.store_options(), &ctx.actor)? {
        InitOutcome::Existing => {
            say!("airlock is already initialised in {dir}; nothing changed")?;
        }
        InitOutcome::Created { mode, key_file } => {
            say!("initialised airlock in {dir} with the vault `default`")?;
            match (mode, key_file) {
                (_, Some(path)) => say!(
                    "root key: {} (0600; back it up, it opens the vault)",
                    path.display()
                )?,
                (KeyMode::Passphrase, None) => {
                    say!("root key: derived from your passphrase (Argon2id)")?
                }
                (KeyMode::File, None) => say!("root key: the key file you supplied")?,
            }
            say!(
                "CA certificate: {}",
                ctx.data_dir.join(CA_CERT_FILE).display()
            )?;
        }
    }
    Ok(())
}

pub(super) fn ca_export(ctx: &Ctx) -> Result<(), CliError> {
    ctx.open_store()?;
    let path = ctx.data_dir.join(CA_CERT_FILE);
    let pem = std::fs::read_to_string(&path).map_err(|source| CliError::Io {
        what: path.display().to_string(),
        source,
    })?;
    say_raw!("{pem}")?;
    Ok(())
}

pub(super) fn serve(ctx: &Ctx, args: Box<crate::serve::ServeArgs>) -> Result<(), CliError> {
    let sources = ctx.key_sources(args.master_key_file.clone(), args.passphrase_file.clone())?;
    let mut settings = crate::serve::Settings::resolve(ctx.data_dir.clone(), &ctx.file, &args);
    settings.config_file.clone_from(&ctx.config_path);
    settings.fleet = ctx.file.fleet(&settings.listen.to_string())?;
    let log = crate::logging::init(settings.log_level);
    let reload = crate::serve::Reload { args: *args, log };
    Ok(crate::serve::run(settings, &sources, &ctx.actor, &reload)?)
}
