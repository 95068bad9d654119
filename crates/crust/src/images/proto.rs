//! Hand-written prost messages mirroring CRIU's `images/*.proto` (proto2).
//!
//! Field numbers, labels and scalar types follow the descriptors shipped with
//! CRIU 3.17 (what Debian's `crit` decodes with), plus a few later optional
//! fields from upstream's core.proto. Every `required` field carries prost's
//! `required` label so it is always put on the wire: python protobuf (crit)
//! refuses messages that lack a required field.
//!
//! None of CRIU's repeated scalars is declared `[packed=true]`, and proto2
//! defaults to unpacked, so each repeated scalar says `packed = "false"`
//! (prost would pack numeric repeated fields otherwise).
//!
//! Required sub-messages are plain `M` fields (prost's `required` message
//! label), so they are always encoded; optional ones are `Option<M>`.
//! Enumerations are `i32` fields tagged with their Rust enum; each enum has
//! `as_str_name` returning CRIU's value name, which is what crit prints.
//!
//! Field names are CRIU's, so `crust show` output lines up with `crit show`.

#![allow(clippy::derive_partial_eq_without_eq)]

/// Defines a CRIU enum: prost `Enumeration`, with CRIU's spelling of each
/// value available through `as_str_name` / `from_str_name`.
macro_rules! criu_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($variant:ident = $value:literal => $criu:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
            prost::Enumeration, serde::Serialize,
        )]
        #[repr(i32)]
        pub enum $name {
            $(
                #[doc = concat!("CRIU `", $criu, "`")]
                $variant = $value,
            )+
        }

        impl $name {
            /// The value's name as written in CRIU's .proto (and printed by crit).
            pub fn as_str_name(&self) -> &'static str {
                match self {
                    $($name::$variant => $criu,)+
                }
            }

            /// Parses CRIU's name of a value.
            pub fn from_str_name(value: &str) -> Option<Self> {
                match value {
                    $($criu => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

// ---------------------------------------------------------------------------
// inventory.proto
// ---------------------------------------------------------------------------

criu_enum! {
    /// CRIU `lsmtype` (inventory.proto).
    pub enum Lsmtype {
        NoLsm = 0 => "NO_LSM",
        Selinux = 1 => "SELINUX",
        Apparmor = 2 => "APPARMOR",
    }
}

/// CRIU `inventory_entry` (inventory.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct InventoryEntry {
    #[prost(uint32, required, tag = "1")]
    pub img_version: u32,
    #[prost(bool, optional, tag = "2")]
    pub fdinfo_per_id: Option<bool>,
    #[prost(message, optional, tag = "3")]
    pub root_ids: Option<TaskKobjIdsEntry>,
    #[prost(bool, optional, tag = "4")]
    pub ns_per_id: Option<bool>,
    #[prost(uint32, optional, tag = "5")]
    pub root_cg_set: Option<u32>,
    #[prost(enumeration = "Lsmtype", optional, tag = "6")]
    pub lsmtype: Option<i32>,
    // Tag 7 is unused in CRIU's inventory_entry.
    #[prost(uint64, optional, tag = "8")]
    pub dump_uptime: Option<u64>,
    #[prost(uint32, optional, tag = "9")]
    pub pre_dump_mode: Option<u32>,
    #[prost(bool, optional, tag = "10")]
    pub tcp_close: Option<bool>,
    #[prost(uint32, optional, tag = "11")]
    pub network_lock_method: Option<u32>,
}

// ---------------------------------------------------------------------------
// pstree.proto
// ---------------------------------------------------------------------------

/// CRIU `pstree_entry` (pstree.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct PstreeEntry {
    #[prost(uint32, required, tag = "1")]
    pub pid: u32,
    #[prost(uint32, required, tag = "2")]
    pub ppid: u32,
    #[prost(uint32, required, tag = "3")]
    pub pgid: u32,
    #[prost(uint32, required, tag = "4")]
    pub sid: u32,
    #[prost(uint32, repeated, packed = "false", tag = "5")]
    pub threads: Vec<u32>,
}

// ---------------------------------------------------------------------------
// core.proto
// ---------------------------------------------------------------------------

criu_enum! {
    /// CRIU `seccomp_mode` (core.proto); matches SECCOMP_MODE_*.
    pub enum SeccompMode {
        Disabled = 0 => "disabled",
        Strict = 1 => "strict",
        Filter = 2 => "filter",
    }
}

/// CRIU `task_core_entry` (core.proto): per-process state.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct TaskCoreEntry {
    /// crit shows this through its "gen" dict (1 Alive, 3 Zombie, 6 Stopped).
    #[prost(uint32, required, tag = "1")]
    pub task_state: u32,
    #[prost(uint32, required, tag = "2")]
    pub exit_code: u32,
    #[prost(uint32, required, tag = "3")]
    pub personality: u32,
    #[prost(uint32, required, tag = "4")]
    pub flags: u32,
    #[prost(uint64, required, tag = "5")]
    pub blk_sigset: u64,
    #[prost(string, required, tag = "6")]
    pub comm: String,
    #[prost(message, optional, tag = "7")]
    pub timers: Option<TaskTimersEntry>,
    #[prost(message, optional, tag = "8")]
    pub rlimits: Option<TaskRlimitsEntry>,
    /// Deprecated upstream in favour of thread_core_entry.cg_set.
    #[prost(uint32, optional, tag = "9")]
    pub cg_set: Option<u32>,
    #[prost(message, optional, tag = "10")]
    pub signals_s: Option<SignalQueueEntry>,
    /// Deprecated in CRIU (seccomp state is per-thread now).
    #[prost(enumeration = "SeccompMode", optional, tag = "11")]
    pub old_seccomp_mode: Option<i32>,
    /// Deprecated in CRIU (seccomp state is per-thread now).
    #[prost(uint32, optional, tag = "12")]
    pub old_seccomp_filter: Option<u32>,
    #[prost(uint32, optional, tag = "13")]
    pub loginuid: Option<u32>,
    #[prost(int32, optional, tag = "14")]
    pub oom_score_adj: Option<i32>,
    #[prost(message, repeated, tag = "15")]
    pub sigactions: Vec<SaEntry>,
    // Tags 16, 17 (tty_nr, tty_pgrp) and 19 (start_time) are reserved upstream.
    #[prost(bool, optional, tag = "18")]
    pub child_subreaper: Option<bool>,
    #[prost(uint64, optional, tag = "20")]
    pub blk_sigset_extended: Option<u64>,
    /// Newer than CRIU 3.17 (crit 3.17 ignores it).
    #[prost(uint32, optional, tag = "21")]
    pub stop_signo: Option<u32>,
    /// Newer than CRIU 3.17 (crit 3.17 ignores it).
    #[prost(uint32, optional, tag = "22")]
    pub membarrier_registration_mask: Option<u32>,
}

