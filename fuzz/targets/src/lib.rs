//! Basalt's fuzz targets. Each is a function of bytes: a `basalt_fuzz::Reader`
//! turns them into the structured input the component takes (an instruction
//! and a CPU mode, a guest's register accesses and rings, an image and a RAM
//! size), and the target asserts what must hold whatever the input: no panic,
//! no arithmetic overflow (the fuzz profile keeps overflow checks on), bounded
//! output and host memory, results that agree with an independent statement
//! or round-trip. It returns the features of the behaviour it saw (`feature`),
//! which the engine uses to keep inputs that do something new.
//!
//! `cargo xtask fuzz` builds the runner (src/main.rs) and runs these; the
//! corpus of each target is `fuzz/corpus/<name>/`, replayed by `cargo test`.

pub mod chipset;
pub mod cpu;
pub use basalt_fuzz::heap;
pub mod loaders;
pub mod platform;
pub mod ram;
pub mod seeds;
pub mod virtio;

use basalt_fuzz::engine::Target;

/// Every target, in the order runs list and run them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "decode",
        about: "MMIO instruction decoder: length within the bytes and 15, sane operands, self-delimiting",
        run: cpu::decode,
        max_len: 32,
    },
    Target {
        name: "intercepted",
        about: "lengths of intercepted instructions and MOV CR/CLTS/LMSW decoding (SVM without NRIP save or decode assists): within the bytes and 15, self-delimiting, the two decoders agree",
        run: cpu::intercepted,
        max_len: 32,
    },
    Target {
        name: "xcr0",
        about: "XCR0 validity against an independent statement of the SDM rules; guest components fit their area",
        run: cpu::xcr0,
        max_len: 128,
    },
    Target {
        name: "cr",
        about:
            "MOV to CR0/CR4 and WRMSR to EFER checks against the SDM's #GP conditions stated again; CR4 bits only with their CPUID bits",
        run: cpu::cr,
        max_len: 128,
    },
    Target {
        name: "virtio-queue",
        about: "virtqueue walk, chain I/O and completion over a two-range guest RAM, addresses up to u64::MAX",
        run: virtio::queue,
        max_len: 2048,
    },
    Target {
        name: "virtio-console",
        about: "virtio-console through its MMIO registers and notifies: output per call and host memory bounded",
        run: virtio::console,
        max_len: 2048,
    },
    Target {
        name: "virtio-blk",
        about: "virtio-blk through its MMIO registers and notifies: disk size kept, host memory bounded",
        run: virtio::blk,
        max_len: 2048,
    },
    Target {
        name: "chipset",
        about: "a VM's chipset with its port devices (fw_cfg, PCI host bridge, port 0x92) under port, MMIO and x2APIC MSR accesses, IA32_APIC_BASE writes, VMM calls and time: devices as specified, APIC modes only as the SDM allows, unclaimed-address and refused-MSR logs bounded, requests well-formed, memory bounded",
        run: chipset::chipset,
        max_len: 4096,
    },
    Target {
        name: "elf",
        about: "ELF parse and load plan: segments inside the file and inside RAM, no overlap, entry inside",
        run: loaders::elf,
        max_len: 4096,
    },
    Target {
        name: "multiboot",
        about: "Multiboot (a.out kludge and ELF) load plans with modules and a command line: all inside RAM, no overlap, entry inside, information as asked",
        run: loaders::multiboot,
        max_len: 4096,
    },
    Target {
        name: "bzimage",
        about: "bzImage parse and 64-bit boot plan with initrd and command line: all inside low RAM, e820 sane",
        run: loaders::bzimage,
        max_len: 4096,
    },
    Target {
        name: "bundle",
        about: "boot bundle parse: entries inside the bytes, and what parses writes back the same",
        run: loaders::bundle,
        max_len: 4096,
    },
    Target {
        name: "manifest",
        about: "VM list parse: accepted lists hold their limits and render back to themselves",
        run: loaders::manifest,
        max_len: 2048,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Adds the feature `value` (any number, hashed to one of 64 bits) to a
/// target's signal: inputs that show the same features in another order or
/// number count as nothing new.
pub fn feature(signal: &mut u64, value: u64) {
    *signal |= 1 << (basalt_fuzz::engine::hash(&value.to_le_bytes()) % 64);
}

/// An error's kind from its text: the words without numbers or quotes in
/// them, so that one check refusing other addresses, lengths or names is one
/// feature.
pub fn kind_of(text: &str) -> u64 {
    let plain = |w: &&str| !w.chars().any(|c| c.is_ascii_digit() || "'\"`".contains(c));
    let words: Vec<&str> = text.split_whitespace().filter(plain).collect();
    basalt_fuzz::engine::hash(words.join(" ").as_bytes())
}
