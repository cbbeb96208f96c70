//! The XSAVE components guests may enable on this host, and the size of their
//! save area, worked out once from CPUID (the rules are in `arch::xstate`).

use arch::xstate::{self, ComponentLayout};
use core::arch::x86_64::__cpuid_count;

/// A vCPU's save area is one frame.
pub const AREA_BYTES: u32 = 4096;

pub struct GuestXstate {
    /// Components guests may set in XCR0; the VMM saves and restores all of
    /// them whatever the guest's XCR0, so none keeps another VM's values.
    pub allowed: u64,
    /// Standard-format bytes those components take (≤ AREA_BYTES).
    pub area_size: u32,
}

static GUEST_XSTATE: spin::Once<GuestXstate> = spin::Once::new();

pub fn has_xsave() -> bool {
    raw_cpuid::CpuId::new().get_feature_info().is_some_and(|f| f.has_xsave())
}

pub fn guest() -> &'static GuestXstate {
    GUEST_XSTATE.call_once(|| {
        if !has_xsave() {
            return GuestXstate { allowed: xstate::X87 | xstate::SSE, area_size: xstate::LEGACY_AND_HEADER };
        }
        let leaf = __cpuid_count(0xd, 0);
        let host = ((leaf.edx as u64) << 32) | leaf.eax as u64;
        let layout = |bit: u32| {
            let sub = __cpuid_count(0xd, bit);
            ComponentLayout { offset: sub.ebx, size: sub.eax }
        };
        let allowed = xstate::guest_components(host, AREA_BYTES, layout);
        let area_size = xstate::standard_area_size(allowed, layout);
        log::info!("vmm: guests may enable XSAVE components {allowed:#x} ({area_size} bytes; host has {host:#x})");
        GuestXstate { allowed, area_size }
    })
}
