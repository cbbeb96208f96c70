//! The guest's own page walk: linear → guest-physical through the guest's page
//! tables, with the access rights a CPU enforces, for the few accesses the VMM
//! makes on the guest's behalf (string I/O, instruction fetch for MMIO
//! decoding). A denied access is the page fault the CPU would raise, error
//! code and faulting address included, so the caller injects exactly that.
//!
//! Modes: paging off, 32-bit (4 MiB pages with CR4.PSE, PSE-36), PAE (2 MiB
//! pages), 4-level and 5-level (2 MiB and 1 GiB pages). Rights: U/S, R/W with
//! CR0.WP, XD with EFER.NXE, SMEP and SMAP. Reserved bits give RSVD faults.
//! Not modelled: protection keys (hidden from guests), shadow stacks, and the
//! accessed/dirty bits a CPU would set (the walk only reads the tables).
//!
//! Every value here comes from the guest: entries are masked to the physical
//! address width before use, so no arithmetic can overflow.

/// Guest-physical memory the walk reads its tables from. `None`: not RAM.
pub trait PhysicalMemory {
    fn read_u32(&self, physical: u64) -> Option<u32>;
    fn read_u64(&self, physical: u64) -> Option<u64>;
}

pub const CR0_WP: u64 = 1 << 16;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_LA57: u64 = 1 << 12;
pub const CR4_SMEP: u64 = 1 << 20;
pub const CR4_SMAP: u64 = 1 << 21;
pub const EFER_NXE: u64 = 1 << 11;
pub const EFER_LMA: u64 = 1 << 10;

/// Page-fault error code bits.
pub const PF_PRESENT: u32 = 1 << 0;
pub const PF_WRITE: u32 = 1 << 1;
pub const PF_USER: u32 = 1 << 2;
pub const PF_RESERVED: u32 = 1 << 3;
pub const PF_FETCH: u32 = 1 << 4;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const LARGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;
const PAGE: u64 = 4096;

/// The registers that decide how the guest translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// PAE paging uses the four PDPTEs the CPU loaded with CR3, not what is in
    /// memory now (with EPT, VMX saves them in the VMCS). None: read them at CR3.
    pub pdptes: Option<[u64; 4]>,
    /// MAXPHYADDR as the guest's CPUID reports it: entry bits above it are
    /// reserved. Taken as 32..=52 whatever it says.
    pub max_phys_bits: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
    Execute,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub kind: AccessKind,
    /// Made at CPL 3 (not an implicit supervisor access).
    pub user: bool,
    /// RFLAGS.AC: with CR4.SMAP, supervisor data accesses reach user pages
    /// only when it is set.
    pub ac: bool,
}

impl Access {
    pub const fn new(kind: AccessKind, user: bool, ac: bool) -> Self {
        Access { kind, user, ac }
    }
}

/// What the CPU would raise: #PF with this error code, CR2 = `linear`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    pub linear: u64,
    pub error_code: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    PageFault(PageFault),
    /// 4/5-level paging and an address that is not canonical: the CPU raises
    /// #GP(0) (#SS for stack accesses) before paging is consulted.
    NonCanonical {
        linear: u64,
    },
    /// A paging-structure entry lies outside the guest's RAM. With EPT the
    /// CPU would take an EPT violation on the table itself; what happens then
    /// is the caller's decision.
    TableNotInMemory {
        physical: u64,
    },
    /// `translate_range` was asked for more than [`MAX_RANGE`] bytes.
    RangeTooLong {
        len: usize,
    },
}

impl Paging {
    /// IA-32e mode: 4-level or 5-level paging. (LMA without PG cannot
    /// happen on a CPU; it is taken as paging off.)
    #[inline]
    fn long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0 && self.cr0 & CR0_PG != 0
    }

    /// PAE, 4-level or 5-level: 8-byte entries, and XD exists.
    #[inline]
    fn wide_entries(&self) -> bool {
        self.cr4 & CR4_PAE != 0 || self.long_mode()
    }

    #[inline]
    fn nx(&self) -> bool {
        self.wide_entries() && self.efer & EFER_NXE != 0
    }

    /// The physical-address bits an entry may hold (51:12 at most).
    #[inline]
    fn address_mask(&self) -> u64 {
        let bits = self.max_phys_bits.clamp(32, 52);
        ((1u64 << bits) - 1) & !(PAGE - 1)
    }

    /// Bits of an 8-byte entry that must be 0 whatever its level: address bits
    /// beyond MAXPHYADDR (up to bit 51), and XD when EFER.NXE is clear.
    #[inline]
    fn reserved_always(&self) -> u64 {
        let xd = if self.efer & EFER_NXE == 0 { NO_EXECUTE } else { 0 };
        self.beyond_max_phys() | xd
    }

    #[inline]
    fn beyond_max_phys(&self) -> u64 {
        0x000f_ffff_ffff_f000 & !self.address_mask()
    }

    /// Linear addresses are 32 bits wide outside IA-32e mode.
    #[inline]
    fn effective(&self, linear: u64) -> u64 {
        if self.long_mode() {
            linear
        } else {
            linear & 0xffff_ffff
        }
    }

    #[inline]
    fn canonical(&self, linear: u64) -> bool {
        if !self.long_mode() {
            return true;
        }
        let bits = if self.cr4 & CR4_LA57 != 0 { 57 } else { 48 };
        let top = (linear as i64) >> (bits - 1);
        top == 0 || top == -1
    }
}

