//! The policy's promises, each checked against the simulator or by calling
//! the policy directly as the kernel will.

mod sim;

use basalt_sched::{
    CoreId, CpuSet, Eevdf, Kick, Migration, NotRunnable, Params, Policy, Refused, Tunables, VcpuId, VcpuState,
};
use sim::{hogs_and_ticker, mixed_workload, Sim, VcpuSpec, Work, MS, US};

fn spec(work: Work, weight: u32, cores: usize) -> VcpuSpec {
    let mut params = Params::new(cores);
    params.weight = weight;
    VcpuSpec { work, params }
}

fn percent(part: u64, whole: u64) -> f64 {
    part as f64 * 100.0 / whole as f64
}

#[test]
fn weights_one_to_three_on_one_core_share_25_75_in_every_100ms_window() {
    let specs = vec![spec(Work::Hog, 100, 1), spec(Work::Hog, 300, 1)];
    let r = Sim::new(1, specs, Tunables::default(), 1).run(2_000 * MS);
    assert!(r.fairness_windows >= 150, "sliding windows measured: {}", r.fairness_windows);
    assert!(r.fairness_error_pct <= 1.0, "worst window off by {:.3}%", r.fairness_error_pct);
    assert!(!r.window_run.is_empty());
    for window in &r.window_run {
        let light = percent(window[0], 100 * MS);
        assert!((light - 25.0).abs() <= 1.0, "light vCPU got {light:.2}% of a window");
        assert!((percent(window[1], 100 * MS) - 75.0).abs() <= 1.0);
    }
}

#[test]
fn a_20_percent_cap_holds_within_5_points_alone_or_contended() {
    for contended in [false, true] {
        let mut capped = spec(Work::Hog, 256, 1);
        capped.params.cap = Some(20);
        let mut specs = vec![capped];
        if contended {
            specs.push(spec(Work::Hog, 256, 1));
        }
        let r = Sim::new(1, specs, Tunables::default(), 2).run(1_000 * MS);
        for window in &r.window_run {
            let share = percent(window[0], 100 * MS);
            assert!((share - 20.0).abs() <= 5.0, "capped vCPU got {share:.2}% (contended: {contended})");
        }
        if contended {
            let other = percent(r.window_run[3][1], 100 * MS);
            assert!(other >= 75.0, "the uncapped vCPU gets what the cap leaves: {other:.2}%");
        } else {
            assert!(r.halted[0] >= 0.75, "the core halts while the cap holds the vCPU back");
        }
    }
}

#[test]
fn affinity_is_never_violated() {
    let r = Sim::new(16, mixed_workload(64, 16, 3), Tunables::default(), 3).run(500 * MS);
    assert_eq!(r.affinity_violations, 0);
    assert!(r.decisions > 10_000, "the run exercised the policy: {} decisions", r.decisions);

    // A pinned vCPU queues on its core even when every other core is idle,
    // and an idle core's balance leaves it there.
    let mut policy = Eevdf::new(4, Tunables::default());
    let busy = add(&mut policy, 0, Params { cpus: CpuSet::only(CoreId(2)), ..Params::new(4) });
    let pinned = add(&mut policy, 1, Params { cpus: CpuSet::only(CoreId(2)), ..Params::new(4) });
    policy.wake(busy, 0);
    policy.pick(CoreId(2), 0);
    policy.wake(pinned, 10);
    assert_eq!(policy.core_of(pinned), Some(CoreId(2)));
    assert_eq!(policy.balance(CoreId(0), 20), None);
    assert_eq!(policy.core_of(pinned), Some(CoreId(2)));
}

fn add(policy: &mut Eevdf, id: u32, params: Params) -> VcpuId {
    policy.add(VcpuId(id), params, 0).expect("vCPU accepted");
    VcpuId(id)
}

