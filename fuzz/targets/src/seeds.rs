//! The seed corpus: a few inputs per target that reach the interesting
//! states at once (a valid ELF, a device brought up with a chain posted, a
//! PIC and timer programmed), so mutation starts from there rather than
//! from noise. `cargo xtask fuzz --seed-corpus` writes them to
//! `fuzz/corpus/<target>/seed-*`; inputs kept for regressions sit beside them
//! under other names.
//!
//! Device inputs are written with `Script`, which encodes each choice the
//! way the target's `Reader` reads it, in the same order.

/// A target input built choice by choice (`basalt_fuzz::Reader` in reverse).
#[derive(Default)]
struct Script(Vec<u8>);

impl Script {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    /// `v` as `Reader::below(n)` reads it (in as many bytes as `n` needs).
    fn below(&mut self, n: u64, v: u64) -> &mut Self {
        assert!(v < n);
        match n {
            0..=0x100 => self.u8(v as u8),
            0x101..=0x1_0000 => self.u16(v as u16),
            0x1_0001..=0x1_0000_0000 => self.u32(v as u32),
            _ => self.u64(v),
        }
    }
    /// `Reader::edge` giving `v`, through its u64 case.
    fn edge(&mut self, v: u64) -> &mut Self {
        self.u8(9).u64(v)
    }
    fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// `ram::Ram::from_input`: 64 KiB of low RAM, no high RAM (so no place
/// for it either).
fn low_ram_only(s: &mut Script) -> &mut Script {
    s.u8(15).u8(0)
}

/// `Ram::address` giving `at` in the low range (of 64 KiB).
fn low(s: &mut Script, at: u16) -> &mut Script {
    s.u8(0).below(0x1_0000, at.into())
}

/// The seeds of target `name`, as (file name, bytes).
pub fn seeds(name: &str) -> Vec<(String, Vec<u8>)> {
    let named = |inputs: Vec<Vec<u8>>| {
        inputs.into_iter().enumerate().map(|(i, bytes)| (format!("seed-{i:02}"), bytes)).collect::<Vec<_>>()
    };
    named(match name {
        "decode" => decode(),
        "intercepted" => intercepted(),
        "xcr0" => xcr0(),
        "cr" => cr(),
        "virtio-queue" => virtio_queue(),
        "virtio-console" => virtio_device(false),
        "virtio-blk" => virtio_device(true).into_iter().map(|input| [&[3u8][..], &input].concat()).collect(),
        "chipset" => chipset(),
        "elf" => elf(),
        "multiboot" => multiboot(),
        "bzimage" => bzimage(),
        "bundle" => bundle(),
        "manifest" => manifest(),
        _ => Vec::new(),
    })
}

fn decode() -> Vec<Vec<u8>> {
    // Mode (0: 16-bit, 1: 32-bit, 2: 64-bit), then the bytes at RIP.
    let forms: [(u8, &[u8]); 38] = [
        (2, &[0x89, 0x47, 0x10]),                               // mov [rdi+0x10], eax
        (2, &[0x48, 0x8b, 0x08]),                               // mov rcx, [rax]
        (2, &[0xc7, 0x00, 0x78, 0x56, 0x34, 0x12]),             // mov dword [rax], imm32
        (2, &[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff]),       // mov qword [rax], -1
        (2, &[0x66, 0xc7, 0x40, 0x04, 0x34, 0x12]),             // mov word [rax+4], imm16
        (2, &[0x0f, 0xb6, 0x07]),                               // movzx eax, byte [rdi]
        (2, &[0x48, 0x0f, 0xb7, 0x47, 0x02]),                   // movzx rax, word [rdi+2]
        (2, &[0x48, 0xa1, 0, 0, 0xe0, 0xfe, 0, 0, 0, 0]),       // mov rax, [moffs64]
        (2, &[0x44, 0x89, 0x04, 0x25, 0x00, 0x00, 0xe0, 0xfe]), // mov [abs], r8d (SIB)
        (2, &[0x41, 0x88, 0x20]),                               // mov [r8], spl
        (2, &[0x88, 0x20]),                                     // mov [rax], ah
        (2, &[0xc6, 0x05, 0x10, 0x00, 0x00, 0x00, 0x01]),       // mov byte [rip+16], 1
        (2, &[0x8b, 0x84, 0x88, 0x00, 0x01, 0x00, 0x00]),       // mov eax, [rax+rcx*4+0x100]
        (2, &[0x66, 0x2e, 0x67, 0x89, 0x07]),                   // prefixes
        (2, &[0xf0, 0x89, 0x07]),                               // lock mov: invalid
        (2, &[0x8b, 0xc0]),                                     // mov eax, eax: not memory
        (2, &[0x26, 0x48, 0x66, 0x89, 0x07]),                   // REX before a legacy prefix
        (1, &[0x89, 0x03]),                                     // mov [ebx], eax
        (1, &[0x8b, 0x05, 0x00, 0x00, 0xc0, 0xfe]),             // mov eax, [abs]
        (1, &[0xa3, 0x00, 0x00, 0xc0, 0xfe]),                   // mov [moffs32], eax
        (1, &[0x67, 0x89, 0x07]),                               // 16-bit addressing
        (0, &[0x89, 0x07]),                                     // mov [bx], ax
        (0, &[0x8b, 0x46, 0x02]),                               // mov ax, [bp+2]
        (0, &[0x66, 0xa1, 0x34, 0x12]),                         // mov eax, [moffs16]
        // Beyond MOV: the ALU group, exchanges, bit tests, stack and strings.
        (2, &[0xf0, 0x01, 0x07]),                   // lock add [rdi], eax
        (2, &[0x48, 0x83, 0x60, 0x08, 0xf0]),       // and qword [rax+8], -16
        (2, &[0x3b, 0x07]),                         // cmp eax, [rdi]
        (2, &[0xf7, 0x07, 0x00, 0x00, 0x00, 0x80]), // test dword [rdi], imm32
        (2, &[0xff, 0x0f]),                         // dec dword [rdi]
        (2, &[0x87, 0x0f]),                         // xchg [rdi], ecx
        (2, &[0xf0, 0x0f, 0xb1, 0x0f]),             // lock cmpxchg [rdi], ecx
        (2, &[0x0f, 0xba, 0x2f, 0x05]),             // bts dword [rdi], 5
        (2, &[0x48, 0x63, 0x07]),                   // movsxd rax, dword [rdi]
        (2, &[0xff, 0x37]),                         // push qword [rdi]
        (2, &[0xf3, 0x48, 0xa5]),                   // rep movsq
        (1, &[0xf3, 0xab]),                         // rep stosd
        (0, &[0x26, 0xac]),                         // es lodsb
        (1, &[0x0f, 0xc1, 0x07]),                   // xadd: unsupported
    ];
    forms.iter().map(|(mode, bytes)| [&[*mode][..], bytes].concat()).collect()
}

fn intercepted() -> Vec<Vec<u8>> {
    // Mode (0: 16-bit, 1: 32-bit, 2: 64-bit), then the bytes at RIP.
    let forms: [(u8, &[u8]); 22] = [
        (2, &[0x0f, 0xa2]),                   // cpuid
        (2, &[0x48, 0x0f, 0x30]),             // rex.w wrmsr
        (2, &[0x0f, 0x32]),                   // rdmsr
        (2, &[0xf4]),                         // hlt
        (2, &[0x0f, 0x01, 0xd9]),             // vmmcall
        (2, &[0xf3, 0x0f, 0x01, 0xd9]),       // vmgexit (rep vmmcall)
        (2, &[0x0f, 0x01, 0xd1]),             // xsetbv
        (2, &[0x66, 0x0f, 0x01, 0xd1]),       // 66 xsetbv: invalid
        (2, &[0x0f, 0x01, 0xc8]),             // monitor
        (2, &[0xf3, 0x0f, 0x09]),             // wbnoinvd
        (2, &[0x0f, 0x22, 0xd8]),             // mov cr3, rax
        (2, &[0x44, 0x0f, 0x22, 0xc1]),       // mov cr8, rcx
        (2, &[0x41, 0x0f, 0x20, 0xe7]),       // mov r15, cr4
        (2, &[0xf0, 0x44, 0x0f, 0x20, 0xc0]), // lock with rex.r: invalid
        (2, &[0x0f, 0x01, 0xf0]),             // lmsw ax
        (2, &[0x0f, 0x01, 0x30]),             // lmsw [rax]: unsupported
        (1, &[0xf0, 0x0f, 0x22, 0xc0]),       // mov cr8, eax (AMD)
        (1, &[0x0f, 0x20, 0xc8]),             // mov eax, cr1: invalid
        (1, &[0x0f, 0x06]),                   // clts
        (1, &[0x66, 0x2e, 0x0f, 0x01, 0xc9]), // 66 mwait: invalid
        (0, &[0x66, 0x0f, 0x20, 0x00]),       // mov eax, cr0 (mod ignored)
        (0, &[0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x2e, 0x0f, 0x33]), // 16 bytes: invalid
    ];
    forms.iter().map(|(mode, bytes)| [&[*mode][..], bytes].concat()).collect()
}

fn xcr0() -> Vec<Vec<u8>> {
    let mut s = Script::default();
    let mut out = Vec::new();
    // Host kind, area kind, realistic layout; then eight XCR0 values (kind,
    // value, whether to add x87); then a CPUID leaf and its registers.
    for (host, area) in [(0u8, 0u8), (1, 0), (0, 1)] {
        s.u8(host).u8(area);
        if area == 1 {
            s.u16(2112);
        }
        s.u8(1);
        for value in [0x7u64, 0xe7, 0x1f, 0x60003, 0x3, 0x207, 0x27, 0xb] {
            s.u8(0).u64(value).u8(0);
        }
        s.u8(1).u32(u32::MAX).u32(u32::MAX).u32(u32::MAX).u32(u32::MAX);
        out.push(s.done());
    }
    out
}

fn cr() -> Vec<Vec<u8>> {
    let mut s = Script::default();
    // Features (all, or these CPUID words), CR0, CR3, CR4 (as a base with one
    // bit flipped: choice 0, the bit), EFER.LME, EFER.LMA, CS.L; then the
    // CR0 write and the CR4 write, each as a flipped bit of the current value.
    // 64-bit code turning paging off, then enabling PCIDs.
    s.u8(0).u8(2).u8(0).u8(0).u8(2).u8(1).u8(1).u8(1).u8(0).u8(31).u8(0).u8(17);
    let long_mode = s.done();
    // Paging on with LME but no PAE; PCIDs outside long mode.
    s.u8(0).u8(0).u8(31).u8(0).u8(0).u8(0).u8(5).u8(1).u8(0).u8(0).u8(0).u8(31).u8(0).u8(17);
    let legacy = s.done();
    // A CPU with SMEP and SMAP but no LA57 or PKE, in long mode; CR4 gains LA57.
    s.u8(1).u32(1 << 17 | 1 << 26).u32(0x0789_fbff).u32(1 << 7 | 1 << 20).u32(0);
    s.u8(2).u8(0).u8(0).u8(2).u8(1).u8(1).u8(1).u8(0).u8(16).u8(0).u8(12);
    vec![long_mode, legacy, s.done()]
}

/// Writes descriptor `index` for the virtio-queue target (operation 0).
fn queue_descriptor(s: &mut Script, size: u64, index: u64, at: u16, len: u16, flags: u8, next: u64) {
    s.u8(0).below(size + 1, index);
    low(s, at);
    s.u8(2).below(0x1001, len.into()).u8(flags).below(size + 2, next);
}

fn virtio_queue() -> Vec<Vec<u8>> {
    let mut s = Script::default();
    let mut out = Vec::new();
    for with_io in [false, true] {
        // 64 KiB of RAM; a 16-entry queue with its rings at 0x1000, 0x2000, 0x3000.
        low_ram_only(&mut s).u8(5);
        low(low(low(&mut s, 0x1000), 0x2000), 0x3000);
        // A readable buffer then a writable one (flags choice 0: NEXT; 2: WRITE).
        queue_descriptor(&mut s, 16, 0, 0x8000, 0x100, 0, 1);
        queue_descriptor(&mut s, 16, 1, 0x9000, 0x200, 2, 0);
        // Publish head 0 (operation 1, the next index).
        s.u8(1).below(17, 0).u8(1);
        if with_io {
            // Take it (operation 4) with the whole budget, read 64 bytes from
            // its start, write 32 at 8, report what was written.
            s.u8(4).edge(1 << 20).u8(1).below(4097, 64).u8(1).u8(0).u8(0);
            s.below(4097, 32).u8(0).u8(0).u8(8).u8(0x41).u8(1);
        } else {
            s.u8(3).u8(5).edge(0x1234);
        }
        out.push(s.done());
    }
    out
}

/// A device brought up with each queue's rings in low RAM, then chains posted.
fn virtio_device(block: bool) -> Vec<Vec<u8>> {
    let queues = if block { 1 } else { 2 };
    let mut s = Script::default();
    let mut out = Vec::new();
    for variant in 0..3 {
        low_ram_only(&mut s);
        // Bring-up (operation 2): per queue its size (16) and rings.
        s.u8(2);
        for q in 0..queues {
            let base = 0x1000 + 0x4000 * q as u16;
            s.u8(4);
            low(low(low(&mut s, base), base + 0x1000), base + 0x2000);
        }
        // Post (operation 3) on the queue that takes requests: console's
        // transmit queue 1, blk's queue 0; descriptors from index 0.
        let queue = if block { 0 } else { 1 };
        let parts: &[(u16, u16, bool)] = match (block, variant) {
            (false, 0) => &[(0x8000, 13, false)],
            (false, 1) => &[(0x8000, 0x400, false), (0x9000, 0x800, false)],
            (false, _) => &[(0x8000, 0x1000, false)],
            (true, 0) => &[(0x8000, 16, false), (0x9000, 512, true), (0xa000, 1, true)],
            (true, 1) => &[(0x8000, 16, false), (0x9000, 1024, false), (0xa000, 1, true)],
            (true, _) => &[(0x8000, 16, false), (0x9000, 20, true), (0xa000, 1, true)],
        };
        s.u8(3).below(queues + 1, queue).below(6, parts.len() as u64 - 1).below(16, 0);
        for (i, &(at, len, writable)) in parts.iter().enumerate() {
            low(&mut s, at);
            s.u8(2).below(0x1001, len.into());
            let last = i + 1 == parts.len();
            // Console: a coin; blk: "writable" is a one-in-eight choice, and
            // the status byte (last) is always writable without one.
            if !block {
                s.u8(writable as u8);
            } else if !last {
                s.u8(if writable { 0 } else { 1 });
            }
            s.u8(1).u8(1);
            if block && i == 0 {
                // Kind (IN, OUT, GET_ID) and sector.
                let kind = [0u8, 1, 3][variant];
                s.u8(1).u8(kind).u8(1).u8(1);
            }
        }
        s.u8(1);
        if !block {
            // Host input, then a receive buffer for it on queue 0.
            s.u8(6).u8(5).bytes(b"hello").u8(0);
            s.u8(3).below(3, 0).below(6, 0).below(16, 0);
            low(&mut s, 0xc000).u8(2).below(0x1001, 64).u8(1).u8(1).u8(1).u8(1);
        }
        // Acknowledge the interrupt, poll.
        s.u8(8).u32(3).u8(5);
        out.push(s.done());
    }
    out
}

/// `chipset::port`: port `p` from its list (or raw when it is not there).
fn port(s: &mut Script, p: u16) -> &mut Script {
    match crate::chipset::PORTS.iter().position(|&x| x == p) {
        Some(i) => s.u8(1).u8(i as u8),
        None => s.u8(0).u16(p),
    }
}

/// A chipset port write (operation 2): port, size, value.
fn out(s: &mut Script, p: u16, size: u8, value: u32) -> &mut Script {
    s.u8(2).u8(0);
    port(s, p).u8([1, 2, 4].iter().position(|&x| x == size).unwrap() as u8);
    s.u8(3).u8(8).u32(value)
}

/// A chipset port read (operation 0).
fn inp(s: &mut Script, p: u16, size: u8) -> &mut Script {
    s.u8(0).u8(0);
    port(s, p).u8([1, 2, 4].iter().position(|&x| x == size).unwrap() as u8)
}

/// A chipset MMIO write of 4 bytes (operation 5) by vCPU 0 to a LAPIC
/// (`ioapic` false) or IOAPIC register.
fn mmio(s: &mut Script, ioapic: bool, register: u64, value: u32) -> &mut Script {
    s.u8(5).u8(0);
    if ioapic {
        s.u8(2).u8(1).below(2, register / 16);
    } else {
        s.u8(0).u8(1).below(256, register / 16);
    }
    s.u8(2).u8(3).u8(8).u32(value)
}

/// Time passes (operation 6) by `ticks`, and the chipset is polled.
fn later(s: &mut Script, ticks: u32) -> &mut Script {
    s.u8(6).u8(0).u8(1).below(1 << 32, ticks.into())
}

/// `chipset::driver` (operation 18), selecting fw_cfg item `key` (raw when
/// it is not one of the VM's) and reading it in reads of `sizes` bytes.
fn fw_cfg_item<'a>(s: &'a mut Script, key: u16, sizes: &[u8]) -> &'a mut Script {
    s.u8(18).u8(0).u8(0);
    match crate::platform::FW_CFG_KEYS.iter().position(|&k| k == key & !0x4000) {
        Some(i) => s.u8(1).u8(i as u8).u8(if key & 0x4000 != 0 { 0 } else { 1 }),
        None => s.u8(0).u16(key),
    };
    s.u8(sizes.len() as u8);
    for &size in sizes {
        s.u8([1, 2, 4].iter().position(|&x| x == size).unwrap() as u8 + (size != 1) as u8);
    }
    s
}

