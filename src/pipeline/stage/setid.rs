//! The setuid and setgid bits of the copies bgd makes.
//!
//! bgd runs as root and copies trees that a deploy user wrote. A copy
//! that kept the mode of `tool` (4755, owned by `nobody`) would be a
//! setuid-root program in `root/releases/<id>`, since the kept copy is
//! bgd's: anyone who can write the build would get root. So a copy keeps
//! the setuid bit only if it has the same owner as the original, and the
//! setgid bit only if it has the same group; otherwise the bit is
//! cleared, and the rest of the mode is kept. The kept copy belongs to
//! bgd's user; the color's copy to `app.user` (or bgd's user); a rollback
//! copies the kept copy with the same rule. A build made by root keeps
//! its setuid-root tools in a copy owned by root. File capabilities
//! (`security.capability`) and other extended attributes are never copied.

use crate::pipeline::walk::Meta;

/// The permission bits (`0o7777`) for a copy owned by `uid`:`gid` of an
/// entry with `meta`.
pub(super) fn copy_mode(meta: &Meta, uid: u32, gid: u32) -> u32 {
    let mut mode = meta.perm();
    if meta.uid != uid {
        mode &= !libc::S_ISUID;
    }
    if meta.gid != gid {
        mode &= !libc::S_ISGID;
    }
    mode
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::walk::Kind;

    fn meta(mode: u32, uid: u32, gid: u32) -> Meta {
        Meta {
            kind: Kind::File,
            mode: libc::S_IFREG | mode,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            dev: 0,
            ino: 0,
            blocks: 0,
            uid,
            gid,
        }
    }

    #[test]
    fn set_id_bits_stay_only_with_their_owner() {
        // nobody's setuid tool, copied by root: no longer setuid.
        assert_eq!(copy_mode(&meta(0o4755, 65534, 65534), 0, 0), 0o755);
        // ... and its setgid twin, and both at once.
        assert_eq!(copy_mode(&meta(0o2755, 65534, 65534), 0, 0), 0o755);
        assert_eq!(copy_mode(&meta(0o6711, 65534, 65534), 0, 0), 0o711);
        // A copy handed to the same user keeps the bit of that user.
        assert_eq!(copy_mode(&meta(0o4755, 1000, 1000), 1000, 0), 0o4755);
        assert_eq!(copy_mode(&meta(0o6755, 1000, 50), 1000, 50), 0o6755);
        // Root's own setuid tool, copied by root.
        assert_eq!(copy_mode(&meta(0o4755, 0, 0), 0, 0), 0o4755);
        // The sticky bit and the rest of the mode are the build's.
        assert_eq!(copy_mode(&meta(0o1777, 65534, 65534), 0, 0), 0o1777);
        assert_eq!(copy_mode(&meta(0o640, 65534, 65534), 0, 0), 0o640);
    }
}
