//! The memory behind one instance: memfds whose pages are the instance's pages, and
//! how the model learns which of them were touched.
//!
//! A character device's offsets reach `ULONG_MAX` bytes, a memfd's only
//! `MAX_LFS_FILESIZE` (2^63 - 1). So the instance's offsets are cut into four
//! segments of 2^62 bytes, each its own memfd, made when first mapped: every offset
//! a program can map has memory, and a mapping that crosses a segment's end is made
//! of one `mmap` per segment.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{MemfdFlags, SeekFrom};

use crate::abi::{Errno, PAGE_SIZE};
use crate::driver::Vepc;
use crate::sys::kept::Kept;

/// Pages in one segment (2^62 bytes).
const SEGMENT_PAGES: u64 = 1 << 50;
/// Segments: enough for every page index.
const SEGMENTS: usize = 4;

/// One memfd of the instance.
#[derive(Debug)]
struct Segment {
    fd: Kept,
    /// Bytes it covers (it grows with the mappings).
    size: AtomicU64,
    /// `(st_dev, st_ino)` when made: a descriptor replaced behind the library's back
    /// has others.
    ident: (u64, u64),
}

/// The instance's memory.
#[derive(Debug, Default)]
pub(super) struct Backing {
    segments: [OnceLock<Segment>; SEGMENTS],
}

/// One piece of a mapping: a part that lies in a single segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Piece {
    /// Its segment.
    pub(super) segment: usize,
    /// The byte offset into the segment's memfd.
    pub(super) offset: u64,
    /// Bytes from the mapping's start to the piece's.
    pub(super) at: u64,
    /// Bytes.
    pub(super) len: u64,
}

/// The pieces of the instance pages `pgoff..pgoff + pages`, in order.
pub(super) fn pieces(pgoff: u64, pages: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut page = pgoff;
    let end = pgoff.saturating_add(pages);
    while page < end {
        let segment = (page / SEGMENT_PAGES) as usize;
        let local = page % SEGMENT_PAGES;
        let n = (SEGMENT_PAGES - local).min(end - page);
        out.push(Piece {
            segment,
            offset: local * PAGE_SIZE,
            at: (page - pgoff) * PAGE_SIZE,
            len: n * PAGE_SIZE,
        });
        page += n;
    }
    out
}

/// Why the memory can no longer be trusted: a descriptor was closed or replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lost(pub(super) String);

