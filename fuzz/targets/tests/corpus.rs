//! Every target over its committed corpus (fuzz/corpus/<target>/), so an
//! input that once broke something is checked by every `cargo test` from
//! then on. One test function: the heap counter is per process.

use basalt_fuzz::engine::{corpus_files, replay_corpus};
use basalt_fuzz_targets::{heap, TARGETS};
use std::path::Path;

#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;

#[test]
fn every_target_passes_its_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let mut failures = Vec::new();
    for target in TARGETS {
        let dir = root.join(target.name);
        let files = corpus_files(&dir).unwrap();
        assert!(!files.is_empty(), "{} has no corpus in {}", target.name, dir.display());
        for (path, bytes) in &files {
            assert!(bytes.len() < 4096, "{} is {} bytes; corpus files stay under 4 KiB", path.display(), bytes.len());
        }
        if let Err(why) = replay_corpus(target, &dir) {
            failures.push(why);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