#[test]
fn a_dedicated_vcpu_is_never_preempted_nor_migrated_and_refuses_a_taken_core() {
    let cores = 3;
    let mut dedicated = spec(Work::Hog, 256, cores);
    dedicated.params.cpus = CpuSet::only(CoreId(0));
    dedicated.params.dedicated = true;
    let mut specs = vec![dedicated];
    for i in 0..12 {
        let work = if i % 3 == 0 { Work::Timer { period: MS, burst: 30 * US } } else { Work::Hog };
        specs.push(spec(work, 1024, cores));
    }
    let end = 500 * MS;
    let sim = Sim::new(cores, specs, Tunables::default(), 4);
    let r = sim.run(end);
    assert_eq!(r.affinity_violations, 0);
    assert!(r.run_ns[0] >= end - 10 * US, "the dedicated vCPU had its core all the time: {} ns", r.run_ns[0]);

    let mut policy = Eevdf::new(2, Tunables::default());
    let owner = add(&mut policy, 0, Params { cpus: CpuSet::only(CoreId(0)), dedicated: true, ..Params::new(2) });
    let shared = add(&mut policy, 1, Params::new(2));
    policy.wake(owner, 0);
    policy.wake(shared, 0);
    let decision = policy.pick(CoreId(0), 0);
    assert_eq!(decision.run, Some(owner));
    assert_eq!(decision.until, None, "a dedicated core has no tick");
    assert_eq!(policy.core_of(shared), Some(CoreId(1)), "shared vCPUs keep off the dedicated core");
    for t in 1..100 {
        let now = t * MS;
        policy.wake(VcpuId(1), now);
        assert_eq!(policy.balance(CoreId(0), now), None);
        assert_eq!(policy.pick(CoreId(0), now).run, Some(owner));
    }
    let stats = policy.accounting(owner).unwrap();
    assert_eq!((stats.migrations, stats.wait_ns, stats.slices), (0, 0, 1));

    let second = Params { cpus: CpuSet::only(CoreId(0)), dedicated: true, ..Params::new(2) };
    assert_eq!(
        policy.add(VcpuId(2), second, 0),
        Err(Refused::CoreTaken { core: CoreId(0), dedicated_to: Some(owner), runnable: 1 })
    );
    let on_busy_core = Params { cpus: CpuSet::only(CoreId(1)), dedicated: true, ..Params::new(2) };
    assert_eq!(
        policy.add(VcpuId(2), on_busy_core, 0),
        Err(Refused::CoreTaken { core: CoreId(1), dedicated_to: None, runnable: 1 })
    );

    let mut policy = Eevdf::new(2, Tunables::default());
    let pinned = add(&mut policy, 0, Params { cpus: CpuSet::only(CoreId(1)), ..Params::new(2) });
    let taking = Params { cpus: CpuSet::only(CoreId(1)), dedicated: true, ..Params::new(2) };
    assert_eq!(policy.add(VcpuId(1), taking, 0), Err(Refused::WouldStrand { core: CoreId(1), vcpu: pinned }));
}

#[test]
fn a_sleeper_among_three_hogs_wakes_within_2ms_and_200us_on_average() {
    for (period, burst) in [(MS, 30 * US), (10 * MS, 500 * US)] {
        let mut specs = hogs_and_ticker(1, 5);
        specs[3].work = Work::Timer { period, burst };
        let r = Sim::new(1, specs, Tunables::default(), 5).run(1_000 * MS);
        assert!(r.latency.count() >= 80, "wake-ups measured: {}", r.latency.count());
        assert!(r.latency.mean() <= 200 * US, "mean wake-up latency {} ns", r.latency.mean());
        assert!(r.latency.max() <= 2 * MS, "worst wake-up latency {} ns", r.latency.max());
    }
}