/// The rights the entries of one translation grant: each is the AND (XD the OR)
/// over every level.
struct Rights {
    user: bool,
    writable: bool,
    no_execute: bool,
}

impl Rights {
    const ALL: Rights = Rights { user: true, writable: true, no_execute: false };

    #[inline]
    fn narrow(&mut self, entry: u64) {
        self.user &= entry & USER != 0;
        self.writable &= entry & WRITABLE != 0;
        self.no_execute |= entry & NO_EXECUTE != 0;
    }
}

/// How a walk ended without a translation (`translate` turns it into an error
/// code, adding the bits that describe the access).
enum Stop {
    NotPresent,
    Reserved,
    Table(u64),
}

/// The table entries one walk read, in order: where each was and what it held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Path {
    entries: [(u64, u64); 5],
    len: usize,
    /// 4-byte entries (32-bit paging), not 8-byte ones.
    narrow: bool,
}

impl Path {
    #[inline]
    fn push(&mut self, at: u64, entry: u64) {
        if let Some(slot) = self.entries.get_mut(self.len) {
            *slot = (at, entry);
            self.len += 1;
        }
    }

    /// Whether every entry still holds what the walk read.
    fn unchanged(&self, memory: &(impl PhysicalMemory + ?Sized)) -> bool {
        self.entries[..self.len].iter().all(|&(at, entry)| {
            let now = if self.narrow { memory.read_u32(at).map(u64::from) } else { memory.read_u64(at) };
            now == Some(entry)
        })
    }
}

/// The guest-physical address of `linear` for `access`, or why there is none.
pub fn translate(
    memory: &(impl PhysicalMemory + ?Sized),
    paging: &Paging,
    access: Access,
    linear: u64,
) -> Result<u64, WalkError> {
    translate_on_path(memory, paging, access, linear, &mut Path::default())
}

/// `translate`, noting in `path` the entries the walk read.
fn translate_on_path(
    memory: &(impl PhysicalMemory + ?Sized),
    paging: &Paging,
    access: Access,
    linear: u64,
    path: &mut Path,
) -> Result<u64, WalkError> {
    if !paging.canonical(linear) {
        return Err(WalkError::NonCanonical { linear });
    }
    let linear = paging.effective(linear);
    if paging.cr0 & CR0_PG == 0 {
        return Ok(linear);
    }
    let walked = if paging.long_mode() {
        let levels = if paging.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
        walk_wide(memory, paging, paging.cr3 & paging.address_mask(), linear, levels, path)
    } else if paging.cr4 & CR4_PAE != 0 {
        walk_pae(memory, paging, linear, path)
    } else {
        walk_32(memory, paging, linear, path)
    };
    let fault =
        |error_code| WalkError::PageFault(PageFault { linear, error_code: error_code | base_code(paging, access) });
    match walked {
        Ok((physical, rights)) if allowed(paging, access, &rights) => Ok(physical),
        Ok(_) => Err(fault(PF_PRESENT)),
        Err(Stop::NotPresent) => Err(fault(0)),
        Err(Stop::Reserved) => Err(fault(PF_PRESENT | PF_RESERVED)),
        Err(Stop::Table(physical)) => Err(WalkError::TableNotInMemory { physical }),
    }
}

/// The error-code bits that describe the access rather than the cause.
fn base_code(paging: &Paging, access: Access) -> u32 {
    let mut code = 0;
    match access.kind {
        AccessKind::Write => code |= PF_WRITE,
        AccessKind::Execute if paging.cr4 & CR4_SMEP != 0 || paging.nx() => code |= PF_FETCH,
        _ => {}
    }
    if access.user {
        code |= PF_USER;
    }
    code
}

