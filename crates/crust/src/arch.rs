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

/// General registers back from the image. A thread caught inside an
/// interrupted syscall keeps the kernel's restart state (the syscall number
/// and -ERESTARTSYS, -ERESTARTNOINTR or -ERESTARTNOHAND), for the kernel to
/// decide when it resumes, as it would have: the call is issued again, or
/// fails with EINTR if a handler runs first (every restored task is let go
/// by PTRACE_DETACH from a traced stop, which leaves it a pending-signal
/// check on its way to user space). A call the kernel would restart through
/// restart_syscall(2) (-ERESTART_RESTARTBLOCK: nanosleep and the like) is
/// issued again by crust, in full, since the restart block does not survive
/// into the new task; a thread dumped inside restart_syscall itself (a
/// nanosleep stopped and continued) gets EINTR from it for the same reason.
pub fn user_regs(g: &UserX86RegsEntry) -> libc::user_regs_struct {
    const ERESTART_RESTARTBLOCK: i64 = -516;
    let mut r = libc::user_regs_struct {
        r15: g.r15,
        r14: g.r14,
        r13: g.r13,
        r12: g.r12,
        rbp: g.bp,
        rbx: g.bx,
        r11: g.r11,
        r10: g.r10,
        r9: g.r9,
        r8: g.r8,
        rax: g.ax,
        rcx: g.cx,
        rdx: g.dx,
        rsi: g.si,
        rdi: g.di,
        orig_rax: g.orig_ax,
        rip: g.ip,
        cs: g.cs,
        eflags: g.flags,
        rsp: g.sp,
        ss: g.ss,
        fs_base: g.fs_base,
        gs_base: g.gs_base,
        ds: g.ds,
        es: g.es,
        fs: g.fs,
        gs: g.gs,
    };
    if (r.orig_rax as i64) >= 0 && r.rax as i64 == ERESTART_RESTARTBLOCK {
        r.rax = r.orig_rax;
        r.rip = r.rip.wrapping_sub(2);
        r.orig_rax = u64::MAX;
    }
    r
}

fn put32(buf: &mut [u8], off: usize, words: &[u32]) {
    for (i, w) in words.iter().enumerate() {
        if let Some(dst) = buf.get_mut(off + i * 4..off + i * 4 + 4) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
    }
}

fn put64(buf: &mut [u8], off: usize, words: &[u64]) {
    for (i, w) in words.iter().enumerate() {
        if let Some(dst) = buf.get_mut(off + i * 8..off + i * 8 + 8) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// Rebuild an XSAVE buffer from CRIU's fpregs message. `template` is the
/// thread's current buffer: it gives the size and the software-reserved bytes
/// the kernel expects. Fails when the image uses a component this CPU lacks.
pub fn xsave_buffer(fp: &UserX86FpregsEntry, template: &[u8]) -> Result<Vec<u8>, String> {
    let mut buf = template.to_vec();
    if buf.len() < 512 {
        return Err(format!("xstate buffer of {} bytes is too small", buf.len()));
    }
    // 16-bit registers, kept in 32-bit fields.
    for (at, name, v) in [(0, "cwd", fp.cwd), (2, "swd", fp.swd), (4, "twd", fp.twd), (6, "fop", fp.fop)] {
        let v = u16::try_from(v).map_err(|_| format!("the image's FPU register {name} {v:#x} has more than 16 bits"))?;
        buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    put64(&mut buf, 8, &[fp.rip, fp.rdp]);
    put32(&mut buf, 24, &[fp.mxcsr, fp.mxcsr_mask]);
    put32(&mut buf, 32, &fp.st_space);
    put32(&mut buf, 160, &fp.xmm_space);
    let Some(x) = &fp.xsave else { return Ok(buf) };
    if buf.len() < 576 {
        return Err("the image has extended (AVX) state but this CPU saves none".into());
    }
    put64(&mut buf, 512, &[x.xstate_bv]);
    let comps: [(u32, Vec<u8>); 7] = [
        (YMM, x.ymmh_space.iter().flat_map(|w| w.to_le_bytes()).collect()),
        (BNDREGS, x.bndreg_state.iter().flat_map(|w| w.to_le_bytes()).collect()),
        (BNDCSR, x.bndcsr_state.iter().flat_map(|w| w.to_le_bytes()).collect()),
        (OPMASK, x.opmask_reg.iter().flat_map(|w| w.to_le_bytes()).collect()),
        (ZMM_HI256, x.zmm_upper.iter().flat_map(|w| w.to_le_bytes()).collect()),
        (HI16_ZMM, x.hi16_zmm.iter().flat_map(|w| w.to_le_bytes()).collect()),
        (PKRU, x.pkru.iter().flat_map(|w| w.to_le_bytes()).collect()),
    ];
    for (id, bytes) in comps {
        if bytes.is_empty() {
            continue;
        }
        match component(id) {
            Some((off, size)) if off.checked_add(size).is_some_and(|end| end <= buf.len()) && bytes.len() == size => {
                buf[off..off + size].copy_from_slice(&bytes)
            }
            _ => return Err(format!("the image has state of CPU feature component {id}, which this CPU does not save")),
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsave_split_and_rebuilt_is_identical() {
        // The layout of this CPU, as the kernel would hand it out: header at 512.
        let size = (2..=9).filter_map(component).map(|(off, len)| off + len).max().unwrap_or(576).max(576);
        let raw: Vec<u8> = (0..size).map(|i| (i * 31 % 253) as u8).collect();
        let mut raw = raw;
        raw[520..576].iter_mut().for_each(|b| *b = 0);
        let fp = fpregs(&raw);
        let template = vec![0u8; raw.len()];
        let mut back = xsave_buffer(&fp, &template).unwrap();
        // Bytes crust does not carry (fxsave padding, header reserve, gaps
        // between components) come from the template; compare the rest.
        back[416..512].copy_from_slice(&raw[416..512]);
        let carried: Vec<(usize, usize)> = [YMM, BNDREGS, BNDCSR, OPMASK, ZMM_HI256, HI16_ZMM, PKRU]
            .into_iter()
            .filter_map(component)
            .filter(|(off, len)| off + len <= raw.len())
            .collect();
        for i in 0..raw.len() {
            let covered = i < 520 || carried.iter().any(|(off, len)| (*off..off + len).contains(&i));
            if covered {
                assert_eq!(back[i], raw[i], "byte {i}");
            }
        }
    }

    #[test]
    fn interrupted_syscalls_are_issued_again() {
        let mut g = UserX86RegsEntry { mode: Some(UserX86RegsMode::Native as i32), ..Default::default() };
        g.orig_ax = 230; // clock_nanosleep
        g.ax = (-516i64) as u64; // -ERESTART_RESTARTBLOCK
        g.ip = 0x1002;
        let r = user_regs(&g);
        assert_eq!((r.rax, r.rip, r.orig_rax), (230, 0x1000, u64::MAX));
        // pause() interrupted: the kernel decides, at release, as it would have.
        g.orig_ax = 34;
        g.ax = (-514i64) as u64; // -ERESTARTNOHAND
        let r = user_regs(&g);
        assert_eq!((r.rax, r.rip, r.orig_rax), ((-514i64) as u64, 0x1002, 34));
        g.ax = 0;
        let r = user_regs(&g);
        assert_eq!((r.rax, r.rip), (0, 0x1002), "a finished syscall is left alone");
    }
}