#[test]
fn an_idle_core_gets_no_deadline() {
    let mut policy = Eevdf::new(2, Tunables::default());
    let alone = add(&mut policy, 0, Params::new(2));
    let decision = policy.pick(CoreId(1), 0);
    assert_eq!((decision.run, decision.until), (None, None));
    assert_eq!(policy.wake(alone, 0), Some(Kick { core: CoreId(0) }));
    let decision = policy.pick(CoreId(0), 0);
    assert_eq!((decision.run, decision.until), (Some(alone), None), "a vCPU alone on its core is not interrupted");
    policy.block(alone, NotRunnable::Blocked, 5 * MS);
    let decision = policy.pick(CoreId(0), 5 * MS);
    assert_eq!((decision.run, decision.until), (None, None));

    // Eight guests halted between 100 Hz timer ticks on two cores: the cores
    // sleep, and no timer ever fires on a core with nothing to run.
    let specs = (0..8).map(|_| spec(Work::Timer { period: 10 * MS, burst: 100 * US }, 256, 2)).collect();
    let r = Sim::new(2, specs, Tunables::default(), 6).run(1_000 * MS);
    assert_eq!(r.idle_timer_events, 0);
    assert!(r.halted.iter().all(|&h| h >= 0.9), "halted shares {:?}", r.halted);
}

#[test]
fn balancing_moves_runnable_work_from_the_busiest_allowed_core_to_an_idle_one() {
    let mut policy = Eevdf::new(3, Tunables::default());
    let on_one = add(&mut policy, 0, Params { cpus: CpuSet::only(CoreId(1)), ..Params::new(3) });
    let on_two = add(&mut policy, 1, Params { cpus: CpuSet::only(CoreId(2)), ..Params::new(3) });
    for (vcpu, core) in [(on_one, 1), (on_two, 2)] {
        policy.wake(vcpu, 0);
        policy.pick(CoreId(core), 0);
    }
    let free: Vec<VcpuId> = (2..6).map(|i| add(&mut policy, i, Params::new(3))).collect();
    for &vcpu in &free {
        policy.wake(vcpu, 0);
    }
    policy.pick(CoreId(0), 0);
    assert_eq!(policy.runnable_on(CoreId(0)), 4, "with cores 1 and 2 busy, the free vCPUs queued on core 0");

    policy.block(on_two, NotRunnable::Blocked, MS);
    assert_eq!(policy.pick(CoreId(2), MS).run, None);
    let moved = policy.balance(CoreId(2), MS).expect("core 2 idle, core 0 has 3 waiting");
    assert!(matches!(moved, Migration { from: CoreId(0), to: CoreId(2), .. }));
    assert!(free.contains(&moved.vcpu));
    assert_eq!(policy.pick(CoreId(2), MS).run, Some(moved.vcpu));
    // It never ran, so no core holds its state: not counted as a migration.
    assert_eq!(policy.accounting(moved.vcpu).unwrap().migrations, 0);
    assert_eq!(policy.balance(CoreId(2), MS + 500 * US), None, "at most one balance per interval");
    // A busy core evens out too: core 1 runs one vCPU, core 0 still has three.
    let moved = policy.balance(CoreId(1), MS).expect("3 runnable against 1");
    assert_eq!((moved.from, moved.to), (CoreId(0), CoreId(1)));
    assert_eq!(policy.core_of(on_one), Some(CoreId(1)), "the pinned vCPU stays");
    let loads: Vec<u32> = (0..3).map(|c| policy.runnable_on(CoreId(c))).collect();
    assert_eq!(loads, [2, 2, 1]);
    assert_eq!(policy.balance(CoreId(2), 20 * MS), None, "one runnable apart is not worth a move");
}

#[test]
fn a_run_of_4096_vcpus_on_256_cores_completes_and_stays_fair() {
    let r = Sim::new(256, mixed_workload(4096, 256, 8), Tunables::default(), 8).run(250 * MS);
    assert_eq!(r.affinity_violations, 0);
    assert!(r.fairness_windows > 1_000, "windows measured: {}", r.fairness_windows);
    assert!(r.fairness_error_pct <= 1.5, "worst window off by {:.3}%", r.fairness_error_pct);
    assert!(r.run_ns.iter().all(|&ns| ns > 0), "every vCPU ran");
    assert!(r.halted.iter().all(|&h| h < 0.05), "16 vCPUs per core leave no core idle: {:?}", r.halted);
}