/// CRIU `task_kobj_ids_entry` (core.proto): ids of shared kernel objects.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct TaskKobjIdsEntry {
    #[prost(uint32, required, tag = "1")]
    pub vm_id: u32,
    #[prost(uint32, required, tag = "2")]
    pub files_id: u32,
    #[prost(uint32, required, tag = "3")]
    pub fs_id: u32,
    #[prost(uint32, required, tag = "4")]
    pub sighand_id: u32,
    #[prost(uint32, optional, tag = "5")]
    pub pid_ns_id: Option<u32>,
    #[prost(uint32, optional, tag = "6")]
    pub net_ns_id: Option<u32>,
    #[prost(uint32, optional, tag = "7")]
    pub ipc_ns_id: Option<u32>,
    #[prost(uint32, optional, tag = "8")]
    pub uts_ns_id: Option<u32>,
    #[prost(uint32, optional, tag = "9")]
    pub mnt_ns_id: Option<u32>,
    #[prost(uint32, optional, tag = "10")]
    pub user_ns_id: Option<u32>,
    #[prost(uint32, optional, tag = "11")]
    pub cgroup_ns_id: Option<u32>,
    #[prost(uint32, optional, tag = "12")]
    pub time_ns_id: Option<u32>,
}

/// CRIU `thread_sas_entry` (core.proto): sigaltstack.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct ThreadSasEntry {
    #[prost(uint64, required, tag = "1")]
    pub ss_sp: u64,
    #[prost(uint64, required, tag = "2")]
    pub ss_size: u64,
    #[prost(uint32, required, tag = "3")]
    pub ss_flags: u32,
}

/// CRIU `thread_core_entry` (core.proto): per-thread state.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct ThreadCoreEntry {
    #[prost(uint64, required, tag = "1")]
    pub futex_rla: u64,
    #[prost(uint32, required, tag = "2")]
    pub futex_rla_len: u32,
    /// sint32 (zig-zag) on the wire.
    #[prost(sint32, optional, tag = "3")]
    pub sched_nice: Option<i32>,
    #[prost(uint32, optional, tag = "4")]
    pub sched_policy: Option<u32>,
    #[prost(uint32, optional, tag = "5")]
    pub sched_prio: Option<u32>,
    #[prost(uint64, optional, tag = "6")]
    pub blk_sigset: Option<u64>,
    #[prost(message, optional, tag = "7")]
    pub sas: Option<ThreadSasEntry>,
    #[prost(uint32, optional, tag = "8")]
    pub pdeath_sig: Option<u32>,
    #[prost(message, optional, tag = "9")]
    pub signals_p: Option<SignalQueueEntry>,
    #[prost(message, optional, tag = "10")]
    pub creds: Option<CredsEntry>,
    #[prost(enumeration = "SeccompMode", optional, tag = "11")]
    pub seccomp_mode: Option<i32>,
    #[prost(uint32, optional, tag = "12")]
    pub seccomp_filter: Option<u32>,
    #[prost(string, optional, tag = "13")]
    pub comm: Option<String>,
    #[prost(uint64, optional, tag = "14")]
    pub blk_sigset_extended: Option<u64>,
    #[prost(message, optional, tag = "15")]
    pub rseq_entry: Option<RseqEntry>,
    /// Newer than CRIU 3.17 (crit 3.17 ignores it).
    #[prost(uint32, optional, tag = "16")]
    pub cg_set: Option<u32>,
    /// Newer than CRIU 3.17 (crit 3.17 ignores it).
    #[prost(uint64, optional, tag = "17")]
    pub timerslack_ns: Option<u64>,
}

/// CRIU `task_rlimits_entry` (core.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct TaskRlimitsEntry {
    #[prost(message, repeated, tag = "1")]
    pub rlimits: Vec<RlimitEntry>,
}

/// Nested enum of CRIU `core_entry` (core.proto).
pub mod core_entry {
    criu_enum! {
        /// CRIU `core_entry.march`: architecture of the dumped task.
        pub enum March {
            Unknown = 0 => "UNKNOWN",
            X8664 = 1 => "X86_64",
            Arm = 2 => "ARM",
            Aarch64 = 3 => "AARCH64",
            Ppc64 = 4 => "PPC64",
            S390 = 5 => "S390",
            Mips = 6 => "MIPS",
            Loongarch64 = 7 => "LOONGARCH64",
            Riscv64 = 8 => "RISCV64",
        }
    }
}

/// CRIU `core_entry` (core.proto): one per thread, in core-<tid>.img.
///
/// Only the x86 thread info is typed; the other architectures' fields
/// (ti_arm = 6, ti_aarch64 = 8, ti_ppc64 = 9, ti_s390 = 10, ti_mips = 11,
/// ti_loongarch64 = 12, ti_riscv64 = 13) are skipped on decode.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct CoreEntry {
    #[prost(enumeration = "core_entry::March", required, tag = "1")]
    pub mtype: i32,
    #[prost(message, optional, tag = "2")]
    pub thread_info: Option<ThreadInfoX86>,
    #[prost(message, optional, tag = "3")]
    pub tc: Option<TaskCoreEntry>,
    #[prost(message, optional, tag = "4")]
    pub ids: Option<TaskKobjIdsEntry>,
    #[prost(message, optional, tag = "5")]
    pub thread_core: Option<ThreadCoreEntry>,
}

// ---------------------------------------------------------------------------
// core-x86.proto
// ---------------------------------------------------------------------------

criu_enum! {
    /// CRIU `user_x86_regs_mode` (core-x86.proto). Has no zero value.
    pub enum UserX86RegsMode {
        Native = 1 => "NATIVE",
        Compat = 2 => "COMPAT",
    }
}

