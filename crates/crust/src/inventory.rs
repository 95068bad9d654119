//! The inventory of process state: every piece of per-task and per-process
//! kernel state crust knows of, each marked saved (and by what), refused (with
//! the reason a dump gives), or not needed (and why). The dump's checks look
//! things up here: state marked refused, and state not listed at all (an
//! unknown VmFlag), stop the dump by name. Nothing is dropped because no
//! code looked at it.

/// What a dump does with one piece of state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Saved in the images and restored, by this component or kind.
    Saved(&'static str),
    /// A dump that meets it refuses, saying this.
    Refused(&'static str),
    /// Restored processes inherit crust's own: a dump refuses when the
    /// task's differs from crust's (what it is, in words).
    SameAsCrust(&'static str),
    /// Nothing to save, for this reason.
    NotNeeded(&'static str),
}

/// The VmFlags of /proc/PID/smaps (fs/proc/task_mmu.c, show_smap_vma_flags;
/// Documentation/filesystems/proc.rst). Kernel-made mappings (vdso, vvar,
/// vsyscall) are made again by the kernel, flags and all: only the others are
/// checked against this table.
pub static VM_FLAGS: &[(&str, Fate)] = &[
    ("rd", Fate::Saved("the mapping's prot (mm-PID.img)")),
    ("wr", Fate::Saved("the mapping's prot (mm-PID.img)")),
    ("ex", Fate::Saved("the mapping's prot (mm-PID.img)")),
    ("sh", Fate::Saved("the mapping's MAP_SHARED flag (mm-PID.img)")),
    ("mr", Fate::NotNeeded("may-read follows from mmap of a mapping and its file's open mode")),
    ("mw", Fate::NotNeeded("may-write follows from MAP_PRIVATE, or from a shared mapping's file open for writing")),
    ("me", Fate::NotNeeded("may-exec follows from mmap of a mapping and its file's mount (noexec)")),
    ("ms", Fate::NotNeeded("may-share follows from MAP_SHARED")),
    ("gd", Fate::Saved("MAP_GROWSDOWN in the mapping's flags (mm-PID.img)")),
    ("pf", Fate::Refused("a pure PFN mapping (of a device) cannot be restored")),
    ("dw", Fate::Refused("a mapping denying writes to its file (an old kernel's executable) is not supported")),
    ("lo", Fate::Saved("mlock: mapped again with MAP_LOCKED (flags of the vma_entry in mm-PID.img)")),
    ("io", Fate::Refused("a memory-mapped I/O area (of a device) cannot be restored")),
    ("sr", Fate::Saved("madvise(MADV_SEQUENTIAL) again (madv of the vma_entry in mm-PID.img)")),
    ("rr", Fate::Saved("madvise(MADV_RANDOM) again (madv of the vma_entry in mm-PID.img)")),
    ("dc", Fate::Saved("madvise(MADV_DONTFORK) again, before the process forks (madv of the vma_entry in mm-PID.img)")),
    ("de", Fate::Refused("not expandable by mremap (a device's or the kernel's mapping): not supported")),
    ("ac", Fate::NotNeeded("charged to the commit limit: made again by mapping writable a private mapping that is writable or has pages of its own (it was written), and no other")),
    ("nr", Fate::Saved("MAP_NORESERVE in the mapping's flags (mm-PID.img): mapped again with it (glibc's thread arenas have it)")),
    ("ht", Fate::Refused("hugetlb pages: hugetlbfs mappings are not supported yet")),
    ("sf", Fate::Refused("MAP_SYNC (synchronous page faults on DAX): not supported yet")),
    ("ar", Fate::Refused("an architecture-specific flag (x86: PAT memory type, a device's): not supported")),
    ("wf", Fate::Saved("madvise(MADV_WIPEONFORK) again, before the process forks (madv of the vma_entry in mm-PID.img)")),
    ("dd", Fate::Saved("madvise(MADV_DONTDUMP) again (madv of the vma_entry in mm-PID.img)")),
    ("sd", Fate::NotNeeded("soft-dirty tracking: every new mapping starts soft-dirty")),
    ("mm", Fate::Refused("a mixed map (of a device or driver) cannot be restored")),
    ("hg", Fate::Saved("madvise(MADV_HUGEPAGE) again (madv of the vma_entry in mm-PID.img)")),
    ("nh", Fate::Saved("madvise(MADV_NOHUGEPAGE) again (madv of the vma_entry in mm-PID.img)")),
    ("mg", Fate::Saved("madvise(MADV_MERGEABLE) (KSM) again (madv of the vma_entry in mm-PID.img)")),
    ("bt", Fate::Refused("arm64 BTI guarded pages: not supported")),
    ("mt", Fate::Refused("arm64 MTE allocation tags: not supported")),
    ("um", Fate::Refused("registered with userfaultfd (missing pages): not supported yet")),
    ("uw", Fate::Refused("registered with userfaultfd (write protection): not supported yet")),
    ("ui", Fate::Refused("registered with userfaultfd (minor faults): not supported yet")),
    ("ss", Fate::Refused("a shadow stack: not supported yet")),
    ("sl", Fate::Refused("sealed (mseal): not supported yet")),
    ("lf", Fate::Refused("locked on fault (mlock2 MLOCK_ONFAULT): restoring mlock is not supported yet")),
    ("dp", Fate::Refused("MAP_DROPPABLE (its pages may be freed at any time): not supported yet")),
    ("gu", Fate::Refused("may hold guard regions (MADV_GUARD_INSTALL): not supported yet")),
];

/// The VmFlags saved as madvise advice (the vma_entry's madv bits) and given
/// again when the mapping is made.
pub static MADVISED: &[(&str, u32)] = &[
    ("sr", libc::MADV_SEQUENTIAL as u32),
    ("rr", libc::MADV_RANDOM as u32),
    ("dc", libc::MADV_DONTFORK as u32),
    ("wf", libc::MADV_WIPEONFORK as u32),
    ("mg", libc::MADV_MERGEABLE as u32),
    ("hg", libc::MADV_HUGEPAGE as u32),
    ("nh", libc::MADV_NOHUGEPAGE as u32),
    ("dd", libc::MADV_DONTDUMP as u32),
];

/// What to do with a VmFlag: its entry, or an explanation for one crust does
/// not know.
pub fn vm_flag(name: &str) -> Result<Fate, String> {
    VM_FLAGS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .ok_or_else(|| format!("unknown VmFlag {name:?}: crust does not know what it is, so it cannot restore it (not supported)"))
}

/// Every field of /proc/PID/status (fs/proc/array.c) and what it says about
/// the task's state.
pub static STATUS_FIELDS: &[(&str, Fate)] = &[
    ("Name", Fate::Saved("names (comm in core-PID.img)")),
    ("Umask", Fate::Saved("fs (fs-PID.img)")),
    ("State", Fate::Saved("the task state in core-PID.img (alive, stopped, zombie); whether a stopped child's parent had collected the stop, in crust-meta.json (state/child_stops.rs)")),
    ("Tgid", Fate::Saved("pstree.img")),
    ("Ngid", Fate::NotNeeded("NUMA balancing's preferred node: the kernel's own, recomputed")),
    ("Pid", Fate::Saved("pstree.img")),
    ("PPid", Fate::Saved("pstree.img")),
    ("TracerPid", Fate::NotNeeded("a traced task is refused when seized (crust must trace it)")),
    ("Uid", Fate::Saved("creds (creds-PID.img)")),
    ("Gid", Fate::Saved("creds (creds-PID.img)")),
    ("FDSize", Fate::NotNeeded("the fd table's allocated size, grown again as fds are opened")),
    ("Groups", Fate::Saved("creds (creds-PID.img)")),
    ("NStgid", Fate::Saved("the id in the tree's own pid namespace is what the images hold (tree::NsPids); the host's is whatever is free at restore")),
    ("NSpid", Fate::Saved("the id in the tree's own pid namespace is what the images hold (tree::NsPids); the host's is whatever is free at restore")),
    ("NSpgid", Fate::Saved("the id in the tree's own pid namespace is what the images hold (tree::NsPids); the host's is whatever is free at restore")),
    ("NSsid", Fate::Saved("the id in the tree's own pid namespace is what the images hold (tree::NsPids); the host's is whatever is free at restore")),
    ("Kthread", Fate::NotNeeded("kernel threads are not in a dumped tree")),
    ("VmPeak", Fate::NotNeeded("a statistic of memory use")),
    ("VmSize", Fate::NotNeeded("a statistic of memory use, following from the mappings")),
    ("VmLck", Fate::Saved("locked memory: the mappings' `lo` VmFlag")),
    ("VmPin", Fate::NotNeeded("pages pinned by the kernel (io_uring, RDMA): their users are refused")),
    ("VmHWM", Fate::NotNeeded("a statistic of memory use")),
    ("VmRSS", Fate::NotNeeded("a statistic of memory use")),
    ("RssAnon", Fate::NotNeeded("a statistic of memory use")),
    ("RssFile", Fate::NotNeeded("a statistic of memory use")),
    ("RssShmem", Fate::NotNeeded("a statistic of memory use")),
    ("VmData", Fate::NotNeeded("a statistic of memory use, following from the mappings")),
    ("VmStk", Fate::NotNeeded("a statistic of memory use, following from the mappings")),
    ("VmExe", Fate::NotNeeded("a statistic of memory use, following from the mappings")),
    ("VmLib", Fate::NotNeeded("a statistic of memory use, following from the mappings")),
    ("VmPTE", Fate::NotNeeded("a statistic of memory use")),
    ("VmSwap", Fate::NotNeeded("a statistic of memory use (swapped pages are read and saved)")),
    ("HugetlbPages", Fate::Refused("hugetlb memory: refused by the mappings' `ht` VmFlag")),
    ("CoreDumping", Fate::NotNeeded("a task dumping core is exiting")),
    ("THP_enabled", Fate::Saved("thp_disabled of mm-PID.img, set again with PR_SET_THP_DISABLE (prctl); the 6.18 except-advised mode, which this field does not show, is refused")),
    ("untag_mask", Fate::SameAsCrust("the address tagging mask (x86 LAM, ARCH_ENABLE_TAGGED_ADDR)")),
    ("x86_Thread_features", Fate::SameAsCrust("x86 thread features (shadow stack, ARCH_SHSTK_ENABLE)")),
    ("x86_Thread_features_locked", Fate::SameAsCrust("locked x86 thread features (ARCH_SHSTK_LOCK)")),
    ("Threads", Fate::Saved("pstree.img (the threads of each process)")),
    ("SigQ", Fate::Saved("signals (queued signals in core-PID.img)")),
    ("SigPnd", Fate::Saved("signals (core-PID.img)")),
    ("ShdPnd", Fate::Saved("signals (core-PID.img)")),
    ("SigBlk", Fate::Saved("signals (core-PID.img)")),
    ("SigIgn", Fate::Saved("signals (sigactions in core-PID.img)")),
    ("SigCgt", Fate::Saved("signals (sigactions in core-PID.img)")),
    ("CapInh", Fate::Saved("creds (cap_inh of creds in core-PID.img), set last by capset")),
    ("CapPrm", Fate::Saved("creds (cap_prm of creds in core-PID.img), set last by capset; refused on restore beyond crust's own")),
    ("CapEff", Fate::Saved("creds (cap_eff of creds in core-PID.img), set last by capset")),
    ("CapBnd", Fate::Saved("creds (cap_bnd of creds in core-PID.img), dropped with PR_CAPBSET_DROP; refused on restore beyond crust's own")),
    ("CapAmb", Fate::Saved("creds (cap_amb of creds in core-PID.img), raised with PR_CAP_AMBIENT")),
    ("NoNewPrivs", Fate::Saved("creds (no_new_privs of creds in core-PID.img), set last with PR_SET_NO_NEW_PRIVS")),
    ("Seccomp", Fate::Saved("seccomp (seccomp_mode in core-PID.img); strict mode is refused")),
    ("Seccomp_filters", Fate::Saved("seccomp (the chain in seccomp.img, the newest filter in core-PID.img)")),
    ("Speculation_Store_Bypass", Fate::SameAsCrust("the speculative store bypass control (PR_SET_SPECULATION_CTRL)")),
    ("SpeculationIndirectBranch", Fate::SameAsCrust("the indirect branch speculation control (PR_SET_SPECULATION_CTRL)")),
    ("Cpus_allowed", Fate::SameAsCrust("the CPU affinity (sched_setaffinity)")),
    ("Cpus_allowed_list", Fate::SameAsCrust("the CPU affinity (sched_setaffinity)")),
    ("Mems_allowed", Fate::SameAsCrust("the memory nodes allowed (cpuset, set_mempolicy)")),
    ("Mems_allowed_list", Fate::SameAsCrust("the memory nodes allowed (cpuset, set_mempolicy)")),
    ("voluntary_ctxt_switches", Fate::NotNeeded("a statistic of scheduling")),
    ("nonvoluntary_ctxt_switches", Fate::NotNeeded("a statistic of scheduling")),
];

/// What a status field is for crust.
pub fn status_field(name: &str) -> Option<Fate> {
    STATUS_FIELDS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The rest of the per-process and per-task state crust knows of, beside
/// VmFlags and status fields.
pub static PROCESS_STATE: &[(&str, Fate)] = &[
    ("registers and FPU state", Fate::Saved("regs (core-PID.img)")),
    ("signal handlers, mask, pending signals", Fate::Saved("signals")),
    ("credentials, groups, securebits", Fate::Saved("creds (securebits set last, with the capabilities)")),
    ("rseq registration", Fate::Saved("rseq")),
    ("interval timers (setitimer)", Fate::Saved("timers (itimers)")),
    ("POSIX timers (timer_create, /proc/PID/timers)", Fate::Saved("posix_timers: id, clock, signal, sigev_value, notify thread, time left, interval (a pending timer signal by signals)")),
    ("overrun of a POSIX timer's last delivered signal (timer_getoverrun)", Fate::Refused("when non-zero: a count a restored timer cannot be given back")),
    ("POSIX timers on a CPU clock of a task outside the process", Fate::Refused("not supported")),
    ("CLOCK_THREAD_CPUTIME_ID POSIX timers in a process of several threads", Fate::Refused("/proc does not tell which thread's CPU time they count: not supported")),
    ("resource limits", Fate::Saved("rlimits")),
    ("cwd, root, umask", Fate::Saved("fs")),
    ("nice value", Fate::Saved("sched")),
    ("scheduling policy and RT priority", Fate::Saved("sched (other, batch, idle, fifo, rr; reset-on-fork)")),
    ("SCHED_DEADLINE and sched_ext policies", Fate::Refused("this scheduling policy is not supported yet")),
    ("thread and process names (comm)", Fate::Saved("names")),
    ("personality", Fate::Saved("personality")),
    ("robust futex list", Fate::Saved("futex")),
    ("oom_score_adj", Fate::Saved("oom (written to /proc/PID/oom_score_adj); refused when below crust's own without CAP_SYS_RESOURCE")),
    ("loginuid", Fate::SameAsCrust("the audit login uid (cannot be set without CAP_AUDIT_CONTROL)")),
    ("child subreaper (PR_SET_CHILD_SUBREAPER)", Fate::Saved("prctl (child_subreaper in core-PID.img)")),
    ("membarrier registrations", Fate::Refused("membarrier registrations are not supported yet (private expedited ones are detected; global expedited ones cannot be and are not restored)")),
    ("file locks (flock, POSIX, OFD; read and write, ranges)", Fate::Saved("files::locks (filelocks.img) with --file-locks; refused without it")),
    ("file owners for SIGIO/SIGURG (F_SETOWN_EX, F_SETSIG, O_ASYNC)", Fate::Saved("fown of each file entry, set again once the tree exists; an owner outside the tree is refused")),
    ("file leases and other lock kinds", Fate::Refused("file leases (F_SETLEASE) are not supported yet, not even with --file-locks")),
    ("pty pairs held inside the tree (master and slaves)", Fate::Saved("files::pty: tty-info.img per end (index, termios, window size, packet mode, exclusive mode, session and foreground group), tty_file_entry per open file; the same index again when it is free here")),
    ("pty pairs of a container's own devpts instance (mounted in the tree's mount namespace, not the host's)", Fate::Saved("files::pty: as the host's, with the instance's device in tty_info_entry's dev on both ends; made again from the ptmx of the devpts the restore mounts anew, whose numbers are all free")),
    ("a pty of a devpts instance other than the host's /dev/pts outside a mount namespace of the tree, or one the host mounts too", Fate::Refused("files::pty names the fd and the instance; not supported")),
    ("a pty master whose slave is held outside the tree or by no one", Fate::Refused("the pair cannot be restored whole: not supported")),
    ("data queued in a pty pair (either direction)", Fate::Refused("FIONREAD of master and slave; not supported (a partial line typed into a canonical slave is not reported by the kernel and is not seen)")),
    ("a locked pty (TIOCSPTLCK) held by the tree", Fate::Refused("not supported")),
    ("fanotify groups and their marks (inode, mount, file system; masks, ignored masks, mark flags)", Fate::Saved("files::fanotify: fanotify_file_entry in files.img (init flags, event flags, marks inline; a file-system mark is crust's own mark type 3)")),
    ("fanotify events queued and not read", Fate::Refused("FIONREAD of the group: not supported")),
    ("fanotify permission groups (FAN_CLASS_CONTENT, FAN_CLASS_PRE_CONTENT)", Fate::Refused("permission events read and not answered yet are visible nowhere (the kernel would answer them FAN_ALLOW when the dumped group goes): not supported")),
    ("epoll targets whose fd was closed, or now holds another file", Fate::Saved("files::eventpoll: found at another fd of the process by kcmp(KCMP_EPOLL_TFD) (holder_fd, crust's own field of eventpoll_tfd_entry), added again under the old number; one no other fd of the process holds is refused")),
    ("memory mappings and their pages", Fate::Saved("mm-PID.img, pagemap/pages images")),
    ("open files", Fate::Saved("files (one FileKind per kind; unknown kinds refused)")),
    ("TCP and UDP sockets, IPv4 and IPv6: unbound, bound, listening (backlog), connected UDP", Fate::Saved("files::inet (inet_sk_entry in files.img): made in the task, bound, listening or connected again")),
    ("inet socket options and classic BPF socket filters", Fate::Saved("files::inet: those with a field in inet_sk_entry (so_filter for the filter); any other one set otherwise than on a fresh socket, or an eBPF filter, is refused by name")),
    ("TCP connections that ended, their fd still open", Fate::Saved("files::inet: state CLOSE, shutdown BOTH; made again as a socket shut down both ways. One with an error not yet read is refused")),
    ("established TCP connections", Fate::Saved("files::tcp with --tcp-established: TCP_REPAIR state (sequence numbers, queues, window, MSS, window scales, SACK, timestamps) in tcp-stream-INO.img, held by a network lock (netlock, nftables) from the freeze until the restored tree runs; --tcp-close: restored closed; refused by name without either; crust migrate --tcp-established moves them, held by a lock on each host (migrate/clients.rs), the operator moving their address at pre-restore")),
    ("TCP sockets connecting or closing (SYN_SENT, FIN_WAIT..., CLOSE_WAIT), connections in a listener's accept queue or being set up", Fate::Refused("refused naming the state, or how many connections wait")),
    ("datagrams queued on a UDP socket", Fate::Saved("files::inet_queue: peeked (MSG_PEEK, a peek offset, IP_PKTINFO for the peek only) into sk-queues.img with each one's source (criu's reserved addr field) and destination (crust_dst_addr); sent again at restore as IP packets from a raw socket of the task's network namespace, and counted on the restored socket")),
    ("fds in flight in unix socket queues (SCM_RIGHTS) of regular files, pipes and unix sockets", Fate::Saved("files::unix: the peek's copies dumped as files of the tree (the same file id as the tree's fd of the same open file, found by kcmp), named by the queue entry's scm entries (criu's scm_entry rights); made in the root at restore and sent again with their message. A stream's plain bytes before a message with fds go with it (no peek tells where they part), as in criu")),
    ("fds in flight of other kinds, of regular files when the tree has a mount namespace of its own, in a socket's own queue, or more than fit one message's control data", Fate::Refused("files::unix: refused naming the socket's fd and the file in flight")),
    ("peek offsets (SO_PEEK_OFF) of unix and UDP sockets", Fate::Saved("files::unix, files::inet: crust_peek_off (crust's own field of sk_opts_entry; criu's has none), set again once the queue is refilled; the dump's own peeks set it back. A TCP socket's is refused by name")),
    ("packet sockets (AF_PACKET)", Fate::Refused("no kind takes them: refused by name (family PACKET)")),
    ("UDP data built up and not sent (MSG_MORE), errors not yet read on UDP sockets (ICMP errors, the error queue)", Fate::Refused("files::inet: the send queue's bytes (inet_diag) or POLLERR, seen without taking the error; refused naming the socket")),
    ("multicast memberships and half-closed UDP sockets", Fate::Refused("the image has no place for memberships; refused naming the group, or the direction shut down")),
    ("pipes a process outside the tree holds too (a pipeline's reader, an engine's stdio)", Fate::Saved("files::pipe with --external pipe:[INO] (noted in crust-meta.json), restored only when given one with --inherit-fd fd[N]:pipe:[INO]; refused by name otherwise, at dump and at restore")),
    ("user namespace of the tree's own, around a single-threaded process alone in it whose other namespaces are the host's: uid and gid maps, setgroups", Fate::Saved("ns::user (userns-ID.img, criu's userns_entry; setgroups in crust's field 100): the root made with CLONE_NEWUSER, the maps written from crust before anything else; ids set through the maps (state::creds)")),
    ("a user namespace of the tree's own with more processes or threads, or owning other namespaces of the tree", Fate::Refused("refused by ns::user naming the process: the other tasks' pids cannot be chosen from inside it (set_tid), nor namespaces it owns made")),
    ("files (fds, mapped files, cwd, root, exe) on a mount hidden by another mounted over it, or detached (umount -l, an old root left by pivot_root)", Fate::Refused("files::reg: their path, as the tree sees it, names another file or none (not their device and inode), so a restore would open another: refused naming the pid, fd or mapping, and the path")),
    ("deleted files of a tree with a mount namespace of its own", Fate::Saved("files::ghost, as the host's, made once the namespace is, in the directory the name has inside it (the tree's tmpfs or root)")),
    ("uts namespace of the tree's own (host and domain name)", Fate::Saved("ns::uts (utsns-ID.img); the tree's own namespaces are listed in crust-meta.json and made with the restored root")),
    ("mount namespace of the tree's own: its mounts (id, parent, type, source, root, mount point, per-mount and super-block flags and options, shared and slave groups)", Fate::Saved("ns::mnt (mountpoints-ID.img, criu's mnt_entry): rebuilt from a crust thread in the new namespace, parents first, then pivot_root; proc, sysfs and mqueue opened (fsopen) by the restored root inside its namespaces; binds inside the tree made from their source mount")),
    ("tmpfs mounts of the tree's own (contents: files, directories, symlinks, hard links, device nodes, fifos, owners, modes, extended attributes, access and modification times to the nanosecond)", Fate::Saved("ns::mnt::tmpfs (tmpfs-dev-N.tar.gz.img, a gzipped tar as criu writes, with GNU tar's PAX records: SCHILY.xattr.NAME, mtime, atime)")),
    ("unix socket files in a tmpfs of the tree's own, of a socket of the tree", Fate::Saved("files::unix binds the socket at its path again, which makes the file (left out of the tmpfs's tar)")),
    ("unix socket files in a tmpfs of the tree's own that no socket of the tree is bound to", Fate::Refused("the restore would not make them again: refused by path and tmpfs")),
    ("the root of the tree's mount namespace (a host directory, bind-mounted or an overlayfs)", Fate::Saved("ns::mnt: its host path (ext_key of the root entry), or --root at restore; a copy given by --root is checked by size and time, not inode")),
    ("bind mounts of host files and directories in the tree's mount namespace", Fate::Saved("ns::mnt as external mounts: --ext-mount-map KEY:VAL or auto at dump; refused by name without; the host path from --ext-mount-map / --external mnt[KEY]:VAL, or the recorded path, at restore")),
    ("file systems mounted inside the tree from a device or of a kind crust does not make (ext4 on a loop device, ramfs, fuse, nfs, overlayfs elsewhere than the root), unbindable mounts", Fate::Refused("refused by ns::mnt naming the mount point, type and source")),
    ("raw and ping sockets; inet, unix and netlink sockets of another network namespace than their process's", Fate::Refused("not supported yet")),
    ("sockets of the tree's own network namespace", Fate::Saved("as in crust's: sock_diag and /proc/PID/net asked in that namespace, the sockets made in the tasks once the namespace is filled; TCP connections held by the network lock in crust's namespace (peers on the host)")),
    ("network namespace of the tree's own: loopback (flags, mtu) and veth devices (name, index, flags, mtu, MAC; the host end external, named by --external veth[IF]:HOSTIF[@BRIDGE])", Fate::Saved("ns::net (netdev-ID.img); --empty-ns net leaves the new namespace as the kernel makes it")),
    ("addresses (IPv4, IPv6, flags, lifetimes) and routes of the main tables of a network namespace of the tree's own", Fate::Saved("ns::net: the kernel's rtnetlink messages as iproute2's `ip addr save` / `ip route save` write them (ifaddr-ID.img, route-ID.img, route6-ID.img), sent back at restore")),
    ("net.ipv4.conf.*, net.ipv6.conf.* (all, default, each device) and net.unix.max_dgram_qlen of a network namespace of the tree's own", Fate::Saved("ns::net (netns-ID.img, netdev-ID.img: CRIU's lists, by position)")),
    ("nftables rules of a network namespace of the tree's own", Fate::Saved("ns::net (nftables-ID.img: `nft list ruleset`, loaded with nft -f)")),
    ("network devices other than loopback and veth, veth pairs with both ends inside, enslaved devices, routes of other tables, policy routing rules, legacy iptables tables, changed neighbour table settings (net.ipv4.neigh.*, net.ipv6.neigh.*), in a network namespace of the tree's own", Fate::Refused("refused by ns::net naming the device, table, rule or setting")),
    ("the other sysctls of a network namespace of the tree's own (net.ipv4.tcp_*, ip_local_port_range, ping_group_range, net.core.somaxconn, net.netfilter.*...)", Fate::Saved("ns::net::sysctls: those that differ from a new namespace's, by path and value, in netns-ID.img's field of crust's own (crust_sysctls, 1001), written back first at restore")),
    ("ipc namespace of the tree's own: its limits (kernel.shm*, msg*, sem, auto_msgmni, fs.mqueue.*) and next ids", Fate::Saved("ns::ipc (ipcns-var-ID.img), written once its objects are made (making them may need higher limits for a while)")),
    ("System V shared memory segments, semaphore sets and message queues of the tree's ipc namespace", Fate::Saved("ns::ipc (ipcns-shm/sem/msg-ID.img): id (made again through kernel.*_next_id), key, owner, creator, mode, SHM_LOCKED, queue size; segment pages inline, semaphore values, messages with their types (read with MSG_COPY, left queued)")),
    ("times and last pids of System V objects (shm_atime, shm_lpid, sem_otime, msg_stime...), semaphores' last pids", Fate::NotNeeded("the kernel sets them as the objects are used and has no call to set them; the restore's are the restored objects'")),
    ("System V segments removed while still attached (SHM_DEST)", Fate::Saved("ns::ipc: made and attached again like the others, then removed once the whole tree is made (NsKind::finish)")),
    ("System V segments in huge pages (SHM_HUGETLB); message queues on a kernel without MSG_COPY", Fate::Refused("refused naming the segment or the namespace: not supported yet")),
    ("attachments of System V segments (shmat)", Fate::Saved("VMA_AREA_SYSVIPC vmas (the segment's id in shmid), attached again at their address by an injected shmat with their protection; the contents are the segment's. A segment of another ipc namespace than the tree's own (the host's, or one the process left; told apart by its inode's file handle), or one attached in part, is refused")),
    ("semaphore undo adjustments (semop with SEM_UNDO)", Fate::NotNeeded("the kernel shows them nowhere: a restored process has none (as under CRIU), so its exit no longer undoes them")),
    ("POSIX message queues of the tree's ipc namespace", Fate::Saved("ns::ipc (ipcns-mqueue-ID.json, crust's own: CRIU's format has none): name, owner, mode, limits, messages with priorities, read by taking them all and queueing them again in order")),
    ("POSIX message queues held open (mq_open fds)", Fate::Refused("files::reg, naming the fd and the queue: its link is a name in the mqueue file system, not a path to reopen it by")),
    ("POSIX message queue notifications (mq_notify)", Fate::Refused("queueing the messages again at dump would fire it: refused naming the queue and the process waiting")),
    ("pid namespace of the tree's own, its root the namespace's init", Fate::Saved("ns::pid: the images hold the pids inside it (pstree, image names, threads, file owners, pidfds, timers' threads, tty sessions, locks, crust's notes); the restored root is pid 1 of a new one, every task has its pid there, the host pids are any")),
    ("a root that is not the init (pid 1) of its pid namespace", Fate::Refused("ns::pid: the namespace's init is outside the tree: dump the init")),
    ("the signal rule of a pid namespace's init (signals from inside it does not handle are ignored)", Fate::NotNeeded("the kernel's, for whichever task is pid 1: it comes back with the namespace")),
    ("time namespace of the tree's own (monotonic and boottime offsets)", Fate::Saved("ns::time (timens-ID.img): the clocks as the tree saw them at dump, as criu; the restore sets new offsets so they go on from there")),
    ("cgroup namespace of the tree's own", Fate::Saved("ns::cgroup: unshared by the restored root once it is in its cgroups (cgroup.img), which become its root again; a root not at its namespace's root is refused")),
    ("a namespace of the tree's own that something outside it holds (a process in it, an nsfs bind mount as `ip netns add` makes; an outside fd on it is not counted: lxc-start keeps one on each of its container's)", Fate::Refused("ns::join: naming the namespace and one holder, unless marked external (--external net|uts|ipc[INO]:KEY): then recorded by its key, not saved, and the restore forks the root in the namespace --join-ns gives")),
    ("namespaces of the tree's own of other kinds, a process or a thread in another namespace than the tree's root, a pid or time namespace for children not forked yet", Fate::Refused("refused by ns::own_namespaces, naming the kind and the process or thread (each thread's /proc/PID/task/TID/ns is looked at: a thread may unshare alone)")),
    ("seccomp filters (classic BPF, per thread, in order; shared by threads when equal)", Fate::Saved("seccomp (seccomp.img), installed under PTRACE_O_SUSPEND_SECCOMP so that crust's later syscalls pass")),
    ("seccomp filter flags", Fate::Saved("seccomp: SECCOMP_FILTER_FLAG_LOG (the one the kernel reports); TSYNC is how a filter was installed, not a state; SPEC_ALLOW shows in Speculation_Store_Bypass")),
    ("seccomp strict mode", Fate::Refused("any syscall crust injects would kill the task: not supported")),
    ("seccomp user notification listener (SECCOMP_FILTER_FLAG_NEW_LISTENER)", Fate::Refused("its fd is a kind of file crust does not know; without a listener the filter behaves alike")),
    ("no_new_privs", Fate::Saved("creds (no_new_privs)")),
    ("LSM label (/proc/PID/attr/current)", Fate::Refused("LSM labels are not supported (this kernel has no LSM)")),
    ("capabilities: inheritable, permitted, effective, bounding, ambient", Fate::Saved("creds, set last in each thread")),
    ("cgroup membership", Fate::Saved("cgroup.img")),
    ("an fd table or fs state shared with the parent (CLONE_FILES, CLONE_FS)", Fate::Saved("files_id and fs_id of ids-PID.img, the parent's; made shared again by clone")),
    ("an fd table or fs state shared with a process other than the parent", Fate::Refused("sharing with a process other than the parent is not supported")),
    ("memory or signal handlers shared by processes (CLONE_VM, CLONE_SIGHAND without CLONE_THREAD)", Fate::Refused("sharing memory or signal handlers without being threads is not supported")),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The VmFlags Documentation/filesystems/proc.rst documents (up to 6.18).
    const DOCUMENTED_VM_FLAGS: &[&str] = &[
        "rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "gd", "pf", "dw", "lo", "io", "sr", "rr", "dc", "de", "ac", "nr",
        "ht", "sf", "ar", "wf", "dd", "sd", "mm", "hg", "nh", "mg", "bt", "mt", "um", "uw", "ui", "ss", "sl", "lf", "dp",
        "gu",
    ];

    /// The status fields crust reads, by the procfs crate or by name.
    const STATUS_READ: &[&str] = &[
        "Name", "State", "Tgid", "Pid", "PPid", "TracerPid", "Uid", "Gid", "Groups", "Threads", "SigQ", "SigPnd", "ShdPnd",
        "SigBlk", "SigIgn", "SigCgt", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
        "Umask", "THP_enabled", "Cpus_allowed", "Speculation_Store_Bypass",
    ];

    #[test]
    fn every_documented_vm_flag_has_a_fate() {
        for f in DOCUMENTED_VM_FLAGS {
            assert!(vm_flag(f).is_ok(), "VmFlag {f} is not in the inventory");
        }
        assert!(vm_flag("zz").unwrap_err().contains("unknown VmFlag"));
    }

    #[test]
    fn every_vm_flag_of_this_kernel_has_a_fate() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        for line in smaps.lines().filter_map(|l| l.strip_prefix("VmFlags:")) {
            for f in line.split_whitespace() {
                assert!(vm_flag(f).is_ok(), "VmFlag {f} of this kernel is not in the inventory");
            }
        }
    }

    #[test]
    fn every_status_field_read_and_of_this_kernel_has_a_fate() {
        for f in STATUS_READ {
            assert!(status_field(f).is_some(), "status field {f} is read but not in the inventory");
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        for f in status.lines().filter_map(|l| l.split_once(':')).map(|(k, _)| k) {
            assert!(status_field(f).is_some(), "status field {f} of this kernel is not in the inventory");
        }
    }

    #[test]
    fn entries_are_unique_and_explained() {
        for table in [VM_FLAGS, STATUS_FIELDS, PROCESS_STATE] {
            for (i, (name, fate)) in table.iter().enumerate() {
                assert!(table[i + 1..].iter().all(|(n, _)| n != name), "{name} is listed twice");
                let why = match fate {
                    Fate::Saved(s) | Fate::Refused(s) | Fate::SameAsCrust(s) | Fate::NotNeeded(s) => s,
                };
                assert!(!why.is_empty(), "{name} has no reason");
            }
        }
    }
}
