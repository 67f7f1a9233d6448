//! Built-in commands: `_build`, `_run`, `_list`, `_clean`, `_version_hash`, `_pack_image`,
//! `_base_dir`, `_relative_work_dir`, `_dump_config`.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Parser;

use crate::Error;
use crate::build::{BuildMode, Builder};
use crate::config::{CommandDef, Config};
use crate::launch::{Invocation, Launcher};
use crate::privileged::Op;
use crate::project::Project;
use crate::rootfs::Compression;
use crate::storage::Storage;
use crate::version::Versioner;

/// Names of the built-ins, for `_list --hidden` and unknown-command checks.
pub const BUILTINS: &[&str] = &[
    "_build",
    "_run",
    "_list",
    "_clean",
    "_version_hash",
    "_pack_image",
    "_base_dir",
    "_relative_work_dir",
    "_dump_config",
    "_doctor",
];

/// Built-ins of the original that this release does not have.
pub const LATER_BUILTINS: &[&str] = &[
    "_build_shell",
    "_compgen",
    "_check_overlayfs_support",
    "_init_storage_dir",
    "_push_image",
    "_update_symlinks",
    "_create_netns",
    "_network",
    "_hardlink",
    "_verify",
    "_capsule",
];

fn parse<T: Parser>(name: &str, args: &[String]) -> Result<T, Error> {
    T::try_parse_from(std::iter::once(format!("vagga {name}")).chain(args.iter().cloned())).map_err(
        |e| match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                Error::Help(e.to_string())
            }
            _ => Error::Usage(e.to_string()),
        },
    )
}

#[derive(Parser)]
struct BuildArgs {
    container: String,
    /// Rebuild even when this version exists.
    #[arg(long)]
    force: bool,
}

#[derive(Parser)]
struct RunArgs {
    /// Run on a writable hard-link copy of the image.
    #[arg(short = 'W', long = "writeable")]
    writeable: bool,
    container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Parser)]
struct ListArgs {
    /// Also list underscore-named commands.
    #[arg(long)]
    hidden: bool,
}

#[derive(Parser)]
struct VersionArgs {
    container: String,
    #[arg(short, long)]
    short: bool,
    /// Print every hashed item on stderr.
    #[arg(long)]
    debug_versioning: bool,
    /// Print the hashed bytes on stdout.
    #[arg(long)]
    dump_version_data: bool,
}

#[derive(Parser)]
struct PackArgs {
    container: String,
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    #[arg(short = 'z', group = "c")]
    gzip: bool,
    #[arg(short = 'j', group = "c")]
    bzip2: bool,
    #[arg(short = 'J', group = "c")]
    xz: bool,
    #[arg(long, group = "c")]
    zstd: bool,
}

#[derive(Parser)]
#[command(group = clap::ArgGroup::new("what").required(true).multiple(true))]
struct CleanArgs {
    #[arg(long, group = "what")]
    tmp: bool,
    #[arg(long, group = "what")]
    old: bool,
    #[arg(long, group = "what")]
    unused: bool,
    /// With --unused: only versions not used for this long (`10days`, `12h`).
    #[arg(long)]
    at_least: Option<String>,
    #[arg(long, group = "what")]
    transient: bool,
    #[arg(long, group = "what")]
    everything: bool,
    #[arg(long, group = "what")]
    volumes: bool,
    #[arg(long, group = "what")]
    unused_volumes: bool,
    /// Apply to every project's storage under `storage-dir`.
    #[arg(long)]
    global: bool,
    #[arg(long)]
    dry_run: bool,
}