/// CRIU `user_x86_regs_entry` (core-x86.proto): general registers, used for
/// both 64-bit and compat tasks.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct UserX86RegsEntry {
    #[prost(uint64, required, tag = "1")]
    pub r15: u64,
    #[prost(uint64, required, tag = "2")]
    pub r14: u64,
    #[prost(uint64, required, tag = "3")]
    pub r13: u64,
    #[prost(uint64, required, tag = "4")]
    pub r12: u64,
    #[prost(uint64, required, tag = "5")]
    pub bp: u64,
    #[prost(uint64, required, tag = "6")]
    pub bx: u64,
    #[prost(uint64, required, tag = "7")]
    pub r11: u64,
    #[prost(uint64, required, tag = "8")]
    pub r10: u64,
    #[prost(uint64, required, tag = "9")]
    pub r9: u64,
    #[prost(uint64, required, tag = "10")]
    pub r8: u64,
    #[prost(uint64, required, tag = "11")]
    pub ax: u64,
    #[prost(uint64, required, tag = "12")]
    pub cx: u64,
    #[prost(uint64, required, tag = "13")]
    pub dx: u64,
    #[prost(uint64, required, tag = "14")]
    pub si: u64,
    #[prost(uint64, required, tag = "15")]
    pub di: u64,
    #[prost(uint64, required, tag = "16")]
    pub orig_ax: u64,
    #[prost(uint64, required, tag = "17")]
    pub ip: u64,
    #[prost(uint64, required, tag = "18")]
    pub cs: u64,
    #[prost(uint64, required, tag = "19")]
    pub flags: u64,
    #[prost(uint64, required, tag = "20")]
    pub sp: u64,
    #[prost(uint64, required, tag = "21")]
    pub ss: u64,
    #[prost(uint64, required, tag = "22")]
    pub fs_base: u64,
    #[prost(uint64, required, tag = "23")]
    pub gs_base: u64,
    #[prost(uint64, required, tag = "24")]
    pub ds: u64,
    #[prost(uint64, required, tag = "25")]
    pub es: u64,
    #[prost(uint64, required, tag = "26")]
    pub fs: u64,
    #[prost(uint64, required, tag = "27")]
    pub gs: u64,
    /// Absent means NATIVE (CRIU's `[default = NATIVE]`).
    #[prost(
        enumeration = "UserX86RegsMode",
        optional,
        tag = "28",
        default = "Native"
    )]
    pub mode: Option<i32>,
}

/// CRIU `user_x86_xsave_entry` (core-x86.proto): xsave extended state
/// components, as arrays of little-endian words.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct UserX86XsaveEntry {
    #[prost(uint64, required, tag = "1")]
    pub xstate_bv: u64,
    #[prost(uint32, repeated, packed = "false", tag = "2")]
    pub ymmh_space: Vec<u32>,
    #[prost(uint64, repeated, packed = "false", tag = "3")]
    pub bndreg_state: Vec<u64>,
    #[prost(uint64, repeated, packed = "false", tag = "4")]
    pub bndcsr_state: Vec<u64>,
    #[prost(uint64, repeated, packed = "false", tag = "5")]
    pub opmask_reg: Vec<u64>,
    #[prost(uint64, repeated, packed = "false", tag = "6")]
    pub zmm_upper: Vec<u64>,
    #[prost(uint64, repeated, packed = "false", tag = "7")]
    pub hi16_zmm: Vec<u64>,
    #[prost(uint32, repeated, packed = "false", tag = "8")]
    pub pkru: Vec<u32>,
}

/// CRIU `user_x86_fpregs_entry` (core-x86.proto): the fxsave area, plus
/// the xsave extension.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct UserX86FpregsEntry {
    #[prost(uint32, required, tag = "1")]
    pub cwd: u32,
    #[prost(uint32, required, tag = "2")]
    pub swd: u32,
    #[prost(uint32, required, tag = "3")]
    pub twd: u32,
    #[prost(uint32, required, tag = "4")]
    pub fop: u32,
    #[prost(uint64, required, tag = "5")]
    pub rip: u64,
    #[prost(uint64, required, tag = "6")]
    pub rdp: u64,
    #[prost(uint32, required, tag = "7")]
    pub mxcsr: u32,
    #[prost(uint32, required, tag = "8")]
    pub mxcsr_mask: u32,
    /// 32 words (8 x87 registers of 16 bytes).
    #[prost(uint32, repeated, packed = "false", tag = "9")]
    pub st_space: Vec<u32>,
    /// 64 words (16 xmm registers).
    #[prost(uint32, repeated, packed = "false", tag = "10")]
    pub xmm_space: Vec<u32>,
    /// Unused by CRIU, kept for compatibility (24 words of fxsave padding).
    #[prost(uint32, repeated, packed = "false", tag = "11")]
    pub padding: Vec<u32>,
    // Tag 12 is unused in CRIU's user_x86_fpregs_entry.
    #[prost(message, optional, tag = "13")]
    pub xsave: Option<UserX86XsaveEntry>,
}

/// CRIU `user_desc_t` (core-x86.proto): a GDT TLS entry (set_thread_area).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct UserDescT {
    #[prost(uint32, required, tag = "1")]
    pub entry_number: u32,
    /// GDT 32-bit base, not the fs/gs MSRs.
    #[prost(uint32, required, tag = "2")]
    pub base_addr: u32,
    #[prost(uint32, required, tag = "3")]
    pub limit: u32,
    #[prost(bool, required, tag = "4")]
    pub seg_32bit: bool,
    #[prost(bool, required, tag = "5")]
    pub contents_h: bool,
    #[prost(bool, required, tag = "6")]
    pub contents_l: bool,
    #[prost(bool, required, tag = "7", default = "true")]
    pub read_exec_only: bool,
    #[prost(bool, required, tag = "8")]
    pub limit_in_pages: bool,
    #[prost(bool, required, tag = "9", default = "true")]
    pub seg_not_present: bool,
    /// Spelled "usable" in CRIU 3.17 (older .proto files say "useable").
    #[prost(bool, required, tag = "10")]
    pub usable: bool,
}

/// CRIU `thread_info_x86` (core-x86.proto): x86 register state of a thread.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct ThreadInfoX86 {
    #[prost(uint64, required, tag = "1")]
    pub clear_tid_addr: u64,
    #[prost(message, required, tag = "2")]
    pub gpregs: UserX86RegsEntry,
    #[prost(message, required, tag = "3")]
    pub fpregs: UserX86FpregsEntry,
    #[prost(message, repeated, tag = "4")]
    pub tls: Vec<UserDescT>,
}

// ---------------------------------------------------------------------------
// creds.proto, sa.proto, rlimit.proto, timer.proto, siginfo.proto, rseq.proto
// ---------------------------------------------------------------------------

