//! x86-64 register state in CRIU's terms: general registers and the XSAVE area
//! split into the fxsave fields and the extended components.

use crate::images::proto::{UserX86FpregsEntry, UserX86RegsEntry, UserX86RegsMode, UserX86XsaveEntry};

pub fn gpregs(r: &libc::user_regs_struct) -> UserX86RegsEntry {
    UserX86RegsEntry {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        bp: r.rbp,
        bx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        ax: r.rax,
        cx: r.rcx,
        dx: r.rdx,
        si: r.rsi,
        di: r.rdi,
        orig_ax: r.orig_rax,
        ip: r.rip,
        cs: r.cs,
        flags: r.eflags,
        sp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
        mode: Some(UserX86RegsMode::Native as i32),
    }
}

/// XSAVE state components crust knows by number (Intel SDM vol. 1, ch. 13).
const YMM: u32 = 2;
const BNDREGS: u32 = 3;
const BNDCSR: u32 = 4;
const OPMASK: u32 = 5;
const ZMM_HI256: u32 = 6;
const HI16_ZMM: u32 = 7;
const PKRU: u32 = 9;

/// Offset and size of a component in the standard (non-compacted) XSAVE layout
/// of this CPU, as CPUID leaf 0xD reports it. AMD and Intel differ here.
fn component(n: u32) -> Option<(usize, usize)> {
    let c = std::arch::x86_64::__cpuid_count(0xd, n);
    (c.eax != 0).then_some((c.ebx as usize, c.eax as usize))
}

fn words32(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
}

fn words64(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
}

fn u16_at(b: &[u8], off: usize) -> u32 {
    u16::from_le_bytes([b[off], b[off + 1]]) as u32
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Split a raw XSAVE buffer (from PTRACE_GETREGSET NT_X86_XSTATE) into CRIU's
/// fpregs message. Components the buffer does not hold stay empty.
pub fn fpregs(xsave: &[u8]) -> UserX86FpregsEntry {
    let mut fx = [0u8; 512];
    let n = xsave.len().min(512);
    fx[..n].copy_from_slice(&xsave[..n]);
    let comp = |id: u32| -> &[u8] {
        match component(id) {
            Some((off, size)) if off + size <= xsave.len() => &xsave[off..off + size],
            _ => &[],
        }
    };
    let xsave_entry = (xsave.len() > 576).then(|| UserX86XsaveEntry {
        xstate_bv: u64_at(xsave, 512),
        ymmh_space: words32(comp(YMM)),
        bndreg_state: words64(comp(BNDREGS)),
        bndcsr_state: words64(comp(BNDCSR)),
        opmask_reg: words64(comp(OPMASK)),
        zmm_upper: words64(comp(ZMM_HI256)),
        hi16_zmm: words64(comp(HI16_ZMM)),
        pkru: words32(comp(PKRU)),
    });
    UserX86FpregsEntry {
        cwd: u16_at(&fx, 0),
        swd: u16_at(&fx, 2),
        twd: u16_at(&fx, 4),
        fop: u16_at(&fx, 6),
        rip: u64_at(&fx, 8),
        rdp: u64_at(&fx, 16),
        mxcsr: u32_at(&fx, 24),
        mxcsr_mask: u32_at(&fx, 28),
        st_space: words32(&fx[32..160]),
        xmm_space: words32(&fx[160..416]),
        padding: words32(&fx[416..512]),
        xsave: xsave_entry,
    }
}
