//! A task being restored: crust drives it by syscalls injected under ptrace,
//! with a scratch mapping in it for the syscalls' arguments.

use crate::error::{Error, Result};
use crate::images::criu::PAGE_SIZE;
use crate::images::proto::PagemapEntry;
use crate::ptrace;
use crate::remote::{self, TaskMem};

/// One stopped thread of a task under construction.
pub struct Task {
    pub pid: i32,
    pub tid: i32,
    gadget: u64,
    base: libc::user_regs_struct,
    /// An fd of the task on crust's root directory, once the task's own root
    /// is another (a mount namespace of the tree's own): crust's files (the
    /// images) are opened through it.
    pub host_root: Option<u64>,
}

impl Task {
    pub fn new(pid: i32, tid: i32, gadget: u64) -> Result<Task> {
        Ok(Task { pid, tid, gadget, base: ptrace::regs(tid)?, host_root: None })
    }

    /// open(2) inside the task of a file of crust's (an image), by its path
    /// from crust's root.
    pub fn open_host(&self, scratch: &mut Scratch, path: &str, flags: u32) -> Result<u64> {
        let Some(dir) = self.host_root else { return self.open(scratch, path, flags) };
        let addr = scratch.reset().put_str(path.trim_start_matches('/'))?;
        self.call(&format!("opening {path}"), libc::SYS_openat, [dir, addr, flags as u64, 0, 0, 0])
    }

    /// Run a syscall in the task; failures become errors naming `what`.
    pub fn call(&self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let (r, _) = remote::syscall(self.tid, &self.base, self.gadget, nr, args)?;
        remote::check(self.tid, what, r)
    }

    /// Run a syscall that creates a task (clone3), and return the new task's
    /// id as crust sees it (ptrace's report), which is not the one the call
    /// returned inside a pid namespace of its own.
    pub fn call_clone(&self, what: &str, nr: i64, args: [u64; 6]) -> Result<i32> {
        let (r, created) = remote::syscall(self.tid, &self.base, self.gadget, nr, args)?;
        let id = remote::check(self.tid, what, r)? as i32;
        created.ok_or_else(|| Error::Ptrace { tid: self.tid, what: format!("{what} created {id}, but ptrace did not report it") })
    }

    /// Run a syscall that ends the task; returns once it is dead.
    pub fn call_to_death(self, nr: i64, args: [u64; 6]) -> Result<()> {
        remote::syscall_to_death(self.tid, &self.base, self.gadget, nr, args)
    }

    /// open(2) of `path` inside the task; returns the fd there.
    pub fn open(&self, scratch: &mut Scratch, path: &str, flags: u32) -> Result<u64> {
        let addr = scratch.reset().put_str(path)?;
        self.call(&format!("opening {path}"), libc::SYS_openat, [libc::AT_FDCWD as u64, addr, flags as u64, 0, 0, 0])
    }

    /// Read every saved page into place with pread from the pages image, opened
    /// inside the task as `pages_fd`, telling `progress` the bytes of each
    /// read. Returns the number of pages.
    pub fn fill_pages(&self, pagemap: &[PagemapEntry], pages_fd: u64, progress: &mut dyn FnMut(u64)) -> Result<u64> {
        let mut offset = 0u64;
        let mut pages = 0u64;
        for e in pagemap {
            // At most 2^32 pages of 2^12 bytes: the product fits; the sums are checked.
            let len = e.nr_pages as u64 * PAGE_SIZE;
            if e.vaddr.checked_add(len).is_none() || offset.checked_add(len).is_none() {
                return Err(Error::image("pagemap", format!("a run of {} pages at {:#x} reaches beyond 2^64", e.nr_pages, e.vaddr)));
            }
            self.fill_run(pages_fd, e.vaddr, len, offset, progress)?;
            offset += len;
            pages += e.nr_pages as u64;
        }
        Ok(pages)
    }

    /// Read `len` bytes of saved pages at `offset` of the pages image (open in
    /// the task as `pages_fd`) to `vaddr`, with pread.
    pub fn fill_run(&self, pages_fd: u64, vaddr: u64, len: u64, offset: u64, progress: &mut dyn FnMut(u64)) -> Result<()> {
        // pread moves a little under 2 GiB at most (MAX_RW_COUNT); reads of 64 MiB
        // let progress be told often, at a cost of one injected call each.
        const STEP: u64 = 64 << 20;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(STEP);
            let got = self.call("pread of saved pages", libc::SYS_pread64, [pages_fd, vaddr + done, n, offset + done, 0, 0])?;
            if got != n {
                let what = format!("short read of saved pages at {:#x}: {got} of {n} bytes", vaddr + done);
                return Err(Error::image("pages image", what));
            }
            done += n;
            progress(n);
        }
        Ok(())
    }

    pub fn gadget(&self) -> u64 {
        self.gadget
    }

    /// The gadget lives in the vdso; when the vdso moves, so does the gadget.
    pub fn set_gadget(&mut self, gadget: u64) {
        self.gadget = gadget;
    }
}

/// A private read-write mapping in a task for syscall arguments, filled from
/// crust through /proc/PID/mem.
pub struct Scratch {
    pub addr: u64,
    pub len: u64,
    used: u64,
    mem: TaskMem,
}

pub const SCRATCH_LEN: u64 = 1 << 20;

impl Scratch {
    pub fn new(pid: i32, addr: u64) -> Result<Scratch> {
        Ok(Scratch { addr, len: SCRATCH_LEN, used: 0, mem: TaskMem::open(pid)? })
    }

    /// Forget what was put before: the previous syscall is done with it.
    pub fn reset(&mut self) -> &mut Self {
        self.used = 0;
        self
    }

    /// Copy `data` into the scratch area and return its address in the task.
    pub fn put(&mut self, data: &[u8]) -> Result<u64> {
        let at = (self.used + 15) & !15;
        if at + data.len() as u64 > self.len {
            return Err(Error::unsupported("crust's scratch area", format!("{} bytes of a syscall's arguments do not fit in it", data.len())));
        }
        self.mem.write(self.addr + at, data)?;
        self.used = at + data.len() as u64;
        Ok(self.addr + at)
    }

    /// A NUL-terminated string.
    pub fn put_str(&mut self, s: &str) -> Result<u64> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(&b)
    }

    pub fn put_u64s(&mut self, words: &[u64]) -> Result<u64> {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.put(&bytes)
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.mem.read(addr, buf)
    }
}
