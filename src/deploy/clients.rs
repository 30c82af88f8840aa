//! Traffic by client (issue 23): `[traffic] testers`, the networks whose
//! clients reach a new build first, and `canary_by`, whether a canary picks
//! its share by client address or per connection.
//!
//! Plain data and parsing only. The config reads these (`config/traffic.rs`),
//! the core counts them in what it says, and `net/steer.rs` turns them into
//! the steering program's instructions. What the testers cost in that
//! program is counted here ([`instructions`]), so that the config can
//! refuse a list the program cannot hold before bgd runs; a test in
//! `steer.rs` checks the count against the program it builds.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How a canary picks the connections it gets (`[traffic] canary_by`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CanaryBy {
    /// `"client"` (the default): the client's address (IPv4: the whole
    /// address; IPv6: its /64) is hashed to a point in [0, 2^32), and
    /// clients below the share get the canary. A client stays on one build
    /// for the whole canary, and raising the share moves nobody back.
    #[default]
    Client,
    /// `"connection"`: each new connection is split at random, as before
    /// issue 23. One client's connections can land on both builds.
    Connection,
}

impl CanaryBy {
    /// As the config, status and events write it: `client`, `connection`.
    pub fn name(self) -> &'static str {
        match self {
            CanaryBy::Client => "client",
            CanaryBy::Connection => "connection",
        }
    }

    /// Reads the config's word; the error lists the words there are.
    pub fn parse(s: &str) -> Result<CanaryBy, String> {
        match s {
            "client" => Ok(CanaryBy::Client),
            "connection" => Ok(CanaryBy::Connection),
            other => Err(format!(
                "traffic.canary_by {other:?} is not known: write \"client\" (a client's address decides its build) or \"connection\" (a random split of each new connection)"
            )),
        }
    }
}

impl fmt::Display for CanaryBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One network of client addresses: an address and a prefix length. The
/// address has no bits set past the prefix (the parser clears them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    /// 0 to 32 (IPv4) or 0 to 128 (IPv6).
    pub prefix: u8,
}

/// The classic BPF program's limit (`BPF_MAXINSNS`, include/uapi/linux/bpf_common.h):
/// the kernel refuses a longer program.
pub const BPF_MAXINSNS: usize = 4096;

/// The instructions of the steering program that testers may take: the
/// limit less room for 8 IPv6 probes (14 instructions each: bgd's
/// readiness checks and `bgctl compare`), the dispatch by IP version, the
/// address loads and the two splits (29), rounded down.
pub const TESTER_BUDGET: usize = 3900;

impl Cidr {
    /// Parses `"203.0.113.0/24"`, `"2001:db8::/48"` or a bare address (a
    /// /32 or /128). An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is
    /// taken as the IPv4 one, since the kernel shows such clients as IPv4.
    /// Returns the network and whether `s` had bits set past its prefix
    /// (they are cleared: worth a warning). The error says what to write.
    pub fn parse(s: &str) -> Result<(Cidr, bool), String> {
        let example = "write an IPv4 or IPv6 address, with a prefix length or without, such as \"203.0.113.0/24\", \"2001:db8::/48\" or \"203.0.113.7\"";
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or network: {example}"))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => {
                let n: u32 = p.trim().parse().map_err(|_| {
                    format!("{s:?}: the prefix length {p:?} is not a number: {example}")
                })?;
                if n > u32::from(max) {
                    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                    return Err(format!(
                        "{s:?}: an {family} prefix is at most {max} bits, not {n}: {example}"
                    ));
                }
                n as u8
            }
        };
        let cidr = Cidr { addr, prefix }.unmapped();
        let clean = cidr.masked();
        Ok((clean, clean != cidr))
    }

    /// An IPv4-mapped IPv6 network of /96 or longer as the IPv4 network.
    fn unmapped(self) -> Cidr {
        match self.addr {
            IpAddr::V6(a) if self.prefix >= 96 => match a.to_ipv4_mapped() {
                Some(v4) => Cidr {
                    addr: IpAddr::V4(v4),
                    prefix: self.prefix - 96,
                },
                None => self,
            },
            _ => self,
        }
    }

    /// The same network with every bit past the prefix cleared.
    pub fn masked(self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.prefix))),
            IpAddr::V6(a) => {
                let m = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
            }
        };
        Cidr {
            addr,
            prefix: self.prefix,
        }
    }

    /// Whether `ip` lies in this network (an IPv4 network never holds an
    /// IPv6 address, nor the other way round).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let probe = Cidr {
            addr: ip,
            prefix: self.prefix,
        };
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                probe.masked().addr == self.addr
            }
            _ => false,
        }
    }

    /// The instructions the steering program spends on this network if
    /// it is IPv6 (`steer.rs` tests each on its own): per 32-bit word of
    /// the prefix a load, a mask (for a partial word) and a compare, then
    /// the return; a /0 is the return alone. IPv4 networks share their
    /// tests ([`ipv4_groups`]); [`instructions`] counts them.
    pub fn ipv6_instructions(&self) -> usize {
        if self.prefix == 0 {
            return 1;
        }
        let bits = usize::from(self.prefix);
        let words = bits.div_ceil(32);
        let partial = usize::from(bits % 32 != 0);
        2 * words + partial + 1
    }
}

