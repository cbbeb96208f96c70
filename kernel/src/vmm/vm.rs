//! A virtual machine: its RAM and EPT, its platform (the chipset with every
//! device), and why it stopped.

use super::disk::HostDisk;
use super::guest_memory::{GuestMemory, NestedFormat};
use crate::log::GuestOutput;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use devices::virtio::{blk::Block, console::Console};
use devices::{fw_cfg, layout, pci, BenchMarker, Chipset, ChipsetConfig, DebugExit, FwCfg, PciHost, SystemControlA};
use loader::VmSpec;

pub use vmexit::Stop;

/// Prints one line of a VM's console.
pub type ConsoleLine = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Shared by its vCPUs without a lock: the chipset locks what each access
/// touches, RAM is written as the guest writes it, and the rest does not
/// change once the VM runs.
pub struct Vm {
    pub name: String,
    /// Before `memory`, so dropped first: it writes into a page of it (see
    /// `IoApicWindowPage`).
    pub chipset: Chipset,
    pub memory: GuestMemory,
    /// TSC when the VM was built: bench markers measure from here.
    pub started: u64,
    /// Owns the host console (see `poll_host_console`).
    host_console: bool,
    next_console_poll: AtomicU64,
    /// Its console output's place in the host's serial queue (COM1, virtio
    /// console and the print hypercall all write here, within one quota).
    pub output: Arc<GuestOutput>,
    /// One line of the print hypercall, in that queue as "vm NAME | ...".
    pub console: ConsoleLine,
}

/// The page at the IOAPIC's address, mapped read-only in the VM: the
/// chipset keeps IOREGSEL and IOWIN there, so the guest's IOAPIC reads do not
/// exit (`devices::IoApicWindow`).
struct IoApicWindowPage {
    /// The VM's `GuestMemory` owns it and outlives the chipset, which owns this.
    frame: u64,
}

impl devices::IoApicWindow for IoApicWindowPage {
    fn show(&self, select: u32, window: u32) {
        let page = crate::memory::phys_to_virt(self.frame) as *mut u32;
        // SAFETY: the frame is a whole page of the VM's, mapped at the
        // physical-memory offset, alive while the chipset is (see `frame`);
        // the guest only reads it. Volatile: a vCPU on another core reads it.
        unsafe {
            page.write_volatile(select);
            page.add(4).write_volatile(window);
        }
    }
}

