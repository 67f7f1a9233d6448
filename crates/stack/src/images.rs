//! The demo images: stage the demo-web binary (with the shared libraries it links) into the
//! vagga project, build `demo-v1` and `demo-v2` with vagga, and install their packed images
//! as lithos images `demo.v1` and `demo.v2`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The releases built and installed: (vagga container, lithos image name).
pub const RELEASES: &[(&str, &str)] = &[("demo-v1", "demo.v1"), ("demo-v2", "demo.v2")];

/// Why an image could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("copy {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{command} failed with {status}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
    },
    #[error("unpack {archive} into {dir}: {source}")]
    Unpack {
        archive: PathBuf,
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The shared objects a dynamically linked program needs, from `ldd`'s output: the paths
/// after `=>` and the interpreter's own line. A static binary has none.
pub fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Lays out `rootfs/` of the vagga project: `usr/bin/demo-web` and every library it links
/// at its host path (`lib/`, `lib64/` always exist so that vagga.yaml's `!Copy` steps work).
pub fn stage_rootfs(project: &Path, demo_binary: &Path) -> Result<(), ImageError> {
    let rootfs = project.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs).map_err(|source| ImageError::Prepare {
            path: rootfs.clone(),
            source,
        })?;
    }
    for dir in ["usr/bin", "lib", "lib64"] {
        let path = rootfs.join(dir);
        std::fs::create_dir_all(&path).map_err(|source| ImageError::Prepare { path, source })?;
    }
    copy_file(demo_binary, &rootfs.join("usr/bin/demo-web"))?;
    let output = Command::new("ldd")
        .arg(demo_binary)
        .output()
        .map_err(|source| ImageError::Spawn {
            program: "ldd".into(),
            source,
        })?;
    // ldd exits 1 for a static binary ("not a dynamic executable"): nothing to copy then.
    for library in parse_ldd(&String::from_utf8_lossy(&output.stdout)) {
        let relative = library.strip_prefix("/").unwrap_or(&library);
        copy_file(&library, &rootfs.join(relative))?;
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> Result<(), ImageError> {
    let error = |source| ImageError::Copy {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    };
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    // fs::copy follows symlinks (libc.so.6 -> libc-2.36.so) and keeps the mode bits.
    std::fs::copy(from, to).map(drop).map_err(error)
}

fn run(command: &mut Command) -> Result<(), ImageError> {
    let shown = format!("{command:?}");
    let status = command.status().map_err(|source| ImageError::Spawn {
        program: command.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::Failed {
            command: shown,
            status,
        })
    }
}

/// Builds every release with `vagga _build` (a no-op when nothing changed), packs it with
/// `vagga _pack_image` and installs it as `<images>/<name>` (unpacked beside, then renamed).
pub fn build_and_install(vagga: &Path, project: &Path, images: &Path) -> Result<(), ImageError> {
    for (container, image) in RELEASES {
        run(Command::new(vagga)
            .current_dir(project)
            .args(["_build", container]))?;
        let archive = project.join(format!("{image}.tar"));
        run(Command::new(vagga)
            .current_dir(project)
            .args(["_pack_image", container, "-f"])
            .arg(&archive))?;
        install(&archive, images, image)?;
        std::fs::remove_file(&archive).map_err(|source| ImageError::Prepare {
            path: archive.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Unpacks `archive` into `<images>/.tmp.<name>` and renames it over `<images>/<name>`.
pub fn install(archive: &Path, images: &Path, name: &str) -> Result<(), ImageError> {
    let tmp = images.join(format!(".tmp.{name}"));
    let target = images.join(name);
    for old in [&tmp, &target] {
        if old.exists() {
            std::fs::remove_dir_all(old).map_err(|source| ImageError::Prepare {
                path: old.to_path_buf(),
                source,
            })?;
        }
    }
    let unpack_error = |source| ImageError::Unpack {
        archive: archive.to_path_buf(),
        dir: tmp.clone(),
        source,
    };
    std::fs::create_dir_all(&tmp).map_err(unpack_error)?;
    let file = std::fs::File::open(archive).map_err(unpack_error)?;
    let mut tar = tar::Archive::new(file);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.unpack(&tmp).map_err(unpack_error)?;
    std::fs::rename(&tmp, &target).map_err(|source| ImageError::Prepare {
        path: target.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_paths() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f8b)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f8a)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f8c)\n";
        assert_eq!(
            parse_ldd(output),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
        assert!(parse_ldd("\tstatically linked\n").is_empty());
    }

    #[test]
    fn install_replaces_an_image_from_a_tarball() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("etc/demo")).unwrap();
        std::fs::write(src.join("etc/demo/version"), "v1\n").unwrap();
        let archive = dir.path().join("a.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        builder.append_dir_all(".", &src).unwrap();
        builder.finish().unwrap();
        drop(builder);
        let images = dir.path().join("images");
        std::fs::create_dir_all(images.join("demo.v1/stale")).unwrap();
        install(&archive, &images, "demo.v1").unwrap();
        assert_eq!(
            std::fs::read_to_string(images.join("demo.v1/etc/demo/version")).unwrap(),
            "v1\n"
        );
        assert!(!images.join("demo.v1/stale").exists());
        assert!(!images.join(".tmp.demo.v1").exists());
    }
}