impl Backing {
    /// The segment's memfd, made if it is not there yet, large enough for `bytes`.
    pub(super) fn grown(&self, segment: usize, bytes: u64) -> Result<BorrowedFd<'_>, Errno> {
        let slot = self.segments.get(segment).ok_or(Errno::EOVERFLOW)?;
        let seg = match slot.get() {
            Some(s) => s,
            None => {
                let fd = rustix::fs::memfd_create("sgx_vepc", MemfdFlags::CLOEXEC)
                    .map_err(crate::sys::errno)?;
                let st = rustix::fs::fstat(&fd).map_err(crate::sys::errno)?;
                let made = Segment {
                    fd: Kept::new(fd),
                    size: AtomicU64::new(0),
                    ident: (st.st_dev, st.st_ino),
                };
                // Another thread may have made it meanwhile: one of the two is kept.
                let _ = slot.set(made);
                slot.get().ok_or(Errno::ENOMEM)?
            }
        };
        if bytes > seg.size.load(Ordering::Acquire) {
            rustix::fs::ftruncate(&seg.fd, bytes).map_err(crate::sys::errno)?;
            seg.size.fetch_max(bytes, Ordering::AcqRel);
        }
        Ok(seg.fd.as_fd())
    }

    /// Makes sure every segment the pages `pgoff..pgoff + pages` use exists and covers
    /// them.
    pub(super) fn grow(&self, pgoff: u64, pages: u64) -> Result<(), Errno> {
        for p in pieces(pgoff, pages) {
            self.grown(p.segment, p.offset + p.len)?;
        }
        Ok(())
    }

    /// Gives every page that was touched (has data) and has no EPC page yet its EPC
    /// page, in index order, as the faults would have.
    ///
    /// Each `SEEK_DATA`/`SEEK_HOLE` step must move forward; a descriptor that answers
    /// otherwise, or is no longer the memfd it was, was closed or replaced by the
    /// program (a raw `close` or `dup2` system call): [`Lost`].
    pub(super) fn settle(&self, vepc: &Vepc) -> Result<(), Lost> {
        self.settle_range(vepc, 0, u64::MAX)
    }

    /// [`settle`](Self::settle) for the instance pages `start..start + count` only:
    /// what a window's close needs, at the cost of the window rather than of every
    /// page the instance has.
    pub(super) fn settle_range(&self, vepc: &Vepc, start: u64, count: u64) -> Result<(), Lost> {
        let stop = start.saturating_add(count);
        for (segment, slot) in self.segments.iter().enumerate() {
            let Some(seg) = slot.get() else { continue };
            let base = segment as u64 * SEGMENT_PAGES;
            // The range's bytes within this segment.
            let lo = start.saturating_sub(base).min(SEGMENT_PAGES) * PAGE_SIZE;
            let hi = stop.saturating_sub(base).min(SEGMENT_PAGES) * PAGE_SIZE;
            let size = seg.size.load(Ordering::Acquire).min(hi);
            if size <= lo {
                continue;
            }
            let ident = rustix::fs::fstat(&seg.fd)
                .map(|st| (st.st_dev, st.st_ino))
                .map_err(|e| self.lost(segment, &format!("fstat answered {e}")))?;
            if ident != seg.ident {
                return Err(self.lost(segment, "it is another file now"));
            }
            let mut at = lo;
            while at < size {
                let data = match rustix::fs::seek(&seg.fd, SeekFrom::Data(at)) {
                    Ok(d) => d,
                    // No data at or after `at`.
                    Err(rustix::io::Errno::NXIO) => break,
                    Err(e) => return Err(self.lost(segment, &format!("SEEK_DATA: {e}"))),
                };
                // Data past the range (the file goes on beyond it): nothing more here.
                if data >= size {
                    break;
                }
                let hole = rustix::fs::seek(&seg.fd, SeekFrom::Hole(data)).unwrap_or(size);
                if data < at || hole <= data {
                    return Err(self.lost(segment, "SEEK_DATA and SEEK_HOLE do not advance"));
                }
                let first = data / PAGE_SIZE;
                let end = hole.min(size).div_ceil(PAGE_SIZE);
                // Fast mode guarantees a page for each: a failure is a bug of the
                // emulated device, which the model's warnings show.
                if vepc.populate(base + first, end - first).is_err() {
                    vepc.device().warn(format!(
                        "emulated device: no EPC left to settle pages {}..{}",
                        base + first,
                        base + end
                    ));
                }
                at = hole;
            }
        }
        Ok(())
    }

    /// Whether every segment's descriptor is still the memfd it was.
    pub(super) fn check(&self) -> Result<(), Lost> {
        for (segment, slot) in self.segments.iter().enumerate() {
            let Some(seg) = slot.get() else { continue };
            match rustix::fs::fstat(&seg.fd) {
                Ok(st) if (st.st_dev, st.st_ino) == seg.ident => {}
                Ok(_) => return Err(self.lost(segment, "it is another file now")),
                Err(e) => return Err(self.lost(segment, &format!("fstat answered {e}"))),
            }
        }
        Ok(())
    }

    fn lost(&self, segment: usize, why: &str) -> Lost {
        let fd = self.segments[segment]
            .get()
            .map_or(-1, |s| std::os::fd::AsRawFd::as_raw_fd(&s.fd.as_fd()));
        Lost(format!(
            "the instance's memory (descriptor {fd}) was closed or replaced behind the \
             device's back ({why}): first touches can no longer be counted"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_segment_ends() {
        let p = pieces(3, 5);
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].segment, p[0].offset, p[0].at, p[0].len),
            (0, 3 * 4096, 0, 5 * 4096)
        );
        let p = pieces(SEGMENT_PAGES - 1, 2);
        assert_eq!(p.len(), 2);
        assert_eq!((p[1].segment, p[1].offset, p[1].at), (1, 0, 4096));
        // The last page a character device can map: the last segment.
        let p = pieces(u64::MAX / PAGE_SIZE - 1, 1);
        assert_eq!(p[0].segment, 3);
    }
}