/// CRIU `creds_entry` (creds.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct CredsEntry {
    #[prost(uint32, required, tag = "1")]
    pub uid: u32,
    #[prost(uint32, required, tag = "2")]
    pub gid: u32,
    #[prost(uint32, required, tag = "3")]
    pub euid: u32,
    #[prost(uint32, required, tag = "4")]
    pub egid: u32,
    #[prost(uint32, required, tag = "5")]
    pub suid: u32,
    #[prost(uint32, required, tag = "6")]
    pub sgid: u32,
    #[prost(uint32, required, tag = "7")]
    pub fsuid: u32,
    #[prost(uint32, required, tag = "8")]
    pub fsgid: u32,
    /// Capability sets are arrays of 32-bit words (low word first).
    #[prost(uint32, repeated, packed = "false", tag = "9")]
    pub cap_inh: Vec<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "10")]
    pub cap_prm: Vec<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "11")]
    pub cap_eff: Vec<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "12")]
    pub cap_bnd: Vec<u32>,
    #[prost(uint32, required, tag = "13")]
    pub secbits: u32,
    #[prost(uint32, repeated, packed = "false", tag = "14")]
    pub groups: Vec<u32>,
    #[prost(string, optional, tag = "15")]
    pub lsm_profile: Option<String>,
    #[prost(string, optional, tag = "16")]
    pub lsm_sockcreate: Option<String>,
    #[prost(bytes = "vec", optional, tag = "17")]
    pub apparmor_data: Option<Vec<u8>>,
}

/// CRIU `sa_entry` (sa.proto): one signal's disposition.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct SaEntry {
    #[prost(uint64, required, tag = "1")]
    pub sigaction: u64,
    #[prost(uint64, required, tag = "2")]
    pub flags: u64,
    #[prost(uint64, required, tag = "3")]
    pub restorer: u64,
    #[prost(uint64, required, tag = "4")]
    pub mask: u64,
    #[prost(bool, optional, tag = "5")]
    pub compat_sigaction: Option<bool>,
    #[prost(uint64, optional, tag = "6")]
    pub mask_extended: Option<u64>,
}

/// CRIU `rlimit_entry` (rlimit.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RlimitEntry {
    #[prost(uint64, required, tag = "1")]
    pub cur: u64,
    #[prost(uint64, required, tag = "2")]
    pub max: u64,
}

/// CRIU `itimer_entry` (timer.proto): interval and value of one itimer.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct ItimerEntry {
    #[prost(uint64, required, tag = "1")]
    pub isec: u64,
    #[prost(uint64, required, tag = "2")]
    pub iusec: u64,
    #[prost(uint64, required, tag = "3")]
    pub vsec: u64,
    #[prost(uint64, required, tag = "4")]
    pub vusec: u64,
}

/// CRIU `posix_timer_entry` (timer.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct PosixTimerEntry {
    #[prost(uint32, required, tag = "1")]
    pub it_id: u32,
    #[prost(uint32, required, tag = "2")]
    pub clock_id: u32,
    #[prost(uint32, required, tag = "3")]
    pub si_signo: u32,
    #[prost(uint32, required, tag = "4")]
    pub it_sigev_notify: u32,
    #[prost(uint64, required, tag = "5")]
    pub sival_ptr: u64,
    #[prost(uint32, required, tag = "6")]
    pub overrun: u32,
    #[prost(uint64, required, tag = "7")]
    pub isec: u64,
    #[prost(uint64, required, tag = "8")]
    pub insec: u64,
    #[prost(uint64, required, tag = "9")]
    pub vsec: u64,
    #[prost(uint64, required, tag = "10")]
    pub vnsec: u64,
    #[prost(int32, optional, tag = "11")]
    pub notify_thread_id: Option<i32>,
}

/// CRIU `task_timers_entry` (timer.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct TaskTimersEntry {
    #[prost(message, required, tag = "1")]
    pub real: ItimerEntry,
    #[prost(message, required, tag = "2")]
    pub virt: ItimerEntry,
    #[prost(message, required, tag = "3")]
    pub prof: ItimerEntry,
    #[prost(message, repeated, tag = "4")]
    pub posix: Vec<PosixTimerEntry>,
}

/// CRIU `siginfo_entry` (siginfo.proto): a raw kernel siginfo_t.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct SiginfoEntry {
    #[prost(bytes = "vec", required, tag = "1")]
    pub siginfo: Vec<u8>,
}

/// CRIU `signal_queue_entry` (siginfo.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct SignalQueueEntry {
    #[prost(message, repeated, tag = "1")]
    pub signals: Vec<SiginfoEntry>,
}

/// CRIU `rseq_entry` (rseq.proto): a thread's registered restartable sequence.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RseqEntry {
    #[prost(uint64, required, tag = "1")]
    pub rseq_abi_pointer: u64,
    #[prost(uint32, required, tag = "2")]
    pub rseq_abi_size: u32,
    #[prost(uint32, required, tag = "3")]
    pub signature: u32,
    #[prost(uint64, optional, tag = "4")]
    pub rseq_cs_pointer: Option<u64>,
}

// ---------------------------------------------------------------------------
// mm.proto, vma.proto
// ---------------------------------------------------------------------------

/// CRIU `aio_ring_entry` (mm.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct AioRingEntry {
    #[prost(uint64, required, tag = "1")]
    pub id: u64,
    #[prost(uint32, required, tag = "2")]
    pub nr_req: u32,
    #[prost(uint32, required, tag = "3")]
    pub ring_len: u32,
}

/// CRIU `mm_entry` (mm.proto): the address space, in mm-<id>.img.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct MmEntry {
    #[prost(uint64, required, tag = "1")]
    pub mm_start_code: u64,
    #[prost(uint64, required, tag = "2")]
    pub mm_end_code: u64,
    #[prost(uint64, required, tag = "3")]
    pub mm_start_data: u64,
    #[prost(uint64, required, tag = "4")]
    pub mm_end_data: u64,
    #[prost(uint64, required, tag = "5")]
    pub mm_start_stack: u64,
    #[prost(uint64, required, tag = "6")]
    pub mm_start_brk: u64,
    #[prost(uint64, required, tag = "7")]
    pub mm_brk: u64,
    #[prost(uint64, required, tag = "8")]
    pub mm_arg_start: u64,
    #[prost(uint64, required, tag = "9")]
    pub mm_arg_end: u64,
    #[prost(uint64, required, tag = "10")]
    pub mm_env_start: u64,
    #[prost(uint64, required, tag = "11")]
    pub mm_env_end: u64,
    #[prost(uint32, required, tag = "12")]
    pub exe_file_id: u32,
    /// Flattened (type, value) pairs of the auxiliary vector.
    #[prost(uint64, repeated, packed = "false", tag = "13")]
    pub mm_saved_auxv: Vec<u64>,
    #[prost(message, repeated, tag = "14")]
    pub vmas: Vec<VmaEntry>,
    #[prost(int32, optional, tag = "15")]
    pub dumpable: Option<i32>,
    #[prost(message, repeated, tag = "16")]
    pub aios: Vec<AioRingEntry>,
    #[prost(bool, optional, tag = "17")]
    pub thp_disabled: Option<bool>,
}

