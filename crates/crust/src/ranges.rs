//! Address ranges, (start, end) pairs kept sorted by start and apart: the
//! pages a process shares, inherits or maps, cut and combined.

/// `ranges` sorted, with those that touch or overlap made one; empty ones dropped.
pub fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|&(start, end)| start < end);
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// `ranges` less `minus`, both sorted by start and each apart.
pub fn subtract(ranges: &[(u64, u64)], minus: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(start, end) in ranges {
        let mut at = start;
        let first = minus.partition_point(|&(_, e)| e <= start);
        for &(s, e) in minus[first..].iter().take_while(|&&(s, _)| s < end) {
            if s > at {
                out.push((at, s));
            }
            at = at.max(e);
        }
        if at < end {
            out.push((at, end));
        }
    }
    out
}

/// What `a` and `b` (each sorted, apart) both cover.
pub fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    subtract(a, &subtract(a, b))
}

/// The parts of `len` bytes at `vaddr`, in order, each with whether it lies
/// in one of `ranges` (sorted, apart).
pub fn split(ranges: &[(u64, u64)], vaddr: u64, len: u64) -> Vec<(u64, u64, bool)> {
    let end = vaddr.saturating_add(len);
    let mut out = Vec::new();
    let mut at = vaddr;
    let first = ranges.partition_point(|&(_, e)| e <= vaddr);
    for &(s, e) in ranges[first..].iter().take_while(|&&(s, _)| s < end) {
        if s > at {
            out.push((at, s - at, false));
        }
        let (from, to) = (s.max(at), e.min(end));
        out.push((from, to - from, true));
        at = to;
    }
    if at < end {
        out.push((at, end - at, false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_leaves_what_no_range_covers() {
        let minus = [(0x2000, 0x3000), (0x5000, 0x8000)];
        assert_eq!(subtract(&[(0x1000, 0x6000), (0x7000, 0x9000)], &minus), [(0x1000, 0x2000), (0x3000, 0x5000), (0x8000, 0x9000)]);
        assert_eq!(subtract(&[(0x5000, 0x8000)], &minus), []);
        assert_eq!(subtract(&[(0x1000, 0x2000)], &[]), [(0x1000, 0x2000)]);
        assert_eq!(merge(vec![(0x5000, 0x6000), (0x1000, 0x3000), (0x2000, 0x4000), (0x4000, 0x4800), (0x9000, 0x9000)]), [(0x1000, 0x4800), (0x5000, 0x6000)]);
    }

    #[test]
    fn split_marks_the_parts_in_ranges() {
        let ranges = [(0x2000, 0x3000)];
        assert_eq!(split(&ranges, 0x1000, 0x3000), [(0x1000, 0x1000, false), (0x2000, 0x1000, true), (0x3000, 0x1000, false)]);
        assert_eq!(split(&ranges, 0x2000, 0x1000), [(0x2000, 0x1000, true)]);
    }
}
