//! A small classic-BPF interpreter, for the tests: it checks a program as
//! the kernel does when it is attached (`bpf_check_classic` in
//! net/core/filter.c: the length, jumps inside the program, a return at
//! the end, scratch memory written before it is read on every path) and
//! runs it over a synthetic SYN, as a reuseport group does: the packet's
//! data starts after the TCP header, so the headers are read through
//! `SKF_NET_OFF`, and `SKF_AD_OFF + SKF_AD_RANDOM` reads a number the test
//! chooses.

use std::net::SocketAddr;

use libc::sock_filter;

/// The scratch memory's words (`BPF_MEMWORDS`).
const MEMWORDS: u32 = 16;

/// A SYN as the program sees it: its IP and TCP headers, and the kernel's
/// per-packet random number.
pub struct Syn {
    /// The IP header (IPv4 or IPv6) and the TCP header after it.
    net: Vec<u8>,
    pub random: u32,
}

impl Syn {
    /// A SYN from `from` to `to` (the same IP version); an IPv4 header
    /// carries `options` 32-bit words of IP options.
    pub fn new(from: SocketAddr, to: SocketAddr, options: u8) -> Syn {
        let mut net = Vec::new();
        match (from, to) {
            (SocketAddr::V4(f), SocketAddr::V4(t)) => {
                let ihl = 5 + options;
                net.extend([0x40 | ihl, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0]);
                net.extend(f.ip().octets());
                net.extend(t.ip().octets());
                net.extend(std::iter::repeat_n(1, usize::from(options) * 4));
            }
            (SocketAddr::V6(f), SocketAddr::V6(t)) => {
                net.extend([0x60, 0, 0, 0, 0, 20, 6, 64]);
                net.extend(f.ip().octets());
                net.extend(t.ip().octets());
            }
            _ => panic!("{from} and {to} are of two IP versions"),
        }
        net.extend(from.port().to_be_bytes());
        net.extend(to.port().to_be_bytes());
        // Sequence, ack, offset 5 words, SYN, window, checksum, urgent.
        net.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        Syn { net, random: 0 }
    }

    /// `len` bytes at `off` from the network header, big-endian.
    fn load(&self, off: u32, len: usize) -> Result<u32, String> {
        let off = off as usize;
        let bytes = self.net.get(off..off + len).ok_or(format!(
            "a load of {len} bytes at SKF_NET_OFF+{off} is past the headers"
        ))?;
        Ok(bytes.iter().fold(0, |a, b| (a << 8) | u32::from(*b)))
    }

    /// A load at `k` (an absolute offset, or `k + X` for an indirect one).
    fn load_at(&self, k: u32, len: usize) -> Result<u32, String> {
        let net = libc::SKF_NET_OFF as u32;
        let ad = libc::SKF_AD_OFF as u32;
        if k == ad + libc::SKF_AD_RANDOM as u32 && len == 4 {
            return Ok(self.random);
        }
        if k >= net && k < ad {
            return self.load(k - net, len);
        }
        if k >= ad {
            return Err(format!("ancillary load {} is not emulated", k - ad));
        }
        // The payload: a SYN has none, and a failed load ends the program
        // with 0 (socket 0), which would be a silent wrong answer.
        Err(format!(
            "a load at payload offset {k}: a SYN has no payload"
        ))
    }
}

/// Checks `prog` as the kernel does before it takes it.
pub fn check(prog: &[sock_filter]) -> Result<(), String> {
    if prog.is_empty() || prog.len() > crate::deploy::clients::BPF_MAXINSNS {
        return Err(format!("{} instructions: 1 to 4096 allowed", prog.len()));
    }
    let last = prog[prog.len() - 1].code as u32;
    if class(last) != libc::BPF_RET {
        return Err("the last instruction is not a return".into());
    }
    // Which scratch words are written on every path into each instruction.
    let mut valid_at = vec![u32::MAX; prog.len()];
    let mut valid = 0u32;
    for (pc, ins) in prog.iter().enumerate() {
        valid &= valid_at[pc];
        let code = u32::from(ins.code);
        let target = |off: u32| {
            let t = pc + 1 + off as usize;
            (t < prog.len())
                .then_some(t)
                .ok_or(format!("the jump at {pc} lands past the end ({t})"))
        };
        match class(code) {
            libc::BPF_ST | libc::BPF_STX => {
                if ins.k >= MEMWORDS {
                    return Err(format!("store to M[{}] at {pc}", ins.k));
                }
                valid |= 1 << ins.k;
            }
            libc::BPF_LD | libc::BPF_LDX
                if mode(code) == libc::BPF_MEM
                    && (ins.k >= MEMWORDS || valid & (1 << ins.k) == 0) =>
            {
                return Err(format!("M[{}] is read at {pc} before it is written", ins.k));
            }
            libc::BPF_JMP if op(code) == libc::BPF_JA => {
                let t = target(ins.k)?;
                valid_at[t] &= valid;
                valid = u32::MAX;
            }
            libc::BPF_JMP => {
                for off in [ins.jt, ins.jf] {
                    let t = target(u32::from(off))?;
                    valid_at[t] &= valid;
                }
                valid = u32::MAX;
            }
            libc::BPF_RET => valid = u32::MAX,
            _ => {}
        }
    }
    Ok(())
}

