//! Every handler on the fake vCPU, VM and host, with hostile inputs.

#[test]
fn every_exit_kind_has_its_own_name() {
    let mut names = crate::Exit::KIND_NAMES.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), crate::Exit::KINDS);
}
