//! XSAVE state components as guests see them.
//!
//! A vCPU's FPU/SIMD state lives in one 4 KiB frame saved and restored with
//! XSAVE/XRSTOR in the standard (non-compacted) format. Every component a
//! guest may enable must fit in that frame, CPUID must report exactly those
//! components and their sizes, and XSETBV must refuse anything else: a value
//! the host CPU would reject makes the host take #GP, and a component the area
//! cannot hold makes XSAVE write past the frame.

// Every value here comes from a hostile guest: no arithmetic may wrap or panic.
#![deny(clippy::arithmetic_side_effects)]

pub const X87: u64 = 1 << 0;
pub const SSE: u64 = 1 << 1;
pub const AVX: u64 = 1 << 2;
pub const BNDREGS: u64 = 1 << 3;
pub const BNDCSR: u64 = 1 << 4;
pub const MPX: u64 = BNDREGS | BNDCSR;
pub const OPMASK: u64 = 1 << 5;
pub const ZMM_HI256: u64 = 1 << 6;
pub const HI16_ZMM: u64 = 1 << 7;
pub const AVX512: u64 = OPMASK | ZMM_HI256 | HI16_ZMM;
pub const PKRU: u64 = 1 << 9;
pub const TILECFG: u64 = 1 << 17;
pub const TILEDATA: u64 = 1 << 18;
pub const AMX: u64 = TILECFG | TILEDATA;

/// Components a guest may enable when the host has them. Not PKRU: Bochs
/// reports no size or offset for it (Linux then warns about a misordered
/// layout), so protection keys are hidden with it. Not AMX: its 8 KiB of tile
/// data does not fit a vCPU's one-frame save area, and guests would need XFD to
/// manage it lazily. Supervisor components (XSS) are never offered.
pub const GUEST_COMPONENTS: u64 = X87 | SSE | AVX | MPX | AVX512;

/// The legacy FXSAVE region (512 bytes) and the XSAVE header (64 bytes) that
/// precede the extended components in the standard format.
pub const LEGACY_AND_HEADER: u32 = 576;

/// Where a component sits in the standard format: CPUID.(0xD, i) EBX and EAX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComponentLayout {
    pub offset: u32,
    pub size: u32,
}

/// Bytes of standard-format save area that `components` need, given each
/// extended component's layout. Saturates (an absurd layout is "too big",
/// never a small wrapped number).
pub fn standard_area_size(components: u64, layout: impl Fn(u32) -> ComponentLayout) -> u32 {
    (2..64)
        .filter(|bit| components & (1 << bit) != 0)
        .map(|bit| {
            let l = layout(bit);
            l.offset.saturating_add(l.size)
        })
        .fold(LEGACY_AND_HEADER, u32::max)
}

/// The components guests get on a host that supports `host` (CPUID.(0xD, 0)
/// EDX:EAX): Basalt's list, only whole groups whose prerequisites are there,
/// then shrunk group by group (AVX-512, MPX, AVX) until the standard-format
/// area fits in `area_bytes`. x87 and SSE always remain.
pub fn guest_components(host: u64, area_bytes: u32, layout: impl Fn(u32) -> ComponentLayout) -> u64 {
    let mut allowed = (host & GUEST_COMPONENTS) | X87 | SSE;
    if allowed & AVX == 0 || allowed & AVX512 != AVX512 {
        allowed &= !AVX512;
    }
    if allowed & MPX != MPX {
        allowed &= !MPX;
    }
    for group in [AVX512, MPX, AVX512 | AVX] {
        if standard_area_size(allowed, &layout) <= area_bytes {
            break;
        }
        allowed &= !group;
    }
    allowed
}

/// Whether XSETBV may load `value` into XCR0 when guests may enable `allowed`:
/// the SDM's rules (x87 always set; AVX needs SSE; the three AVX-512 bits all
/// or none, and only with AVX; BNDREGS and BNDCSR together; TILECFG and
/// TILEDATA together) and nothing outside `allowed`.
pub fn xcr0_valid(value: u64, allowed: u64) -> bool {
    let all_or_none = |group: u64| value & group == 0 || value & group == group;
    value & X87 != 0
        && value & !allowed == 0
        && (value & AVX == 0 || value & SSE != 0)
        && all_or_none(AVX512)
        && (value & AVX512 == 0 || value & AVX != 0)
        && all_or_none(MPX)
        && all_or_none(AMX)
}

