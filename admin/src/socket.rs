//! The admin Unix socket: created 0660 inside a 0750 directory, and every connection's
//! SO_PEERCRED checked (SECURITY-TESTS.md row 46): only the admin process's own uid, root, and
//! members of the socket's group may talk to it. Other connections are closed unanswered.
//! Membership counts the peer's supplementary groups too (read from `/proc/<pid>/status`), since
//! operators are usually in `airlock-operators` as a secondary group.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::net::{UnixListener, UnixStream};

/// Binds the socket (replacing a stale one) with the modes above.
pub(crate) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// The peer, when it may use the admin socket.
pub(crate) fn allowed(stream: &UnixStream, socket_gid: u32) -> Option<Peer> {
    let cred = stream.peer_cred().ok()?;
    let own = rustix::process::getuid().as_raw();
    let ok = cred.uid() == own
        || cred.uid() == 0
        || cred.gid() == socket_gid
        || cred
            .pid()
            .is_some_and(|pid| supplementary_groups(pid).contains(&socket_gid));
    ok.then_some(Peer { uid: cred.uid() })
}

/// The supplementary groups of process `pid` (empty when they cannot be read).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("Groups:").map(|g| {
                    g.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

/// The axum listener over the socket, dropping connections from peers not [`allowed`].
pub(crate) struct PeerChecked {
    pub listener: UnixListener,
    pub gid: u32,
}

/// Who is on the other end of a socket connection (for audit records), as the kernel says.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer {
    pub uid: u32,
}

impl Peer {
    /// The audit actor for a change made through the JSON API.
    pub(crate) fn actor(&self) -> String {
        format!("admin-socket uid={}", self.uid)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PeerChecked>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, PeerChecked>) -> Self {
        *stream.remote_addr()
    }
}

impl axum::serve::Listener for PeerChecked {
    type Io = UnixStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => match allowed(&stream, self.gid) {
                    Some(peer) => return (stream, peer),
                    None => {
                        tracing::warn!("refused an admin socket connection from a disallowed uid")
                    }
                },
                Err(e) => {
                    tracing::warn!("admin socket accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            uid: rustix::process::getuid().as_raw(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row 46: a peer's supplementary groups are read from /proc, matching what the kernel
    /// reports for this process.
    #[test]
    fn supplementary_groups_match_getgroups() {
        let mut want: Vec<u32> = rustix::process::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = supplementary_groups(std::process::id() as i32);
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want);
        assert!(supplementary_groups(i32::MAX).is_empty());
    }
}