/// CRIU `vma_entry` (vma.proto): one mapping.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct VmaEntry {
    #[prost(uint64, required, tag = "1")]
    pub start: u64,
    #[prost(uint64, required, tag = "2")]
    pub end: u64,
    #[prost(uint64, required, tag = "3")]
    pub pgoff: u64,
    #[prost(uint64, required, tag = "4")]
    pub shmid: u64,
    /// PROT_* bits.
    #[prost(uint32, required, tag = "5")]
    pub prot: u32,
    /// MAP_* bits.
    #[prost(uint32, required, tag = "6")]
    pub flags: u32,
    /// CRIU's VMA_AREA_* / VMA_FILE_* / VMA_ANON_* status bits.
    #[prost(uint32, required, tag = "7")]
    pub status: u32,
    /// sint64 (zig-zag) on the wire; -1 when the mapping has no file.
    #[prost(sint64, required, tag = "8")]
    pub fd: i64,
    #[prost(uint64, optional, tag = "9")]
    pub madv: Option<u64>,
    #[prost(uint32, optional, tag = "10")]
    pub fdflags: Option<u32>,
}

// ---------------------------------------------------------------------------
// pagemap.proto
// ---------------------------------------------------------------------------

/// CRIU `pagemap_head` (pagemap.proto): first entry of pagemap-<id>.img,
/// naming the pages-<pages_id>.img file.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct PagemapHead {
    #[prost(uint32, required, tag = "1")]
    pub pages_id: u32,
}

/// CRIU `pagemap_entry` (pagemap.proto): a run of pages.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct PagemapEntry {
    #[prost(uint64, required, tag = "1")]
    pub vaddr: u64,
    #[prost(uint32, required, tag = "2")]
    pub nr_pages: u32,
    /// Old images only; newer CRIU sets PE_PARENT in `flags` instead.
    #[prost(bool, optional, tag = "3")]
    pub in_parent: Option<bool>,
    /// PE_PARENT = 1, PE_LAZY = 2, PE_PRESENT = 4.
    #[prost(uint32, optional, tag = "4")]
    pub flags: Option<u32>,
}

// ---------------------------------------------------------------------------
// fdinfo.proto, fown.proto, regfile.proto, pipe.proto, fifo.proto, pipe-data.proto
// ---------------------------------------------------------------------------

criu_enum! {
    /// CRIU `fd_types` (fdinfo.proto).
    pub enum FdTypes {
        Und = 0 => "UND",
        Reg = 1 => "REG",
        Pipe = 2 => "PIPE",
        Fifo = 3 => "FIFO",
        Inetsk = 4 => "INETSK",
        Unixsk = 5 => "UNIXSK",
        Eventfd = 6 => "EVENTFD",
        Eventpoll = 7 => "EVENTPOLL",
        Inotify = 8 => "INOTIFY",
        Signalfd = 9 => "SIGNALFD",
        Packetsk = 10 => "PACKETSK",
        Tty = 11 => "TTY",
        Fanotify = 12 => "FANOTIFY",
        Netlinksk = 13 => "NETLINKSK",
        Ns = 14 => "NS",
        Tunf = 15 => "TUNF",
        Ext = 16 => "EXT",
        Timerfd = 17 => "TIMERFD",
        Memfd = 18 => "MEMFD",
        Bpfmap = 19 => "BPFMAP",
        // The two below are CRIU-internal and never stored in images.
        CtlTty = 65534 => "CTL_TTY",
        AutofsPipe = 65535 => "AUTOFS_PIPE",
    }
}

/// CRIU `fdinfo_entry` (fdinfo.proto): one descriptor slot, in fdinfo-<id>.img.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct FdinfoEntry {
    /// The file_entry id this descriptor refers to.
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    /// Descriptor flags (FD_CLOEXEC), not file status flags.
    #[prost(uint32, required, tag = "2")]
    pub flags: u32,
    #[prost(enumeration = "FdTypes", required, tag = "3")]
    pub r#type: i32,
    #[prost(uint32, required, tag = "4")]
    pub fd: u32,
    #[prost(string, optional, tag = "5")]
    pub xattr_security_selinux: Option<String>,
}

/// CRIU `file_entry` (fdinfo.proto): one open file, in files.img.
///
/// Only the kinds crust handles are typed (reg = 3, pipe = 18, tty = 19).
/// The others (isk 4, nsf 5, psk 6, nlsk 7, efd 8, epfd 9, sgfd 10, tunf 11,
/// tfd 12, ify 13, ffy 14, ext 15, usk 16, memfd 20, bpf 21) are
/// skipped on decode, so re-encoding such an entry drops them.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct FileEntry {
    #[prost(enumeration = "FdTypes", required, tag = "1")]
    pub r#type: i32,
    #[prost(uint32, required, tag = "2")]
    pub id: u32,
    #[prost(message, optional, tag = "3")]
    pub reg: Option<RegFileEntry>,
    #[prost(message, optional, tag = "8")]
    pub efd: Option<EventfdFileEntry>,
    #[prost(message, optional, tag = "9")]
    pub epfd: Option<EventpollFileEntry>,
    #[prost(message, optional, tag = "10")]
    pub sgfd: Option<SignalfdEntry>,
    #[prost(message, optional, tag = "12")]
    pub tfd: Option<TimerfdEntry>,
    #[prost(message, optional, tag = "16")]
    pub usk: Option<UnixSkEntry>,
    #[prost(message, optional, tag = "17")]
    pub fifo: Option<FifoEntry>,
    #[prost(message, optional, tag = "18")]
    pub pipe: Option<PipeEntry>,
    #[prost(message, optional, tag = "19")]
    pub tty: Option<TtyFileEntry>,
}

