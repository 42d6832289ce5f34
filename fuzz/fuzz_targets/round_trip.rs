//! Fuzzes a whole request → response round trip: arbitrary client bytes into a running gatewise,
//! arbitrary bytes back from its one upstream, over loopback sockets (the gateway's listener and
//! pool only speak TCP). Nothing may panic or wedge (every exchange ends within a bound), and
//! whatever gatewise writes back is HTTP/1.x with at most one framing per response head.
//! Input: the first byte says where the client's bytes end and the upstream's script begins.
#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gatewise::config::{AccessLog as Destination, Config};
use gatewise::gateway::Gateway;
use gatewise::observe::access_log::AccessLog;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Env {
    gateway: SocketAddr,
    script: Arc<Mutex<Vec<u8>>>,
    _rt: tokio::runtime::Runtime,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let script = Arc::new(Mutex::new(Vec::new()));
        let gateway = rt.block_on(async {
            // The upstream: reads a request head, answers the current script, closes.
            let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let up_addr = up.local_addr().unwrap();
            let script = script.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut s, _)) = up.accept().await else {
                        continue;
                    };
                    let answer = script.lock().unwrap().clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        let mut filled = 0;
                        while !buf[..filled].windows(4).any(|w| w == b"\r\n\r\n")
                            && filled < buf.len()
                        {
                            match s.read(&mut buf[filled..]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => filled += n,
                            }
                        }
                        let _ = s.write_all(&answer).await;
                    });
                }
            });
            let mut c = Config::quick("127.0.0.1:0".parse().unwrap(), vec![up_addr.to_string()]);
            c.admin.listen = None;
            c.access_log = Destination::Off;
            c.listeners[0].header_read_timeout = Duration::from_millis(20);
            let route = &mut c.routes[0];
            route.timeout = Duration::from_millis(300);
            route.per_try_timeout = Duration::from_millis(150);
            let upstream = c.upstreams.values_mut().next().unwrap();
            upstream.passive.consecutive_failures = 0;
            let (log, _) = AccessLog::start(&Destination::Off).unwrap();
            let gw = Gateway::bind(&c, log).await.unwrap();
            let addr = gw.listen_addrs()[0];
            tokio::spawn(gw.serve());
            addr
        });
        Env {
            gateway,
            script,
            _rt: rt,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let cut = rest.len() * usize::from(split) / 256;
    let (request, answer) = rest.split_at(cut);
    let env = env();
    *env.script.lock().unwrap() = answer.to_vec();

    let mut s = TcpStream::connect(env.gateway).unwrap();
    // A bound, not a timing assumption: every path ends by the route deadline (300 ms) or the
    // header read timeout (20 ms); far beyond them is a wedged connection.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            panic!("gatewise kept the connection open past every deadline")
        }
        Err(_) => return, // reset: nothing to check
    }
    if out.is_empty() {
        return;
    }
    assert!(
        out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
    let cl = head
        .lines()
        .filter(|l| l.starts_with("content-length:"))
        .count();
    let te = head
        .lines()
        .filter(|l| l.starts_with("transfer-encoding:"))
        .count();
    assert!(cl + te <= 1, "two framings: {head}");
});