/// `chipset::driver`: CONFIG_ADDRESS for `bus_device_function` and dword
/// `register` (enabled), then a read (`write` None) or a write of `size`
/// bytes at data port `byte` (0-3).
fn pci(s: &mut Script, bus_device_function: u16, register: u8, byte: u8, size: u8, write: Option<u32>) -> &mut Script {
    s.u8(18).u8(0).u8(1).u8(1);
    if bus_device_function == 0 {
        s.u8(1);
    } else {
        s.u8(0).u16(bus_device_function);
    }
    s.u8(register / 4).u8(1).u8(byte).u8([1, 2, 4].iter().position(|&x| x == size).unwrap() as u8);
    match write {
        None => s.u8(1),
        Some(value) => s.u8(0).u32(value),
    }
}

/// `chipset::driver`: `n` ports from `base` probed one after another (reads).
fn probe(s: &mut Script, base: u16, n: u8) -> &mut Script {
    s.u8(18).u8(0).u8(3).u16(base).u8(n);
    for _ in 0..n {
        s.u8(1);
    }
    s
}

/// Operation 16: WRMSR IA32_APIC_BASE on `vcpu` of the fixed base with mode
/// `mode` (0: disabled, 1: EN, 2: EN and EXTD, 3: EXTD alone) and the BSP
/// bit; `flip` a bit (`Some`), x2APIC offered or not, MAXPHYADDR 48.
fn apic_base(s: &mut Script, vcpu: u8, mode: u8, bsp: bool, flip: Option<u8>, offered: bool) -> &mut Script {
    s.u8(16).u8(vcpu).u8(mode).u8(bsp as u8);
    match flip {
        None => s.u8(0),
        Some(bit) => s.u8(5).u8(bit),
    };
    s.u8(if offered { 1 } else { 0 }).u8(0)
}