/// CRIU `fown_entry` (fown.proto): F_SETOWN / F_SETSIG state of a file.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct FownEntry {
    #[prost(uint32, required, tag = "1")]
    pub uid: u32,
    #[prost(uint32, required, tag = "2")]
    pub euid: u32,
    #[prost(uint32, required, tag = "3")]
    pub signum: u32,
    #[prost(uint32, required, tag = "4")]
    pub pid_type: u32,
    #[prost(uint32, required, tag = "5")]
    pub pid: u32,
}

/// CRIU `reg_file_entry` (regfile.proto): a regular file (or directory).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RegFileEntry {
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    /// O_* open flags.
    #[prost(uint32, required, tag = "2")]
    pub flags: u32,
    #[prost(uint64, required, tag = "3")]
    pub pos: u64,
    // Tag 4 is unused in CRIU's reg_file_entry.
    #[prost(message, required, tag = "5")]
    pub fown: FownEntry,
    #[prost(string, required, tag = "6")]
    pub name: String,
    /// sint32 on the wire; absent means -1 (CRIU's `[default = -1]`).
    #[prost(sint32, optional, tag = "7", default = "-1")]
    pub mnt_id: Option<i32>,
    #[prost(uint64, optional, tag = "8")]
    pub size: Option<u64>,
    #[prost(bool, optional, tag = "9")]
    pub ext: Option<bool>,
    #[prost(uint32, optional, tag = "10")]
    pub mode: Option<u32>,
    /// ELF build-id as 32-bit words.
    #[prost(uint32, repeated, packed = "false", tag = "11")]
    pub build_id: Vec<u32>,
    #[prost(uint32, optional, tag = "12")]
    pub checksum: Option<u32>,
    #[prost(uint32, optional, tag = "13")]
    pub checksum_config: Option<u32>,
    #[prost(uint32, optional, tag = "14")]
    pub checksum_parameter: Option<u32>,
}

/// CRIU `eventfd_file_entry` (eventfd.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct EventfdFileEntry {
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    /// File status flags (O_RDWR, O_NONBLOCK).
    #[prost(uint32, required, tag = "2")]
    pub flags: u32,
    #[prost(message, required, tag = "3")]
    pub fown: FownEntry,
    #[prost(uint64, required, tag = "4")]
    pub counter: u64,
}

/// CRIU `eventpoll_tfd_entry` (eventpoll.proto): one file an epoll watches.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct EventpollTfdEntry {
    /// The epoll's own file id.
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    /// The fd number the target was added under, in the epoll's process.
    #[prost(uint32, required, tag = "2")]
    pub tfd: u32,
    #[prost(uint32, required, tag = "3")]
    pub events: u32,
    #[prost(uint64, required, tag = "4")]
    pub data: u64,
    #[prost(uint32, optional, tag = "5")]
    pub dev: Option<u32>,
    #[prost(uint64, optional, tag = "6")]
    pub inode: Option<u64>,
    #[prost(uint64, optional, tag = "7")]
    pub pos: Option<u64>,
}

/// CRIU `eventpoll_file_entry` (eventpoll.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct EventpollFileEntry {
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    #[prost(uint32, required, tag = "2")]
    pub flags: u32,
    #[prost(message, required, tag = "3")]
    pub fown: FownEntry,
    #[prost(message, repeated, tag = "4")]
    pub tfd: Vec<EventpollTfdEntry>,
}

/// CRIU `remap_file_path_entry` (remap-file-path.proto): a file whose path is
/// gone, and what stands in for it.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RemapFilePathEntry {
    #[prost(uint32, required, tag = "1")]
    pub orig_id: u32,
    #[prost(uint32, required, tag = "2")]
    pub remap_id: u32,
    /// CRIU's remap_type: 0 linked, 1 ghost, 2 procfs.
    #[prost(uint32, optional, tag = "3")]
    pub remap_type: Option<u32>,
}

/// CRIU `ghost_file_entry` (ghost-file.proto): a deleted file, its contents
/// following the entry in ghost-file-N.img.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct GhostFileEntry {
    #[prost(uint32, required, tag = "1")]
    pub uid: u32,
    #[prost(uint32, required, tag = "2")]
    pub gid: u32,
    #[prost(uint32, required, tag = "3")]
    pub mode: u32,
    #[prost(uint32, optional, tag = "4")]
    pub dev: Option<u32>,
    #[prost(uint64, optional, tag = "5")]
    pub ino: Option<u64>,
    #[prost(bool, optional, tag = "9")]
    pub chunks: Option<bool>,
    #[prost(uint64, optional, tag = "10")]
    pub size: Option<u64>,
}

/// CRIU `sk_opts_entry` (sk-opts.proto): socket options.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct SkOptsEntry {
    #[prost(uint32, required, tag = "1")]
    pub so_sndbuf: u32,
    #[prost(uint32, required, tag = "2")]
    pub so_rcvbuf: u32,
    #[prost(uint64, required, tag = "3")]
    pub so_snd_tmo_sec: u64,
    #[prost(uint64, required, tag = "4")]
    pub so_snd_tmo_usec: u64,
    #[prost(uint64, required, tag = "5")]
    pub so_rcv_tmo_sec: u64,
    #[prost(uint64, required, tag = "6")]
    pub so_rcv_tmo_usec: u64,
    #[prost(uint32, optional, tag = "8")]
    pub so_priority: Option<u32>,
    #[prost(uint32, optional, tag = "9")]
    pub so_rcvlowat: Option<u32>,
    #[prost(uint32, optional, tag = "10")]
    pub so_mark: Option<u32>,
    #[prost(bool, optional, tag = "11")]
    pub so_passcred: Option<bool>,
    #[prost(bool, optional, tag = "12")]
    pub so_passsec: Option<bool>,
}

/// CRIU `unix_sk_entry` (sk-unix.proto): one end of a unix socket.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct UnixSkEntry {
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    /// Socket inode; `peer` names the other end by its inode.
    #[prost(uint32, required, tag = "2")]
    pub ino: u32,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    #[prost(uint32, required, tag = "3")]
    pub r#type: u32,
    /// TCP_ESTABLISHED, TCP_LISTEN... as sock_diag reports it.
    #[prost(uint32, required, tag = "4")]
    pub state: u32,
    #[prost(uint32, required, tag = "5")]
    pub flags: u32,
    #[prost(uint32, required, tag = "6")]
    pub uflags: u32,
    #[prost(uint32, required, tag = "7")]
    pub backlog: u32,
    #[prost(uint32, required, tag = "8")]
    pub peer: u32,
    #[prost(message, required, tag = "9")]
    pub fown: FownEntry,
    #[prost(message, required, tag = "10")]
    pub opts: SkOptsEntry,
    #[prost(bytes = "vec", required, tag = "11")]
    pub name: Vec<u8>,
    /// CRIU's sk_shutdown: 0 none, 1 read, 2 write, 3 both.
    #[prost(uint32, optional, tag = "12")]
    pub shutdown: Option<u32>,
}

