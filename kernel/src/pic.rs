//! The legacy 8259 PIC pair. Basalt uses the local APIC, but the PICs still power
//! up delivering IRQ 0-7 on vectors 8-15, on top of the CPU exceptions. Move them
//! to vectors nothing else uses and mask every line.

use x86_64::instructions::port::Port;

/// Vector bases after remapping; only spurious IRQ 7 / 15 can still arrive.
pub const VECTOR_BASE_PRIMARY: u8 = 0xe0;
pub const VECTOR_BASE_SECONDARY: u8 = 0xe8;
pub const VECTOR_SPURIOUS_PRIMARY: u8 = VECTOR_BASE_PRIMARY + 7;
pub const VECTOR_SPURIOUS_SECONDARY: u8 = VECTOR_BASE_SECONDARY + 7;

pub fn remap_and_mask() {
    // SAFETY: the standard ICW1-ICW4 initialisation of the two 8259s at their
    // fixed ports, followed by masking all lines.
    unsafe {
        let mut cmd1 = Port::<u8>::new(0x20);
        let mut data1 = Port::<u8>::new(0x21);
        let mut cmd2 = Port::<u8>::new(0xa0);
        let mut data2 = Port::<u8>::new(0xa1);
        cmd1.write(0x11); // ICW1: initialise, expect ICW4
        cmd2.write(0x11);
        data1.write(VECTOR_BASE_PRIMARY); // ICW2: vector base
        data2.write(VECTOR_BASE_SECONDARY);
        data1.write(4); // ICW3: secondary on line 2
        data2.write(2);
        data1.write(0x01); // ICW4: 8086 mode
        data2.write(0x01);
        data1.write(0xff);
        data2.write(0xff);
    }
}
