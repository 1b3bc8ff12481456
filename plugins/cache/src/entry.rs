//! What the cache keeps in kv, and its byte format: a stored answer
//! ([`Entry`]) or a resource's list of `Vary` names ([`VaryRecord`]), each
//! starting with a tag and a format version so a value written by another
//! version of the plugin (replicas share Redis) reads as unusable rather
//! than as something else.

use filter_sdk::v2::Header;

const ENTRY: u8 = b'E';
const VARY: u8 = b'V';
const FORMAT: u8 = 1;

/// The bytes an entry takes besides its header names, values and body.
pub const ENTRY_OVERHEAD: usize = 2 + 8 + 8 + 4 + 1 + 2 + 2;
/// And per header.
pub const HEADER_OVERHEAD: usize = 2 + 2;

/// Response headers never stored: those about the connection, the ones the
/// gateway manages in a reply, and those the cache writes itself or that
/// belong to the request that fetched the answer.
pub const NOT_STORED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "age",
    "x-cache",
    "x-request-id",
];

/// A stored answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub stored_at_ms: u64,
    /// When it stops being fresh (kv drops it then too).
    pub expires_at_ms: u64,
    /// Its age when it was stored (from the upstream's `Age` and `Date`).
    pub age_s: u32,
    /// It may answer a request that carries `Authorization`.
    pub shared: bool,
    pub status: u16,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

/// The `Vary` names of a resource's answers, under its base key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaryRecord {
    /// Part of every variant's key; a new record gets a new one.
    pub nonce: u64,
    /// The latest expiry of a variant stored under it: the record lives
    /// as long as they do.
    pub expires_at_ms: u64,
    /// Lower case, sorted, once each.
    pub names: Vec<String>,
}

/// What a base key holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Entry(Entry),
    Vary(VaryRecord),
}

/// Why a stored value cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub struct Unreadable;

impl Entry {
    /// The age to send: its age when stored plus the seconds since.
    pub fn age_at(&self, now_ms: u64) -> u64 {
        u64::from(self.age_s) + now_ms.saturating_sub(self.stored_at_ms) / 1000
    }

    /// The first value of a stored header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend([ENTRY, FORMAT]);
        out.extend(self.stored_at_ms.to_be_bytes());
        out.extend(self.expires_at_ms.to_be_bytes());
        out.extend(self.age_s.to_be_bytes());
        out.push(u8::from(self.shared));
        out.extend(self.status.to_be_bytes());
        out.extend((self.headers.len() as u16).to_be_bytes());
        for (name, value) in &self.headers {
            put_bytes(&mut out, name.as_bytes());
            put_bytes(&mut out, value);
        }
        out.extend(&self.body);
        out
    }

    pub fn encoded_len(&self) -> usize {
        ENTRY_OVERHEAD
            + self
                .headers
                .iter()
                .map(|(n, v)| HEADER_OVERHEAD + n.len() + v.len())
                .sum::<usize>()
            + self.body.len()
    }
}

impl VaryRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VARY, FORMAT];
        out.extend(self.nonce.to_be_bytes());
        out.extend(self.expires_at_ms.to_be_bytes());
        out.extend((self.names.len() as u16).to_be_bytes());
        for name in &self.names {
            put_bytes(&mut out, name.as_bytes());
        }
        out
    }
}

impl Record {
    pub fn decode(bytes: &[u8]) -> Result<Record, Unreadable> {
        let mut r = Reader(bytes);
        let tag = r.u8()?;
        if r.u8()? != FORMAT {
            return Err(Unreadable);
        }
        match tag {
            ENTRY => {
                let stored_at_ms = r.u64()?;
                let expires_at_ms = r.u64()?;
                let age_s = u32::from_be_bytes(r.take(4)?.try_into().map_err(|_| Unreadable)?);
                let shared = r.u8()? != 0;
                let status = r.u16()?;
                let count = r.u16()?;
                let mut headers = Vec::with_capacity(count.into());
                for _ in 0..count {
                    let name = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| Unreadable)?;
                    headers.push((name, r.bytes()?.to_vec()));
                }
                Ok(Record::Entry(Entry {
                    stored_at_ms,
                    expires_at_ms,
                    age_s,
                    shared,
                    status,
                    headers,
                    body: r.0.to_vec(),
                }))
            }
            VARY => {
                let nonce = r.u64()?;
                let expires_at_ms = r.u64()?;
                let count = r.u16()?;
                let mut names = Vec::with_capacity(count.into());
                for _ in 0..count {
                    names.push(String::from_utf8(r.bytes()?.to_vec()).map_err(|_| Unreadable)?);
                }
                if !r.0.is_empty() {
                    return Err(Unreadable);
                }
                Ok(Record::Vary(VaryRecord {
                    nonce,
                    expires_at_ms,
                    names,
                }))
            }
            _ => Err(Unreadable),
        }
    }
}

/// Bytes with a two-byte length: header names and values are at most
/// 8 KiB, the gateway's limit.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend(len.to_be_bytes());
    out.extend(&bytes[..usize::from(len)]);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Unreadable> {
        if self.0.len() < n {
            return Err(Unreadable);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Unreadable> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Unreadable> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn u64(&mut self) -> Result<u64, Unreadable> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().map_err(|_| Unreadable)?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Unreadable> {
        let len = self.u16()?;
        self.take(len.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            stored_at_ms: 1_700_000_000_123,
            expires_at_ms: 1_700_000_060_123,
            age_s: 5,
            shared: true,
            status: 200,
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("etag".into(), b"\"v1\"".to_vec()),
                ("x-bytes".into(), vec![0, 255, b'\n']),
            ],
            body: b"{\"ok\":true}".to_vec(),
        }
    }

    #[test]
    fn entries_round_trip_and_know_their_size() {
        let e = entry();
        let bytes = e.encode();
        assert_eq!(bytes.len(), e.encoded_len());
        assert_eq!(Record::decode(&bytes), Ok(Record::Entry(e.clone())));
        let empty = Entry {
            headers: vec![],
            body: vec![],
            ..e
        };
        assert_eq!(empty.encode().len(), ENTRY_OVERHEAD);
        assert_eq!(Record::decode(&empty.encode()), Ok(Record::Entry(empty)));
    }

    #[test]
    fn vary_records_round_trip() {
        let v = VaryRecord {
            nonce: u64::MAX - 3,
            expires_at_ms: 42,
            names: vec!["accept".into(), "accept-encoding".into()],
        };
        assert_eq!(Record::decode(&v.encode()), Ok(Record::Vary(v)));
    }

    #[test]
    fn damaged_or_foreign_values_are_unreadable() {
        let bytes = entry().encode();
        // Cut inside the headers.
        assert_eq!(Record::decode(&bytes[..40]), Err(Unreadable));
        assert_eq!(Record::decode(&[]), Err(Unreadable));
        let mut other_format = bytes.clone();
        other_format[1] = FORMAT + 1;
        assert_eq!(Record::decode(&other_format), Err(Unreadable));
        let mut other_tag = bytes;
        other_tag[0] = b'Z';
        assert_eq!(Record::decode(&other_tag), Err(Unreadable));
    }

    #[test]
    fn age_grows_from_the_stored_age() {
        let e = entry();
        assert_eq!(e.age_at(e.stored_at_ms), 5);
        assert_eq!(e.age_at(e.stored_at_ms + 2_999), 7);
        assert_eq!(e.age_at(0), 5);
        assert_eq!(e.header("etag"), Some("\"v1\""));
        assert_eq!(e.header("x-bytes"), None);
    }
}
