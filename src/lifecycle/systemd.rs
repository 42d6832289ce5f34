//! systemd `Type=notify` (sd_notify protocol, no libsystemd): one datagram to the socket named
//! by `NOTIFY_SOCKET` per state change — `READY=1` once listening, `RELOADING=1` (with
//! `MONOTONIC_USEC`) before a reload and `READY=1` after it, `STOPPING=1` when the drain
//! begins. Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use std::time::Duration;

/// Sends `state` (e.g. `"READY=1"`) to the service manager, if there is one. A failure is
/// logged once per call and never stops gatewise: readiness is advice to the manager.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(err) = send(&path, state) {
        tracing::warn!(%err, state, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// `RELOADING=1` with the monotonic timestamp systemd wants alongside it.
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        monotonic().as_micros()
    ));
}

#[cfg(unix)]
fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    match bytes.first() {
        // Linux abstract namespace: `@name`.
        #[cfg(target_os = "linux")]
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        _ => {
            socket.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn send(_: &std::ffi::OsStr, _: &str) -> std::io::Result<()> {
    Ok(())
}

/// CLOCK_MONOTONIC now, as systemd reads `MONOTONIC_USEC`.
fn monotonic() -> Duration {
    #[cfg(unix)]
    {
        let mut ts = std::mem::MaybeUninit::<libc::timespec>::uninit();
        // SAFETY: clock_gettime writes a timespec into the pointer it is given.
        let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, ts.as_mut_ptr()) } == 0;
        if ok {
            // SAFETY: initialised by the successful call above.
            let ts = unsafe { ts.assume_init() };
            return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        }
    }
    Duration::ZERO
}
