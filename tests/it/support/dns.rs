//! A tiny authoritative DNS responder on 127.0.0.1:0 (UDP) whose answers a test changes while
//! it runs: A, AAAA and SRV records with a TTL, NXDOMAIN, or silence (a timeout). Its message
//! encoding is written here independently of gatewise's (RFC 1035 by hand), so the two are
//! checked against each other rather than against themselves.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::Notify;

const A: u16 = 1;
const AAAA: u16 = 28;
const SRV: u16 = 33;

/// What the responder says for a name.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Address records (A for v4, AAAA for v6, each answered to its own question type).
    Addrs(Vec<IpAddr>),
    /// SRV records: (priority, weight, port, target host).
    Srv(Vec<(u16, u16, u16, String)>),
    NxDomain,
    /// No reply at all: the resolver times out.
    Silent,
}

#[derive(Default)]
struct State {
    answers: HashMap<String, (Answer, u32)>,
    /// Questions received, per lower-case name.
    asked: HashMap<String, usize>,
}

pub struct Dns {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    asked: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dns {
    /// Answers over UDP (truncated, TC set, past 1232 bytes: the EDNS size gatewise announces)
    /// and over TCP on the same port.
    pub async fn start() -> Dns {
        // The same port for both, as a nameserver has.
        let (socket, tcp) = loop {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(socket.local_addr().unwrap()).await {
                break (socket, tcp);
            }
        };
        let addr = socket.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let asked = Arc::new(Notify::new());
        let (st, notify) = (state.clone(), asked.clone());
        let task = tokio::spawn(async move {
            let (st2, notify2) = (st.clone(), notify.clone());
            let _tcp = AbortOnDrop(tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                loop {
                    let Ok((mut stream, _)) = tcp.accept().await else {
                        continue;
                    };
                    let Ok(len) = stream.read_u16().await else {
                        continue;
                    };
                    let mut q = vec![0u8; len as usize];
                    if stream.read_exact(&mut q).await.is_err() {
                        continue;
                    }
                    let reply = answer(&q, &st2, usize::MAX);
                    notify2.notify_waiters();
                    if let Some(reply) = reply {
                        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&reply);
                        let _ = stream.write_all(&framed).await;
                    }
                }
            }));
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let reply = answer(&buf[..n], &st, 1232);
                notify.notify_waiters();
                if let Some(reply) = reply {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        Dns {
            addr,
            state,
            asked,
            task,
        }
    }

    /// From now on `name` is answered with `answer`, records living `ttl` seconds.
    pub fn set(&self, name: &str, answer: Answer, ttl: u32) {
        self.state
            .lock()
            .unwrap()
            .answers
            .insert(name.to_ascii_lowercase(), (answer, ttl));
    }

    /// Questions received for `name` so far (every type).
    pub fn asked(&self, name: &str) -> usize {
        let s = self.state.lock().unwrap();
        s.asked
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `name` has been asked `more` more times than `since` (a new resolution
    /// round began after a change).
    pub async fn wait_asked(&self, name: &str, since: usize, more: usize) {
        loop {
            let notified = self.asked.notified();
            if self.asked(name) >= since + more {
                return;
            }
            tokio::time::timeout(std::time::Duration::from_secs(10), notified)
                .await
                .expect("the resolver asked in time");
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The reply to one query, or `None` to stay silent; longer than `max`, only the header (TC
/// set) and the question.
fn answer(q: &[u8], state: &Mutex<State>, max: usize) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(pos)? as usize;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(pos + 1..pos + 1 + len)?).to_ascii_lowercase());
        pos += 1 + len;
    }
    let qname = labels.join(".");
    let qend = pos + 5;
    let qtype = u16::from_be_bytes([*q.get(pos + 1)?, *q.get(pos + 2)?]);
    let mut s = state.lock().unwrap();
    *s.asked.entry(qname.clone()).or_default() += 1;
    let (found, ttl) = s
        .answers
        .get(&qname)
        .cloned()
        .unwrap_or((Answer::NxDomain, 0));
    drop(s);
    let mut rcode = 0u8;
    let mut records: Vec<(u16, Vec<u8>)> = Vec::new();
    match found {
        Answer::Silent => return None,
        Answer::NxDomain => rcode = 3,
        Answer::Addrs(ips) => {
            for ip in ips {
                match (ip, qtype) {
                    (IpAddr::V4(v4), A) => records.push((A, v4.octets().to_vec())),
                    (IpAddr::V6(v6), AAAA) => records.push((AAAA, v6.octets().to_vec())),
                    _ => {}
                }
            }
        }
        Answer::Srv(list) if qtype == SRV => {
            for (priority, weight, port, target) in list {
                let mut data = Vec::new();
                for v in [priority, weight, port] {
                    data.extend_from_slice(&v.to_be_bytes());
                }
                for label in target.trim_end_matches('.').split('.') {
                    data.push(label.len() as u8);
                    data.extend_from_slice(label.as_bytes());
                }
                data.push(0);
                records.push((SRV, data));
            }
        }
        Answer::Srv(_) => {}
    }
    // Header: same id, QR + AA + RD copied + RA, the rcode; the question echoed.
    let mut m = vec![q[0], q[1], 0x84 | (q[2] & 0x01), 0x80 | rcode, 0, 1];
    m.extend_from_slice(&(records.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(q.get(12..qend)?);
    let truncated_at = m.len();
    for (rtype, data) in records {
        m.extend_from_slice(&[0xC0, 12]); // owner: the question's name
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend_from_slice(&data);
    }
    if m.len() > max {
        m.truncate(truncated_at);
        m[2] |= 0x02; // TC
        m[6] = 0;
        m[7] = 0;
    }
    Some(m)
}
