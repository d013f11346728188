//! Ethernet frames as direct server return needs them: reading ARP and IPv4 TCP/UDP headers,
//! and building ARP requests and replies and the tarpit's SYN+ACK. Bytes in, bytes out; every
//! length is checked before it is read, so a short or malformed frame is simply not ours.

use std::net::Ipv4Addr;

pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETH_HEADER: usize = 14;
/// An ARP packet for IPv4 over Ethernet.
const ARP_LEN: usize = 28;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn mac_at(b: &[u8], at: usize) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    m
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// What a frame is, as far as DSR cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Arp(Arp),
    Ipv4(Ipv4),
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// 1 request, 2 reply.
    pub op: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4 {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    /// Source and destination ports, for TCP and UDP when the header is there.
    pub ports: Option<(u16, u16)>,
    /// TCP flags and sequence number, for TCP.
    pub tcp: Option<(u8, u32)>,
}

/// The destination and source MAC addresses of any frame long enough to have them.
pub fn macs(frame: &[u8]) -> Option<(Mac, Mac)> {
    (frame.len() >= ETH_HEADER).then(|| (mac_at(frame, 0), mac_at(frame, 6)))
}

pub fn parse(frame: &[u8]) -> Frame {
    if frame.len() < ETH_HEADER {
        return Frame::Other;
    }
    let body = &frame[ETH_HEADER..];
    match u16_at(frame, 12) {
        ETHERTYPE_ARP => parse_arp(body).map_or(Frame::Other, Frame::Arp),
        ETHERTYPE_IPV4 => parse_ipv4(frame, body).map_or(Frame::Other, Frame::Ipv4),
        _ => Frame::Other,
    }
}

fn parse_arp(b: &[u8]) -> Option<Arp> {
    // Ethernet hardware (1), IPv4 protocol, 6-byte and 4-byte addresses.
    if b.len() < ARP_LEN || u16_at(b, 0) != 1 || u16_at(b, 2) != ETHERTYPE_IPV4 {
        return None;
    }
    if b[4] != 6 || b[5] != 4 {
        return None;
    }
    Some(Arp {
        op: u16_at(b, 6),
        sender_mac: mac_at(b, 8),
        sender_ip: ip_at(b, 14),
        target_ip: ip_at(b, 24),
    })
}

fn parse_ipv4(frame: &[u8], b: &[u8]) -> Option<Ipv4> {
    if b.len() < 20 || b[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    if ihl < 20 || b.len() < ihl {
        return None;
    }
    let protocol = b[9];
    // Only the first fragment carries the ports.
    let first_fragment = u16_at(b, 6) & 0x1fff == 0;
    let l4 = &b[ihl..];
    let ports = (first_fragment && matches!(protocol, PROTO_TCP | PROTO_UDP) && l4.len() >= 4)
        .then(|| (u16_at(l4, 0), u16_at(l4, 2)));
    let tcp = (first_fragment && protocol == PROTO_TCP && l4.len() >= 20)
        .then(|| (l4[13], u32_at(l4, 4)));
    Some(Ipv4 {
        dst_mac: mac_at(frame, 0),
        src_mac: mac_at(frame, 6),
        src: ip_at(b, 12),
        dst: ip_at(b, 16),
        protocol,
        ports,
        tcp,
    })
}

fn ethernet(dst: Mac, src: Mac, ethertype: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&ethertype.to_be_bytes());
}

fn arp(op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    out.extend_from_slice(&op.to_be_bytes());
    out.extend_from_slice(&sha);
    out.extend_from_slice(&spa.octets());
    out.extend_from_slice(&tha);
    out.extend_from_slice(&tpa.octets());
}

/// "Who has `target`? Tell `our_ip`", broadcast. `our_ip` may be 0.0.0.0 (an ARP probe, as
/// pen sends): the answer comes back to our MAC either way.
pub fn arp_request(our_mac: Mac, our_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut out = Vec::with_capacity(ETH_HEADER + ARP_LEN);
    ethernet(BROADCAST, our_mac, ETHERTYPE_ARP, &mut out);
    arp(1, our_mac, our_ip, [0; 6], target, &mut out);
    out
}

/// "`request.target_ip` is at `our_mac`", to the asker.
pub fn arp_reply(our_mac: Mac, request: &Arp) -> Vec<u8> {
    let mut out = Vec::with_capacity(ETH_HEADER + ARP_LEN);
    ethernet(request.sender_mac, our_mac, ETHERTYPE_ARP, &mut out);
    arp(
        2,
        our_mac,
        request.target_ip,
        request.sender_mac,
        request.sender_ip,
        &mut out,
    );
    out
}

