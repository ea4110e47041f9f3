//! The root of the cgroup v2 hierarchy, where the socket programs attach.
//! A host with only cgroup v1 controllers mounted still has the v2
//! hierarchy (every process is in it); it is mounted at `FALLBACK` then.

use std::{ffi::CString, fs::File, path::Path};

use super::{io, Error};

/// Where the v2 hierarchy is mounted when the host has not mounted it.
const FALLBACK: &str = "/run/fizz/cgroup2";

/// Opens the root of the cgroup v2 hierarchy, mounting it if needed.
pub fn root() -> Result<File, Error> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(io("reading /proc/self/mountinfo"))?;
    let path = match find_root(&mounts) {
        Some(p) => p,
        None => {
            mount_fallback()?;
            FALLBACK.to_string()
        }
    };
    File::open(&path).map_err(io(format!("opening cgroup v2 root {path}")))
}

/// The mount point of the hierarchy's root in a mountinfo text: the first
/// `cgroup2` mount whose root is `/`.
fn find_root(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        let mut f = pre.split_whitespace();
        let root = f.nth(3)?;
        let mount_point = f.next()?;
        (fstype == "cgroup2" && root == "/").then(|| mount_point.replace("\\040", " "))
    })
}

fn mount_fallback() -> Result<(), Error> {
    std::fs::create_dir_all(FALLBACK).map_err(io(format!("creating {FALLBACK}")))?;
    // Another agent of a local cluster may have mounted it meanwhile.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(io("reading /proc/self/mountinfo"))?;
    if find_root(&mounts).is_some_and(|p| Path::new(&p) == Path::new(FALLBACK)) {
        return Ok(());
    }
    let target = CString::new(FALLBACK).expect("no NUL in a constant");
    let fstype = CString::new("cgroup2").expect("no NUL in a constant");
    // SAFETY: all pointers are valid NUL-terminated strings alive for the call.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io(format!("mounting cgroup2 at {FALLBACK}"))(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::find_root;

    #[test]
    fn the_first_cgroup2_mount_of_the_root_is_found() {
        let info = "\
25 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 25 0:35 /docker /sys/fs/cgroup/nested rw,relatime - cgroup2 cgroup2 rw
41 25 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(find_root(info).as_deref(), Some("/sys/fs/cgroup/unified"));
        assert_eq!(find_root("25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"), None);
    }
}
