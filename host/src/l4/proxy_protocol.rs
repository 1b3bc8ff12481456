//! The PROXY protocol header (HAProxy's specification, versions 1 and 2)
//! a TCP route sends its upstream first, so the upstream learns the
//! client's address and the address the client connected to.

use crate::config::ProxyProtocol;
use std::net::{IpAddr, SocketAddr};

/// Version 2's fixed signature.
const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The header for a connection from `client` to `local` (the gateway's
/// address the client reached).
pub fn header(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d; the
    // upstream wants the address it is.
    let (src, dst) = (unmapped(client), unmapped(local));
    match version {
        ProxyProtocol::V1 => v1(src, dst),
        ProxyProtocol::V2 => v2(src, dst),
    }
}

fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => "TCP4",
        (IpAddr::V6(_), IpAddr::V6(_)) => "TCP6",
        // Mixed families cannot be written in one line.
        _ => return b"PROXY UNKNOWN\r\n".to_vec(),
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    // Version 2, command PROXY.
    out.push(0x21);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            // AF_INET, STREAM; 4 + 4 + 2 + 2 address bytes.
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // AF_INET6, STREAM; 16 + 16 + 2 + 2.
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => {
            // UNSPEC: the receiver uses the connection's own addresses.
            out.push(0x00);
            out.extend_from_slice(&0u16.to_be_bytes());
            return out;
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_is_one_line_with_both_addresses() {
        let h = header(
            ProxyProtocol::V1,
            "192.0.2.7:51000".parse().unwrap(),
            "127.0.0.1:7000".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 7000\r\n");
        let h = header(
            ProxyProtocol::V1,
            "[2001:db8::1]:51000".parse().unwrap(),
            "[::1]:7000".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::1 51000 7000\r\n");
    }

    #[test]
    fn version_2_is_binary_with_a_length_and_mapped_addresses_unmapped() {
        let h = header(
            ProxyProtocol::V2,
            "[::ffff:192.0.2.7]:51000".parse().unwrap(),
            "127.0.0.1:7000".parse().unwrap(),
        );
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[192, 0, 2, 7]);
        assert_eq!(&h[20..24], &[127, 0, 0, 1]);
        assert_eq!(&h[24..], &[0xC7, 0x38, 0x1B, 0x58]);
    }
}