/// Runs a built-in; returns the exit code.
pub fn run(
    project: &Project,
    launcher: &mut Launcher<'_>,
    name: &str,
    args: &[String],
) -> Result<i32, Error> {
    match name {
        "_build" => {
            let a: BuildArgs = parse(name, args)?;
            check_container(project, &a.container)?;
            let mode = if a.force {
                BuildMode::Force
            } else {
                launcher.options.build_mode()
            };
            let built = Builder::new(project).ensure(&a.container, mode)?;
            eprintln!(
                "container \"{}\" is ready: .vagga/{} ({})",
                a.container, a.container, built.short
            );
            Ok(0)
        }
        "_run" => {
            let a: RunArgs = parse(name, args)?;
            check_container(project, &a.container)?;
            let inv = Invocation {
                container: &a.container,
                argv: a.command.clone(),
                command: None,
                extra_env: Vec::new(),
                writable_copy: a.writeable,
                isolate_network: false,
            };
            Ok(launcher.run(&inv)?)
        }
        "_list" => {
            let a: ListArgs = parse(name, args)?;
            print!("{}", list(project, a.hidden));
            Ok(0)
        }
        "_version_hash" => {
            let a: VersionArgs = parse(name, args)?;
            check_container(project, &a.container)?;
            let mut v = Versioner::new(&project.config, &project.storage);
            v.debug = a.debug_versioning;
            v.dump = a.dump_version_data;
            let version = v
                .version(&a.container)
                .map_err(crate::build::BuildError::from)?;
            if a.dump_version_data {
                use std::io::Write;
                let _ = std::io::stdout().write_all(&v.dumped);
                return Ok(0);
            }
            println!(
                "{}",
                if a.short {
                    version.short()
                } else {
                    &version.full
                }
            );
            Ok(0)
        }
        "_pack_image" => {
            let a: PackArgs = parse(name, args)?;
            check_container(project, &a.container)?;
            let built =
                Builder::new(project).ensure(&a.container, launcher.options.build_mode())?;
            let compression = if a.gzip {
                Compression::Gzip
            } else if a.bzip2 {
                Compression::Bzip2
            } else if a.xz {
                Compression::Xz
            } else if a.zstd {
                Compression::Zstd
            } else {
                Compression::None
            };
            let file = a.file.map(|f| {
                if f.is_absolute() {
                    f
                } else {
                    std::env::current_dir().unwrap_or_default().join(f)
                }
            });
            let container = &project.config.containers[&a.container].def;
            let privileged = project
                .privileged(Some(container))
                .map_err(crate::build::BuildError::from)?;
            privileged
                .run(&Op::Pack {
                    root: built.root,
                    file,
                    compression,
                })
                .map_err(|source| crate::build::BuildError::Privileged {
                    pos: format!("_pack_image {}", a.container),
                    source,
                })?;
            Ok(0)
        }
        "_base_dir" => {
            parse::<NoArgs>(name, args)?;
            println!("{}", project.config.root.display());
            Ok(0)
        }
        "_relative_work_dir" => {
            parse::<NoArgs>(name, args)?;
            println!("{}", project.relative_cwd.display());
            Ok(0)
        }
        "_dump_config" => {
            parse::<NoArgs>(name, args)?;
            print!("{}", project.config.dump());
            Ok(0)
        }
        "_clean" => {
            let a: CleanArgs = parse(name, args)?;
            clean(project, &a)
        }
        "_doctor" => {
            parse::<NoArgs>(name, args)?;
            Ok(crate::doctor::run(project))
        }
        _ => Err(Error::Later(name.to_owned())),
    }
}

#[derive(Parser)]
struct NoArgs {}

fn check_container(project: &Project, name: &str) -> Result<(), Error> {
    if project.config.containers.contains_key(name) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "unknown container \"{name}\"; containers: {}",
            project
                .config
                .containers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// The grouped command list.
pub fn list(project: &Project, hidden: bool) -> String {
    type Group<'c> = (Option<&'c str>, Vec<(&'c str, &'c CommandDef)>);
    let mut groups: Vec<Group<'_>> = Vec::new();
    for (name, entry) in &project.config.commands {
        if name.starts_with('_') && !hidden {
            continue;
        }
        let group = entry.def.group();
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, items)) => items.push((name, &entry.def)),
            None => groups.push((group, vec![(name, &entry.def)])),
        }
    }
    groups.sort_by_key(|(g, _)| g.map(str::to_owned));
    let mut out = String::from("Available commands:\n");
    for (group, items) in groups {
        if let Some(g) = group {
            out.push_str(&format!("\n{g}:\n"));
        }
        for (name, def) in items {
            let desc = def.description().unwrap_or("").lines().next().unwrap_or("");
            if name.len() >= 20 {
                out.push_str(&format!("    {name}\n                        {desc}\n"));
            } else {
                out.push_str(&format!("    {name:<20}{desc}\n"));
            }
        }
    }
    if hidden {
        out.push_str("\nBuilt-in commands:\n");
        for b in BUILTINS {
            out.push_str(&format!("    {b}\n"));
        }
    }
    out
}

