//! `mmap(2)` of `/dev/sgx_vepc`, every check in the order Linux 6.18 makes it:
//! `sys_mmap` (`arch/x86/kernel/sys_x86_64.c`), `ksys_mmap_pgoff` and `do_mmap`
//! (`mm/mmap.c`), then `sgx_vepc_mmap` (`virt.c`). The address space's part (room
//! below `TASK_SIZE`, the mapping count, `MAP_FIXED_NOREPLACE`, lock limits) is asked
//! of an [`AddressSpace`]: the emulated device asks the real process's, `vepc sim` a
//! model of one ([`ModelAddressSpace`]).

use super::Access;
use super::flags::*;
use crate::abi::{Errno, PAGE_SIZE};

/// A call `mmap(addr, len, prot, flags, fd, offset)` on a descriptor of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmapRequest {
    /// The address hint, or the address with `MAP_FIXED`.
    pub addr: u64,
    /// Bytes, as passed (not yet rounded up).
    pub len: u64,
    /// `PROT_*`.
    pub prot: i32,
    /// `MAP_*`.
    pub flags: i32,
    /// The file offset, as the `off_t` bits passed (`-4096` is `0xffff…f000`).
    pub offset: u64,
}

impl MmapRequest {
    /// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | extra, fd, offset)`: how a
    /// VMM maps a section.
    pub fn shared(len: u64, offset: u64, extra: i32) -> Self {
        Self {
            addr: 0,
            len,
            prot: PROT_READ | PROT_WRITE,
            flags: MAP_SHARED | extra,
            offset,
        }
    }
}

/// What a successful `mmap` maps: where, how much, from which page of the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mmap {
    /// The address the address space chose (or was told).
    pub addr: u64,
    /// Bytes, a whole number of pages.
    pub len: u64,
    /// The instance page at `addr`.
    pub pgoff: u64,
}

/// The process's address space, as `do_mmap` consults it.
pub trait AddressSpace {
    /// `mm->map_count > sysctl_max_map_count`: no mapping can be added.
    fn too_many_mappings(&self) -> bool;
    /// `__get_unmapped_area` for `len` bytes (a whole number of pages), and for
    /// `MAP_FIXED_NOREPLACE` the overlap check after it: the address the mapping would
    /// get, or `ENOMEM` (no room, or past `TASK_SIZE`), `EINVAL` (a `MAP_FIXED` address
    /// not page-aligned), `EEXIST` (`MAP_FIXED_NOREPLACE` over a mapping). An address
    /// space may hold the range for the caller until [`abandon`](Self::abandon).
    fn unmapped_area(&mut self, addr: u64, len: u64, flags: i32) -> Result<u64, Errno>;
    /// A later check failed: the range [`unmapped_area`](Self::unmapped_area) gave is
    /// not used.
    fn abandon(&mut self, addr: u64, len: u64);
    /// `can_do_mlock()`: `RLIMIT_MEMLOCK` is not 0, or the caller has `CAP_IPC_LOCK`.
    fn can_mlock(&self) -> bool;
    /// `mlock_future_ok()`: whether a mapping of `len` bytes may be locked, if it is
    /// (`MAP_LOCKED`, or `mlockall(MCL_FUTURE)` in force).
    fn may_lock(&self, map_locked: bool, len: u64) -> bool;
}

/// `LEGACY_MAP_MASK` (`include/linux/mman.h`): what `MAP_SHARED_VALIDATE` accepts from
/// a file without `FOP_MMAP_SYNC`, as vEPC is.
const LEGACY_MAP_MASK: i32 = MAP_SHARED
    | MAP_PRIVATE
    | MAP_FIXED
    | MAP_ANONYMOUS
    | MAP_DENYWRITE
    | MAP_EXECUTABLE
    | MAP_UNINITIALIZED
    | MAP_GROWSDOWN
    | MAP_LOCKED
    | MAP_NORESERVE
    | MAP_POPULATE
    | MAP_NONBLOCK
    | MAP_STACK
    | MAP_HUGETLB
    | MAP_32BIT
    // MAP_HUGE_2MB and MAP_HUGE_1GB: the size bits of MAP_HUGETLB.
    | (0x3f << 26);

