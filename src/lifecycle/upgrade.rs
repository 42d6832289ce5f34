//! Binary upgrade without a refused connection (L4): the running process hands its listening
//! sockets to a new one over a Unix socket (SCM_RIGHTS), the new one serves them, then tells the
//! old one to drain and exit. The kernel's accept queue belongs to the socket, not the process,
//! so a connection arriving during the handover is accepted by one of the two: none is refused.
//!
//! Protocol on the upgrade socket (one exchange per connection):
//! 1. new → old: `TAKEOVER\n`
//! 2. old → new: one JSON line `{"listeners": ["public", ...], "admin": true}` carrying, as
//!    ancillary data, one descriptor per listener in that order, then the admin listener's.
//! 3. new → old: `READY\n` once it serves them; the old process stops accepting, finishes its
//!    in-flight requests (up to `shutdown_timeout`) and exits 0.
//!
//! The socket's path is `upgrade_socket` in the config, or one derived from the config file's
//! path (both processes read the same file, so they agree on it).

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the old process sends along with the descriptors.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub listeners: Vec<String>,
    pub admin: bool,
}

/// Listening sockets received from the old process.
#[derive(Debug, Default)]
pub struct Inherited {
    pub listeners: Vec<(String, std::net::TcpListener)>,
    pub admin: Option<std::net::TcpListener>,
}

impl Inherited {
    /// The socket named `name`, if the old process had one.
    pub fn take_listener(&mut self, name: &str) -> Option<std::net::TcpListener> {
        let i = self.listeners.iter().position(|(n, _)| n == name)?;
        Some(self.listeners.remove(i).1)
    }
}

/// The default upgrade socket for a config file: in the temp dir, named after a hash of the
/// file's canonical path.
pub fn default_socket(config: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let canonical = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    canonical.hash(&mut h);
    std::env::temp_dir().join(format!("gatewise-upgrade-{:016x}.sock", h.finish()))
}

/// The new process's side: asks the process on `path` for its sockets. Blocking (call it before
/// the runtime serves anything). Returns the sockets and the connection to say `READY` on.
pub fn take_over(path: &Path) -> io::Result<(Inherited, UnixStream)> {
    let mut stream = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "no running gatewise on the upgrade socket {}: {e}",
                path.display()
            ),
        )
    })?;
    stream.write_all(b"TAKEOVER\n")?;
    let (line, fds) = recv_with_fds(&stream, 64)?;
    let manifest: Manifest = serde_json::from_slice(&line)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad manifest: {e}")))?;
    let expected = manifest.listeners.len() + usize::from(manifest.admin);
    if fds.len() != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected {expected} sockets, got {}", fds.len()),
        ));
    }
    let mut fds = fds.into_iter();
    let mut inherited = Inherited::default();
    for name in manifest.listeners {
        let fd = fds.next().expect("counted above");
        inherited
            .listeners
            .push((name, std::net::TcpListener::from(fd)));
    }
    if manifest.admin {
        inherited.admin = fds.next().map(std::net::TcpListener::from);
    }
    for (_, l) in &inherited.listeners {
        l.set_nonblocking(true)?;
    }
    if let Some(a) = &inherited.admin {
        a.set_nonblocking(true)?;
    }
    Ok((inherited, stream))
}

/// Tells the old process the new one serves: it may drain and exit.
pub fn ready(mut stream: UnixStream) -> io::Result<()> {
    stream.write_all(b"READY\n")?;
    stream.flush()
}

/// The old process's side: binds `path` (replacing a stale socket file).
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    // Only this user may take the sockets over.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves one takeover request on an accepted connection: sends `sockets` (name, fd) and the
/// admin fd, then waits for `READY`. Blocking. `Ok(true)` when the new process is serving.
pub fn hand_over(
    stream: UnixStream,
    sockets: &[(String, RawFd)],
    admin: Option<RawFd>,
) -> io::Result<bool> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim_end() != "TAKEOVER" {
        return Ok(false);
    }
    let manifest = Manifest {
        listeners: sockets.iter().map(|(n, _)| n.clone()).collect(),
        admin: admin.is_some(),
    };
    let mut fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| *fd).collect();
    fds.extend(admin);
    let mut payload = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
    payload.push(b'\n');
    send_with_fds(&stream, &payload, &fds)?;
    line.clear();
    reader.read_line(&mut line)?;
    Ok(line.trim_end() == "READY")
}