/// CPUID leaf 0xD as the guest sees it, from the host's answer `host`
/// (EAX, EBX, ECX, EDX) to the same sub-leaf, when guests may enable
/// `allowed`, whose standard area takes `allowed_size` bytes. EBX of sub-leaf 0
/// (the size for the current XCR0) is the host's answer, which the CPU
/// computes for the guest's own XCR0 while that is loaded.
pub fn cpuid_leaf_0xd(subleaf: u32, host: [u32; 4], allowed: u64, allowed_size: u32) -> [u32; 4] {
    let [_, ebx, _, _] = host;
    match subleaf {
        0 => [allowed as u32, ebx, allowed_size, (allowed >> 32) as u32],
        // XSAVEOPT and XGETBV(1) stay. No compacted format (XSAVEC) and no
        // supervisor states (XSAVES, IA32_XSS): vCPUs save in the standard
        // format and Basalt switches no supervisor state.
        1 => {
            const XSAVEC: u32 = 1 << 1;
            const XSAVES: u32 = 1 << 3;
            [host[0] & !(XSAVEC | XSAVES), 0, 0, 0]
        }
        2..=63 if allowed & (1 << subleaf) != 0 => host,
        _ => [0; 4],
    }
}

/// Feature bits of CPUID leaves 1 and 7 whose instructions need a component
/// guests may not enable, cleared so CPUID and XSETBV agree. `regs` is
/// (EAX, EBX, ECX, EDX) of `leaf`/`subleaf`.
pub fn hide_features_without_state(leaf: u32, subleaf: u32, regs: [u32; 4], allowed: u64) -> [u32; 4] {
    let [mut a, mut b, mut c, mut d] = regs;
    let missing = |component: u64| allowed & component != component;
    match (leaf, subleaf) {
        (1, _) if missing(AVX) => {
            const FMA: u32 = 1 << 12;
            const AVX_BIT: u32 = 1 << 28;
            const F16C: u32 = 1 << 29;
            c &= !(FMA | AVX_BIT | F16C);
        }
        (7, 0) => {
            if missing(AVX) {
                const AVX2: u32 = 1 << 5;
                b &= !AVX2;
                const VAES_VPCLMULQDQ: u32 = (1 << 9) | (1 << 10);
                c &= !VAES_VPCLMULQDQ;
            }
            if missing(MPX) {
                b &= !(1 << 14);
            }
            if missing(AVX512) {
                // F, DQ, IFMA, PF, ER, CD, BW, VL.
                b &= !((1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31));
                // VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ.
                c &= !((1 << 1) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14));
                // 4VNNIW, 4FMAPS, VP2INTERSECT, FP16.
                d &= !((1 << 2) | (1 << 3) | (1 << 8) | (1 << 23));
            }
            if missing(AMX) {
                // AMX-BF16, AMX-TILE, AMX-INT8.
                d &= !((1 << 22) | (1 << 24) | (1 << 25));
            }
        }
        (7, 1) => {
            if missing(AVX) {
                // AVX-VNNI, AVX-IFMA.
                a &= !((1 << 4) | (1 << 23));
            }
            if missing(AVX512) {
                // AVX512-BF16.
                a &= !(1 << 5);
            }
            if missing(AMX) {
                // AMX-FP16, AMX-COMPLEX.
                a &= !(1 << 21);
                d &= !(1 << 8);
            }
        }
        // Tile information and TMUL leaves describe AMX.
        (0x1d, _) | (0x1e, _) if missing(AMX) => (a, b, c, d) = (0, 0, 0, 0),
        _ => {}
    }
    [a, b, c, d]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standard-format layout Intel CPUs report (Ice Lake / Sapphire Rapids).
    fn intel_layout(bit: u32) -> ComponentLayout {
        let (offset, size) = match bit {
            2 => (576, 256),
            3 => (960, 64),
            4 => (1024, 64),
            5 => (1088, 64),
            6 => (1152, 512),
            7 => (1664, 1024),
            9 => (2688, 8),
            17 => (2752, 64),
            18 => (2816, 8192),
            _ => (0, 0),
        };
        ComponentLayout { offset, size }
    }

    const SAPPHIRE_RAPIDS: u64 = X87 | SSE | AVX | AVX512 | PKRU | AMX;

    #[test]
    fn a_host_with_amx_and_pkru_offers_guests_neither_and_the_area_fits_one_frame() {
        let allowed = guest_components(SAPPHIRE_RAPIDS, 4096, intel_layout);
        assert_eq!(allowed, X87 | SSE | AVX | AVX512);
        assert_eq!(allowed & (AMX | PKRU), 0);
        let size = standard_area_size(allowed, intel_layout);
        assert_eq!(size, 2688);
        assert!(size <= 4096);
        // What the host itself could enable would not fit: that is the bug.
        assert!(standard_area_size(SAPPHIRE_RAPIDS, intel_layout) > 4096);
    }

    #[test]
    fn a_smaller_area_sheds_whole_groups() {
        let host = X87 | SSE | AVX | MPX | AVX512;
        assert_eq!(guest_components(host, 2688, intel_layout), host);
        assert_eq!(guest_components(host, 1500, intel_layout), X87 | SSE | AVX | MPX);
        assert_eq!(guest_components(host, 1000, intel_layout), X87 | SSE | AVX);
        assert_eq!(guest_components(host, 800, intel_layout), X87 | SSE);
        assert_eq!(guest_components(host, 576, intel_layout), X87 | SSE);
    }

    #[test]
    fn partial_groups_on_the_host_are_not_offered() {
        assert_eq!(guest_components(X87 | SSE | OPMASK | AVX, 4096, intel_layout), X87 | SSE | AVX);
        assert_eq!(guest_components(X87 | SSE | AVX512, 4096, intel_layout), X87 | SSE);
        assert_eq!(guest_components(X87 | SSE | BNDREGS, 4096, intel_layout), X87 | SSE);
    }

    #[test]
    fn an_absurd_layout_saturates_instead_of_wrapping() {
        let huge = |_| ComponentLayout { offset: u32::MAX, size: 16 };
        assert_eq!(standard_area_size(X87 | SSE | AVX, huge), u32::MAX);
        assert_eq!(guest_components(X87 | SSE | AVX, 4096, huge), X87 | SSE);
    }

    #[test]
    fn xcr0_values_follow_the_sdm() {
        let allowed = X87 | SSE | AVX | MPX | AVX512 | AMX;
        for (value, valid) in [
            (0x1, true),
            (0x3, true),
            (0x7, true),
            (0xe7, true),
            (0x1f, true),
            (0x60007, true),
            (0x0, false),     // x87 must be set
            (0x2, false),     // x87 must be set
            (0x5, false),     // AVX without SSE
            (0x23, false),    // opmask without AVX
            (0x27, false),    // part of AVX-512
            (0x67, false),    // part of AVX-512
            (0xe3, false),    // AVX-512 without AVX
            (0xb, false),     // BNDREGS without BNDCSR
            (0x13, false),    // BNDCSR without BNDREGS
            (0x20003, false), // TILECFG without TILEDATA
            (0x40003, false), // TILEDATA without TILECFG
            (1 << 63 | 1, false),
        ] {
            assert_eq!(xcr0_valid(value, allowed), valid, "XCR0 {value:#x}");
        }
    }

    #[test]
    fn xcr0_outside_what_guests_may_enable_is_refused() {
        let allowed = X87 | SSE | AVX;
        assert!(xcr0_valid(0x7, allowed));
        assert!(!xcr0_valid(0xe7, allowed));
        assert!(!xcr0_valid(0x207, allowed)); // PKRU
        assert!(!xcr0_valid(0x60007, allowed)); // AMX, valid on its own
        assert!(!xcr0_valid(X87 | 1 << 8, allowed)); // a supervisor component
    }

    #[test]
    fn leaf_0xd_reports_only_allowed_components_and_their_size() {
        let allowed = X87 | SSE | AVX | AVX512;
        let host0 = [SAPPHIRE_RAPIDS as u32, 576, 11008, 0];
        assert_eq!(cpuid_leaf_0xd(0, host0, allowed, 2688), [0xe7, 576, 2688, 0]);
        assert_eq!(cpuid_leaf_0xd(1, [0xf, 0x988, 0x1900, 0], allowed, 2688), [0x5, 0, 0, 0]);
        assert_eq!(cpuid_leaf_0xd(2, [256, 576, 0, 0], allowed, 2688), [256, 576, 0, 0]);
        assert_eq!(cpuid_leaf_0xd(9, [8, 2688, 0, 0], allowed, 2688), [0; 4]);
        assert_eq!(cpuid_leaf_0xd(18, [8192, 2816, 6, 0], allowed, 2688), [0; 4]);
        assert_eq!(cpuid_leaf_0xd(64, [1, 1, 1, 1], allowed, 2688), [0; 4]);
    }

    #[test]
    fn instructions_without_their_state_are_hidden() {
        let all = [u32::MAX; 4];
        let sse_only = X87 | SSE;
        let [_, _, c, _] = hide_features_without_state(1, 0, all, sse_only);
        assert_eq!(c & (1 << 28), 0, "AVX");
        let [_, b, c, d] = hide_features_without_state(7, 0, all, X87 | SSE | AVX);
        assert_ne!(b & (1 << 5), 0, "AVX2 stays with AVX");
        assert_eq!(b & (1 << 16), 0, "AVX512F");
        assert_eq!(b & (1 << 14), 0, "MPX");
        assert_eq!(c & (1 << 1), 0, "VBMI");
        assert_eq!(d & (1 << 24), 0, "AMX-TILE");
        let [_, b, _, d] = hide_features_without_state(7, 0, all, X87 | SSE | AVX | AVX512);
        assert_ne!(b & (1 << 16), 0, "AVX512F stays");
        assert_eq!(d & ((1 << 22) | (1 << 24) | (1 << 25)), 0, "AMX hidden");
        assert_eq!(hide_features_without_state(0x1d, 0, all, X87 | SSE | AVX | AVX512), [0; 4]);
        assert_eq!(hide_features_without_state(1, 0, all, X87 | SSE | AVX), all);
    }
}