/// `mmap(req)` of an open with `access`: where the mapping goes and which page of the
/// instance it starts at, or the errno Linux answers first.
///
/// # Examples
///
/// ```
/// use vepc::abi::Errno;
/// use vepc::driver::surface::Access;
/// use vepc::driver::surface::mmap::{MmapRequest, ModelAddressSpace, mmap};
///
/// let mut space = ModelAddressSpace::default();
/// let rw = Access::READ_WRITE;
/// assert!(mmap(rw, &MmapRequest::shared(1 << 20, 0, 0), &mut space).is_ok());
/// // A character device's offsets go up to ULONG_MAX: far beyond a regular file's.
/// assert!(mmap(rw, &MmapRequest::shared(4096, 0x7fff_ffff_ffff_f000, 0), &mut space).is_ok());
/// let minus_one_page = (-4096i64) as u64;
/// assert_eq!(mmap(rw, &MmapRequest::shared(4096, minus_one_page, 0), &mut space), Err(Errno::EOVERFLOW));
/// // MAP_SHARED_VALIDATE | MAP_SYNC: vEPC does not support MAP_SYNC.
/// let sync = MmapRequest { flags: 0x03 | 0x8_0000, ..MmapRequest::shared(4096, 0, 0) };
/// assert_eq!(mmap(rw, &sync, &mut space), Err(Errno::EOPNOTSUPP));
/// // Past TASK_SIZE there is no room, private or not.
/// assert_eq!(mmap(rw, &MmapRequest::shared(200 << 40, 0, 0), &mut space), Err(Errno::ENOMEM));
/// ```
pub fn mmap(
    access: Access,
    req: &MmapRequest,
    space: &mut dyn AddressSpace,
) -> Result<Mmap, Errno> {
    // sys_mmap: the byte offset must be a whole number of pages.
    if !req.offset.is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    let pgoff = req.offset / PAGE_SIZE;
    // ksys_mmap_pgoff: a file that is not on hugetlbfs cannot take MAP_HUGETLB.
    if req.flags & MAP_HUGETLB != 0 {
        return Err(Errno::EINVAL);
    }
    // do_mmap.
    if req.len == 0 {
        return Err(Errno::EINVAL);
    }
    let len = req.len.checked_next_multiple_of(PAGE_SIZE).unwrap_or(0);
    if len == 0 {
        return Err(Errno::ENOMEM);
    }
    if pgoff.checked_add(len / PAGE_SIZE).is_none() {
        return Err(Errno::EOVERFLOW);
    }
    if space.too_many_mappings() {
        return Err(Errno::ENOMEM);
    }
    let mut flags = req.flags;
    if flags & MAP_FIXED_NOREPLACE != 0 {
        flags |= MAP_FIXED;
    }
    let addr = space.unmapped_area(req.addr, len, flags)?;
    let checked = file_checks(access, req, flags, pgoff, len, space);
    match checked {
        Ok(()) => Ok(Mmap { addr, len, pgoff }),
        Err(e) => {
            space.abandon(addr, len);
            Err(e)
        }
    }
}

