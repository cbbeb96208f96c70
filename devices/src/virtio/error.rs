//! What a driver did wrong: the protocol violations that break a virtio
//! device (see the transport in mod.rs), one variant each, with the numbers
//! the log line shows. The texts are the log's; keep them as they are.

use super::queue::MAX_CHAIN_BYTES;

/// A protocol violation found on a queue or in a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtioError {
    /// A ring or descriptor table placed so that part of it lies past
    /// u64::MAX.
    #[error("ring at {base:#x} runs past the end of the address space")]
    RingPastAddressSpace { base: u64 },
    /// A queue served with size 0.
    #[error("queue of size 0")]
    EmptyQueue,
    /// An entry's offset in its ring does not fit in a u64.
    #[error("ring offset overflows")]
    RingOffsetOverflow,
    /// The available ring's index or an entry of it lies outside guest RAM.
    #[error("ring address {at:#x} is outside guest RAM")]
    RingOutsideRam { at: u64 },
    /// The driver's available index claims more chains than the queue holds.
    #[error("available index {available} runs {outstanding} ahead of a {size}-entry queue")]
    AvailableAhead { available: u16, outstanding: u16, size: u16 },
    /// A chain names a descriptor past the end of the table.
    #[error("descriptor index {index} outside a {size}-entry table")]
    DescriptorIndex { index: u16, size: u16 },
    /// A descriptor table entry lies outside guest RAM.
    #[error("descriptor table {at:#x} is outside guest RAM")]
    DescriptorTableOutsideRam { at: u64 },
    /// VIRTQ_DESC_F_INDIRECT, which Basalt does not offer.
    #[error("indirect descriptor, a feature that was not offered")]
    IndirectDescriptor,
    /// A buffer, or a position in one, past u64::MAX.
    #[error("buffer wraps the address space")]
    BufferWraps,
    /// A descriptor's buffer does not lie in guest RAM.
    #[error("buffer {addr:#x}+{len:#x} is outside guest RAM")]
    BufferOutsideRam { addr: u64, len: u32 },
    /// A chain's buffers add up to more than MAX_CHAIN_BYTES.
    #[error("chain longer than {} MiB", MAX_CHAIN_BYTES >> 20)]
    ChainTooLong,
    /// A device-readable buffer after a device-writable one.
    #[error("readable buffer after a writable one")]
    ReadableAfterWritable,
    /// A chain with more descriptors than the queue has entries.
    #[error("descriptor chain from {head} loops or is longer than the queue")]
    ChainLoops { head: u16 },
    /// The used ring's element for a completed chain lies outside guest RAM.
    #[error("used ring {at:#x} is outside guest RAM")]
    UsedRingOutsideRam { at: u64 },
    /// The used ring's index lies outside guest RAM.
    #[error("used ring is outside guest RAM")]
    UsedIndexOutsideRam,
    /// A device read more than the chain's readable buffers hold.
    #[error("request shorter than its header says")]
    RequestTooShort,
    /// A device wrote more than the chain's writable buffers hold.
    #[error("response longer than the driver's buffers")]
    ResponseTooLong,
    /// A buffer of the chain moved out of guest RAM while it was served.
    #[error("buffer outside guest RAM")]
    StreamOutsideRam,
    /// A virtio-blk chain without room for its header or its status byte.
    #[error("block request without a header or a status byte")]
    BlockRequestMalformed,
    /// A notification for a queue the device does not have.
    #[error("no queue {queue}")]
    NoQueue { queue: usize },
}

/// Why a device stopped serving: the queue where the driver broke the
/// protocol, and how. Renders as the log shows it, "queue 1: ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue {queue}: {error}")]
pub struct Broken {
    pub queue: usize,
    pub error: VirtioError,
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    /// Every variant renders as the log line had it when the errors were
    /// strings: integration logs and readers match on these texts.
    #[test]
    fn each_error_renders_its_text_and_numbers() {
        use VirtioError::*;
        let cases: [(VirtioError, &str); 20] = [
            (
                RingPastAddressSpace { base: 0xffff_ffff_ffff_fff0 },
                "ring at 0xfffffffffffffff0 runs past the end of the address space",
            ),
            (EmptyQueue, "queue of size 0"),
            (RingOffsetOverflow, "ring offset overflows"),
            (RingOutsideRam { at: 0x2002 }, "ring address 0x2002 is outside guest RAM"),
            (
                AvailableAhead { available: 100, outstanding: 100, size: 16 },
                "available index 100 runs 100 ahead of a 16-entry queue",
            ),
            (DescriptorIndex { index: 17, size: 16 }, "descriptor index 17 outside a 16-entry table"),
            (DescriptorTableOutsideRam { at: 0x10_0000 }, "descriptor table 0x100000 is outside guest RAM"),
            (IndirectDescriptor, "indirect descriptor, a feature that was not offered"),
            (BufferWraps, "buffer wraps the address space"),
            (BufferOutsideRam { addr: 0xfff_fff0, len: 64 }, "buffer 0xffffff0+0x40 is outside guest RAM"),
            (ChainTooLong, "chain longer than 16 MiB"),
            (ReadableAfterWritable, "readable buffer after a writable one"),
            (ChainLoops { head: 3 }, "descriptor chain from 3 loops or is longer than the queue"),
            (UsedRingOutsideRam { at: 0x3004 }, "used ring 0x3004 is outside guest RAM"),
            (UsedIndexOutsideRam, "used ring is outside guest RAM"),
            (RequestTooShort, "request shorter than its header says"),
            (ResponseTooLong, "response longer than the driver's buffers"),
            (StreamOutsideRam, "buffer outside guest RAM"),
            (BlockRequestMalformed, "block request without a header or a status byte"),
            (NoQueue { queue: 2 }, "no queue 2"),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text, "{error:?}");
        }
    }

    #[test]
    fn a_broken_device_names_the_queue_first() {
        let broken = Broken { queue: 1, error: VirtioError::ChainLoops { head: 0 } };
        assert_eq!(broken.to_string(), "queue 1: descriptor chain from 0 loops or is longer than the queue");
    }
}
