//! Names of users and groups, for messages about device nodes.

/// The name of a group, or its number when `/etc/group` does not name it.
pub(crate) fn group_name(gid: u32) -> String {
    name_of("/etc/group", gid)
}

/// The name of a user, or its number when `/etc/passwd` does not name it.
pub(crate) fn user_name(uid: u32) -> String {
    name_of("/etc/passwd", uid)
}

/// The name of a uid or gid from a passwd-style file, or the number.
fn name_of(db: &str, id: u32) -> String {
    std::fs::read_to_string(db)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == id).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| id.to_string())
}

/// The group that owns `path`, by name, if it can be read.
pub(crate) fn group_of(path: &std::path::Path) -> Option<String> {
    rustix::fs::stat(path).ok().map(|st| group_name(st.st_gid))
}
