//! The uncompressed kernel inside a bzImage: what xtask boots (through its
//! PVH entry, or its 64-bit one) instead of the bzImage, so the guest skips
//! its decompressor (most of an emulated Linux boot before init).
//!
//! A bzImage is the real-mode setup, then the protected-mode part: the
//! decompressor with the compressed kernel as its payload. The setup header
//! says where the payload lies (payload_offset from the start of the
//! protected-mode part, payload_length; boot protocol 2.08 and later). The
//! payload is the vmlinux ELF file, stripped of symbols (with the relocation
//! table after it when the kernel is relocatable), compressed by one of the
//! formats Linux's build offers; its last 4 bytes are the uncompressed size
//! (gzip's own trailer, appended by the build for the others). XZ, gzip and
//! zstd are decoded here, the others refused by name.
//!
//! What xtask keeps is the vmlinux less what loading never reads
//! (`compact`): Debian's is about 66 MB, of which 24 MB are zero bytes at the
//! ends of segments (its bss is in the file) and 6 MB section data and the
//! relocation table, all of which would otherwise go into the boot image and
//! be read through the BIOS at every boot.

use std::io::Read;

use loader::linux::header::{HEADER, PAYLOAD_LENGTH, PAYLOAD_OFFSET, SETUP_SECTS, VERSION};

/// payload_offset and payload_length came with boot protocol 2.08.
const PAYLOAD_VERSION: u16 = 0x0208;
/// More than any kernel decompresses to; bounds what a damaged or hostile
/// payload can make xtask allocate.
const MAX_VMLINUX: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    Gzip,
    Xz,
    Zstd,
}

/// The payload formats Linux's x86 build makes, by their magic bytes, and
/// whether they are decoded here.
const FORMATS: [(&[u8], &str, Option<Compression>); 7] = [
    (&[0x1f, 0x8b], "gzip", Some(Compression::Gzip)),
    (&[0xfd, b'7', b'z', b'X', b'Z', 0], "XZ", Some(Compression::Xz)),
    (&[0x28, 0xb5, 0x2f, 0xfd], "zstd", Some(Compression::Zstd)),
    (b"BZh", "bzip2", None),
    (&[0x5d, 0, 0], "LZMA", None),
    (&[0x89, b'L', b'Z', b'O'], "LZO", None),
    (&[0x02, 0x21, 0x4c, 0x18], "LZ4", None),
];

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// The compressed kernel in `bzimage`, as its setup header locates it.
fn payload(bzimage: &[u8]) -> Result<&[u8], String> {
    if bzimage.get(HEADER..HEADER + 4) != Some(b"HdrS") {
        return Err("not a bzImage: no boot-protocol header (HdrS at 0x202)".into());
    }
    let version = u16_at(bzimage, VERSION).ok_or("the setup header is cut short")?;
    if version < PAYLOAD_VERSION {
        return Err(format!(
            "boot protocol {}.{:02} is older than 2.08: the setup header does not locate the payload",
            version >> 8,
            version & 0xff
        ));
    }
    let setup_sects = match bzimage.get(SETUP_SECTS).copied().ok_or("the setup header is cut short")? {
        0 => 4,
        n => usize::from(n),
    };
    let offset = u32_at(bzimage, PAYLOAD_OFFSET).ok_or("the setup header is cut short")?;
    let length = u32_at(bzimage, PAYLOAD_LENGTH).ok_or("the setup header is cut short")?;
    // The protected-mode part starts after the boot sector and the setup sectors.
    let start = usize::try_from(offset).ok().and_then(|offset| (setup_sects + 1).checked_mul(512)?.checked_add(offset));
    let end = start.zip(usize::try_from(length).ok()).and_then(|(start, length)| start.checked_add(length));
    start.zip(end).and_then(|(start, end)| bzimage.get(start..end)).ok_or_else(|| {
        format!(
            "the payload (payload_offset {offset:#x}, payload_length {length:#x}, after {setup_sects} setup \
                 sectors) lies past the end of the {}-byte file",
            bzimage.len()
        )
    })
}

