//! Which user and groups the app runs as.
//!
//! With `app.user` set, bgd (running as root) starts every process of the
//! app as that user: supplementary groups as `initgroups` would set them,
//! then `setgid`, then `setuid`, in that order. The groups are looked up
//! before the fork, since reading /etc/group is not async-signal-safe.

use nix::unistd::{Gid, Group, Uid, User};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups, the primary one included.
    pub groups: Vec<Gid>,
}

/// Looks up `user` and optionally `group` (default: the user's primary group).
pub fn resolve(user: &str, group: Option<&str>) -> Result<Identity, String> {
    let u = lookup_user(user)?;
    let gid = match group {
        Some(g) => lookup_group(g)?,
        None => u.gid,
    };
    let name = std::ffi::CString::new(u.name.as_str())
        .map_err(|_| format!("user name {user:?} has a NUL byte"))?;
    let mut groups = nix::unistd::getgrouplist(&name, gid)
        .map_err(|e| format!("cannot list the groups of user {user:?}: {e}"))?;
    if !groups.contains(&gid) {
        groups.push(gid);
    }
    Ok(Identity {
        user: u.name,
        uid: u.uid,
        gid,
        groups,
    })
}

fn lookup_user(user: &str) -> Result<User, String> {
    let found = match user.parse::<u32>() {
        Ok(n) => User::from_uid(Uid::from_raw(n)),
        Err(_) => User::from_name(user),
    };
    found
        .map_err(|e| format!("cannot look up user {user:?}: {e}"))?
        .ok_or_else(|| {
            format!(
                "user {user:?} does not exist on this machine: create it ({}) or fix the name",
                command("useradd --system", user)
            )
        })
}

/// A group by name or number.
pub fn lookup_group(group: &str) -> Result<Gid, String> {
    let found = match group.parse::<u32>() {
        Ok(n) => Group::from_gid(Gid::from_raw(n)),
        Err(_) => Group::from_name(group),
    };
    found
        .map_err(|e| format!("cannot look up group {group:?}: {e}"))?
        .map(|g| g.gid)
        .ok_or_else(|| {
            format!(
                "group {group:?} does not exist on this machine: create it ({}) or fix the name",
                command("groupadd", group)
            )
        })
}

/// `tool name`, if `name` is a plain account name; the message stays one
/// line whatever the config holds.
fn command(tool: &str, name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        format!("{tool} {name}")
    } else {
        tool.to_string()
    }
}

/// Whether `uid` is in `gid`, as primary or supplementary group.
pub fn uid_in_group(uid: u32, primary: u32, gid: Gid) -> bool {
    if primary == gid.as_raw() {
        return true;
    }
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, Gid::from_raw(primary)).is_ok_and(|g| g.contains(&gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_and_unknown_users_are_named() {
        let id = resolve("0", None).unwrap();
        assert_eq!(id.uid, Uid::from_raw(0));
        assert!(id.groups.contains(&Gid::from_raw(0)));
        let e = resolve("no-such-user-bgd", None).unwrap_err();
        assert!(e.contains("does not exist") && e.contains("useradd"), "{e}");
    }
}