/// The frame, readdressed to `to` from `from`. The IP packet is not changed, except that a
/// TCP or UDP checksum the sender left for its network card to fill in is completed.
pub fn readdress(frame: &[u8], to: Mac, from: Mac) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&to);
    out[6..12].copy_from_slice(&from);
    complete_offloaded_checksum(&mut out);
    out
}

/// A frame captured on the machine that sent it, or from a virtual interface (veth, a VM's
/// tap), may carry a TCP/UDP checksum left for the network card: the field holds only the sum
/// of the pseudo-header. Forwarded as it is, the server would drop it. Such a checksum is
/// completed; a correct one, or one that is simply wrong (a damaged frame), is left alone.
fn complete_offloaded_checksum(frame: &mut [u8]) {
    if frame.len() < ETH_HEADER + 20 || u16_at(frame, 12) != ETHERTYPE_IPV4 {
        return;
    }
    let ip = &frame[ETH_HEADER..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16_at(ip, 2));
    let (protocol, first_fragment) = (ip[9], u16_at(ip, 6) & 0x3fff == 0);
    let field = match protocol {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => return,
    };
    if ihl < 20 || total > ip.len() || total < ihl + field + 2 || !first_fragment {
        return;
    }
    let segment_len = total - ihl;
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(segment_len as u16).to_be_bytes());
    let at = ETH_HEADER + ihl + field;
    let stored = u16_at(frame, at);
    // UDP's 0 means "no checksum".
    if protocol == PROTO_UDP && stored == 0 {
        return;
    }
    if stored != !checksum(&pseudo) {
        return;
    }
    let segment = ETH_HEADER + ihl..ETH_HEADER + total;
    frame[at..at + 2].copy_from_slice(&[0, 0]);
    pseudo.extend_from_slice(&frame[segment]);
    let mut sum = checksum(&pseudo);
    if protocol == PROTO_UDP && sum == 0 {
        sum = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// Is this a TCP SYN (a new connection attempt, not a SYN+ACK or a reset)?
pub fn is_syn(p: &Ipv4) -> bool {
    matches!(p.tcp, Some((flags, _)) if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN)
}

/// The window the tarpit offers: small, so a caught client trickles and stalls.
const TARPIT_WINDOW: u16 = 10;
/// The tarpit's sequence number (pen's).
const TARPIT_SEQ: u32 = 42;

/// The tarpit's answer to a SYN: a SYN+ACK with no options, from the address the client
/// tried, keeping no state.
pub fn tarpit_syn_ack(our_mac: Mac, syn: &Ipv4) -> Option<Vec<u8>> {
    let ((src_port, dst_port), (_, seq)) = (syn.ports?, syn.tcp?);
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&dst_port.to_be_bytes());
    tcp.extend_from_slice(&src_port.to_be_bytes());
    tcp.extend_from_slice(&TARPIT_SEQ.to_be_bytes());
    tcp.extend_from_slice(&seq.wrapping_add(1).to_be_bytes());
    tcp.push(5 << 4); // 20-byte header
    tcp.push(TCP_SYN | TCP_ACK);
    tcp.extend_from_slice(&TARPIT_WINDOW.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let mut pseudo = Vec::with_capacity(12 + tcp.len());
    pseudo.extend_from_slice(&syn.dst.octets());
    pseudo.extend_from_slice(&syn.src.octets());
    pseudo.extend_from_slice(&[0, PROTO_TCP]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    let sum = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());

    let mut ip = Vec::with_capacity(20);
    ip.extend_from_slice(&[0x45, 0]);
    ip.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0]); // id 0, don't fragment
    ip.extend_from_slice(&[64, PROTO_TCP, 0, 0]); // TTL, protocol, checksum
    ip.extend_from_slice(&syn.dst.octets());
    ip.extend_from_slice(&syn.src.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());

    let mut out = Vec::with_capacity(ETH_HEADER + ip.len() + tcp.len());
    ethernet(syn.src_mac, our_mac, ETHERTYPE_IPV4, &mut out);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&tcp);
    Some(out)
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Mac = [2, 0, 0, 0, 0, 1];
    const CLIENT: Mac = [2, 0, 0, 0, 0, 2];

    fn syn_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, seq: u32) -> Vec<u8> {
        let mut f = Vec::new();
        ethernet(US, CLIENT, ETHERTYPE_IPV4, &mut f);
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, PROTO_TCP, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 0x50, TCP_SYN, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    #[test]
    fn parses_arp_and_ipv4_and_refuses_short_or_odd_frames() {
        let req = arp_request(
            CLIENT,
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 100),
        );
        assert_eq!(
            parse(&req),
            Frame::Arp(Arp {
                op: 1,
                sender_mac: CLIENT,
                sender_ip: Ipv4Addr::new(10, 0, 0, 2),
                target_ip: Ipv4Addr::new(10, 0, 0, 100),
            })
        );
        let syn = syn_frame([10, 0, 0, 2], [10, 0, 0, 100], 40000, 80, 7);
        let Frame::Ipv4(p) = parse(&syn) else {
            panic!("not IPv4")
        };
        assert_eq!(
            (p.src, p.dst),
            (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 100))
        );
        assert_eq!(p.ports, Some((40000, 80)));
        assert!(is_syn(&p));
        for n in 0..syn.len() {
            // Every truncation is either not ours or parsed without reading past the end.
            let _ = parse(&syn[..n]);
        }
        assert_eq!(parse(&syn[..20]), Frame::Other);
        let mut bad_ihl = syn.clone();
        bad_ihl[14] = 0x43;
        assert_eq!(parse(&bad_ihl), Frame::Other);
        let mut later_fragment = syn.clone();
        later_fragment[20] = 0x00;
        later_fragment[21] = 0x10;
        let Frame::Ipv4(p) = parse(&later_fragment) else {
            panic!("not IPv4")
        };
        assert_eq!(p.ports, None, "only the first fragment has ports");
    }

    #[test]
    fn arp_reply_answers_the_asker_for_the_address_it_asked() {
        let Frame::Arp(req) = parse(&arp_request(
            CLIENT,
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 100),
        )) else {
            panic!()
        };
        let reply = arp_reply(US, &req);
        assert_eq!(macs(&reply), Some((CLIENT, US)));
        assert_eq!(
            parse(&reply),
            Frame::Arp(Arp {
                op: 2,
                sender_mac: US,
                sender_ip: Ipv4Addr::new(10, 0, 0, 100),
                target_ip: Ipv4Addr::new(10, 0, 0, 2),
            })
        );
    }

    #[test]
    fn tarpit_syn_ack_has_valid_checksums_and_acknowledges_the_syn() {
        let syn = syn_frame([10, 0, 0, 2], [10, 0, 0, 50], 40000, 22, 1000);
        let Frame::Ipv4(p) = parse(&syn) else {
            panic!()
        };
        let out = tarpit_syn_ack(US, &p).unwrap();
        assert_eq!(macs(&out), Some((CLIENT, US)));
        let ip = &out[14..34];
        assert_eq!(checksum(ip), 0, "IP header checksum");
        let tcp = &out[34..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, PROTO_TCP, 0, tcp.len() as u8]);
        pseudo.extend_from_slice(tcp);
        assert_eq!(checksum(&pseudo), 0, "TCP checksum");
        let Frame::Ipv4(back) = parse(&out) else {
            panic!()
        };
        assert_eq!((back.src, back.dst), (p.dst, p.src));
        assert_eq!(back.ports, Some((22, 40000)));
        assert_eq!(back.tcp, Some((TCP_SYN | TCP_ACK, TARPIT_SEQ)));
        assert_eq!(u32_at(tcp, 8), 1001, "acknowledges the SYN");
    }

    /// The TCP checksum of `frame` (Ethernet + 20-byte IP + TCP) verifies.
    fn tcp_checksum_ok(frame: &[u8]) -> bool {
        let ip = &frame[14..34];
        let tcp = &frame[34..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, PROTO_TCP, 0, tcp.len() as u8]);
        pseudo.extend_from_slice(tcp);
        checksum(&pseudo) == 0
    }

    #[test]
    fn readdressing_completes_an_offloaded_checksum_and_leaves_others_alone() {
        // As the sender's kernel leaves it for the card: the pseudo-header sum, not inverted.
        let mut partial = syn_frame([10, 72, 0, 2], [10, 72, 0, 100], 52739, 40343, 0xd67375b6);
        let pseudo_sum = {
            let mut p = Vec::new();
            p.extend_from_slice(&[10, 72, 0, 2, 10, 72, 0, 100, 0, PROTO_TCP, 0, 20]);
            !checksum(&p)
        };
        partial[50..52].copy_from_slice(&pseudo_sum.to_be_bytes());
        assert!(!tcp_checksum_ok(&partial));
        let out = readdress(&partial, [9; 6], US);
        assert!(tcp_checksum_ok(&out), "completed");
        assert_eq!(out[14..50], partial[14..50], "nothing else changed");
        // A complete checksum, and a damaged one, are forwarded as they are.
        let damaged = {
            let mut f = partial.clone();
            f[50] ^= 0x40;
            f
        };
        assert_eq!(readdress(&out, [9; 6], US)[12..], out[12..]);
        assert_eq!(readdress(&damaged, [9; 6], US)[12..], damaged[12..]);
    }

    #[test]
    fn checksum_matches_rfc_1071_example() {
        // RFC 1071 section 3: 0x0001 f203 f4f5 f6f7 sums to 0xddf2 (one's complement 0x220d).
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }
}
