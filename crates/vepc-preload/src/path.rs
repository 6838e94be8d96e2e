//! Which paths name the device: `/dev/sgx_vepc` however a program spells it.
//!
//! The kernel resolves a path component by component; the shim, which stands in for
//! a node that does not exist, resolves it lexically: repeated slashes and `.` go,
//! `..` climbs (`/dev` is no symbolic link on any Linux this runs on), and a relative
//! path is taken from the working directory, or from the directory an `*at` call's
//! descriptor names. Not recognized: a symbolic link to the node (the kernel would
//! follow it; the shim sees another name), and `sgx_vepc/` with a trailing slash
//! (the kernel answers `ENOTDIR` for a device; here the call goes to the kernel,
//! which answers `ENOENT`).

/// The last component a path must end with to be a candidate: checked before
/// anything costs a system call.
const NAME: &[u8] = b"sgx_vepc";

/// Whether `path` names `/dev/sgx_vepc`. `base` gives the directory a relative path
/// starts from (the working directory, or an `*at` call's directory descriptor), only
/// asked for a relative path that ends in `sgx_vepc`.
pub fn names_device(path: &[u8], base: impl FnOnce() -> Option<Vec<u8>>) -> bool {
    if !path.ends_with(NAME) {
        return false;
    }
    let full;
    let path = if path.first() == Some(&b'/') {
        path
    } else {
        let Some(mut dir) = base() else {
            return false;
        };
        dir.push(b'/');
        dir.extend_from_slice(path);
        full = dir;
        &full
    };
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts == [b"dev".as_slice(), NAME]
}

/// `open`'s flags for an `fopen` mode string (`r`, `w+`, `ae`, …), as glibc reads it:
/// how the shim opens the device for `fopen`.
pub fn fopen_flags(mode: &[u8]) -> Option<i32> {
    let (mut flags, rest) = match mode.split_first()? {
        (b'r', rest) => (libc::O_RDONLY, rest),
        (b'w', rest) => (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, rest),
        (b'a', rest) => (libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND, rest),
        _ => return None,
    };
    for &c in rest {
        match c {
            b'+' => flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR,
            b'e' => flags |= libc::O_CLOEXEC,
            b'x' => flags |= libc::O_EXCL,
            _ => {}
        }
    }
    Some(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cwd(dir: &str) -> impl FnOnce() -> Option<Vec<u8>> + '_ {
        move || Some(dir.as_bytes().to_vec())
    }

    #[test]
    fn spellings_of_the_node() {
        for p in [
            "/dev/sgx_vepc",
            "//dev//sgx_vepc",
            "/dev/./sgx_vepc",
            "/dev/../dev/sgx_vepc",
            "/../dev/sgx_vepc",
        ] {
            assert!(names_device(p.as_bytes(), || None), "{p}");
        }
        for p in [
            "/dev/sgx_vepc2",
            "/tmp/sgx_vepc",
            "/dev/sgx_vepc/",
            "/dev/x/sgx_vepc",
        ] {
            assert!(!names_device(p.as_bytes(), || None), "{p}");
        }
    }

    #[test]
    fn fopen_modes_are_glibcs() {
        assert_eq!(fopen_flags(b"r"), Some(libc::O_RDONLY));
        assert_eq!(fopen_flags(b"r+e"), Some(libc::O_RDWR | libc::O_CLOEXEC));
        assert_eq!(
            fopen_flags(b"wx"),
            Some(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL)
        );
        assert_eq!(fopen_flags(b"q"), None);
    }

    #[test]
    fn relative_paths_start_from_their_directory() {
        assert!(names_device(b"sgx_vepc", cwd("/dev")));
        assert!(names_device(b"./sgx_vepc", cwd("/dev/")));
        assert!(names_device(b"../dev/sgx_vepc", cwd("/tmp")));
        assert!(!names_device(b"sgx_vepc", cwd("/tmp")));
        assert!(
            !names_device(b"sgx_vepc", || None),
            "no directory: not ours"
        );
        // The directory is asked for only when the name could match.
        assert!(!names_device(b"other", || panic!("asked")));
    }
}