/// Runs `prog` (checked first) over `syn`: the value it returns, the index
/// of the socket that gets the connection.
pub fn run(prog: &[sock_filter], syn: &Syn) -> Result<u32, String> {
    check(prog)?;
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; MEMWORDS as usize];
    let mut pc = 0;
    loop {
        let ins = prog[pc];
        let code = u32::from(ins.code);
        let k = ins.k;
        pc += 1;
        let operand = if src(code) == libc::BPF_X { x } else { k };
        let width = match size(code) {
            libc::BPF_W => 4,
            libc::BPF_H => 2,
            _ => 1,
        };
        match class(code) {
            libc::BPF_LD => {
                a = match mode(code) {
                    libc::BPF_ABS => syn.load_at(k, width)?,
                    libc::BPF_IND => syn.load_at(k.wrapping_add(x), width)?,
                    libc::BPF_MEM => mem[k as usize],
                    libc::BPF_IMM => k,
                    m => return Err(format!("load mode {m:#x} at {}", pc - 1)),
                }
            }
            libc::BPF_LDX => {
                x = match mode(code) {
                    libc::BPF_MSH => 4 * (syn.load_at(k, 1)? & 0xf),
                    libc::BPF_MEM => mem[k as usize],
                    libc::BPF_IMM => k,
                    m => return Err(format!("ldx mode {m:#x} at {}", pc - 1)),
                }
            }
            libc::BPF_ST => mem[k as usize] = a,
            libc::BPF_STX => mem[k as usize] = x,
            libc::BPF_ALU => a = alu(op(code), a, operand)?,
            libc::BPF_JMP => {
                let opcode = op(code);
                if opcode == libc::BPF_JA {
                    pc += k as usize;
                    continue;
                }
                let taken = match opcode {
                    libc::BPF_JEQ => a == operand,
                    libc::BPF_JGT => a > operand,
                    libc::BPF_JGE => a >= operand,
                    libc::BPF_JSET => a & operand != 0,
                    other => return Err(format!("jump {other:#x}")),
                };
                pc += usize::from(if taken { ins.jt } else { ins.jf });
            }
            libc::BPF_RET => return Ok(if rval(code) == libc::BPF_A { a } else { k }),
            libc::BPF_MISC => {
                if miscop(code) == libc::BPF_TAX {
                    x = a;
                } else {
                    a = x;
                }
            }
            c => return Err(format!("instruction class {c:#x}")),
        }
    }
}

// The fields of an instruction's code (linux/bpf_common.h, linux/filter.h);
// libc's functions of these names are `unsafe`, these are plain masks.
fn class(code: u32) -> u32 {
    code & 0x07
}
fn size(code: u32) -> u32 {
    code & 0x18
}
fn mode(code: u32) -> u32 {
    code & 0xe0
}
fn op(code: u32) -> u32 {
    code & 0xf0
}
fn src(code: u32) -> u32 {
    code & 0x08
}
fn rval(code: u32) -> u32 {
    code & 0x18
}
fn miscop(code: u32) -> u32 {
    code & 0xf8
}

fn alu(op: u32, a: u32, s: u32) -> Result<u32, String> {
    Ok(match op {
        libc::BPF_ADD => a.wrapping_add(s),
        libc::BPF_SUB => a.wrapping_sub(s),
        libc::BPF_MUL => a.wrapping_mul(s),
        libc::BPF_DIV if s == 0 => return Err("division by 0".into()),
        libc::BPF_DIV => a / s,
        libc::BPF_MOD if s == 0 => return Err("modulo 0".into()),
        libc::BPF_MOD => a % s,
        libc::BPF_OR => a | s,
        libc::BPF_AND => a & s,
        libc::BPF_XOR => a ^ s,
        libc::BPF_LSH => a.wrapping_shl(s),
        libc::BPF_RSH => a.wrapping_shr(s),
        libc::BPF_NEG => a.wrapping_neg(),
        other => return Err(format!("alu op {other:#x}")),
    })
}