/// Operation 17: RDMSR of x2APIC register `msr` on `vcpu`.
fn rdmsr(s: &mut Script, vcpu: u8, msr: u32) -> &mut Script {
    let i = crate::platform::X2APIC_MSRS.iter().position(|&m| m == msr).unwrap();
    s.u8(17).u8(vcpu).u8(0).u8(i as u8).u8(0)
}

/// Operation 17: WRMSR of `value` (a 32-bit one) to x2APIC register `msr` other than the ICR.
fn wrmsr(s: &mut Script, vcpu: u8, msr: u32, value: u32) -> &mut Script {
    let i = crate::platform::X2APIC_MSRS.iter().position(|&m| m == msr).unwrap();
    s.u8(17).u8(vcpu).u8(0).u8(i as u8).u8(1).u8(2).u32(value)
}

/// Operation 17: a fixed IPI of `vector` through the x2APIC ICR of `vcpu`,
/// physical, to x2APIC ID `to`.
fn x2apic_ipi(s: &mut Script, vcpu: u8, vector: u8, to: u8) -> &mut Script {
    let i = crate::platform::X2APIC_MSRS.iter().position(|&m| m == 0x830).unwrap();
    s.u8(17).u8(vcpu).u8(0).u8(i as u8).u8(1);
    // Vector, fixed, physical, assert, edge, no shorthand; to a vCPU; no reserved bit.
    s.u8(vector).u8(0).u8(0).u8(1).u8(0).u8(0).u8(0).u8(to).u8(1)
}

