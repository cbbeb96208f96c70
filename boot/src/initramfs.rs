//! Initramfs images for Linux test guests: busybox-static, an /init script and
//! any extra files (kernel modules), packed as a newc cpio archive, the format
//! the kernel unpacks.

use std::path::Path;

/// One archive member: a path without a leading slash, its mode (type and
/// permission bits) and its contents.
pub struct Member {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

const DIRECTORY: u32 = 0o040_755;
const EXECUTABLE: u32 = 0o100_755;
const REGULAR: u32 = 0o100_644;

/// The members as a newc ("070701") cpio archive, ending with the trailer.
pub fn newc(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |inode: usize, path: &str, mode: u32, data: &[u8]| {
        let links = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        // inode, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize (with its NUL), check.
        let fields = [inode, mode as usize, 0, 0, links, 0, data.len(), 0, 0, 0, 0, path.len() + 1, 0];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(path.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    };
    for (i, m) in members.iter().enumerate() {
        put(i + 1, &m.path, m.mode, &m.data);
    }
    put(0, "TRAILER!!!", 0, &[]);
    out
}

/// Every directory above `path`, outermost first.
fn parents(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').collect();
    (1..parts.len()).map(|n| parts[..n].join("/")).collect()
}

/// An initramfs running `init` (a busybox sh script) with busybox at
/// /bin/busybox and `files` at their paths.
pub fn busybox_initramfs(init: &str, files: Vec<(String, Vec<u8>)>) -> Result<Vec<u8>, String> {
    let busybox = std::fs::read(crate::linux::busybox()?).map_err(|e| format!("cannot read busybox: {e}"))?;
    let mut members = Vec::new();
    let mut directories: Vec<String> = vec!["bin".into(), "dev".into(), "proc".into(), "sys".into(), "mnt".into()];
    for (path, _) in &files {
        for dir in parents(path) {
            if !directories.contains(&dir) {
                directories.push(dir);
            }
        }
    }
    for dir in directories {
        members.push(Member { path: dir, mode: DIRECTORY, data: Vec::new() });
    }
    members.push(Member { path: "bin/busybox".into(), mode: EXECUTABLE, data: busybox });
    members.push(Member { path: "init".into(), mode: EXECUTABLE, data: init.as_bytes().to_vec() });
    for (path, data) in files {
        members.push(Member { path, mode: REGULAR, data });
    }
    Ok(newc(&members))
}

/// Kernel modules under `modules` (lib/modules/VERSION) by their paths below
/// it, as initramfs files at lib/modules/VERSION/...
pub fn modules(modules: &Path, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let version = modules.file_name().ok_or("bad modules directory")?.to_string_lossy().into_owned();
    wanted
        .iter()
        .map(|relative| {
            let data = std::fs::read(modules.join(relative))
                .map_err(|e| format!("kernel module {relative} not found in {}: {e}", modules.display()))?;
            Ok((format!("lib/modules/{version}/{relative}"), data))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks a newc archive back into (path, mode, data).
    fn unpack(mut archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = archive.len();
        loop {
            assert_eq!(&archive[..6], b"070701");
            let field = |i: usize| {
                usize::from_str_radix(std::str::from_utf8(&archive[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap()
            };
            let (mode, size, name_size) = (field(1) as u32, field(6), field(11));
            let name = String::from_utf8(archive[110..110 + name_size - 1].to_vec()).unwrap();
            assert_eq!(archive[110 + name_size - 1], 0);
            let data_at = (110 + name_size).next_multiple_of(4);
            assert_eq!((total - archive.len() + data_at) % 4, 0);
            let data = archive[data_at..data_at + size].to_vec();
            archive = &archive[(data_at + size).next_multiple_of(4)..];
            if name == "TRAILER!!!" {
                assert!(archive.is_empty());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn newc_round_trips_with_alignment() {
        let members = vec![
            Member { path: "bin".into(), mode: DIRECTORY, data: vec![] },
            Member { path: "init".into(), mode: EXECUTABLE, data: b"#!/bin/sh\n".to_vec() },
            Member { path: "a/bc".into(), mode: REGULAR, data: vec![1, 2, 3, 4, 5] },
        ];
        let back = unpack(&newc(&members));
        assert_eq!(back.len(), 3);
        assert_eq!(back[1], ("init".into(), EXECUTABLE, b"#!/bin/sh\n".to_vec()));
        assert_eq!(back[2], ("a/bc".into(), REGULAR, vec![1, 2, 3, 4, 5]));
        assert_eq!(back[0].1, DIRECTORY);
    }

    #[test]
    fn parents_are_listed_outermost_first() {
        assert_eq!(parents("lib/modules/6.1/x.ko"), vec!["lib", "lib/modules", "lib/modules/6.1"]);
        assert!(parents("init").is_empty());
    }
}
