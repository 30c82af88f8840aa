//! Gate mode with Unix sockets: each color's socket has a private name
//! (`.NAME.blue`, `.NAME.green`) beside the public path, and the public
//! path is a hard link to the receiving color's, replaced by `rename()`
//! (atomic for new `connect()`s, rename(2)).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::bind::{self, bind_unix, hint};
use super::{adopt, Entry, Listeners, Socket, SocketState};
use crate::color::Color;
use crate::config::{ListenAddr, ListenConfig};

/// A color's Unix socket and the private name it is bound at.
pub(super) struct UnixSide {
    pub(super) socket: Socket,
    pub(super) private: PathBuf,
    /// The socket file's (device, inode), to tell whether the public path
    /// still names it.
    pub(super) file: (u64, u64),
}

impl UnixSide {
    pub(super) fn bind(config: &ListenConfig, color: Color) -> anyhow::Result<UnixSide> {
        let private = private_name(config, color);
        let fd = bind_unix(&private, config).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot bind [[listen]] {:?} for {color} at {}: {e}{}",
                config.location,
                config.name,
                private.display(),
                hint(&e)
            )
        })?;
        let file = file_id(&private)?;
        let socket = Socket {
            config: config.clone(),
            fd,
            state: SocketState::Bound,
            adopted: false,
        };
        Ok(UnixSide {
            socket,
            private,
            file,
        })
    }

    /// A socket systemd passed: it keeps (or gets) its private name.
    pub(super) fn adopted(
        config: &ListenConfig,
        color: Color,
        a: adopt::Adopted,
    ) -> anyhow::Result<UnixSide> {
        let private = private_name(config, color);
        let bound_at = match bind::socket_address(&a.fd)? {
            bind::Bound::Unix(Some(p)) => p,
            _ => anyhow::bail!(
                "{}: systemd passed an unnamed socket for [[listen]] {:?}",
                config.location,
                config.name
            ),
        };
        let file = file_id(&bound_at)?;
        if file_id(&private).ok() != Some(file) {
            link_over(&bound_at, &private)?;
        }
        Ok(UnixSide {
            socket: Socket::adopted(config, a)?,
            private,
            file,
        })
    }
}

/// `.NAME.COLOR` beside the public path: the same directory, so the same
/// filesystem, so it can be hard-linked over the public path.
fn private_name(config: &ListenConfig, color: Color) -> PathBuf {
    let ListenAddr::Unix(public) = &config.address else {
        unreachable!("only Unix entries have socket files")
    };
    let file = public.file_name().unwrap_or_default().to_string_lossy();
    public.with_file_name(format!(".{file}.{color}"))
}

pub(super) fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    let m = std::fs::symlink_metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Makes `to` a hard link to the file `from` names, replacing whatever `to`
/// was in one `rename()`.
pub(super) fn link_over(from: &Path, to: &Path) -> io::Result<()> {
    let tmp = to.with_file_name(format!(
        ".{}.bgd-tmp",
        to.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(from, &tmp)?;
    std::fs::rename(&tmp, to).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

pub(super) fn public_path(config: &ListenConfig) -> Option<&Path> {
    match &config.address {
        ListenAddr::Unix(p) => Some(p),
        ListenAddr::Tcp(_) => None,
    }
}

impl Listeners {
    /// The private paths of `color`'s Unix sockets (gate mode).
    pub(crate) fn unix_paths(&self, color: Color) -> Vec<PathBuf> {
        self.lock()
            .entries
            .iter()
            .filter_map(|e| match (e, color) {
                (Entry::Files { blue, .. }, Color::Blue) => Some(blue.private.clone()),
                (Entry::Files { green, .. }, Color::Green) => Some(green.private.clone()),
                _ => None,
            })
            .collect()
    }

    /// Puts each Unix public path back if something removed or replaced it
    /// (an app that unlinks its socket path when it exits); returns what it
    /// restored, for the log.
    pub(crate) fn keep_public_paths(&self) -> Vec<String> {
        let inner = self.lock();
        let Some(to) = inner.receiving else {
            return Vec::new();
        };
        let mut restored = Vec::new();
        for e in &inner.entries {
            let Entry::Files { blue, green } = e else {
                continue;
            };
            let side = if to == Color::Blue { blue } else { green };
            let public = public_path(&side.socket.config).expect("a Unix entry");
            if file_id(public).ok() == Some(side.file) {
                continue;
            }
            let from = if file_id(&side.private).ok() == Some(side.file) {
                side.private.as_path()
            } else {
                restored.push(format!(
                    "[[listen]] {:?}: {to}'s socket has no name left (both {} and {} were removed); it is bound again at the next release",
                    side.socket.config.name,
                    public.display(),
                    side.private.display()
                ));
                continue;
            };
            match link_over(from, public) {
                Ok(()) => restored.push(format!(
                    "[[listen]] {:?}: {} was removed or replaced (an app that unlinks its socket path when it exits?); it names {to}'s socket again",
                    side.socket.config.name,
                    public.display()
                )),
                Err(e) => restored.push(format!(
                    "[[listen]] {:?}: cannot restore {}: {e}",
                    side.socket.config.name,
                    public.display()
                )),
            }
        }
        restored
    }

    /// Removes the Unix socket files bgd created, unless systemd's fd store
    /// keeps the sockets for the next bgd. Called on a clean exit.
    pub(crate) fn remove_unix_paths(&self) {
        if self.stored.load(Ordering::Relaxed) {
            return;
        }
        for e in &self.lock().entries {
            if e.sockets().iter().any(|s| s.adopted) {
                continue;
            }
            if let Some(p) = public_path(e.config()) {
                let _ = std::fs::remove_file(p);
            }
            if let Entry::Files { blue, green } = e {
                let _ = std::fs::remove_file(&blue.private);
                let _ = std::fs::remove_file(&green.private);
            }
        }
    }
}