fn parse_age(text: &str) -> Option<Duration> {
    let digits: String = text.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = digits.parse().ok()?;
    let unit = text[digits.len()..].trim();
    let secs = match unit {
        "s" | "sec" | "secs" | "seconds" => 1,
        "m" | "min" | "mins" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86400,
        "w" | "week" | "weeks" => 7 * 86400,
        _ => return None,
    };
    Some(Duration::from_secs(n * secs))
}

/// One project's storage as `_clean` sees it.
struct CleanScope<'a> {
    storage: Storage,
    /// The configuration when the storage is this project's; `None` for another project.
    config: Option<&'a Config>,
    /// Whether the owning project still uses this storage (its `.vagga/.lnk` points here).
    live: bool,
    /// Whether the owner is known: a storage made before `.project` links were written
    /// loses nothing to `--old`, `--unused` or `--unused-volumes`.
    owner_known: bool,
}

/// The storages of every project under `storage-dir` (`_clean --global`).
fn global_scopes(project: &Project) -> Result<Vec<CleanScope<'_>>, Error> {
    let Some(dir) = &project.settings.storage_dir else {
        return Err(Error::Usage(
            "_clean --global needs storage-dir in the settings".into(),
        ));
    };
    let mut bases: Vec<PathBuf> = fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    bases.sort();
    Ok(bases
        .into_iter()
        .map(|base| {
            if base == project.storage.base {
                return CleanScope {
                    storage: project.storage.clone(),
                    config: Some(&project.config),
                    live: true,
                    owner_known: true,
                };
            }
            let owner = Storage::owner_of(&base);
            let owner_known = owner.is_some();
            let live = owner
                .as_ref()
                .and_then(|p| fs::read_link(p.join(".vagga/.lnk")).ok())
                .is_some_and(|lnk| lnk == base);
            // Without a back link only --tmp, --transient, --volumes and --everything apply.
            let project_dir = owner.unwrap_or_else(|| base.clone());
            let storage = Storage::at(&project_dir, base);
            CleanScope {
                storage,
                config: None,
                live,
                owner_known,
            }
        })
        .collect())
}

