//! The order mounts are saved and made in: parents first (as the kernel
//! lists them), and, where parents allow, a mount of a file system after
//! the mount of the same file system that shows a directory holding its
//! own, so that it can be made as a bind of that one. runc's masked paths
//! need it: the container's /dev/null (a node of its /dev tmpfs) is bound
//! over /proc/keys, and /proc is listed, with what is mounted on it,
//! before /dev.

use super::within;

/// What the order looks at in a mount.
pub struct Key<'a> {
    pub id: u32,
    pub parent: u32,
    pub dev: u32,
    pub root: &'a str,
    pub mountpoint: &'a str,
}

/// `list` (parents first) reordered so that a mount comes after every mount
/// of its file system showing a directory strictly holding its own, unless
/// that would put it after its own parent's descendants in a way that
/// changes what it hides: a mount is never moved past a later sibling
/// mounted on its mount point or above it.
pub fn sources_first<T>(list: Vec<T>, key: impl Fn(&T) -> Key<'_>) -> Vec<T> {
    let n = list.len();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    let ids: std::collections::HashSet<u32> = list.iter().map(|m| key(m).id).collect();
    while order.len() < n {
        let ready = |i: usize| {
            let k = key(&list[i]);
            !done[i] && (!ids.contains(&k.parent) || k.parent == k.id || (0..n).any(|j| done[j] && key(&list[j]).id == k.parent))
        };
        // A mount whose source (a holding mount of its file system) is not made yet.
        let waits = |i: usize| {
            let k = key(&list[i]);
            (0..n).any(|j| {
                let o = key(&list[j]);
                j != i && !done[j] && o.dev == k.dev && o.root != k.root && within(k.root, o.root).is_some()
            })
        };
        let mut skipped: Vec<usize> = Vec::new();
        let mut pick = None;
        for i in (0..n).filter(|&i| ready(i)) {
            let k = key(&list[i]);
            let hides_skipped = skipped.iter().any(|&s| {
                let o = key(&list[s]);
                o.parent == k.parent && within(o.mountpoint, k.mountpoint).is_some()
            });
            if !waits(i) && !hides_skipped {
                pick = Some(i);
                break;
            }
            skipped.push(i);
        }
        // Nothing can go without breaking a rule: the first ready one goes
        // (its bind source is then not found and the mount is refused by name).
        let Some(i) = pick.or_else(|| (0..n).find(|&i| ready(i))) else { break };
        done[i] = true;
        order.push(i);
    }
    if order.len() < n {
        // Not all reachable from the root: left as given, for the caller's
        // own check to refuse.
        return list;
    }
    let mut slots: Vec<Option<T>> = list.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct M(u32, u32, u32, &'static str, &'static str);

    fn ids(list: Vec<M>) -> Vec<u32> {
        sources_first(list, |m| Key { id: m.0, parent: m.1, dev: m.2, root: m.3, mountpoint: m.4 }).iter().map(|m| m.0).collect()
    }

    #[test]
    fn a_masked_proc_file_comes_after_the_dev_tmpfs_it_is_bound_from() {
        // As runc mounts them: /proc, its read-only binds and masked files, then /dev.
        let list = vec![
            M(70, 47, 1, "/rootfs", "/"),
            M(71, 70, 2, "/", "/proc"),
            M(48, 71, 2, "/bus", "/proc/bus"),
            M(53, 71, 3, "/null", "/proc/keys"),
            M(54, 71, 3, "/null", "/proc/timer_list"),
            M(72, 70, 3, "/", "/dev"),
            M(73, 72, 4, "/", "/dev/pts"),
        ];
        assert_eq!(ids(list), [70, 71, 48, 72, 53, 54, 73]);
    }

    #[test]
    fn a_mount_is_not_moved_past_a_sibling_that_hides_it() {
        // /a/b (a bind of /x of dev 3) was mounted before /a (dev 3's root) hid it.
        let list = vec![M(1, 0, 1, "/", "/"), M(2, 1, 3, "/x", "/a/b"), M(3, 1, 3, "/", "/a")];
        assert_eq!(ids(list), [1, 2, 3]);
    }

    #[test]
    fn a_plain_tree_keeps_its_order() {
        let list = vec![M(1, 0, 1, "/", "/"), M(2, 1, 2, "/", "/proc"), M(3, 1, 3, "/", "/dev"), M(4, 3, 4, "/", "/dev/pts")];
        assert_eq!(ids(list), [1, 2, 3, 4]);
    }

    #[test]
    fn a_bind_comes_after_the_mount_it_is_bound_from() {
        // A restored LXC container as the kernel lists it: proc (and its
        // /proc/sys bind, and boot_id bound from /dev under that) before the
        // /dev tmpfs.
        let list = vec![
            M(1, 0, 9, "/rootfs", "/"),
            M(2, 1, 5, "/", "/proc"),
            M(5, 2, 5, "/sys", "/proc/sys"),
            M(3, 5, 7, "/.lxc-boot-id", "/proc/sys/kernel/random/boot_id"),
            M(4, 1, 7, "/", "/dev"),
        ];
        assert_eq!(ids(list), [1, 2, 5, 4, 3]);
        // A file system's top mounted under a bind of its own subdirectory
        // (the root among them): the parent wins, nothing is lost.
        assert_eq!(ids(vec![M(1, 0, 7, "/sub", "/"), M(2, 1, 7, "/", "/x")]), [1, 2]);
    }
}