/// IPv4 networks in a run of the steering program's tests share a return:
/// at most this many, since a conditional jump reaches at most 255
/// instructions ahead.
pub const CHUNK: usize = 250;

/// The IPv4 networks of `testers` by prefix length, each length once, in
/// the order first listed, with its networks (as `u32`) in their order.
/// The program loads the client's address, masks it once per prefix
/// length, and compares it with each network of that length.
pub fn ipv4_groups(testers: &[Cidr]) -> Vec<(u8, Vec<u32>)> {
    let mut groups: Vec<(u8, Vec<u32>)> = Vec::new();
    for c in testers {
        let IpAddr::V4(a) = c.addr else { continue };
        match groups.iter_mut().find(|(p, _)| *p == c.prefix) {
            Some((_, nets)) => nets.push(u32::from(a)),
            None => groups.push((c.prefix, vec![u32::from(a)])),
        }
    }
    groups
}

/// The instructions `testers` take in the steering program (`steer.rs`
/// builds them; a test there checks this count): per IPv4 prefix length
/// a load and a mask (no mask for a /32), a compare per network and, per
/// run of at most [`CHUNK`] networks, a jump past the return and the
/// return; a /0 is one return. IPv6: [`Cidr::ipv6_instructions`] each.
pub fn instructions(testers: &[Cidr]) -> usize {
    let v4: usize = ipv4_groups(testers)
        .iter()
        .map(|(prefix, nets)| match prefix {
            0 => 1,
            p => 1 + usize::from(*p < 32) + nets.len() + 2 * nets.len().div_ceil(CHUNK),
        })
        .sum();
    let v6: usize = testers
        .iter()
        .filter(|c| c.addr.is_ipv6())
        .map(Cidr::ipv6_instructions)
        .sum();
    v4 + v6
}

/// `1 network` or `N networks`: how many `traffic.testers` has, in words.
pub fn networks(n: usize) -> String {
    match n {
        1 => "1 network".into(),
        n => format!("{n} networks"),
    }
}

