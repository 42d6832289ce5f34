//! The few DNS messages DNS discovery needs (RFC 1035, AAAA RFC 3596, SRV RFC 2782, EDNS0 RFC
//! 6891): a query for one name and type, and the answers of a response — A, AAAA and SRV
//! records with their TTLs; every other record is skipped. Parsing never panics on input: a
//! malformed message is an error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// UDP payload size we announce (EDNS0): the size DNS flag day 2020 recommends.
pub const UDP_PAYLOAD: u16 = 1232;

/// Response codes worth telling apart.
pub const RCODE_NXDOMAIN: u8 = 3;

/// A query for `name` (dotted, a trailing dot allowed) of `qtype`, recursion desired.
pub fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut m = Vec::with_capacity(32 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00]); // RD
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]); // 1 question, 1 additional (OPT)
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > 253 {
        return Err(format!("name too long: {name:?}"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("not a DNS name: {name:?}"));
        }
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    // OPT pseudo-record: root name, type 41, class = UDP payload size, TTL 0, no data.
    m.push(0);
    m.extend_from_slice(&TYPE_OPT.to_be_bytes());
    m.extend_from_slice(&UDP_PAYLOAD.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Ok(m)
}

/// An SRV record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Without the trailing dot; `""` is the root (RFC 2782: "no service here").
    pub target: String,
}

/// What a response says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub truncated: bool,
    pub rcode: u8,
    /// Address records in the answer section, with their TTL (seconds).
    pub addrs: Vec<(IpAddr, u32)>,
    pub srv: Vec<(Srv, u32)>,
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.msg.len());
        let end = end.ok_or("message ends early")?;
        let out = &self.msg[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A possibly compressed name at the current position; the position moves past it.
    fn name(&mut self) -> Result<String, String> {
        let (name, next) = read_name(self.msg, self.pos)?;
        self.pos = next;
        Ok(name)
    }
}

/// The name at `pos` and the position after it (after the first pointer, if compressed).
fn read_name(msg: &[u8], mut pos: usize) -> Result<(String, usize), String> {
    let mut name = String::new();
    let mut after = None;
    // Each pointer must go backwards, so a loop is impossible; the hop limit is a second guard.
    for _ in 0..128 {
        let len = *msg.get(pos).ok_or("name runs past the message")? as usize;
        match len {
            0 => return Ok((name, after.unwrap_or(pos + 1))),
            l if l & 0xC0 == 0xC0 => {
                let low = *msg.get(pos + 1).ok_or("name pointer cut")? as usize;
                let target = ((l & 0x3F) << 8) | low;
                if target >= pos {
                    return Err("name pointer does not point back".into());
                }
                after.get_or_insert(pos + 2);
                pos = target;
            }
            l if l & 0xC0 != 0 => return Err("unknown label type".into()),
            l => {
                let label = msg
                    .get(pos + 1..pos + 1 + l)
                    .ok_or("label runs past the message")?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label));
                if name.len() > 255 {
                    return Err("name too long".into());
                }
                pos += 1 + l;
            }
        }
    }
    Err("name has too many pointers".into())
}

/// Parses a response: header, questions skipped, answers read (A, AAAA, SRV kept).
pub fn parse(msg: &[u8]) -> Result<Response, String> {
    let mut r = Reader { msg, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return Err("not a response".into());
    }
    let questions = r.u16()?;
    let answers = r.u16()?;
    r.take(4)?; // authority and additional counts: not read
    let mut out = Response {
        id,
        truncated: flags & 0x0200 != 0,
        rcode: (flags & 0x000F) as u8,
        ..Response::default()
    };
    for _ in 0..questions {
        r.name()?;
        r.take(4)?;
    }
    for _ in 0..answers {
        r.name()?;
        let rtype = r.u16()?;
        let class = r.u16()?;
        let ttl = r.u32()?;
        let len = r.u16()? as usize;
        let start = r.pos;
        let data = r.take(len)?;
        if class != CLASS_IN {
            continue;
        }
        match (rtype, data.len()) {
            (TYPE_A, 4) => {
                let ip = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
                out.addrs.push((IpAddr::V4(ip), ttl));
            }
            (TYPE_AAAA, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                out.addrs.push((IpAddr::V6(Ipv6Addr::from(b)), ttl));
            }
            (TYPE_SRV, n) if n >= 7 => {
                let mut d = Reader { msg, pos: start };
                let srv = Srv {
                    priority: d.u16()?,
                    weight: d.u16()?,
                    port: d.u16()?,
                    target: d.name()?,
                };
                out.srv.push((srv, ttl));
            }
            (TYPE_A | TYPE_AAAA | TYPE_SRV, _) => {
                return Err("record data of the wrong size".into())
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `q` with the given raw answer records appended (owner name: a pointer to
    /// the question).
    fn response(q: &[u8], rcode: u8, answers: &[(u16, u32, Vec<u8>)]) -> Vec<u8> {
        // The question ends before the OPT record (11 bytes) the query carries.
        let question = &q[12..q.len() - 11];
        let mut m = q[..2].to_vec();
        m.extend_from_slice(&[0x81, 0x80 | rcode]);
        m.extend_from_slice(&[0, 1]);
        m.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(question);
        for (t, ttl, data) in answers {
            m.extend_from_slice(&[0xC0, 12]);
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&[0, 1]);
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    #[test]
    fn answers_with_compression_and_ttls() {
        let q = query(7, "app.internal.", TYPE_A).unwrap();
        let mut srv = vec![0, 10, 0, 5, 0x1f, 0x90];
        srv.extend_from_slice(&[3, b'w', b'e', b'b', 0xC0, 12]); // web.<question name>
        let m = response(
            &q,
            0,
            &[
                (TYPE_A, 30, vec![10, 0, 0, 1]),
                (
                    TYPE_AAAA,
                    5,
                    [0u8; 15].iter().chain(&[1]).copied().collect(),
                ),
                (TYPE_SRV, 60, srv),
                (5, 60, vec![0]), // a CNAME: skipped
            ],
        );
        let r = parse(&m).unwrap();
        assert_eq!(r.id, 7);
        assert_eq!(r.rcode, 0);
        assert_eq!(
            r.addrs,
            vec![
                ("10.0.0.1".parse().unwrap(), 30),
                ("::1".parse().unwrap(), 5)
            ]
        );
        assert_eq!(r.srv[0].0.target, "web.app.internal");
        assert_eq!(
            (r.srv[0].0.priority, r.srv[0].0.port, r.srv[0].1),
            (10, 8080, 60)
        );
    }

    #[test]
    fn nxdomain_and_malformed_input_never_panic() {
        let q = query(1, "gone.internal", TYPE_A).unwrap();
        assert_eq!(parse(&response(&q, RCODE_NXDOMAIN, &[])).unwrap().rcode, 3);
        let full = response(&q, 0, &[(TYPE_A, 1, vec![1, 2, 3, 4])]);
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).is_err(), "cut at {cut}");
        }
        // A pointer to itself, a pointer forward.
        let mut looped = full.clone();
        let at = full.len() - 16;
        looped[at] = 0xC0;
        looped[at + 1] = at as u8;
        assert!(parse(&looped).is_err());
        assert!(query(1, "a..b", TYPE_A).is_err());
        assert!(query(1, &"x".repeat(64), TYPE_A).is_err());
    }
}