/// What `_clean` removes from one storage.
fn clean_victims(scope: &CleanScope<'_>, a: &CleanArgs) -> Result<Vec<PathBuf>, Error> {
    let storage = &scope.storage;
    let mut victims: Vec<PathBuf> = Vec::new();
    let entries = |dir: &PathBuf| -> Vec<(String, PathBuf)> {
        fs::read_dir(dir)
            .map(|r| {
                r.flatten()
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let roots = entries(&storage.roots);
    let versions = || {
        roots.iter().filter_map(|(n, p)| {
            if n.starts_with('.') {
                return None;
            }
            let (container, hash) = n.rsplit_once('.')?;
            Some((container.to_owned(), hash.to_owned(), p.clone()))
        })
    };
    // A storage its project left (or lost) has no version in use.
    let linked = |container: &str, hash: &str| {
        scope.live && storage.linked_version(container).as_deref() == Some(hash)
    };
    if a.everything {
        match scope.config {
            Some(config) => {
                // The storage dir itself is the helper's writable mount: empty it, then
                // remove it here.
                let skeleton = storage.vagga_dir.join(".mnt");
                victims.extend(
                    entries(&storage.base)
                        .into_iter()
                        .map(|(_, p)| p)
                        .filter(|p| *p != skeleton),
                );
                for name in config.containers.keys() {
                    victims.push(storage.link(name));
                }
            }
            None => victims.push(storage.base.clone()),
        }
    }
    if a.tmp {
        victims.extend(
            roots
                .iter()
                .filter(|(n, _)| n.starts_with(".tmp."))
                .map(|(_, p)| p.clone()),
        );
        victims.extend(
            entries(&storage.volumes)
                .into_iter()
                .filter(|(n, _)| n.starts_with(".tmp."))
                .map(|(_, p)| p),
        );
    }
    if a.transient {
        victims.extend(entries(&storage.transient).into_iter().map(|(_, p)| p));
    }
    if a.volumes {
        victims.extend(entries(&storage.volumes).into_iter().map(|(_, p)| p));
    }
    if !scope.owner_known {
        return Ok(victims);
    }
    if a.old {
        for (container, hash, path) in versions() {
            if !linked(&container, &hash) {
                victims.push(path);
            }
        }
    }
    if a.unused {
        let min_age = match &a.at_least {
            Some(t) => Some(parse_age(t).ok_or_else(|| {
                Error::Usage(format!("--at-least: cannot read {t:?} (use 10days, 12h)"))
            })?),
            None => None,
        };
        for (container, hash, path) in versions() {
            let linked = linked(&container, &hash);
            // Another live project's configuration is not read: its linked versions count.
            let known = scope
                .config
                .map_or(scope.live, |c| c.containers.contains_key(&container));
            let old_enough = match min_age {
                None => !known || !linked,
                Some(age) => {
                    let used = fs::metadata(path.join("last_use"))
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    SystemTime::now().duration_since(used).unwrap_or_default() >= age
                }
            };
            if old_enough && !(known && linked && min_age.is_none()) {
                victims.push(path);
            }
        }
    }
    if a.unused_volumes {
        let mut used = Vec::new();
        let mut note = |v: &crate::config::Volume| {
            if let crate::config::Volume::Persistent(p) = v {
                used.push(p.name.clone());
            }
        };
        match scope.config {
            Some(config) => {
                for entry in config.containers.values() {
                    entry.def.volumes.values().for_each(|v| note(&v.value));
                }
                for entry in config.commands.values() {
                    if let CommandDef::Command(c) = &entry.def {
                        c.volumes.values().for_each(|v| note(&v.value));
                    }
                }
            }
            // Another live project's volumes stay: which it uses is in its own vagga.yaml.
            None if scope.live => return Ok(victims),
            None => {}
        }
        for (name, path) in entries(&storage.volumes) {
            if !used.contains(&name) {
                victims.push(path);
            }
        }
    }
    Ok(victims)
}

fn clean(project: &Project, a: &CleanArgs) -> Result<i32, Error> {
    let scopes = if a.global {
        global_scopes(project)?
    } else {
        vec![CleanScope {
            storage: project.storage.clone(),
            config: Some(&project.config),
            live: true,
            owner_known: true,
        }]
    };
    let mut victims = Vec::new();
    for scope in &scopes {
        victims.extend(clean_victims(scope, a)?);
    }
    let storage = &project.storage;
    victims.sort();
    victims.dedup();
    let privileged = project
        .privileged(None)
        .map_err(crate::build::BuildError::from)?;
    for path in victims {
        if fs::symlink_metadata(&path).is_err() {
            continue;
        }
        if a.dry_run {
            println!("would remove {}", path.display());
            continue;
        }
        eprintln!("removing {}", path.display());
        privileged
            .run(&Op::RemoveTree { path: path.clone() })
            .map_err(|source| crate::build::BuildError::Privileged {
                pos: "_clean".into(),
                source,
            })?;
    }
    if a.everything && !a.dry_run {
        // Only empty directories and symlinks the caller owns are left.
        let _ = fs::remove_dir_all(storage.vagga_dir.join(".mnt"));
        let _ = fs::remove_dir(&storage.cache);
        let _ = fs::remove_dir(&storage.base);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("10days"), Some(Duration::from_secs(864000)));
        assert_eq!(parse_age("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_age("x"), None);
    }
}