/// The mask of an IPv4 `/prefix` (0 to 32).
pub fn mask32(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The instructions `testers` take in the steering program, and whether
/// they fit in [`TESTER_BUDGET`]: `Err` says how many there are, the
/// limit, and what to do.
pub fn check_fits(testers: &[Cidr]) -> Result<usize, String> {
    let used = instructions(testers);
    if used <= TESTER_BUDGET {
        return Ok(used);
    }
    Err(format!(
        "its {} networks take {used} instructions of the kernel's steering program, which has room for {TESTER_BUDGET} \
         (a classic BPF program holds at most {BPF_MAXINSNS}: about {} IPv4 networks of one prefix length, or {} single IPv6 addresses): \
         merge neighbouring networks into shorter prefixes, or list fewer",
        testers.len(),
        TESTER_BUDGET * CHUNK / (CHUNK + 2) - 2,
        TESTER_BUDGET / 9
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap().0
    }

    #[test]
    fn networks_parse_with_their_prefix_or_as_one_address() {
        for (s, want, dirty) in [
            ("203.0.113.0/24", "203.0.113.0/24", false),
            ("127.0.0.77", "127.0.0.77/32", false),
            (" 10.1.2.3/8 ", "10.0.0.0/8", true),
            ("0.0.0.0/0", "0.0.0.0/0", false),
            ("2001:db8:1::/48", "2001:db8:1::/48", false),
            ("::1", "::1/128", false),
            ("2001:db8::1/64", "2001:db8::/64", true),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8", false),
            ("::ffff:10.0.0.7", "10.0.0.7/32", false),
        ] {
            let (c, d) = Cidr::parse(s).unwrap();
            assert_eq!((c.to_string().as_str(), d), (want, dirty), "{s}");
        }
    }

    #[test]
    fn bad_networks_say_what_to_write() {
        for (s, says) in [
            ("10.0.0.0/33", "an IPv4 prefix is at most 32 bits, not 33"),
            (
                "2001:db8::/129",
                "an IPv6 prefix is at most 128 bits, not 129",
            ),
            ("10.0.0/24", "is not an address or network"),
            ("example.com", "is not an address or network"),
            ("10.0.0.0/x", "the prefix length \"x\" is not a number"),
            ("10.0.0.0/-1", "is not a number"),
            ("", "is not an address"),
        ] {
            let e = Cidr::parse(s).unwrap_err();
            assert!(e.contains(says), "{s}: {e}");
            assert!(e.contains("such as \"203.0.113.0/24\""), "{s}: {e}");
        }
    }

    #[test]
    fn a_network_holds_the_addresses_of_its_prefix_and_family() {
        let net = cidr("203.0.113.0/24");
        assert!(net.contains("203.0.113.255".parse().unwrap()));
        assert!(!net.contains("203.0.114.0".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let v6 = cidr("2001:db8:1::/48");
        assert!(v6.contains("2001:db8:1:ffff::9".parse().unwrap()));
        assert!(!v6.contains("2001:db8:2::".parse().unwrap()));
        assert!(!v6.contains("203.0.113.1".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn the_testers_cost_what_the_program_spends_on_them() {
        for (s, n) in [
            ("::/0", 1),
            ("2001:db8::/32", 3),
            ("2001:db8:1::/48", 6),
            ("2001:db8::/64", 5),
            ("::1", 9),
            ("2001:db8::/127", 10),
        ] {
            assert_eq!(cidr(s).ipv6_instructions(), n, "{s}");
            assert_eq!(instructions(&[cidr(s)]), n, "{s}");
        }
        // IPv4: a load and a mask per prefix length, a compare per
        // network, a jump and a return per run of 250.
        for (list, n) in [
            (&["10.0.0.0/8"][..], 5),
            (&["10.0.0.1"], 4),
            (&["0.0.0.0/0"], 1),
            (&["10.0.0.0/8", "11.0.0.0/8", "10.0.0.1"], 6 + 4),
        ] {
            let list: Vec<Cidr> = list.iter().map(|s| cidr(s)).collect();
            assert_eq!(instructions(&list), n, "{list:?}");
        }
        let many = |n: u32| -> Vec<Cidr> {
            (0..n)
                .map(|i| Cidr {
                    addr: IpAddr::V4(Ipv4Addr::from(i << 8)),
                    prefix: 24,
                })
                .collect()
        };
        assert_eq!(instructions(&many(256)), 2 + 256 + 2 * 2);
        assert_eq!(check_fits(&many(3000)), Ok(2 + 3000 + 2 * 12));
        let e = check_fits(&many(3900)).unwrap_err();
        assert!(
            e.contains("its 3900 networks take 3934 instructions"),
            "{e}"
        );
        assert!(e.contains("room for 3900"), "{e}");
    }

    #[test]
    fn canary_by_is_a_client_or_a_connection() {
        assert_eq!(CanaryBy::default(), CanaryBy::Client);
        assert_eq!(CanaryBy::parse("connection"), Ok(CanaryBy::Connection));
        let e = CanaryBy::parse("cookie").unwrap_err();
        assert!(
            e.contains("\"cookie\" is not known: write \"client\""),
            "{e}"
        );
    }
}