/// CRIU `sk_packet_entry` (sk-packet.proto): data queued on a socket, in
/// sk-queues.img; `length` raw bytes follow it.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct SkPacketEntry {
    /// The file id of the socket whose receive queue holds the data.
    #[prost(uint32, required, tag = "1")]
    pub id_for: u32,
    #[prost(uint32, required, tag = "2")]
    pub length: u32,
}

/// CRIU `timerfd_entry` (timerfd.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct TimerfdEntry {
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    #[prost(uint32, required, tag = "2")]
    pub flags: u32,
    #[prost(message, required, tag = "3")]
    pub fown: FownEntry,
    #[prost(uint32, required, tag = "4")]
    pub clockid: u32,
    /// Expirations not read yet.
    #[prost(uint64, required, tag = "5")]
    pub ticks: u64,
    #[prost(uint32, required, tag = "6")]
    pub settime_flags: u32,
    /// Time left to the next expiry.
    #[prost(uint64, required, tag = "7")]
    pub vsec: u64,
    #[prost(uint64, required, tag = "8")]
    pub vnsec: u64,
    /// The period.
    #[prost(uint64, required, tag = "9")]
    pub isec: u64,
    #[prost(uint64, required, tag = "10")]
    pub insec: u64,
}

/// CRIU `signalfd_entry` (signalfd.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct SignalfdEntry {
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    #[prost(uint32, required, tag = "2")]
    pub flags: u32,
    #[prost(message, required, tag = "3")]
    pub fown: FownEntry,
    /// The signals it reads, bit N-1 for signal N.
    #[prost(uint64, required, tag = "4")]
    pub sigmask: u64,
}

/// CRIU `pipe_entry` (pipe.proto): one end of a pipe.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct PipeEntry {
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    /// Pipe inode number; both ends share it.
    #[prost(uint32, required, tag = "2")]
    pub pipe_id: u32,
    #[prost(uint32, required, tag = "3")]
    pub flags: u32,
    #[prost(message, required, tag = "4")]
    pub fown: FownEntry,
}

/// CRIU `fifo_entry` (fifo.proto): a named FIFO; its path and open flags are
/// in the regular-file entry `regf_id` of files.img.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct FifoEntry {
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    /// FIFO inode number.
    #[prost(uint32, required, tag = "2")]
    pub pipe_id: u32,
    #[prost(uint32, optional, tag = "3")]
    pub regf_id: Option<u32>,
}

/// CRIU `pipe_data_entry` (pipe-data.proto): header of buffered pipe data;
/// `bytes` raw bytes follow it in the image.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct PipeDataEntry {
    #[prost(uint32, required, tag = "1")]
    pub pipe_id: u32,
    #[prost(uint32, required, tag = "2")]
    pub bytes: u32,
    /// Pipe buffer size (F_GETPIPE_SZ).
    #[prost(uint32, optional, tag = "3")]
    pub size: Option<u32>,
}

// ---------------------------------------------------------------------------
// tty.proto
// ---------------------------------------------------------------------------

criu_enum! {
    /// CRIU `TtyType` (tty.proto).
    pub enum TtyType {
        Unknown = 0 => "UNKNOWN",
        Pty = 1 => "PTY",
        Console = 2 => "CONSOLE",
        Vt = 3 => "VT",
        Ctty = 4 => "CTTY",
        ExtTty = 5 => "EXT_TTY",
        Serial = 6 => "SERIAL",
    }
}

/// CRIU `winsize_entry` (tty.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct WinsizeEntry {
    #[prost(uint32, required, tag = "1")]
    pub ws_row: u32,
    #[prost(uint32, required, tag = "2")]
    pub ws_col: u32,
    #[prost(uint32, required, tag = "3")]
    pub ws_xpixel: u32,
    #[prost(uint32, required, tag = "4")]
    pub ws_ypixel: u32,
}

/// CRIU `termios_entry` (tty.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct TermiosEntry {
    #[prost(uint32, required, tag = "1")]
    pub c_iflag: u32,
    #[prost(uint32, required, tag = "2")]
    pub c_oflag: u32,
    #[prost(uint32, required, tag = "3")]
    pub c_cflag: u32,
    #[prost(uint32, required, tag = "4")]
    pub c_lflag: u32,
    #[prost(uint32, required, tag = "5")]
    pub c_line: u32,
    #[prost(uint32, required, tag = "6")]
    pub c_ispeed: u32,
    #[prost(uint32, required, tag = "7")]
    pub c_ospeed: u32,
    /// One control character per element.
    #[prost(uint32, repeated, packed = "false", tag = "8")]
    pub c_cc: Vec<u32>,
}

/// CRIU `tty_pty_entry` (tty.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct TtyPtyEntry {
    #[prost(uint32, required, tag = "1")]
    pub index: u32,
}

/// CRIU `tty_data_entry` (tty.proto): unread data queued in a tty.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct TtyDataEntry {
    #[prost(uint32, required, tag = "1")]
    pub tty_id: u32,
    #[prost(bytes = "vec", required, tag = "2")]
    pub data: Vec<u8>,
}

/// CRIU `tty_info_entry` (tty.proto): state of one tty, in tty-info.img.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct TtyInfoEntry {
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    #[prost(enumeration = "TtyType", required, tag = "2")]
    pub r#type: i32,
    /// Unix98 PTY only.
    #[prost(bool, required, tag = "3")]
    pub locked: bool,
    #[prost(bool, required, tag = "4")]
    pub exclusive: bool,
    /// Unix98 PTY only.
    #[prost(bool, required, tag = "5")]
    pub packet_mode: bool,
    #[prost(uint32, required, tag = "6")]
    pub sid: u32,
    #[prost(uint32, required, tag = "7")]
    pub pgrp: u32,
    #[prost(uint32, required, tag = "8")]
    pub rdev: u32,
    #[prost(message, optional, tag = "9")]
    pub termios: Option<TermiosEntry>,
    #[prost(message, optional, tag = "10")]
    pub termios_locked: Option<TermiosEntry>,
    #[prost(message, optional, tag = "11")]
    pub winsize: Option<WinsizeEntry>,
    #[prost(message, optional, tag = "12")]
    pub pty: Option<TtyPtyEntry>,
    #[prost(uint32, optional, tag = "13")]
    pub dev: Option<u32>,
    #[prost(uint32, optional, tag = "14")]
    pub uid: Option<u32>,
    #[prost(uint32, optional, tag = "15")]
    pub gid: Option<u32>,
}