/// The vmlinux ELF file compressed into `bzimage`, checked to load as one
/// (with or without the PVH entry note: without it, it boots at its 64-bit
/// entry).
pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>, String> {
    let payload = payload(bzimage)?;
    let (_, name, compression) = FORMATS
        .iter()
        .find(|(magic, _, _)| payload.starts_with(magic))
        .ok_or("the payload is in no compression format Linux's build makes (unknown magic bytes)")?;
    let compression = compression.ok_or_else(|| {
        format!("the payload is {name}-compressed; xtask unpacks only XZ, gzip and zstd kernels (boot the bzImage)")
    })?;
    // Every format's stream ends before these 4 bytes (gzip's are its own).
    let size = payload.len().checked_sub(4).and_then(|at| u32_at(payload, at)).ok_or("the payload is cut short")?;
    let vmlinux =
        decompress(compression, payload).map_err(|e| format!("the {name} payload does not decompress: {e}"))?;
    // The trailer holds the size modulo 2^32, as gzip's ISIZE does.
    if vmlinux.len() as u32 != size {
        return Err(format!("the {name} payload decompressed to {} bytes, but its trailer says {size}", vmlinux.len()));
    }
    let checked = loader::pvh::parse(&vmlinux).map_err(|e| format!("the kernel in the {name} payload: {e}"))?;
    let compacted = compact(&vmlinux)?;
    let same = loader::pvh::parse(&compacted).map_err(|e| format!("the compacted kernel: {e}"))?;
    if !loads_the_same(&checked, &same) {
        return Err("the compacted kernel would not load the same bytes (a bug in xtask)".into());
    }
    Ok(compacted)
}

// ELF64 header fields and the program header's layout.
const E_PHOFF: usize = 32;
const E_SHOFF: usize = 40;
const E_PHENTSIZE: usize = 54;
const E_PHNUM: usize = 56;
const E_SHENTSIZE: usize = 58;
const E_SHSTRNDX: usize = 62;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PAGE: u64 = 0x1000;

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// `elf` with only what loading reads: the ELF header, the PT_LOAD and
/// PT_NOTE program headers, each PT_LOAD's bytes less the zeros they end in
/// (which become zero fill: the guest gets the same memory either way) and
/// the notes. Section headers, non-loaded sections and whatever follows the
/// ELF file go. Each segment's bytes start at a file offset congruent to its
/// address modulo a page, so the result is an ordinary ELF file. ELF32
/// files are returned as they are (Linux x86-64's vmlinux is ELF64).
fn compact(elf: &[u8]) -> Result<Vec<u8>, String> {
    if elf.get(4) != Some(&2) {
        return Ok(elf.to_vec());
    }
    let damaged = || "the vmlinux's program headers are damaged".to_string();
    let phoff = u64_at(elf, E_PHOFF).and_then(|o| usize::try_from(o).ok()).ok_or_else(damaged)?;
    if u16_at(elf, E_PHENTSIZE) != Some(PHDR_SIZE as u16) {
        return Err(damaged());
    }
    let count = usize::from(u16_at(elf, E_PHNUM).ok_or_else(damaged)?);
    let table = phoff.checked_add(count * PHDR_SIZE).and_then(|end| elf.get(phoff..end)).ok_or_else(damaged)?;
    let kept: Vec<&[u8]> =
        table.chunks_exact(PHDR_SIZE).filter(|ph| matches!(u32_at(ph, 0), Some(PT_LOAD | PT_NOTE))).collect();
    let mut out = elf.get(..EHDR_SIZE).ok_or_else(damaged)?.to_vec();
    out[E_PHOFF..E_PHOFF + 8].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
    out[E_PHNUM..E_PHNUM + 2].copy_from_slice(&(kept.len() as u16).to_le_bytes());
    // No section headers: e_shoff, then e_shentsize, e_shnum and e_shstrndx.
    out[E_SHOFF..E_SHOFF + 8].fill(0);
    out[E_SHENTSIZE..E_SHSTRNDX + 2].fill(0);
    let mut headers = Vec::with_capacity(kept.len() * PHDR_SIZE);
    let mut data = Vec::new();
    let data_start = (EHDR_SIZE + kept.len() * PHDR_SIZE) as u64;
    for ph in kept {
        let (offset, size, vaddr) = (u64_at(ph, 8), u64_at(ph, 32), u64_at(ph, 16));
        let (offset, size, vaddr) = offset.zip(size).zip(vaddr).map(|((o, s), v)| (o, s, v)).ok_or_else(damaged)?;
        let bytes = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(o, s)| elf.get(o..o.checked_add(s)?))
            .ok_or_else(damaged)?;
        let bytes = if u32_at(ph, 0) == Some(PT_LOAD) {
            &bytes[..bytes.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1)]
        } else {
            bytes
        };
        // The next offset at or after the data so far that is congruent to
        // the segment's address modulo a page.
        let here = data_start + data.len() as u64;
        let at = here + (vaddr.wrapping_sub(here) % PAGE);
        data.resize((at - data_start) as usize, 0);
        data.extend_from_slice(bytes);
        let mut ph = ph.to_vec();
        ph[8..16].copy_from_slice(&at.to_le_bytes());
        ph[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        // The alignment the offsets now keep (loading ignores it).
        let align = u64_at(&ph, 48).unwrap_or(0).min(PAGE);
        ph[48..56].copy_from_slice(&align.to_le_bytes());
        headers.extend_from_slice(&ph);
    }
    out.extend_from_slice(&headers);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Whether two vmlinux files put the same bytes at the same addresses