impl Vm {
    /// A VM with RAM and the PC platform: COM1 (output on the host log,
    /// prefixed with the VM's name), interrupt controllers, timers, RTC, ACPI,
    /// system control port A, the PCI host bridge, fw_cfg, and the debug-exit
    /// port.
    /// With `console` (a managed host), COM1 goes through it (see `vm_console`).
    pub fn new(spec: &VmSpec, console: Option<&Arc<super::vm_console::VmConsole>>) -> Result<Vm, String> {
        let bytes = spec.memory_mib as u64 * 1024 * 1024;
        let format = match super::vendor() {
            Some(super::Vendor::Amd) => NestedFormat::Npt,
            _ => NestedFormat::Ept,
        };
        let mut memory = GuestMemory::new(bytes, format)
            .ok_or_else(|| alloc::format!("not enough host memory for {} MiB of guest RAM", spec.memory_mib))?;
        if super::vendor() == Some(super::Vendor::Intel)
            && super::intel::cpu::vmx().is_ok_and(|vmx| vmx.controls.apic_virtualization)
            && memory.map_apic_access_page(layout::LAPIC_BASE).is_none()
        {
            // No frame or EPT table left: the APIC page is emulated. (RAM never
            // reaches it: the APIC page is in the MMIO hole of the memory map.)
            log::warn!("vm {}: no APIC virtualisation (cannot map the APIC-access page)", spec.name);
        }
        let name = spec.name.clone();
        let managed_console = console.is_some();
        let output = GuestOutput::new();
        let sink = output.clone();
        let com1_output: devices::uart::LineSink = match console {
            Some(console) => console.sink(sink),
            None if spec.host_console => Box::new(move |bytes: &[u8]| sink.raw(bytes)),
            None => Box::new(move |line: &[u8]| sink.line(format_args!("vm {name}"), line)),
        };
        let mut chipset = Chipset::new(ChipsetConfig {
            vcpus: spec.cpus.max(1),
            tsc_hz: crate::time::tsc_hz(),
            unix_time: crate::time::wall_clock_unix(),
            now: crate::time::rdtsc(),
            com1_output,
            com1_unbuffered: spec.host_console || console.is_some(),
        });
        match memory.map_device_window_page(layout::IOAPIC_BASE) {
            Some(frame) => chipset.mirror_ioapic_window(Box::new(IoApicWindowPage { frame })),
            // Every IOAPIC access exits instead.
            None => log::warn!("vm {}: no frame for the IOAPIC's window page", spec.name),
        }
        // fw_cfg tells the guest its vCPU count and RAM size (the manifest keeps
        // both far below what the items can hold).
        let cpus = u16::try_from(spec.cpus.max(1)).unwrap_or(u16::MAX);
        let firmware_config = FwCfg::new(cpus, bytes);
        let ports: [(u16, u16, Box<dyn devices::PortDevice>); 5] = [
            (layout::DEBUG_EXIT, 4, Box::new(DebugExit)),
            (layout::BENCH_MARKER, 1, Box::new(BenchMarker)),
            (layout::SYSTEM_CONTROL_A, 1, Box::new(SystemControlA::new())),
            (layout::PCI_CONFIG_ADDRESS, pci::PORTS, Box::new(PciHost::new())),
            (layout::FW_CFG, fw_cfg::PORTS, Box::new(firmware_config)),
        ];
        for (base, len, device) in ports {
            chipset.ports.get_mut().register(base, len, device).map_err(|e| alloc::format!("{e:?}"))?;
        }
        let sink = output.clone();
        let name = spec.name.clone();
        let console = Box::new(move |line: &[u8]| sink.line(format_args!("vm {name}"), line));
        Ok(Vm {
            console,
            name: spec.name.clone(),
            chipset,
            memory,
            started: crate::time::rdtsc(),
            host_console: spec.host_console && !managed_console,
            next_console_poll: AtomicU64::new(0),
            output,
        })
    }

    /// For the VM that owns the host console: what was typed there goes to its
    /// COM1. Looked at every few milliseconds, by whichever vCPU passes by (an
    /// idle vCPU still exits at every host tick); the vCPU that moves the
    /// next look on does this one.
    pub fn poll_host_console(&self, now: u64) {
        const POLLS_PER_SECOND: u64 = 200;
        let due = self.next_console_poll.load(Ordering::Relaxed);
        if !self.host_console || now < due {
            return;
        }
        let next = now + crate::time::tsc_hz() / POLLS_PER_SECOND;
        if self.next_console_poll.compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        let mut typed = [0u8; 16];
        let n = crate::log::read_input(&mut typed);
        if n > 0 {
            self.chipset.com1_input(&typed[..n]);
        }
    }

    /// The virtio devices every VM has: a console (output on the host log as
    /// "vm NAME hvc | ...") and one virtio-blk disk per image. A guest without a
    /// virtio driver never touches them; a hostile one can, so every VM's
    /// devices face the same guests.
    pub fn add_virtio_devices(&mut self, spec: &VmSpec, disks: &[&[u8]]) -> Result<(), String> {
        let name = spec.name.clone();
        let sink = self.output.clone();
        let console = Console::new(Box::new(move |line: &[u8]| sink.line(format_args!("vm {name} hvc"), line)));
        self.chipset.add_virtio(Box::new(console)).map_err(String::from)?;
        for (index, image) in disks.iter().enumerate() {
            let disk = HostDisk::from_image(image)
                .ok_or_else(|| alloc::format!("not enough host memory for disk {index} ({} bytes)", image.len()))?;
            let serial = alloc::format!("basalt-{}-{index}", spec.name);
            self.chipset.add_virtio(Box::new(Block::new(Box::new(disk), &serial))).map_err(String::from)?;
        }
        Ok(())
    }
}
