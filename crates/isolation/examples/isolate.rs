//! Runs one program in a container: the isolation crate from the command line.
//!
//! `isolate --root ROOTFS [--net] [--memory BYTES] [--pids N] -- /bin/true`
//! Used by `tests/bench/start-latency.sh` and by the root-only tests.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use isolation::{
    CgroupSpec, CgroupVersion, Container, Hierarchies, IdMap, Limits, MapWriter, UserNamespace,
    Volume,
};

#[derive(Parser)]
struct Args {
    /// The image directory to use as the root (mounted read-only).
    #[arg(long)]
    root: PathBuf,
    /// A new network namespace.
    #[arg(long)]
    net: bool,
    /// A new user namespace mapping ids 0..65536 inside to OUTSIDE.. on the host.
    #[arg(long, value_name = "OUTSIDE")]
    userns: Option<u32>,
    #[arg(long)]
    hostname: Option<String>,
    #[arg(long, default_value_t = 0)]
    uid: u32,
    #[arg(long, default_value_t = 0)]
    gid: u32,
    /// A tmpfs at this mount point.
    #[arg(long, value_name = "PATH")]
    tmpfs: Vec<PathBuf>,
    /// Place the container in this cgroup (relative to each hierarchy's root).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Use the cgroup2 hierarchy mounted here instead of detecting one.
    #[arg(long, value_name = "MOUNT")]
    cgroup_v2_mount: Option<PathBuf>,
    #[arg(long)]
    memory: Option<u64>,
    #[arg(long)]
    pids: Option<u64>,
    /// Skip mounting /proc, /dev and /sys.
    #[arg(long)]
    no_system_mounts: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn run(args: Args) -> Result<i32, Box<dyn std::error::Error>> {
    let mut c = Container::new(&args.root, &args.command[0]);
    c.args(&args.command[1..])
        .env("PATH", isolation::DEFAULT_PATH)
        .network_namespace(args.net)
        .identity(args.uid, args.gid, &[]);
    if let Some(name) = &args.hostname {
        c.hostname(name);
    }
    if let Some(outside) = args.userns {
        let map = vec![IdMap {
            inside: 0,
            outside,
            count: 65536,
        }];
        c.user_namespace(UserNamespace {
            uid_map: map.clone(),
            gid_map: map,
            writer: MapWriter::Auto,
        });
    }
    if args.no_system_mounts {
        c.system_mounts(false, false, false);
    }
    for path in args.tmpfs {
        let volume = Volume::Tmpfs {
            size: Some(16 << 20),
            mode: 0o1777,
            subdirs: vec![],
        };
        c.volume(path, volume);
    }
    if let Some(path) = args.cgroup {
        let hierarchies = match args.cgroup_v2_mount {
            Some(mount) => Hierarchies::V2 { mount },
            None => Hierarchies::detect(None::<CgroupVersion>)?,
        };
        c.cgroup(CgroupSpec {
            hierarchies,
            path,
            limits: Limits {
                memory: args.memory,
                pids: args.pids,
                ..Limits::default()
            },
            v1_controllers: None,
        });
    }
    let mut child = c.spawn()?;
    let status = child.wait()?;
    Ok(match status {
        isolation::ExitStatus::Exited(code) => code,
        isolation::ExitStatus::Signaled(signal) => 128 + signal as i32,
    })
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("isolate: {e}");
            ExitCode::from(125)
        }
    }
}