/// The SDM's access-rights rules (Vol. 3A, 4.6) for a translation that exists.
fn allowed(paging: &Paging, access: Access, rights: &Rights) -> bool {
    let wp = paging.cr0 & CR0_WP != 0;
    let smap_denies = paging.cr4 & CR4_SMAP != 0 && rights.user && !access.ac;
    match access.kind {
        AccessKind::Read if access.user => rights.user,
        AccessKind::Read => !smap_denies,
        AccessKind::Write if access.user => rights.user && rights.writable,
        AccessKind::Write => (rights.writable || !wp) && !smap_denies,
        AccessKind::Execute => {
            let nx_denies = paging.nx() && rights.no_execute;
            let privilege_ok = if access.user { rights.user } else { paging.cr4 & CR4_SMEP == 0 || !rights.user };
            !nx_denies && privilege_ok
        }
    }
}

/// 8-byte-entry tables from `table` down, `levels` of them (1 = the page
/// table), 9 bits of the address per level.
fn walk_wide(
    memory: &(impl PhysicalMemory + ?Sized),
    paging: &Paging,
    mut table: u64,
    linear: u64,
    levels: u32,
    path: &mut Path,
) -> Result<(u64, Rights), Stop> {
    let mut rights = Rights::ALL;
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let at = table | (((linear >> shift) & 0x1ff) * 8);
        let entry = memory.read_u64(at).ok_or(Stop::Table(at))?;
        path.push(at, entry);
        if entry & PRESENT == 0 {
            return Err(Stop::NotPresent);
        }
        // A page-size bit means a large page in a PDPTE (1 GiB) or PDE (2 MiB);
        // above those it is reserved. Below level 1 bit 7 is PAT, not PS.
        let large = level > 1 && entry & LARGE != 0;
        let mut reserved = paging.reserved_always();
        if large {
            match level {
                // The address low bits of a large page, except PAT at bit 12.
                2 | 3 => reserved |= ((1u64 << shift) - 1) & !(PAGE - 1) & !(1 << 12),
                _ => reserved |= LARGE,
            }
        }
        if entry & reserved != 0 {
            return Err(Stop::Reserved);
        }
        rights.narrow(entry);
        if level == 1 || large {
            let offset = (1u64 << shift) - 1;
            return Ok(((entry & paging.address_mask() & !offset) | (linear & offset), rights));
        }
        table = entry & paging.address_mask();
    }
    Err(Stop::NotPresent)
}

fn walk_pae(
    memory: &(impl PhysicalMemory + ?Sized),
    paging: &Paging,
    linear: u64,
    path: &mut Path,
) -> Result<(u64, Rights), Stop> {
    let index = ((linear >> 30) & 3) as usize;
    let pdpte = match paging.pdptes {
        Some(pdptes) => pdptes[index],
        None => {
            let at = (paging.cr3 & 0xffff_ffe0) + index as u64 * 8;
            let pdpte = memory.read_u64(at).ok_or(Stop::Table(at))?;
            path.push(at, pdpte);
            pdpte
        }
    };
    if pdpte & PRESENT == 0 {
        return Err(Stop::NotPresent);
    }
    // PAE PDPTEs carry no rights: bits 2:1 and 8:5 are reserved, and so is XD.
    let reserved = paging.beyond_max_phys() | NO_EXECUTE | 0b1_1110_0110;
    if pdpte & reserved != 0 {
        return Err(Stop::Reserved);
    }
    walk_wide(memory, paging, pdpte & paging.address_mask(), linear, 2, path)
}

fn walk_32(
    memory: &(impl PhysicalMemory + ?Sized),
    paging: &Paging,
    linear: u64,
    path: &mut Path,
) -> Result<(u64, Rights), Stop> {
    path.narrow = true;
    let mut rights = Rights::ALL;
    let at = (paging.cr3 & 0xffff_f000) | (((linear >> 22) & 0x3ff) * 4);
    let pde = u64::from(memory.read_u32(at).ok_or(Stop::Table(at))?);
    path.push(at, pde);
    if pde & PRESENT == 0 {
        return Err(Stop::NotPresent);
    }
    rights.narrow(pde);
    if pde & LARGE != 0 && paging.cr4 & CR4_PSE != 0 {
        // PSE-36: bits 20:13 are physical bits 39:32 (as far as MAXPHYADDR
        // reaches, at most 40 bits); bit 21 is reserved.
        let high_bits = u32::from(paging.max_phys_bits.clamp(32, 40)) - 32;
        let reserved = (1 << 21) | ((0xff << 13) & !(((1u64 << high_bits) - 1) << 13));
        if pde & reserved != 0 {
            return Err(Stop::Reserved);
        }
        let base = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32);
        return Ok((base | (linear & 0x3f_ffff), rights));
    }
    let at = (pde & 0xffff_f000) | (((linear >> 12) & 0x3ff) * 4);
    let pte = u64::from(memory.read_u32(at).ok_or(Stop::Table(at))?);
    path.push(at, pte);
    if pte & PRESENT == 0 {
        return Err(Stop::NotPresent);
    }
    rights.narrow(pte);
    Ok(((pte & 0xffff_f000) | (linear & 0xfff), rights))
}