fn chipset() -> Vec<Vec<u8>> {
    let mut s = Script::default();
    let mut out_ = Vec::new();
    let header = |s: &mut Script| {
        // Two vCPUs at 1 GHz, the usual date, TSC from 0, buffered COM1; RAM.
        s.u8(1).u8(1).u8(0).u8(1).u8(1).below(1 << 40, 0).u8(0);
        low_ram_only(s);
    };
    // PIC initialised and unmasked, PIT channel 0 at 100 Hz, time passes,
    // the VMM takes interrupts.
    header(&mut s);
    for (p, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 4), (0x21, 1), (0xa0, 0x11), (0xa1, 0x28), (0xa1, 2), (0xa1, 1)] {
        out(&mut s, p, 1, v);
    }
    out(&mut s, 0x21, 1, 0);
    out(&mut s, 0x43, 1, 0x34);
    out(&mut s, 0x40, 1, 0x9c);
    out(&mut s, 0x40, 1, 0x2e);
    for _ in 0..4 {
        later(&mut s, 20_000_000);
        s.u8(7).u8(0);
    }
    inp(&mut s, 0x61, 1);
    out_.push(s.done());
    // Local APIC on, its timer periodic; IOAPIC pin 4 to vector 0x30; COM1
    // interrupts on and input typed; the RTC and PM timer read.
    header(&mut s);
    mmio(&mut s, false, 0xf0, 0x1ff);
    mmio(&mut s, false, 0x3e0, 0xb);
    mmio(&mut s, false, 0x320, 0x2_0040);
    mmio(&mut s, false, 0x380, 0x1000);
    mmio(&mut s, true, 0, 0x18);
    mmio(&mut s, true, 0x10, 0x30);
    out(&mut s, 0x3f9, 1, 1);
    out(&mut s, 0x3fc, 1, 8);
    s.u8(9).u8(0).u8(6).bytes(b"typed\n");
    for _ in 0..3 {
        later(&mut s, 1_000_000);
        s.u8(7).u8(0).u8(7).u8(1);
    }
    for register in [0, 2, 4, 9, 10, 11] {
        out(&mut s, 0x70, 1, register);
        inp(&mut s, 0x71, 1);
    }
    inp(&mut s, 0x608, 4);
    mmio(&mut s, false, 0xb0, 0);
    out_.push(s.done());
    // INIT and SIPI to vCPU 1; the debug exit, a marker, S5 and a reset.
    header(&mut s);
    mmio(&mut s, false, 0xf0, 0x1ff);
    mmio(&mut s, false, 0x310, 1 << 24);
    mmio(&mut s, false, 0x300, 0x4500);
    mmio(&mut s, false, 0x300, 0x4608);
    s.u8(7).u8(1);
    out(&mut s, 0xf8, 1, 1);
    out(&mut s, 0xf4, 4, 0x10);
    out(&mut s, 0x604, 2, 5 << 10 | 1 << 13);
    out(&mut s, 0xcf9, 1, 6);
    out_.push(s.done());
    // The port devices beside the chipset: fw_cfg items read whole and past
    // their ends, unknown keys; the host bridge's header read and written,
    // absent functions; port 0x92's reset; fw_cfg's absent DMA ports and a
    // probe past the unclaimed-address log's bound; the VM stops.
    header(&mut s);
    fw_cfg_item(&mut s, 0x00, &[1, 1, 1, 1, 1, 1]);
    fw_cfg_item(&mut s, 0x05, &[2]);
    fw_cfg_item(&mut s, 0x03, &[4, 4, 4]);
    fw_cfg_item(&mut s, 0x19, &[4, 1]);
    fw_cfg_item(&mut s, 0x4001, &[4]);
    fw_cfg_item(&mut s, 0x8000, &[1, 2]);
    inp(&mut s, 0x510, 2);
    pci(&mut s, 0, 0x00, 0, 4, None);
    pci(&mut s, 0, 0x08, 2, 2, None);
    pci(&mut s, 0, 0x04, 0, 2, Some(0xffff));
    pci(&mut s, 0, 0x04, 0, 4, None);
    pci(&mut s, 0, 0x0c, 1, 1, Some(0xff));
    pci(&mut s, 0, 0xfc, 3, 4, None);
    pci(&mut s, 1 << 3, 0x00, 0, 4, None);
    pci(&mut s, 1 << 8, 0x00, 2, 2, Some(0));
    inp(&mut s, 0xcf8, 4);
    for value in [1, 3, 0, 1] {
        s.u8(18).u8(0).u8(2).u8(value);
    }
    probe(&mut s, 0x512, 4);
    probe(&mut s, 0x200, 12);
    s.u8(10).u8(0);
    out_.push(s.done());
    // The local APIC's modes: vCPU 1 to x2APIC, its ID and logical ID read,
    // enabled by SVR, a self-IPI; vCPU 0 too, and an IPI between them; CR8;
    // the page gone; then the transitions the SDM refuses, and the way back
    // through disabled, and the MSRs refused outside x2APIC mode.
    header(&mut s);
    apic_base(&mut s, 1, 2, false, None, true);
    rdmsr(&mut s, 1, 0x802);
    rdmsr(&mut s, 1, 0x80d);
    wrmsr(&mut s, 1, 0x80f, 0x1ff);
    wrmsr(&mut s, 1, 0x83f, 0x51);
    s.u8(7).u8(1);
    mmio(&mut s, false, 0xf0, 0x1ff);
    apic_base(&mut s, 0, 2, true, None, true);
    x2apic_ipi(&mut s, 1, 0x45, 0);
    s.u8(7).u8(0);
    s.u8(17).u8(1).u8(0).u8(0).u8(2).u8(3);
    rdmsr(&mut s, 1, 0x808);
    s.u8(4).u8(1).u8(0).u8(1).below(256, 2).u8(2);
    apic_base(&mut s, 1, 1, false, None, true);
    apic_base(&mut s, 1, 3, false, None, true);
    apic_base(&mut s, 1, 1, false, Some(0), true);
    apic_base(&mut s, 1, 0, false, None, true);
    apic_base(&mut s, 1, 2, false, None, true);
    rdmsr(&mut s, 1, 0x802);
    apic_base(&mut s, 1, 1, false, None, true);
    apic_base(&mut s, 1, 2, false, None, false);
    rdmsr(&mut s, 1, 0x803);
    wrmsr(&mut s, 0, 0x80b, 1);
    s.u8(10).u8(0);
    out_.push(s.done());
    out_
}

