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