/// One translation of a 4 KiB linear page remembered with the table entries
/// it came from, as a one-entry TLB: the instruction fetch of an MMIO exit
/// asks for the same code page again and again (a driver's accessor), and
/// checking that the entries are unchanged costs a fraction of a walk.
///
/// Unlike a CPU's TLB it is never stale: it is used only while the paging
/// registers, the access and every entry on its path are what they were, in
/// which case a walk would find the same translation. A guest that edits its
/// tables (even without INVLPG) gets a fresh walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remembered {
    paging: Paging,
    access: Access,
    /// The linear page (`linear` with its low 12 bits clear, as `Paging::effective` gives it).
    page: u64,
    /// The guest-physical page it maps to.
    physical: u64,
    path: Path,
}

/// `translate`, first trying `memo` (a translation of the same page for the
/// same access under the same paging registers whose entries are unchanged),
/// and remembering a fresh walk's result there. Faults are not remembered.
pub fn translate_remembered(
    memory: &(impl PhysicalMemory + ?Sized),
    paging: &Paging,
    access: Access,
    linear: u64,
    memo: &mut Option<Remembered>,
) -> Result<u64, WalkError> {
    let page = paging.effective(linear) & !(PAGE - 1);
    if let Some(m) = memo {
        let same_key = m.page == page && m.access == access && m.paging == *paging && paging.canonical(linear);
        if same_key && m.path.unchanged(memory) {
            return Ok(m.physical | (linear & (PAGE - 1)));
        }
    }
    let mut path = Path::default();
    let physical = translate_on_path(memory, paging, access, linear, &mut path)?;
    *memo = Some(Remembered { paging: *paging, access, page, physical: physical & !(PAGE - 1), path });
    Ok(physical)
}

/// The longest range `translate_range` takes: it then spans at most two pages.
pub const MAX_RANGE: usize = PAGE as usize;

/// A guest-physical run of bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Piece {
    pub physical: u64,
    pub len: usize,
}

/// The physical pieces of a linear range, in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pieces {
    pieces: [Piece; 2],
    count: usize,
}

impl Pieces {
    pub fn as_slice(&self) -> &[Piece] {
        &self.pieces[..self.count]
    }

    /// Bytes in all pieces.
    pub fn len(&self) -> usize {
        self.as_slice().iter().map(|p| p.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Translates `len` bytes from `linear` (at most [`MAX_RANGE`]) page by page,
/// as a CPU checks an access that may cross a page boundary: every byte is
/// translated for `access` before any is touched. A fault names the first
/// byte of the page that faulted (`linear` itself for the first page).
pub fn translate_range(
    memory: &(impl PhysicalMemory + ?Sized),
    paging: &Paging,
    access: Access,
    linear: u64,
    len: usize,
) -> Result<Pieces, WalkError> {
    if len > MAX_RANGE {
        return Err(WalkError::RangeTooLong { len });
    }
    let mut pieces = Pieces::default();
    let mut done = 0;
    while done < len {
        // Within IA-32e mode a range cannot wrap past the top of the address
        // space (the address after it is not canonical); outside it, linear
        // addresses wrap at 4 GiB.
        let at = if paging.long_mode() {
            linear.checked_add(done as u64).ok_or(WalkError::NonCanonical { linear })?
        } else {
            linear.wrapping_add(done as u64) & 0xffff_ffff
        };
        let in_page = (PAGE - (at & (PAGE - 1))) as usize;
        let n = in_page.min(len - done);
        let physical = translate(memory, paging, access, at)?;
        let Some(slot) = pieces.pieces.get_mut(pieces.count) else {
            return Err(WalkError::RangeTooLong { len });
        };
        *slot = Piece { physical, len: n };
        pieces.count += 1;
        done += n;
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests;