#[test]
fn states_refusals_yield_and_removal() {
    let mut policy = Eevdf::new(1, Tunables::default());
    assert_eq!(policy.add(VcpuId(0), Params { weight: 0, ..Params::new(1) }, 0), Err(Refused::BadWeight(0)));
    assert_eq!(policy.add(VcpuId(0), Params { cap: Some(101), ..Params::new(1) }, 0), Err(Refused::BadCap(101)));
    let elsewhere = Params { cpus: CpuSet::only(CoreId(5)), ..Params::new(1) };
    assert_eq!(policy.add(VcpuId(0), elsewhere, 0), Err(Refused::NoUsableCore));

    let a = add(&mut policy, 0, Params::new(1));
    let b = add(&mut policy, 1, Params::new(1));
    assert_eq!(policy.add(a, Params::new(1), 0), Err(Refused::AlreadyAdded(a)));
    assert_eq!(policy.state(a), Some(VcpuState::Stopped));
    policy.wake(a, 0);
    policy.wake(b, 0);
    let first = policy.pick(CoreId(0), 0).run.unwrap();
    let second = if first == a { b } else { a };
    assert_eq!((policy.state(first), policy.state(second)), (Some(VcpuState::Running), Some(VcpuState::Runnable)));

    // A PAUSE-loop exit: the spinner steps aside at once, rate limit or not.
    policy.yield_now(CoreId(0), 10 * US);
    assert_eq!(policy.pick(CoreId(0), 10 * US).run, Some(second));
    assert_eq!(policy.state(first), Some(VcpuState::Runnable));

    policy.block(first, NotRunnable::WaitingForSipi, 20 * US);
    assert_eq!(policy.state(first), Some(VcpuState::WaitingForSipi));
    let stats = policy.remove(second, MS).expect("known vCPU");
    assert!(stats.run_ns > 0 && stats.slices == 1);
    assert_eq!(policy.state(second), None);
    assert_eq!(policy.pick(CoreId(0), MS).run, None);
}

/// A vCPU sent to another core at the end of its slice (its request served,
/// as with `migrate=every-slice`) gets a new request there: a slice of its
/// own, never one that ends where it starts.
#[test]
fn a_vcpu_moved_at_its_slice_end_gets_a_whole_slice_on_its_new_core() {
    let mut policy = Eevdf::new(2, Tunables::default());
    let first_core = Params { cpus: CpuSet::only(CoreId(0)), ..Params::new(2) };
    let a = add(&mut policy, 0, first_core.clone());
    let b = add(&mut policy, 1, first_core);
    // Core 1 is busy too, so the mover shares it.
    let c = add(&mut policy, 2, Params { cpus: CpuSet::only(CoreId(1)), ..Params::new(2) });
    policy.wake(a, 0);
    policy.wake(b, 0);
    policy.wake(c, 0);
    assert_eq!(policy.pick(CoreId(1), 0).run, Some(c));
    let decision = policy.pick(CoreId(0), 0);
    let (running, until) = (decision.run.expect("one runs"), decision.until.expect("contended: a slice end"));
    // At its slice's end it must move to core 1.
    let moved = Params { cpus: CpuSet::only(CoreId(1)), ..Params::new(2) };
    assert_eq!(policy.set_params(running, moved, until), Ok(Some(Kick { core: CoreId(0) })));
    let decision = policy.pick(CoreId(0), until);
    assert_eq!(decision.kick, Some(Kick { core: CoreId(1) }));
    // Whenever core 1 runs it, it runs for a while: never a slice that ends
    // where it starts.
    let mut now = until;
    for _ in 0..8 {
        let decision = policy.pick(CoreId(1), now);
        let end = decision.until.expect("two vCPUs share core 1: slices end");
        assert!(end > now, "a slice that ends at once: {decision:?} at {now}");
        if decision.run == Some(running) {
            return;
        }
        now = end;
    }
    panic!("the moved vCPU never ran on core 1");
}

