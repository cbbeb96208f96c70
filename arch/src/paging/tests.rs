extern crate std;

use super::*;
use std::collections::HashMap;

const P: u64 = 1;
const W: u64 = 2;
const U: u64 = 4;
const PS: u64 = 0x80;
const XD: u64 = 1 << 63;

/// Guest RAM below `size`, zero where nothing was written; 8-byte words.
struct Memory {
    words: HashMap<u64, u64>,
    size: u64,
}

impl Memory {
    fn new() -> Self {
        Memory { words: HashMap::new(), size: 1 << 32 }
    }

    fn set(&mut self, at: u64, value: u64) {
        assert_eq!(at % 8, 0);
        self.words.insert(at, value);
    }

    /// An entry of a table of 4-byte entries.
    fn set32(&mut self, at: u64, value: u32) {
        let word = self.words.entry(at & !7).or_default();
        let shift = (at & 4) * 8;
        *word = (*word & !(0xffff_ffff << shift)) | (u64::from(value) << shift);
    }
}

impl PhysicalMemory for Memory {
    fn read_u32(&self, at: u64) -> Option<u32> {
        assert_eq!(at % 4, 0, "the walk reads aligned entries");
        let word = self.read_u64(at & !7)?;
        Some((word >> ((at & 4) * 8)) as u32)
    }

    fn read_u64(&self, at: u64) -> Option<u64> {
        assert_eq!(at % 8, 0, "the walk reads aligned entries");
        (at.checked_add(8)? <= self.size).then(|| self.words.get(&at).copied().unwrap_or(0))
    }
}

const R: Access = Access::new(AccessKind::Read, false, false);
const WR: Access = Access::new(AccessKind::Write, false, false);
const X: Access = Access::new(AccessKind::Execute, false, false);
const UR: Access = Access::new(AccessKind::Read, true, false);
const UW: Access = Access::new(AccessKind::Write, true, false);
const UX: Access = Access::new(AccessKind::Execute, true, false);
/// A supervisor read with RFLAGS.AC set.
const R_AC: Access = Access::new(AccessKind::Read, false, true);

/// Variations on a mode's registers.
trait Tweak: Sized {
    fn cr0(self, set: u64) -> Self;
    fn cr4(self, set: u64) -> Self;
    fn cr4_off(self, clear: u64) -> Self;
    fn efer_off(self, clear: u64) -> Self;
    fn max_phys(self, bits: u8) -> Self;
    fn pdptes(self, pdptes: [u64; 4]) -> Self;
    fn wp(self) -> Self {
        self.cr0(CR0_WP)
    }
    fn no_nxe(self) -> Self {
        self.efer_off(EFER_NXE)
    }
}

impl Tweak for Paging {
    fn cr0(self, set: u64) -> Self {
        Paging { cr0: self.cr0 | set, ..self }
    }
    fn cr4(self, set: u64) -> Self {
        Paging { cr4: self.cr4 | set, ..self }
    }
    fn cr4_off(self, clear: u64) -> Self {
        Paging { cr4: self.cr4 & !clear, ..self }
    }
    fn efer_off(self, clear: u64) -> Self {
        Paging { efer: self.efer & !clear, ..self }
    }
    fn max_phys(self, bits: u8) -> Self {
        Paging { max_phys_bits: bits, ..self }
    }
    fn pdptes(self, pdptes: [u64; 4]) -> Self {
        Paging { pdptes: Some(pdptes), ..self }
    }
}

fn ok(physical: u64) -> Result<u64, WalkError> {
    Ok(physical)
}

fn pf(linear: u64, error_code: u32) -> Result<u64, WalkError> {
    Err(WalkError::PageFault(PageFault { linear, error_code }))
}

struct Case {
    name: &'static str,
    paging: Paging,
    access: Access,
    linear: u64,
    expect: Result<u64, WalkError>,
}

fn case(name: &'static str, paging: Paging, access: Access, linear: u64, expect: Result<u64, WalkError>) -> Case {
    Case { name, paging, access, linear, expect }
}

