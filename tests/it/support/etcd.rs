//! A real etcd (Debian's `etcd-server`) on free loopback ports with its data in a temp dir,
//! killed on drop; and a gate in front of it that the test can close, so instances lose etcd
//! while the test still reaches it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatewise::fleet::etcd::Etcd;
use tokio::net::{TcpListener, TcpStream};

use super::tls::TempDir;

/// A running etcd member.
pub struct EtcdServer {
    child: Option<Child>,
    pub client: SocketAddr,
    peer: SocketAddr,
    dir: TempDir,
}

/// `None` (and a loud line on stderr) when `etcd` is not installed and `CI` is not set; CI
/// installs it (`.ci/run`), so there a missing `etcd` fails the test.
pub async fn start() -> Option<EtcdServer> {
    if Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        if std::env::var_os("CI").is_some() {
            panic!("etcd is not installed (Debian: apt-get install etcd-server); CI must run the fleet tests");
        }
        // Straight to stderr, past the test harness's capture: a skip must be seen.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"SKIPPED: etcd is not installed (apt-get install etcd-server); fleet test not run\n",
        );
        return None;
    }
    let mut server = EtcdServer {
        child: None,
        client: free_port(),
        peer: free_port(),
        dir: TempDir::new(),
    };
    server.run().await;
    Some(server)
}

/// A port free now (etcd binds it itself, so it cannot be handed a socket).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl EtcdServer {
    /// `host:port`, as `[fleet] etcd` takes it.
    pub fn endpoint(&self) -> String {
        self.client.to_string()
    }

    /// A client straight to this etcd (not through a gate).
    pub fn client(&self) -> Etcd {
        Etcd::new(vec![format!("http://{}", self.client)])
    }

    /// Starts etcd (again: same ports, same data) and waits until it answers a read.
    pub async fn run(&mut self) {
        let client = format!("http://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let log = std::fs::File::create(self.dir.0.join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .arg("--name=default")
            .arg(format!("--data-dir={}", self.dir.0.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        let etcd = self.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if etcd.get("/ping").await.is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("etcd exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer in 30 s: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills etcd (its data stays for [`EtcdServer::run`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP relay to etcd that can be closed: open connections are cut and new ones refused.
pub struct Gate {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    target: Arc<Mutex<SocketAddr>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn to(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let target = Arc::new(Mutex::new(target));
        let (o, c, t) = (open.clone(), conns.clone(), target.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let target = *t.lock().unwrap();
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(relay.abort_handle());
            }
        });
        Gate {
            addr,
            open,
            target,
            conns,
            task,
        }
    }

    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// New connections go to `target` from now on.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
        self.close();
    }
}