/// CRIU `tty_file_entry` (tty.proto): an open tty file (the file_entry.tty kind).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct TtyFileEntry {
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    #[prost(uint32, required, tag = "2")]
    pub tty_info_id: u32,
    #[prost(uint32, required, tag = "3")]
    pub flags: u32,
    #[prost(message, required, tag = "4")]
    pub fown: FownEntry,
    // Tag 5 is unused in CRIU's tty_file_entry.
    #[prost(uint32, optional, tag = "6")]
    pub regf_id: Option<u32>,
}

// ---------------------------------------------------------------------------
// fs.proto
// ---------------------------------------------------------------------------

/// CRIU `fs_entry` (fs.proto): cwd, root and umask, in fs-<id>.img.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct FsEntry {
    /// file_entry id of the cwd (a reg_file_entry).
    #[prost(uint32, required, tag = "1")]
    pub cwd_id: u32,
    #[prost(uint32, required, tag = "2")]
    pub root_id: u32,
    #[prost(uint32, optional, tag = "3")]
    pub umask: Option<u32>,
}

// ---------------------------------------------------------------------------
// cgroup.proto
// ---------------------------------------------------------------------------

/// CRIU `cgroup_perms` (cgroup.proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct CgroupPerms {
    #[prost(uint32, required, tag = "1")]
    pub mode: u32,
    #[prost(uint32, required, tag = "2")]
    pub uid: u32,
    #[prost(uint32, required, tag = "3")]
    pub gid: u32,
}

/// CRIU `cgroup_prop_entry` (cgroup.proto): one cgroup control file.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct CgroupPropEntry {
    #[prost(string, required, tag = "1")]
    pub name: String,
    #[prost(string, required, tag = "2")]
    pub value: String,
    #[prost(message, optional, tag = "3")]
    pub perms: Option<CgroupPerms>,
}

/// CRIU `cgroup_dir_entry` (cgroup.proto): a cgroup directory (recursive).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct CgroupDirEntry {
    #[prost(string, required, tag = "1")]
    pub dir_name: String,
    #[prost(message, repeated, tag = "2")]
    pub children: Vec<CgroupDirEntry>,
    #[prost(message, repeated, tag = "3")]
    pub properties: Vec<CgroupPropEntry>,
    #[prost(message, optional, tag = "4")]
    pub dir_perms: Option<CgroupPerms>,
}

/// CRIU `cg_controller_entry` (cgroup.proto): one hierarchy.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct CgControllerEntry {
    #[prost(string, repeated, tag = "1")]
    pub cnames: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub dirs: Vec<CgroupDirEntry>,
}

/// CRIU `cg_member_entry` (cgroup.proto): a task's place in one controller.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct CgMemberEntry {
    #[prost(string, required, tag = "1")]
    pub name: String,
    #[prost(string, required, tag = "2")]
    pub path: String,
    #[prost(uint32, optional, tag = "3")]
    pub cgns_prefix: Option<u32>,
}

/// CRIU `cg_set_entry` (cgroup.proto): a set of memberships shared by tasks.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct CgSetEntry {
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    #[prost(message, repeated, tag = "2")]
    pub ctls: Vec<CgMemberEntry>,
}

/// CRIU `cgroup_entry` (cgroup.proto): the single entry of cgroup.img.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct CgroupEntry {
    #[prost(message, repeated, tag = "1")]
    pub sets: Vec<CgSetEntry>,
    #[prost(message, repeated, tag = "2")]
    pub controllers: Vec<CgControllerEntry>,
}

// ---------------------------------------------------------------------------
// stats.proto
// ---------------------------------------------------------------------------

/// CRIU `dump_stats_entry` (stats.proto). Times are in microseconds.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct DumpStatsEntry {
    #[prost(uint32, required, tag = "1")]
    pub freezing_time: u32,
    #[prost(uint32, required, tag = "2")]
    pub frozen_time: u32,
    #[prost(uint32, required, tag = "3")]
    pub memdump_time: u32,
    #[prost(uint32, required, tag = "4")]
    pub memwrite_time: u32,
    #[prost(uint64, required, tag = "5")]
    pub pages_scanned: u64,
    #[prost(uint64, required, tag = "6")]
    pub pages_skipped_parent: u64,
    #[prost(uint64, required, tag = "7")]
    pub pages_written: u64,
    #[prost(uint32, optional, tag = "8")]
    pub irmap_resolve: Option<u32>,
    /// Required even though it comes after an optional field.
    #[prost(uint64, required, tag = "9")]
    pub pages_lazy: u64,
    #[prost(uint64, optional, tag = "10")]
    pub page_pipes: Option<u64>,
    #[prost(uint64, optional, tag = "11")]
    pub page_pipe_bufs: Option<u64>,
    #[prost(uint64, optional, tag = "12")]
    pub shpages_scanned: Option<u64>,
    #[prost(uint64, optional, tag = "13")]
    pub shpages_skipped_parent: Option<u64>,
    #[prost(uint64, optional, tag = "14")]
    pub shpages_written: Option<u64>,
}

/// CRIU `restore_stats_entry` (stats.proto). Times are in microseconds.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RestoreStatsEntry {
    #[prost(uint64, required, tag = "1")]
    pub pages_compared: u64,
    #[prost(uint64, required, tag = "2")]
    pub pages_skipped_cow: u64,
    #[prost(uint32, required, tag = "3")]
    pub forking_time: u32,
    #[prost(uint32, required, tag = "4")]
    pub restore_time: u32,
    #[prost(uint64, optional, tag = "5")]
    pub pages_restored: Option<u64>,
}

/// CRIU `stats_entry` (stats.proto): the entry of stats-dump / stats-restore.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct StatsEntry {
    #[prost(message, optional, tag = "1")]
    pub dump: Option<DumpStatsEntry>,
    #[prost(message, optional, tag = "2")]
    pub restore: Option<RestoreStatsEntry>,
}