/// Checks every case with `translate`, and with `translate_remembered` twice
/// (a fresh walk, then the remembered one) through one memo that the cases
/// before left behind: a translation remembered for another page, access or
/// mode must never answer for this one.
fn run(memory: &Memory, cases: &[Case]) {
    let mut failed = 0;
    let mut memo = None;
    for c in cases {
        let got = translate(memory, &c.paging, c.access, c.linear);
        let first = translate_remembered(memory, &c.paging, c.access, c.linear, &mut memo);
        let again = translate_remembered(memory, &c.paging, c.access, c.linear, &mut memo);
        if got != c.expect || first != c.expect || again != c.expect {
            std::eprintln!(
                "{}: linear {:#x}: got {:x?} (remembered: {:x?}, {:x?}), expected {:x?}",
                c.name,
                c.linear,
                got,
                first,
                again,
                c.expect
            );
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "{failed} of {} cases failed", cases.len());
}

#[test]
fn a_remembered_translation_follows_every_change_to_its_tables() {
    let (mut m, p) = four_level();
    let code = la(0, 0, 0, 0, 0x123);
    let mut memo = None;
    assert_eq!(translate_remembered(&m, &p, X, code, &mut memo), ok(0x10123));
    assert!(memo.is_some());
    // Another offset in the page: from the memo.
    assert_eq!(translate_remembered(&m, &p, X, code + 0x10, &mut memo), ok(0x10133));
    // Each entry on the path, changed in turn, is seen at once (no INVLPG
    // needed), and a walk's fault is not remembered as a translation.
    m.set(0x4000, 0x1a000 | P | W | U);
    assert_eq!(translate_remembered(&m, &p, X, code, &mut memo), ok(0x1a123));
    m.set(0x3000, 0x4000 | P | W | U | XD);
    assert_eq!(translate_remembered(&m, &p, X, code, &mut memo), pf(code, 0x11));
    assert_eq!(translate_remembered(&m, &p, X, code, &mut memo), pf(code, 0x11));
    m.set(0x3000, 0x4000 | P | W | U);
    assert_eq!(translate_remembered(&m, &p, X, code, &mut memo), ok(0x1a123));
    m.set(0x2000, 0x3000 | P | W);
    assert_eq!(translate_remembered(&m, &p, UX, code, &mut memo), pf(code, 0x15));
    m.set(0x1000, 0);
    assert_eq!(translate_remembered(&m, &p, X, code, &mut memo), pf(code, 0x10));
    // The registers are part of the key: another CR3 walks its own tables.
    let (m, p) = four_level();
    let mut memo = None;
    assert_eq!(translate_remembered(&m, &p, X, code, &mut memo), ok(0x10123));
    let elsewhere = Paging { cr3: 0x5000 + 0x1000, ..p };
    assert_eq!(translate_remembered(&m, &elsewhere, X, code, &mut memo), translate(&m, &elsewhere, X, code));
    // 32-bit paging remembers its 4-byte entries.
    let (mut m, p) = thirty_two();
    let mut memo = None;
    assert_eq!(translate_remembered(&m, &p, R, l32(0, 1, 4), &mut memo), ok(0x31004));
    m.set32(0xe004, 0x3b000 | (P | W) as u32);
    assert_eq!(translate_remembered(&m, &p, R, l32(0, 1, 4), &mut memo), ok(0x3b004));
}

#[test]
fn remembered_translations_agree_with_walks_through_random_edits() {
    let mut rng = basalt_fuzz::Rng::new(0x7e3e_3b3e);
    let (mut m, p) = four_level();
    let tables = [0x1000u64, 0x2000, 0x3000, 0x4000];
    let mut memo = None;
    for step in 0..50_000u32 {
        if rng.chance(4) {
            // Rewrite one of the first few entries of a table with an entry
            // to another table or page, present or not, sometimes large.
            let table = rng.pick(&tables);
            let slot = rng.below(4) * 8;
            let target = rng.pick(&[0x2000u64, 0x3000, 0x4000, 0x10000, 0x11000, 0x20_0000]);
            let flags = rng.next_u64() & (P | W | U | PS | XD);
            m.set(table + slot, target | flags | (P * u64::from(rng.chance(2))));
        }
        let linear = la(0, rng.below(2), rng.below(2), rng.below(4), rng.below(4096));
        let access = rng.pick(&[R, WR, X, UR, UW, UX]);
        let want = translate(&m, &p, access, linear);
        assert_eq!(translate_remembered(&m, &p, access, linear, &mut memo), want, "step {step}");
    }
}

/// 4-level tables at CR3 = 0x1000 (and a PML5 at 0x9000 above them).
fn four_level() -> (Memory, Paging) {
    let mut m = Memory::new();
    let pml4 = 0x1000;
    m.set(pml4, 0x2000 | P | W | U);
    m.set(pml4 + 8, 0x5000 | P | W); // supervisor-only at the top
    m.set(pml4 + 2 * 8, 0x6000 | P | U); // read-only at the top
    m.set(pml4 + 3 * 8, 0x7000 | P | W | U | XD); // no-execute at the top
    m.set(pml4 + 4 * 8, 0x8000_0000 | P | W | U | PS); // PS is reserved here
    m.set(pml4 + 5 * 8, 0xffff_ffff_ffff_f07f & !PS); // every address bit set
    m.set(pml4 + 6 * 8, 0x100_0000_0000 | P | W | U); // a table beyond RAM
    m.set(pml4 + 511 * 8, 0xf000 | P | W | U);
    m.set(0xf000 + 511 * 8, 0x4000_0000 | P | W | U | PS);
    let pdpt = 0x2000;
    m.set(pdpt, 0x3000 | P | W | U);
    m.set(pdpt + 8, 0x4000_0000 | P | W | U | PS);
    m.set(pdpt + 2 * 8, 0x4000_0000 | P | W | U | PS | (1 << 13)); // reserved
    m.set(pdpt + 3 * 8, 0x4000_0000 | P | W | U | PS | (1 << 12)); // PAT
    for other in [0x5000, 0x6000, 0x7000] {
        m.set(other, 0x3000 | P | W | U);
    }
    let pd = 0x3000;
    m.set(pd, 0x4000 | P | W | U);
    m.set(pd + 8, 0x20_0000 | P | W | PS);
    m.set(pd + 2 * 8, 0x20_0000 | P | W | PS | (1 << 20)); // reserved
    let pt = 0x4000;
    m.set(pt, 0x10000 | P | W | U);
    m.set(pt + 8, 0x11000 | P | U);
    m.set(pt + 2 * 8, 0x12000 | P | W);
    m.set(pt + 4 * 8, 0x14000 | P | W | U | XD);
    m.set(pt + 5 * 8, 0x15000 | P);
    m.set(pt + 6 * 8, (1 << 45) | 0x16000 | P | W | U);
    m.set(pt + 7 * 8, 0x17000 | P | W | U | PS); // PAT in a PTE
    m.set(pt + 8 * 8, 0x18000 | P | W | U);
    m.set(pt + 9 * 8, 0x10000 | P | W | U); // not contiguous with the page before
    m.set(0x9000, pml4 | P | W | U);
    let paging = Paging {
        cr0: CR0_PG | 1,
        cr3: pml4,
        cr4: CR4_PAE,
        efer: EFER_LMA | (1 << 8) | EFER_NXE,
        pdptes: None,
        max_phys_bits: 46,
    };
    (m, paging)
}

fn la(pml4: u64, pdpt: u64, pd: u64, pt: u64, offset: u64) -> u64 {
    let linear = (pml4 << 39) | (pdpt << 30) | (pd << 21) | (pt << 12) | offset;
    // Sign-extend from bit 47, as a canonical address is.
    (((linear << 16) as i64) >> 16) as u64
}

// A table: one case per line reads better than rustfmt's layout.
#[rustfmt::skip]
#[test]
fn four_level_rights() {
    let (m, p) = four_level();
    let p57 = Paging { cr3: 0x9000, ..p.cr4(CR4_LA57) };
    let gib = 0x4000_0000 + ((0x12 << 21) | (0x34 << 12) | 0x567);
    run(
        &m,
        &[
            case("user read, user page", p, UR, la(0, 0, 0, 0, 0x123), ok(0x10123)),
            case("supervisor write, user page", p.wp(), WR, la(0, 0, 0, 0, 8), ok(0x10008)),
            case("user write, read-only page", p, UW, la(0, 0, 0, 1, 8), pf(la(0, 0, 0, 1, 8), 7)),
            case("supervisor write, read-only page, WP=0", p, WR, la(0, 0, 0, 1, 8), ok(0x11008)),
            case("supervisor write, read-only page, WP=1", p.wp(), WR, la(0, 0, 0, 1, 8), pf(la(0, 0, 0, 1, 8), 3)),
            case("supervisor write, supervisor read-only, WP=1", p.wp(), WR, la(0, 0, 0, 5, 0), pf(la(0, 0, 0, 5, 0), 3)),
            case("supervisor read, supervisor read-only", p.wp(), R, la(0, 0, 0, 5, 0), ok(0x15000)),
            case("user read, supervisor page", p, UR, la(0, 0, 0, 2, 0), pf(la(0, 0, 0, 2, 0), 5)),
            case("user write, supervisor page", p, UW, la(0, 0, 0, 2, 0), pf(la(0, 0, 0, 2, 0), 7)),
            case("supervisor read, not present", p, R, la(0, 0, 0, 3, 0x10), pf(la(0, 0, 0, 3, 0x10), 0)),
            case("user write, not present", p, UW, la(0, 0, 0, 3, 0), pf(la(0, 0, 0, 3, 0), 6)),
            case("user fetch, not present (NXE)", p, UX, la(0, 0, 0, 3, 0), pf(la(0, 0, 0, 3, 0), 0x14)),
            case("fetch, not present, NXE=0", p.no_nxe(), X, la(0, 0, 0, 3, 0), pf(la(0, 0, 0, 3, 0), 0)),
            case("fetch, not present, NXE=0, SMEP", p.no_nxe().cr4(CR4_SMEP), X, la(0, 0, 0, 3, 0), pf(la(0, 0, 0, 3, 0), 0x10)),
            case("fetch, XD page", p, X, la(0, 0, 0, 4, 0), pf(la(0, 0, 0, 4, 0), 0x11)),
            case("user fetch, XD page", p, UX, la(0, 0, 0, 4, 0), pf(la(0, 0, 0, 4, 0), 0x15)),
            case("read, XD page", p, UR, la(0, 0, 0, 4, 0x40), ok(0x14040)),
            case("fetch, user page", p, UX, la(0, 0, 0, 0, 0), ok(0x10000)),
            case("XD with NXE=0 is reserved", p.no_nxe(), R, la(0, 0, 0, 4, 0), pf(la(0, 0, 0, 4, 0), 9)),
            case("fetch, XD with NXE=0: RSVD, no I/D", p.no_nxe(), X, la(0, 0, 0, 4, 0), pf(la(0, 0, 0, 4, 0), 9)),
            case("supervisor-only PML4E, user read", p, UR, la(1, 0, 0, 0, 0), pf(la(1, 0, 0, 0, 0), 5)),
            case("supervisor-only PML4E, supervisor read", p, R, la(1, 0, 0, 0, 0), ok(0x10000)),
            case("read-only PML4E, user write", p, UW, la(2, 0, 0, 0, 0), pf(la(2, 0, 0, 0, 0), 7)),
            case("read-only PML4E, user read", p, UR, la(2, 0, 0, 0, 0), ok(0x10000)),
            case("read-only PML4E, supervisor write, WP=1", p.wp(), WR, la(2, 0, 0, 0, 0), pf(la(2, 0, 0, 0, 0), 3)),
            case("read-only PML4E, supervisor write, WP=0", p, WR, la(2, 0, 0, 0, 0), ok(0x10000)),
            case("XD PML4E, fetch", p, X, la(3, 0, 0, 0, 0), pf(la(3, 0, 0, 0, 0), 0x11)),
            case("XD PML4E, write", p, UW, la(3, 0, 0, 0, 0), ok(0x10000)),
            case("PS in a PML4E is reserved", p, UW, la(4, 0, 0, 0, 0), pf(la(4, 0, 0, 0, 0), 0xf)),
            case("1 GiB page", p, UW, la(0, 1, 0x12, 0x34, 0x567), ok(gib)),
            case("1 GiB page, reserved bit", p, R, la(0, 2, 0, 0, 0), pf(la(0, 2, 0, 0, 0), 9)),
            case("1 GiB page, PAT bit", p, R, la(0, 3, 0x12, 0x34, 0x567), ok(gib)),
            case("2 MiB page", p, R, la(0, 0, 1, 0x12, 0x345), ok(0x21_2345)),
            case("2 MiB supervisor page, user read", p, UR, la(0, 0, 1, 0, 0), pf(la(0, 0, 1, 0, 0), 5)),
            case("2 MiB page, reserved bit", p, R, la(0, 0, 2, 0, 0), pf(la(0, 0, 2, 0, 0), 9)),
            case("address bit beyond MAXPHYADDR", p.max_phys(40), R, la(0, 0, 0, 6, 0), pf(la(0, 0, 0, 6, 0), 9)),
            case("address bit within MAXPHYADDR", p, R, la(0, 0, 0, 6, 0), ok((1 << 45) | 0x16000)),
            case("PAT bit in a PTE is not PS", p, R, la(0, 0, 0, 7, 0), ok(0x17000)),
            case("hostile entry, MAXPHYADDR 40", p.max_phys(40), R, la(5, 0, 0, 0, 0), pf(la(5, 0, 0, 0, 0), 9)),
            case(
                "hostile entry, MAXPHYADDR 52",
                p.max_phys(52),
                R,
                la(5, 1, 0, 0, 0),
                Err(WalkError::TableNotInMemory { physical: 0x000f_ffff_ffff_f008 }),
            ),
            case(
                "MAXPHYADDR out of range is 52",
                p.max_phys(255),
                R,
                la(5, 0, 0, 0, 0),
                Err(WalkError::TableNotInMemory { physical: 0x000f_ffff_ffff_f000 }),
            ),
            case(
                "table beyond RAM",
                p,
                R,
                la(6, 0, 0, 0, 0),
                Err(WalkError::TableNotInMemory { physical: 0x100_0000_0000 }),
            ),
            case(
                "not canonical",
                p,
                R,
                0x0000_8000_0000_0000,
                Err(WalkError::NonCanonical { linear: 0x0000_8000_0000_0000 }),
            ),
            case("canonical upper half", p, R, 0xffff_8000_0000_0000, pf(0xffff_8000_0000_0000, 0)),
            case("SMEP, supervisor fetch from a user page", p.cr4(CR4_SMEP), X, la(0, 0, 0, 0, 0), pf(la(0, 0, 0, 0, 0), 0x11)),
            case("SMEP, supervisor fetch from a supervisor page", p.cr4(CR4_SMEP), X, la(0, 0, 0, 2, 0), ok(0x12000)),
            case("SMEP, user fetch from a user page", p.cr4(CR4_SMEP), UX, la(0, 0, 0, 0, 0), ok(0x10000)),
            case("no SMEP, supervisor fetch from a user page", p, X, la(0, 0, 0, 0, 0), ok(0x10000)),
            case("SMAP, supervisor read of a user page", p.cr4(CR4_SMAP), R, la(0, 0, 0, 0, 0), pf(la(0, 0, 0, 0, 0), 1)),
            case("SMAP, supervisor write of a user page", p.cr4(CR4_SMAP), WR, la(0, 0, 0, 0, 0), pf(la(0, 0, 0, 0, 0), 3)),
            case("SMAP with AC=1", p.cr4(CR4_SMAP), R_AC, la(0, 0, 0, 0, 0), ok(0x10000)),
            case("SMAP, supervisor page", p.cr4(CR4_SMAP), R, la(0, 0, 0, 2, 0), ok(0x12000)),
            case("SMAP, user access", p.cr4(CR4_SMAP), UR, la(0, 0, 0, 0, 0), ok(0x10000)),
            case("SMAP, supervisor fetch", p.cr4(CR4_SMAP), X, la(0, 0, 0, 0, 0), ok(0x10000)),
            case("5-level", p57, UR, la(0, 0, 0, 0, 0x123), ok(0x10123)),
            case("5-level, bit 47 is an index bit", p57, R, 0x0000_8000_0000_0000, pf(0x0000_8000_0000_0000, 0)),
            case(
                "5-level, not canonical",
                p57,
                R,
                0x0100_0000_0000_0000,
                Err(WalkError::NonCanonical { linear: 0x0100_0000_0000_0000 }),
            ),
            case("5-level, PS in a PML5E is reserved", Paging { cr3: 0x1000, ..p57 }, R, 4 << 48, pf(4 << 48, 9)),
        ],
    );
}

/// PAE tables: the PDPT at CR3 = 0xa020 (32-byte aligned), PD 0xb000, PT 0xc000.
fn pae() -> (Memory, Paging) {
    let mut m = Memory::new();
    let pdpt = 0xa020;
    m.set(pdpt, 0xb000 | P);
    m.set(pdpt + 2 * 8, 0xb000 | P | W); // R/W is reserved in a PAE PDPTE
    m.set(pdpt + 3 * 8, 0xb000 | P);
    let pd = 0xb000;
    m.set(pd, 0xc000 | P | W | U);
    m.set(pd + 8, 0x40_0000 | P | W | U | PS);
    m.set(pd + 2 * 8, 0x40_0000 | P | U | PS | XD);
    m.set(pd + 3 * 8, 0x40_0000 | P | PS | (1 << 13));
    let pt = 0xc000;
    m.set(pt, 0x20000 | P | U);
    m.set(pt + 8, 0x21000 | P | W);
    m.set(pt + 2 * 8, 0x22000 | P | W | U | XD);
    m.set(pt + 3 * 8, 0x23000 | P | W | U);
    let paging = Paging { cr0: CR0_PG | 1, cr3: pdpt, cr4: CR4_PAE, efer: EFER_NXE, pdptes: None, max_phys_bits: 36 };
    (m, paging)
}

fn pae_la(pdpt: u64, pd: u64, pt: u64, offset: u64) -> u64 {
    (pdpt << 30) | (pd << 21) | (pt << 12) | offset
}

// A table: one case per line reads better than rustfmt's layout.
#[rustfmt::skip]
#[test]
fn pae_rights() {
    let (m, p) = pae();
    let l = pae_la;
    run(
        &m,
        &[
            case("user read, user read-only page", p, UR, l(0, 0, 0, 0x10), ok(0x20010)),
            case("user write, read-only page", p, UW, l(0, 0, 0, 0), pf(l(0, 0, 0, 0), 7)),
            case("supervisor write, read-only page, WP=1", p.wp(), WR, l(0, 0, 0, 0), pf(l(0, 0, 0, 0), 3)),
            case("supervisor write, read-only page, WP=0", p, WR, l(0, 0, 0, 0), ok(0x20000)),
            case("user read, supervisor page", p, UR, l(0, 0, 1, 0), pf(l(0, 0, 1, 0), 5)),
            case("PDPTE not present", p, R, l(1, 0, 0, 0), pf(l(1, 0, 0, 0), 0)),
            case("PDPTE reserved bit", p, R, l(2, 0, 0, 0), pf(l(2, 0, 0, 0), 9)),
            case("PDPTE grants no rights of its own", p, UW, l(3, 0, 3, 4), ok(0x23004)),
            case("2 MiB page", p, UW, l(0, 1, 0x12, 0x345), ok(0x41_2345)),
            case("2 MiB XD page, fetch", p, X, l(0, 2, 0, 0), pf(l(0, 2, 0, 0), 0x11)),
            case("2 MiB XD page, NXE=0", p.no_nxe(), X, l(0, 2, 0, 0), pf(l(0, 2, 0, 0), 9)),
            case("2 MiB page, reserved bit", p, R, l(0, 3, 0, 0), pf(l(0, 3, 0, 0), 9)),
            case("XD page, fetch", p, X, l(0, 0, 2, 0), pf(l(0, 0, 2, 0), 0x11)),
            case("XD page, read", p, R, l(0, 0, 2, 0), ok(0x22000)),
            case("linear addresses are 32 bits", p, R, (1 << 32) | l(0, 0, 3, 8), ok(0x23008)),
            case("the loaded PDPTEs win over memory", p.pdptes([0, 0, 0, 0xb000 | P]), R, l(0, 0, 0, 0), pf(l(0, 0, 0, 0), 0)),
            case("the loaded PDPTEs are used", p.pdptes([0, 0, 0, 0xb000 | P]), R, l(3, 0, 3, 0), ok(0x23000)),
        ],
    );
}

/// 32-bit tables: the PD at CR3 = 0xd000, a PT at 0xe000; 4-byte entries.
fn thirty_two() -> (Memory, Paging) {
    let mut m = Memory::new();
    let pd = 0xd000;
    m.set32(pd, 0xe000 | (P | W | U) as u32);
    m.set32(pd + 4, 0x0080_0000 | (P | W | U | PS) as u32);
    m.set32(pd + 2 * 4, 0x0080_0000 | (P | W | U | PS) as u32 | (1 << 21)); // reserved
    m.set32(pd + 3 * 4, 0x0040_0000 | (P | W | U | PS) as u32 | (1 << 13)); // PSE-36: bit 32
    m.set32(pd + 4 * 4, 0x0040_0000 | (P | PS) as u32 | (0x10 << 13)); // PSE-36: bit 36
    m.set32(pd + 0x3ff * 4, 0x00c0_0000 | (P | W | U | PS) as u32);
    let pt = 0xe000;
    m.set32(pt, 0x30000 | (P | U) as u32);
    m.set32(pt + 4, 0x31000 | (P | W) as u32);
    m.set32(pt + 3 * 4, 0x33000 | (P | W | U | PS) as u32); // PAT in a PTE
    let paging = Paging { cr0: CR0_PG | 1, cr3: pd, cr4: CR4_PSE, efer: EFER_NXE, pdptes: None, max_phys_bits: 36 };
    (m, paging)
}

fn l32(pd: u64, pt: u64, offset: u64) -> u64 {
    (pd << 22) | (pt << 12) | offset
}

// A table: one case per line reads better than rustfmt's layout.
#[rustfmt::skip]
#[test]
fn thirty_two_bit_rights() {
    let (m, p) = thirty_two();
    run(
        &m,
        &[
            case("user read, user read-only page", p, UR, l32(0, 0, 5), ok(0x30005)),
            case("user write, read-only page", p, UW, l32(0, 0, 5), pf(l32(0, 0, 5), 7)),
            case("supervisor write, read-only page, WP=1", p.wp(), WR, l32(0, 0, 5), pf(l32(0, 0, 5), 3)),
            case("supervisor write, read-only page, WP=0", p, WR, l32(0, 0, 5), ok(0x30005)),
            case("user read, supervisor page", p, UR, l32(0, 1, 0), pf(l32(0, 1, 0), 5)),
            case("not present", p, R, l32(0, 2, 0), pf(l32(0, 2, 0), 0)),
            case("user write, not present", p, UW, l32(0, 2, 0), pf(l32(0, 2, 0), 6)),
            case("fetch, not present: no I/D without SMEP, NXE or not", p, X, l32(0, 2, 0), pf(l32(0, 2, 0), 0)),
            case("fetch, not present, SMEP", p.cr4(CR4_SMEP), X, l32(0, 2, 0), pf(l32(0, 2, 0), 0x10)),
            case("SMEP, supervisor fetch from a user page", p.cr4(CR4_SMEP), X, l32(0, 0, 0), pf(l32(0, 0, 0), 0x11)),
            case("fetch, no XD in 32-bit paging", p, X, l32(0, 0, 0), ok(0x30000)),
            case("4 MiB page", p, UW, l32(1, 0x12, 0x345), ok(0x81_2345)),
            case("4 MiB bit ignored without CR4.PSE", p.cr4_off(CR4_PSE), UR, l32(1, 0, 0), pf(l32(1, 0, 0), 4)),
            case("4 MiB page, bit 21 reserved", p, R, l32(2, 0, 0), pf(l32(2, 0, 0), 9)),
            case("PSE-36 page", p, R, l32(3, 1, 2), ok(0x1_0040_1002)),
            case("PSE-36 bit beyond MAXPHYADDR", p, R, l32(4, 0, 0), pf(l32(4, 0, 0), 9)),
            case("PSE-36 bit within MAXPHYADDR", p.max_phys(40), R, l32(4, 0, 0), ok(0x10_0040_0000)),
            case("PAT bit in a PTE is not PS", p, R, l32(0, 3, 0), ok(0x33000)),
            case("linear addresses are 32 bits", p, R, (1 << 32) | l32(0, 0, 5), ok(0x30005)),
        ],
    );
}

#[test]
fn paging_off() {
    let m = Memory::new();
    let p = Paging { cr0: 1, cr3: 0xdead_b000, cr4: 0, efer: 0, pdptes: None, max_phys_bits: 36 };
    run(
        &m,
        &[
            case("identity", p, UW, 0x1000, ok(0x1000)),
            case("fetch", p.wp(), X, 0x7c00, ok(0x7c00)),
            case("32-bit wrap", p, R, 0x1_2345_6789, ok(0x2345_6789)),
        ],
    );
}

fn pieces(list: &[(u64, usize)]) -> Vec<Piece> {
    list.iter().map(|&(physical, len)| Piece { physical, len }).collect()
}

use std::vec::Vec;

fn range(m: &Memory, p: &Paging, access: Access, linear: u64, len: usize) -> Result<Vec<Piece>, WalkError> {
    translate_range(m, p, access, linear, len).map(|r| {
        assert_eq!(r.len(), len);
        assert_eq!(r.is_empty(), len == 0);
        r.as_slice().to_vec()
    })
}

#[test]
fn ranges() {
    let (m, p) = four_level();
    let fault = |linear, error_code| Err(WalkError::PageFault(PageFault { linear, error_code }));
    assert_eq!(range(&m, &p, R, la(0, 0, 0, 0, 0x10), 4), Ok(pieces(&[(0x10010, 4)])));
    assert_eq!(range(&m, &p, R, la(0, 0, 0, 8, 0xffe), 4), Ok(pieces(&[(0x18ffe, 2), (0x10000, 2)])), "two frames");
    assert_eq!(range(&m, &p, R, la(0, 0, 0, 9, 0xfff), 2), fault(la(0, 0, 0, 10, 0), 0), "into a missing page");
    assert_eq!(range(&m, &p, R, la(0, 0, 0, 3, 0xffe), 4), fault(la(0, 0, 0, 3, 0xffe), 0), "from a missing page");
    assert_eq!(range(&m, &p, UW, la(0, 0, 0, 0, 0xfff), 2), fault(la(0, 0, 0, 1, 0), 7), "into a read-only page");
    assert_eq!(range(&m, &p, R, la(0, 0, 0, 3, 0), 0), Ok(pieces(&[])), "nothing to translate");
    assert_eq!(range(&m, &p, R, la(0, 0, 0, 0, 0), MAX_RANGE), Ok(pieces(&[(0x10000, 4096)])));
    assert_eq!(range(&m, &p, R, la(0, 0, 0, 0, 1), MAX_RANGE), Ok(pieces(&[(0x10001, 4095), (0x11000, 1)])));
    assert_eq!(range(&m, &p, R, la(0, 0, 0, 0, 0), MAX_RANGE + 1), Err(WalkError::RangeTooLong { len: MAX_RANGE + 1 }));
    assert_eq!(range(&m, &p, R, u64::MAX, 1), Ok(pieces(&[(0x7fff_ffff, 1)])));
    assert_eq!(
        range(&m, &p, R, u64::MAX, 2),
        Err(WalkError::NonCanonical { linear: u64::MAX }),
        "no wrap past the top"
    );
    assert_eq!(
        range(&m, &p, R, 0x0000_7fff_ffff_ffff, 2),
        Err(WalkError::PageFault(PageFault { linear: 0x0000_7fff_ffff_ffff, error_code: 0 })),
    );
    let (m32, p32) = thirty_two();
    assert_eq!(range(&m32, &p32, R, 0xffff_ffff, 2), Ok(pieces(&[(0xff_ffff, 1), (0x30000, 1)])), "4 GiB wrap");
}

/// A guest RAM of noise: every word is a function of its address and a seed,
/// biased to present entries and to the values where arithmetic breaks.
struct Noise {
    seed: u64,
}

impl PhysicalMemory for Noise {
    fn read_u32(&self, at: u64) -> Option<u32> {
        self.read_u64(at & !7).map(|w| (w >> ((at & 4) * 8)) as u32)
    }

    fn read_u64(&self, at: u64) -> Option<u64> {
        let mut rng = basalt_fuzz::Rng::new(self.seed ^ at.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        if rng.chance(50) {
            return None;
        }
        let value = basalt_fuzz::edge_value(&mut rng, 4096);
        Some(if rng.chance(4) { value } else { value | P })
    }
}

#[test]
fn hostile_tables_never_panic() {
    let mut rng = basalt_fuzz::Rng::new(0x9a61_0000);
    for case in 0..200_000u64 {
        let edge = |rng: &mut basalt_fuzz::Rng| basalt_fuzz::edge_value(rng, 4096);
        let memory = Noise { seed: rng.next_u64() };
        let paging = Paging {
            cr0: rng.pick(&[0, CR0_PG, CR0_PG | CR0_WP]) | (edge(&mut rng) & 0xffff),
            cr3: edge(&mut rng),
            cr4: rng.next_u64() & (CR4_PSE | CR4_PAE | CR4_LA57 | CR4_SMEP | CR4_SMAP),
            efer: rng.next_u64() & (EFER_LMA | EFER_NXE),
            pdptes: rng.chance(2).then(|| [edge(&mut rng), edge(&mut rng), edge(&mut rng), edge(&mut rng)]),
            max_phys_bits: rng.below(256) as u8,
        };
        let kind = rng.pick(&[AccessKind::Read, AccessKind::Write, AccessKind::Execute]);
        let access = Access::new(kind, rng.chance(2), rng.chance(2));
        let linear = edge(&mut rng);
        let len = rng.below(MAX_RANGE as u64 + 2) as usize;
        match translate_range(&memory, &paging, access, linear, len) {
            Ok(pieces) => {
                assert_eq!(pieces.len(), len, "case {case}");
                for piece in pieces.as_slice() {
                    assert!(piece.physical < 1 << 52, "case {case}: {piece:x?}");
                    assert!((piece.physical & 0xfff) as usize + piece.len <= 4096, "case {case}: {piece:x?}");
                }
            }
            Err(WalkError::PageFault(f)) => {
                let code = f.error_code;
                assert!(code & PF_RESERVED == 0 || code & PF_PRESENT != 0, "case {case}: RSVD without P");
                assert_eq!(code & PF_WRITE != 0, kind == AccessKind::Write, "case {case}");
                assert_eq!(code & PF_USER != 0, access.user, "case {case}");
                assert!(code & PF_FETCH == 0 || kind == AccessKind::Execute, "case {case}");
                assert!(code < 0x20, "case {case}");
            }
            Err(WalkError::RangeTooLong { len: l }) => assert!(l > MAX_RANGE, "case {case}"),
            Err(WalkError::NonCanonical { .. } | WalkError::TableNotInMemory { .. }) => {}
        }
    }
}