/// `do_mmap` after the address is known: locking, the file's size limit, the sharing
/// type and the open's access, then `sgx_vepc_mmap`.
fn file_checks(
    access: Access,
    req: &MmapRequest,
    flags: i32,
    pgoff: u64,
    len: u64,
    space: &dyn AddressSpace,
) -> Result<(), Errno> {
    if flags & MAP_LOCKED != 0 && !space.can_mlock() {
        return Err(Errno::EPERM);
    }
    if !space.may_lock(flags & MAP_LOCKED != 0, len) {
        return Err(Errno::EAGAIN);
    }
    // file_mmap_ok: a character device may be mapped up to ULONG_MAX bytes.
    if pgoff > (u64::MAX - len) / PAGE_SIZE {
        return Err(Errno::EOVERFLOW);
    }
    let mut shared = false;
    match flags & MAP_TYPE {
        MAP_SHARED | MAP_SHARED_VALIDATE => {
            let flags = if flags & MAP_TYPE == MAP_SHARED {
                flags & LEGACY_MAP_MASK
            } else {
                flags
            };
            if flags & !LEGACY_MAP_MASK != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            if req.prot & PROT_WRITE != 0 && !access.write {
                return Err(Errno::EACCES);
            }
            // A read-only open's shared mapping loses VM_SHARED (do_mmap).
            shared = access.write;
        }
        MAP_PRIVATE => {}
        _ => return Err(Errno::EINVAL),
    }
    if !access.read {
        return Err(Errno::EACCES);
    }
    if flags & MAP_GROWSDOWN != 0 {
        return Err(Errno::EINVAL);
    }
    // sgx_vepc_mmap: only VM_SHARED mappings.
    if !shared {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// A process's address space as `vepc sim` models one: nothing mapped but what the
/// script maps, Linux's defaults for the limits (4-level paging's `TASK_SIZE`,
/// `vm.mmap_min_addr` 65536, `vm.max_map_count` 65530) and no locked memory. It
/// counts bytes, not places: a `MAP_FIXED` address is checked for its alignment and
/// range only, and the room is never fragmented (a real process's is, by its own
/// text, heap and libraries: it may fit one terabyte fewer).
#[derive(Debug, Clone, Default)]
pub struct ModelAddressSpace {
    mapped: u64,
    count: u64,
}

impl ModelAddressSpace {
    /// `TASK_SIZE` with 4-level paging: 128 TiB less a guard page.
    pub const TASK_SIZE: u64 = (1 << 47) - PAGE_SIZE;
    /// `vm.mmap_min_addr`'s default: nothing is mapped below.
    pub const MMAP_MIN_ADDR: u64 = 65536;
    /// `vm.max_map_count`'s default.
    pub const MAX_MAP_COUNT: u64 = 65530;

    /// `len` bytes mapped earlier are unmapped.
    pub fn unmap(&mut self, len: u64) {
        self.mapped = self.mapped.saturating_sub(len);
        self.count = self.count.saturating_sub(1);
    }

    /// Bytes mapped now.
    pub fn mapped(&self) -> u64 {
        self.mapped
    }
}

impl AddressSpace for ModelAddressSpace {
    fn too_many_mappings(&self) -> bool {
        self.count > Self::MAX_MAP_COUNT
    }

    fn unmapped_area(&mut self, addr: u64, len: u64, flags: i32) -> Result<u64, Errno> {
        if flags & MAP_FIXED != 0 {
            // __get_unmapped_area's checks of a fixed address.
            if len > Self::TASK_SIZE || addr > Self::TASK_SIZE - len {
                return Err(Errno::ENOMEM);
            }
            if !addr.is_multiple_of(PAGE_SIZE) {
                return Err(Errno::EINVAL);
            }
            self.mapped += len;
            self.count += 1;
            return Ok(addr);
        }
        let room = Self::TASK_SIZE - Self::MMAP_MIN_ADDR - self.mapped;
        if len > room {
            return Err(Errno::ENOMEM);
        }
        self.mapped += len;
        self.count += 1;
        // Top-down, as x86-64's mmap layout hands addresses out.
        Ok(Self::TASK_SIZE - self.mapped)
    }

    fn abandon(&mut self, _addr: u64, len: u64) {
        self.unmap(len);
    }

    fn can_mlock(&self) -> bool {
        false
    }

    fn may_lock(&self, map_locked: bool, _len: u64) -> bool {
        !map_locked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: Access = Access::READ_WRITE;
    const RO: Access = Access {
        read: true,
        write: false,
    };
    const WO: Access = Access {
        read: false,
        write: true,
    };

    fn ask(access: Access, req: MmapRequest) -> Result<Mmap, Errno> {
        mmap(access, &req, &mut ModelAddressSpace::default())
    }

    fn shared(prot: i32) -> MmapRequest {
        MmapRequest {
            prot,
            ..MmapRequest::shared(8192, 0, 0)
        }
    }

    #[test]
    fn length_and_offset_come_first() {
        assert_eq!(
            ask(RW, MmapRequest::shared(0, 0, 0)),
            Err(Errno::EINVAL),
            "length 0"
        );
        assert_eq!(
            ask(RW, MmapRequest::shared(4096, 100, 0)),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            ask(RW, MmapRequest::shared(u64::MAX, 0, 0)),
            Err(Errno::ENOMEM),
            "rounds up to 0"
        );
        let m = ask(RW, MmapRequest::shared(5000, 0x3000, 0)).expect("maps");
        assert_eq!((m.len, m.pgoff), (8192, 3));
    }

    #[test]
    fn access_decides_in_do_mmap_order() {
        assert!(ask(RW, shared(PROT_READ | PROT_WRITE)).is_ok());
        assert_eq!(ask(RO, shared(PROT_READ | PROT_WRITE)), Err(Errno::EACCES));
        // A read-only open's shared mapping is not VM_SHARED: the driver refuses it.
        assert_eq!(ask(RO, shared(PROT_READ)), Err(Errno::EINVAL));
        assert_eq!(ask(WO, shared(PROT_READ | PROT_WRITE)), Err(Errno::EACCES));
        assert_eq!(ask(Access::from_flags(3), shared(0)), Err(Errno::EACCES));
        let private = MmapRequest {
            flags: MAP_PRIVATE,
            ..shared(PROT_READ)
        };
        assert_eq!(ask(RW, private), Err(Errno::EINVAL));
        assert_eq!(ask(WO, private), Err(Errno::EACCES));
        let none = MmapRequest {
            flags: 0,
            ..shared(PROT_READ)
        };
        assert_eq!(ask(RW, none), Err(Errno::EINVAL));
    }

    #[test]
    fn flags_as_shared_or_validated() {
        let with = |flags| MmapRequest {
            flags,
            ..shared(PROT_READ | PROT_WRITE)
        };
        assert!(ask(RW, with(MAP_SHARED | MAP_SYNC)).is_ok(), "ignored");
        assert_eq!(
            ask(RW, with(MAP_SHARED_VALIDATE | MAP_SYNC)),
            Err(Errno::EOPNOTSUPP)
        );
        assert_eq!(ask(RW, with(MAP_SHARED | MAP_HUGETLB)), Err(Errno::EINVAL));
        assert_eq!(
            ask(RW, with(MAP_SHARED | MAP_GROWSDOWN)),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            ask(RW, with(MAP_SHARED | MAP_LOCKED)),
            Err(Errno::EPERM),
            "the model's process may not lock"
        );
        assert!(ask(RW, with(MAP_SHARED_VALIDATE | MAP_POPULATE)).is_ok());
    }

    #[test]
    fn no_room_comes_before_the_file_checks() {
        let huge = |flags| MmapRequest {
            flags,
            ..MmapRequest::shared(200 << 40, 0, 0)
        };
        assert_eq!(ask(RW, huge(MAP_SHARED)), Err(Errno::ENOMEM));
        assert_eq!(ask(RW, huge(MAP_PRIVATE)), Err(Errno::ENOMEM));
        assert_eq!(ask(WO, huge(MAP_SHARED)), Err(Errno::ENOMEM));
    }

    #[test]
    fn terabytes_fit_until_task_size() {
        let mut space = ModelAddressSpace::default();
        let tib = MmapRequest::shared(1 << 40, 0, 0);
        let fitted = (0..200)
            .take_while(|_| mmap(RW, &tib, &mut space).is_ok())
            .count();
        assert_eq!(fitted, 127, "the 128th TiB is past TASK_SIZE");
        // A failed file check gives the room back.
        let mut space = ModelAddressSpace::default();
        let _ = mmap(RW, &MmapRequest { flags: 0, ..tib }, &mut space);
        assert_eq!(space.mapped(), 0);
    }

    #[test]
    fn the_mapping_count_is_vm_max_map_count() {
        let mut space = ModelAddressSpace::default();
        let page = MmapRequest::shared(4096, 0, 0);
        let fitted = (0..70_000)
            .take_while(|_| mmap(RW, &page, &mut space).is_ok())
            .count() as u64;
        assert_eq!(fitted, ModelAddressSpace::MAX_MAP_COUNT + 1);
    }
}