/// (counting zero fill as zeros) and enter at the same places (PVH and
/// 64-bit).
fn loads_the_same(a: &loader::pvh::Vmlinux, b: &loader::pvh::Vmlinux) -> bool {
    let same_segment = |x: &loader::ElfSegment, y: &loader::ElfSegment| {
        let (long, short) = if x.data.len() >= y.data.len() { (x.data, y.data) } else { (y.data, x.data) };
        x.paddr == y.paddr
            && x.memsz == y.memsz
            && long.starts_with(short)
            && long[short.len()..].iter().all(|&byte| byte == 0)
    };
    (a.entry, a.elf.entry) == (b.entry, b.elf.entry)
        && a.elf.segments.len() == b.elf.segments.len()
        && a.elf.segments.iter().zip(&b.elf.segments).all(|(x, y)| same_segment(x, y))
}

/// The first stream (member, frame) in `data`, at most `MAX_VMLINUX` bytes of it.
fn decompress(compression: Compression, data: &[u8]) -> Result<Vec<u8>, String> {
    let reader: Box<dyn Read + '_> = match compression {
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(data)),
        // One stream: Linux's build writes one, then the size trailer.
        Compression::Xz => Box::new(lzma_rust2::XzReader::new(data, false)),
        Compression::Zstd => Box::new(ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| e.to_string())?),
    };
    let mut out = Vec::new();
    reader.take(MAX_VMLINUX + 1).read_to_end(&mut out).map_err(|e| e.to_string())?;
    if out.len() as u64 > MAX_VMLINUX {
        return Err(format!("it decompresses to more than {MAX_VMLINUX} bytes"));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A vmlinux with the PVH note: one PT_LOAD segment at 16 MiB entered at
    /// its start, and a PT_NOTE segment with the note.
    pub(crate) fn vmlinux() -> Vec<u8> {
        let mut f = vec![0u8; 64 + 2 * 56];
        f[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let code_at = f.len() as u64;
        let code = [0xe8u8, 1, 2, 3, 4, 0xf4, 0xf4, 0xf4]; // a CALL, for the BCJ filter to convert
        let note: Vec<u8> = [4u32, 4, 18]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .chain(*b"Xen\0")
            .chain(0x100_0000u32.to_le_bytes())
            .collect();
        for (i, (kind, offset, size)) in
            [(1u32, code_at, code.len()), (4, code_at + 8, note.len())].into_iter().enumerate()
        {
            let p = 64 + i * 56;
            f[p..p + 4].copy_from_slice(&kind.to_le_bytes());
            f[p + 8..p + 16].copy_from_slice(&offset.to_le_bytes());
            f[p + 24..p + 32].copy_from_slice(&(if kind == 1 { 0x100_0000u64 } else { 0 }).to_le_bytes());
            f[p + 32..p + 40].copy_from_slice(&(size as u64).to_le_bytes());
            f[p + 40..p + 48].copy_from_slice(&(size as u64).to_le_bytes());
            f[p + 48..p + 56].copy_from_slice(&4u64.to_le_bytes());
        }
        f.extend_from_slice(&code);
        f.extend_from_slice(&note);
        // The relocation table a relocatable kernel's payload carries after the ELF file.
        f.extend_from_slice(&[0x11; 100]);
        f
    }

    /// A bzImage-shaped file: 4 setup sectors, then `before` bytes of
    /// decompressor and the payload.
    fn bzimage(payload: &[u8], before: usize) -> Vec<u8> {
        let mut b = vec![0u8; 5 * 512 + before];
        b[SETUP_SECTS] = 4;
        b[HEADER..HEADER + 4].copy_from_slice(b"HdrS");
        b[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        b[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&(before as u32).to_le_bytes());
        b[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(payload);
        b.extend_from_slice(&[0; 64]); // the rest of the decompressor
        b
    }

    /// `compressed` with the size trailer Linux's build appends.
    fn with_size(mut compressed: Vec<u8>, size: usize) -> Vec<u8> {
        compressed.extend((size as u32).to_le_bytes());
        compressed
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        // As Linux's scripts/xz_wrap.sh: the x86 BCJ filter before LZMA2, CRC32.
        let mut options = lzma_rust2::XzOptions::with_preset(6);
        options.set_check_sum_type(lzma_rust2::CheckType::Crc32);
        options.prepend_pre_filter(lzma_rust2::FilterType::BcjX86, 0);
        let mut writer = lzma_rust2::XzWriter::new(Vec::new(), options).unwrap();
        writer.write_all(data).unwrap();
        with_size(writer.finish().unwrap(), data.len())
    }

    #[test]
    fn xz_gzip_and_zstd_payloads_unpack_to_the_vmlinux() {
        let elf = vmlinux();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gzip.write_all(&elf).unwrap();
        let gzip = gzip.finish().unwrap();
        let zstd = ruzstd::encoding::compress_to_vec(&elf[..], ruzstd::encoding::CompressionLevel::Fastest);
        let compacted = compact(&elf).unwrap();
        for payload in [xz(&elf), gzip, with_size(zstd, elf.len())] {
            assert_eq!(extract(&bzimage(&payload, 0x345)), Ok(compacted.clone()));
        }
    }

    #[test]
    fn compacting_keeps_what_loads_and_drops_the_rest() {
        let elf = vmlinux();
        let compacted = compact(&elf).unwrap();
        let (before, after) = (loader::pvh::parse(&elf).unwrap(), loader::pvh::parse(&compacted).unwrap());
        assert!(loads_the_same(&before, &after));
        // The code's trailing 0xf4s stay; the relocation table after the file goes.
        assert_eq!(after.elf.segments[0].data, &[0xe8, 1, 2, 3, 4, 0xf4, 0xf4, 0xf4]);
        assert!(!compacted.ends_with(&[0x11; 100]));
        // The segment's bytes sit at an offset congruent to its address (16 MiB) modulo a page.
        assert_eq!(u64_at(&compacted, 64 + 8), Some(0x1000));
        assert_eq!(u64_at(&compacted, 64 + 48), Some(4), "p_align 4 kept");
        // Trailing zeros become zero fill.
        let mut zeros = elf.clone();
        zeros[64 + 2 * 56 + 5..64 + 2 * 56 + 8].fill(0);
        let after = compact(&zeros).unwrap();
        let parsed = loader::pvh::parse(&after).unwrap();
        assert_eq!((parsed.elf.segments[0].data.len(), parsed.elf.segments[0].memsz), (5, 8));
        assert!(loads_the_same(&loader::pvh::parse(&zeros).unwrap(), &parsed));
    }

    #[test]
    fn other_formats_are_refused_by_name() {
        let refused = |payload: &[u8]| extract(&bzimage(payload, 16)).unwrap_err();
        assert_eq!(
            refused(b"BZh91AY&SY\0\0\0\0"),
            "the payload is bzip2-compressed; xtask unpacks only XZ, gzip and zstd kernels (boot the bzImage)"
        );
        assert!(refused(&[0x5d, 0, 0, 0x80, 0, 0, 0, 0]).starts_with("the payload is LZMA-compressed"));
        assert!(refused(b"\x89LZO\0\0\0\0").starts_with("the payload is LZO-compressed"));
        assert!(refused(&[0x02, 0x21, 0x4c, 0x18, 0, 0]).starts_with("the payload is LZ4-compressed"));
        assert_eq!(
            refused(b"\x7fELF"),
            "the payload is in no compression format Linux's build makes (unknown magic bytes)"
        );
    }

    #[test]
    fn damaged_payloads_and_headers_say_what_is_wrong() {
        let elf = vmlinux();
        let good = xz(&elf);
        // The trailer disagreeing with what came out.
        let mut wrong_size = good.clone();
        let at = wrong_size.len() - 4;
        wrong_size[at..].copy_from_slice(&7u32.to_le_bytes());
        let err = extract(&bzimage(&wrong_size, 0)).unwrap_err();
        assert_eq!(err, format!("the XZ payload decompressed to {} bytes, but its trailer says 7", elf.len()));
        // Cut in the middle of the stream.
        let err = extract(&bzimage(&good[..good.len() / 2], 0)).unwrap_err();
        assert!(err.starts_with("the XZ payload does not decompress: "), "{err}");
        // The payload fields pointing past the end of the file.
        let mut image = bzimage(&good, 0);
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(extract(&image).unwrap_err().starts_with("the payload (payload_offset 0x0, payload_length 0xffffffff"));
        // An old boot protocol, and no header at all.
        let mut image = bzimage(&good, 0);
        image[VERSION..VERSION + 2].copy_from_slice(&0x0206u16.to_le_bytes());
        assert_eq!(
            extract(&image).unwrap_err(),
            "boot protocol 2.06 is older than 2.08: the setup header does not locate the payload"
        );
        assert_eq!(extract(&elf).unwrap_err(), "not a bzImage: no boot-protocol header (HdrS at 0x202)");
    }

    #[test]
    fn a_kernel_without_the_pvh_note_is_unpacked_for_its_64_bit_entry() {
        let mut elf = vmlinux();
        // The note's type: 18 (PHYS32_ENTRY) becomes 1 (ENTRY, Xen PV's).
        let note = 64 + 2 * 56 + 8;
        elf[note + 8] = 1;
        let unpacked = extract(&bzimage(&xz(&elf), 0)).unwrap();
        let parsed = loader::pvh::parse(&unpacked).unwrap();
        assert_eq!(parsed.entry, None, "no PVH entry");
        assert_eq!(parsed.elf.entry, loader::pvh::parse(&elf).unwrap().elf.entry, "the ELF entry kept");
    }
}
