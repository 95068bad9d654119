//! CRIU's numbers, each defined once: what the images' fields mean.
//! (The magic words of each image are with [`super::Kind`].)

/// inventory_entry.img_version crust writes and reads.
pub const IMG_VERSION: u32 = 2;

/// Pages are 4 KiB in every image (x86-64).
pub const PAGE_SIZE: u64 = 4096;

// task_core_entry.task_state.
pub const TASK_ALIVE: u32 = 1;
pub const TASK_STOPPED: u32 = 3;
pub const TASK_ZOMBIE: u32 = 6;

// pagemap_entry.flags.
pub const PE_PARENT: u32 = 1;
pub const PE_LAZY: u32 = 2;
pub const PE_PRESENT: u32 = 4;

// vma_entry.status bits.
pub const VMA_AREA_REGULAR: u32 = 1 << 0;
pub const VMA_AREA_STACK: u32 = 1 << 1;
pub const VMA_AREA_VSYSCALL: u32 = 1 << 2;
pub const VMA_AREA_VDSO: u32 = 1 << 3;
pub const VMA_AREA_HEAP: u32 = 1 << 5;
pub const VMA_FILE_PRIVATE: u32 = 1 << 6;
pub const VMA_FILE_SHARED: u32 = 1 << 7;
pub const VMA_ANON_SHARED: u32 = 1 << 8;
pub const VMA_ANON_PRIVATE: u32 = 1 << 9;
/// An attachment of a System V shared memory segment; its shmid is the segment's id.
pub const VMA_AREA_SYSVIPC: u32 = 1 << 10;
pub const VMA_AREA_VVAR: u32 = 1 << 12;
/// A mapping of a memfd; its shmid is the memfd's file in files.img.
pub const VMA_AREA_MEMFD: u32 = 1 << 14;

/// The cgroup set id that means "the dumper's own cgroups" (cg_set 1, as CRIU
/// numbers the root's set).
pub const SAME_AS_DUMPER: u32 = 1;

/// The signals whose dispositions task_core_entry.sigactions lists, in its
/// order: 1 to 64 but SIGKILL and SIGSTOP, which have none.
pub fn sigaction_signals() -> impl Iterator<Item = u32> {
    (1..=64u32).filter(|&s| s != libc::SIGKILL as u32 && s != libc::SIGSTOP as u32)
}