/// The running process's side, for its whole life: answers takeover requests on `listener`
/// with the sockets serving now, and returns once a new process has said it serves them (the
/// caller then drains and exits). A takeover that fails half-way changes nothing here.
pub async fn serve_handover(
    listener: tokio::net::UnixListener,
    shared: std::sync::Arc<crate::gateway::Shared>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let sockets = {
            let held = shared.sockets.lock().unwrap_or_else(|e| e.into_inner());
            held.iter()
                .filter_map(|(name, fd)| Some((name.clone(), fd.try_clone().ok()?)))
                .collect::<Vec<_>>()
        };
        let admin = shared
            .admin_socket
            .as_ref()
            .and_then(|fd| fd.try_clone().ok());
        let handed = tokio::task::spawn_blocking(move || {
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            // A new process that never answers must not hold this task forever.
            stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
            let raw: Vec<(String, RawFd)> = sockets
                .iter()
                .map(|(n, fd)| (n.clone(), fd.as_raw_fd()))
                .collect();
            hand_over(stream, &raw, admin.as_ref().map(AsRawFd::as_raw_fd))
        })
        .await;
        match handed {
            Ok(Ok(true)) => {
                tracing::info!("binary upgrade: the new process serves the sockets; draining");
                shared
                    .handed_over
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            Ok(Ok(false)) => {
                tracing::warn!("upgrade socket: the new process did not take over; serving on")
            }
            Ok(Err(err)) => tracing::warn!(%err, "upgrade socket: handover failed; serving on"),
            Err(err) => tracing::warn!(%err, "upgrade socket: handover task failed; serving on"),
        }
    }
}

fn send_with_fds(stream: &UnixStream, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer has room for one header with `fds` (CMSG_SPACE above).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    // SAFETY: a valid socket and a message built above.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != payload.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg"));
    }
    Ok(())
}

fn recv_with_fds(stream: &UnixStream, max_fds: usize) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 64 * 1024];
    let fd_bytes = max_fds * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: plain data; the pointers outlive the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: a valid socket and buffers sized above; MSG_CMSG_CLOEXEC keeps the fds private.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the running gatewise closed the upgrade socket",
        ));
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = len / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let mut fd: RawFd = 0;
                    std::ptr::copy_nonoverlapping(
                        data.add(i * std::mem::size_of::<RawFd>()),
                        &mut fd as *mut RawFd as *mut u8,
                        std::mem::size_of::<RawFd>(),
                    );
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many sockets",
        ));
    }
    buf.truncate(n as usize);
    let line = buf.split(|b| *b == b'\n').next().unwrap_or(&[]).to_vec();
    Ok((line, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_cross_a_unix_socket_and_still_accept() {
        let dir = std::env::temp_dir().join(format!("gatewise-upgrade-t-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("u.sock");
        let server = listen(&path).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let fd = tcp.as_raw_fd();
        let old = std::thread::spawn(move || {
            let (conn, _) = server.accept().unwrap();
            let served = hand_over(conn, &[("public".to_string(), fd)], None).unwrap();
            drop(tcp);
            served
        });
        let (mut inherited, stream) = take_over(&path).unwrap();
        ready(stream).unwrap();
        assert!(old.join().unwrap(), "the old side heard READY");
        // The old process's copy is closed; the received one still accepts on the same port.
        let got = inherited.take_listener("public").unwrap();
        assert_eq!(got.local_addr().unwrap(), addr);
        got.set_nonblocking(false).unwrap();
        let client = std::thread::spawn(move || std::net::TcpStream::connect(addr).is_ok());
        got.accept().unwrap();
        assert!(client.join().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