#[test]
fn changed_parameters_take_effect_at_once() {
    let mut policy = Eevdf::new(2, Tunables::default());
    let vcpu = add(&mut policy, 0, Params::new(2));
    policy.wake(vcpu, 0);
    assert_eq!(policy.pick(CoreId(0), 0).run, Some(vcpu));

    // Its core leaves its affinity while it runs: the core is kicked and sends it over.
    let moved = Params { cpus: CpuSet::only(CoreId(1)), ..Params::new(2) };
    assert_eq!(policy.set_params(vcpu, moved, MS), Ok(Some(Kick { core: CoreId(0) })));
    let decision = policy.pick(CoreId(0), MS);
    assert_eq!((decision.run, decision.kick), (None, Some(Kick { core: CoreId(1) })));
    assert_eq!(policy.pick(CoreId(1), MS).run, Some(vcpu));
    assert_eq!(policy.accounting(vcpu).unwrap().migrations, 1);

    // A cap set on a running vCPU gives it a fresh period's budget, then holds it back.
    let capped = Params { cap: Some(50), cpus: CpuSet::only(CoreId(1)), ..Params::new(2) };
    assert_eq!(policy.set_params(vcpu, capped, 2 * MS), Ok(None));
    let decision = policy.pick(CoreId(1), 2 * MS);
    assert_eq!((decision.run, decision.until), (Some(vcpu), Some(7 * MS)));
    let decision = policy.pick(CoreId(1), 7 * MS);
    assert_eq!((decision.run, decision.until), (None, Some(12 * MS)));
    assert_eq!(policy.state(vcpu), Some(VcpuState::Throttled));
    assert_eq!(policy.pick(CoreId(1), 12 * MS).run, Some(vcpu));

    assert_eq!(
        policy.set_params(vcpu, Params { dedicated: true, ..Params::new(2) }, 13 * MS),
        Err(Refused::DedicatedChange)
    );
    assert_eq!(policy.set_params(VcpuId(9), Params::new(2), 13 * MS), Err(Refused::UnknownVcpu(VcpuId(9))));
}

/// Any sequence of the kernel's calls keeps each core's count of runnable
/// vCPUs equal to the vCPUs it has running or queued: caps that throttle,
/// halts, wake-ups, pauses, yields, parameter changes and moves, in random
/// order (a count that went below zero showed in the shell's `cores`).
#[test]
fn runnable_counts_match_the_vcpus_whatever_the_kernel_calls() {
    let cores = 2;
    for seed in 0..1000 {
        let mut rng = sim::Rng::new(seed);
        let mut policy = Eevdf::new(cores, Tunables::default());
        let vcpus: Vec<VcpuId> = (0..4).map(|i| add(&mut policy, i, Params::new(cores))).collect();
        let mut now = 0;
        for step in 0..400 {
            now += rng.exp(300 * US);
            let v = vcpus[rng.below(vcpus.len() as u64) as usize];
            let core = CoreId(rng.below(cores as u64) as u32);
            match rng.below(8) {
                0 | 1 => drop(policy.wake(v, now)),
                2 => policy.block(v, NotRunnable::Blocked, now),
                3 => policy.block(v, NotRunnable::Paused, now),
                4 => policy.yield_now(core, now),
                5 => {
                    let mut params = Params::new(cores);
                    params.cap = [None, Some(20), Some(50)][rng.below(3) as usize];
                    if rng.below(2) == 0 {
                        params.cpus = CpuSet::only(CoreId(rng.below(cores as u64) as u32));
                    }
                    let _ = policy.set_params(v, params, now);
                }
                _ => {
                    let _ = policy.balance(core, now);
                    let _ = policy.pick(core, now);
                }
            }
            for c in 0..cores {
                let core = CoreId(c as u32);
                let counted = vcpus
                    .iter()
                    .filter(|&&v| {
                        policy.core_of(v) == Some(core)
                            && matches!(policy.state(v), Some(VcpuState::Running | VcpuState::Runnable))
                    })
                    .count() as u32;
                assert_eq!(policy.runnable_on(core), counted, "seed {seed} step {step}: core {c}");
            }
        }
    }
}