/// An ELF executable: class, machine, entry, and PT_LOAD segments of
/// (physical address, bytes, memory size).
fn elf_file(is64: bool, entry: u64, segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
    let (header_size, entry_size) = if is64 { (64usize, 56usize) } else { (52, 32) };
    let mut f = vec![0u8; header_size];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = if is64 { 2 } else { 1 };
    f[5] = 1; // little endian
    f[6] = 1; // version
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&if is64 { 62u16 } else { 3 }.to_le_bytes());
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    let mut offset = (header_size + entry_size * segments.len()) as u64;
    let mut table = Vec::new();
    for &(paddr, bytes, memsz) in segments {
        let mut ph = vec![0u8; entry_size];
        ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        if is64 {
            ph[4..8].copy_from_slice(&7u32.to_le_bytes());
            ph[8..16].copy_from_slice(&offset.to_le_bytes());
            ph[16..24].copy_from_slice(&paddr.to_le_bytes());
            ph[24..32].copy_from_slice(&paddr.to_le_bytes());
            ph[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        } else {
            ph[4..8].copy_from_slice(&(offset as u32).to_le_bytes());
            ph[8..12].copy_from_slice(&(paddr as u32).to_le_bytes());
            ph[12..16].copy_from_slice(&(paddr as u32).to_le_bytes());
            ph[16..20].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            ph[20..24].copy_from_slice(&(memsz as u32).to_le_bytes());
            ph[24..28].copy_from_slice(&7u32.to_le_bytes());
        }
        table.extend(ph);
        offset += bytes.len() as u64;
    }
    if is64 {
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&(header_size as u64).to_le_bytes());
        f[52..54].copy_from_slice(&(header_size as u16).to_le_bytes());
        f[54..56].copy_from_slice(&(entry_size as u16).to_le_bytes());
        f[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    } else {
        f[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
        f[28..32].copy_from_slice(&(header_size as u32).to_le_bytes());
        f[40..42].copy_from_slice(&(header_size as u16).to_le_bytes());
        f[42..44].copy_from_slice(&(entry_size as u16).to_le_bytes());
        f[44..46].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    }
    f.extend(table);
    for (_, bytes, _) in segments {
        f.extend_from_slice(bytes);
    }
    f
}

/// `loaders::guest_ram`: low RAM of 16 MiB.
const RAM_16_MIB: [u8; 2] = [0, 1];

fn elf() -> Vec<Vec<u8>> {
    let code = [0x90u8; 32];
    [
        elf_file(true, 0x20_0000, &[(0x20_0000, &code, 0x1000)]),
        elf_file(true, 0x1000, &[(0x1000, &code, 0x800), (0x3000, &[0xcc; 8], 8), (0x8000, &[], 0x2000)]),
        elf_file(false, 0x10_0000, &[(0x10_0000, &code, 0x40)]),
    ]
    .into_iter()
    .map(|image| [&RAM_16_MIB[..], &image].concat())
    .collect()
}

fn multiboot_header(flags: u32, fields: &[u32]) -> Vec<u8> {
    let magic = 0x1bad_b002u32;
    let mut h = Vec::new();
    for v in [magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags)].iter().chain(fields) {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

fn multiboot() -> Vec<Vec<u8>> {
    // The a.out kludge: header_addr, load_addr, load_end_addr, bss_end_addr, entry.
    let load = 0x10_0000u32;
    let mut aout = multiboot_header(1 << 16, &[load, load, load + 0x60, load + 0x100, load + 0x20]);
    aout.resize(0x60, 0xf4);
    let mut inside_elf = multiboot_header(0, &[]);
    inside_elf.extend_from_slice(&[0xf4; 20]);
    let elf = elf_file(false, 0x10_000c, &[(0x10_0000, &inside_elf, 0x100)]);
    // A kernel loaded at 0x8000, over where the information went before.
    let low = 0x8000u32;
    let mut over = multiboot_header(1 << 16, &[low, low, low + 0xc00, low + 0x1800, low + 0x20]);
    over.resize(0xc00, 0xf4);
    // Fix the checksum (choice 1), no modules (0) and no command line (0, 0)
    // or two modules of 0x10 and 0x1001 bytes and a 5-byte command line; then the file.
    let none: &[u8] = &[1, 0, 0, 0];
    let two: &[u8] = &[1, 2, 0x10, 0, 0x01, 0x10, 5, 0];
    [(none, aout.clone()), (none, elf), (two, aout), (two, over)]
        .into_iter()
        .map(|(choices, image)| [&RAM_16_MIB[..], choices, &image].concat())
        .collect()
}

/// A bzImage-shaped file: four setup sectors with a boot-protocol 2.15
/// header, then `kernel_len` bytes of kernel.
fn bzimage_file(kernel_len: usize, relocatable: bool) -> Vec<u8> {
    let mut img = vec![0u8; 5 * 512 + kernel_len];
    let put32 = |img: &mut Vec<u8>, at: usize, v: u32| img[at..at + 4].copy_from_slice(&v.to_le_bytes());
    img[0x1f1] = 4; // setup_sects
    put32(&mut img, 0x1f4, (kernel_len / 16) as u32); // syssize
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x200] = 0xeb;
    img[0x201] = 0x6a; // the header ends at 0x26c
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 1; // loaded high
    put32(&mut img, 0x22c, 0x7fff_ffff); // initrd_addr_max
    put32(&mut img, 0x230, 0x20_0000); // kernel_alignment
    img[0x234] = relocatable as u8;
    img[0x236..0x238].copy_from_slice(&3u16.to_le_bytes()); // 64-bit entry, above 4 GiB
    put32(&mut img, 0x238, 2047); // cmdline_size
    img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
    put32(&mut img, 0x260, 0x200_0000); // init_size
    img[5 * 512..].fill(0x90);
    img
}

fn bzimage() -> Vec<Vec<u8>> {
    // RAM (256 MiB, or a map of 64 MiB less 2 MiB kept), initrd choice,
    // command line length and choice, no RSDP or ACPI placement, the file.
    let mut s = Script::default();
    let mut out = Vec::new();
    for (ram, initrd, cmdline, relocatable) in [(0, 1, 1, true), (1, 0, 0, false), (2, 2, 2, true)] {
        match ram {
            0 => s.u8(0).u8(3),
            1 => s.u8(2).u8(1).below(8192, 63).u8(1),
            _ => s.u8(0).u8(2),
        };
        s.u8(initrd);
        if initrd == 2 {
            s.below(0x3001, 0x1000);
        }
        s.below(5000, 100).u8(cmdline).u8(0).u8(0);
        out.push([s.done(), bzimage_file(64, relocatable)].concat());
    }
    out
}

fn bundle() -> Vec<Vec<u8>> {
    let entry = |name: &str, data: &[u8]| (name.to_string(), data.to_vec());
    vec![
        loader::bundle::write(&[
            entry("cmdline", b"selftest"),
            entry("vms", b"name=a image=a.img format=flat"),
            entry("a.img", &[0xf4; 64]),
        ]),
        loader::bundle::write(&[entry("", b""), entry("x", &[1, 2, 3]), entry("x", &[4])]),
        loader::bundle::write(&[]),
    ]
}

fn manifest() -> Vec<Vec<u8>> {
    [
        "# VMs\nname=a image=a.bin format=flat mode=real load=0x7c00 entry=0x7c00 memory=16\n",
        "name=b image=b.elf format=elf memory=64 cpus=2 time-limit-ms=500 corrupt-guest-state=1\n",
        "name=m image=m.img format=multiboot memory=4096 cpus=16\nname=n image=n.img format=elf\n",
        "name=l image=vmlinuz format=linux initrd=l.initrd kernel-cmdline=l.cmdline disk=d0 disk=d1 host-console=1\n",
        "name=p image=p.bin format=flat mode=protected load=0x100000 entry=0x100000\r\n\n# end\n",
    ]
    .iter()
    .map(|text| text.as_bytes().to_vec())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{feature, kind_of, target};

    /// Whether seed `index` of `name` shows `value` among its features.
    fn shows(name: &str, index: usize, value: u64) -> bool {
        let mut wanted = 0;
        feature(&mut wanted, value);
        let signal = (target(name).unwrap().run)(&seeds(name)[index].1);
        signal & wanted != 0
    }

    /// Each seed gets as far as it was written to: a chain taken and
    /// completed, a device that used a buffer and interrupted, timers that
    /// reached the VMM as interrupts, images that load.
    #[test]
    fn seeds_reach_what_they_are_for() {
        assert!(shows("virtio-queue", 1, 0x300 | 1 << 4 | 1), "a chain of one readable and one writable buffer");
        assert!(shows("virtio-queue", 1, 0x401), "completed into the used ring");
        for i in 0..3 {
            assert!(shows("virtio-console", i, 0x201), "console seed {i}: used-buffer interrupt");
            assert!(shows("virtio-blk", i, 0x201), "blk seed {i}: used-buffer interrupt");
        }
        assert!(shows("chipset", 0, 0x200 | (1 + (0x20 >> 4))), "PIT interrupt at vector 0x20");
        for request in ["Stop { status: }", "Marker { value: }", "PowerOff", "Reset"] {
            assert!(shows("chipset", 2, kind_of(request)), "{request}");
        }
        assert!(shows("chipset", 3, 0x502), "an fw_cfg item read");
        assert!(shows("chipset", 3, 0x503), "an fw_cfg item read past its end");
        assert!(shows("chipset", 3, 0x501), "an unknown fw_cfg key read");
        assert!(shows("chipset", 3, 0x602), "the host bridge's header read");
        assert!(shows("chipset", 3, 0x601), "an absent function read");
        assert!(shows("chipset", 3, 0x401), "a reset through port 0x92");
        use devices::lapic::{BaseRefused, Mode};
        let transition = |from: Mode, to: Mode| 0x700 | (from as u64) << 2 | to as u64;
        for (from, to) in [(Mode::XApic, Mode::X2Apic), (Mode::X2Apic, Mode::Disabled), (Mode::Disabled, Mode::XApic)] {
            assert!(shows("chipset", 4, transition(from, to)), "{from:?} to {to:?}");
        }
        for refused in [BaseRefused::X2ApicToXApic, BaseRefused::Invalid, BaseRefused::ReservedBits] {
            assert!(shows("chipset", 4, 0xc00 | refused as u64), "{refused:?}");
        }
        for refused in [BaseRefused::DisabledToX2Apic, BaseRefused::X2ApicNotOffered] {
            assert!(shows("chipset", 4, 0xc00 | refused as u64), "{refused:?}");
        }
        assert!(shows("chipset", 4, 0x803), "RDMSR in x2APIC mode");
        assert!(shows("chipset", 4, 0x807), "WRMSR in x2APIC mode");
        assert!(shows("chipset", 4, 0x800), "RDMSR refused outside x2APIC mode");
        assert!(shows("chipset", 4, 0x806), "WRMSR refused in x2APIC mode (EOI of 1)");
        assert!(shows("chipset", 4, 0x200 | (1 + (0x51 >> 4))), "the self-IPI taken");
        assert!(shows("chipset", 4, 0x200 | (1 + (0x45 >> 4))), "the IPI from vCPU 1 taken by vCPU 0");
        assert!(shows("multiboot", 3, 0x202), "two modules, with a kernel over 0x9000");
        for (name, count) in [("elf", 3), ("multiboot", 4), ("bzimage", 3), ("bundle", 3), ("manifest", 5)] {
            for i in 0..count {
                assert!(shows(name, i, 0), "{name} seed {i} is accepted");
            }
        }
    }

    /// The intercepted-instruction seeds are what their comments say: the
    /// refused ones refused, the others accepted.
    #[test]
    fn intercepted_seeds_are_accepted_or_refused_as_meant() {
        use arch::decode::{intercepted_length, CodeSize};
        let modes = [CodeSize::Bits16, CodeSize::Bits32, CodeSize::Bits64];
        let refused = [7, 13, 15, 17, 19, 21];
        for (i, (_, input)) in seeds("intercepted").iter().enumerate() {
            let result = intercepted_length(&input[1..], modes[input[0] as usize]);
            assert_eq!(result.is_err(), refused.contains(&i), "seed {i}: {result:?}");
        }
    }

    #[test]
    fn every_target_has_small_seeds() {
        for target in crate::TARGETS {
            let seeds = seeds(target.name);
            assert!(!seeds.is_empty(), "{} has no seeds", target.name);
            for (name, bytes) in seeds {
                assert!(
                    bytes.len() < 4096 && bytes.len() <= target.max_len,
                    "{} {name}: {} bytes",
                    target.name,
                    bytes.len()
                );
            }
        }
    }
}
