//! A deterministic discrete-event simulation of cores running vCPUs under a
//! policy: simulated time, synthetic workloads, the kernel's side of the
//! contract (kicks as interrupts, timers at `until`, balance then pick).
//! Shared by the integration tests and `examples/simulate.rs`.
// Each test binary and the example use a different part of it.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use basalt_sched::{CoreId, CpuSet, Eevdf, NotRunnable, Params, Policy, Tunables, VcpuId};

pub const MS: u64 = 1_000_000;
pub const US: u64 = 1_000;

/// The project's seeded generator (basalt-fuzz's splitmix64): a run repeats
/// from its seed.
pub struct Rng(basalt_fuzz::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(basalt_fuzz::Rng::new(seed))
    }

    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }

    /// An exponentially distributed duration with this mean (at least 1 µs).
    pub fn exp(&mut self, mean: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-(1.0 - u).ln() * mean as f64) as u64).max(US)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Work {
    /// Always runnable.
    Hog,
    /// Wakes every `period` (its guest timer) and runs `burst`.
    Timer { period: u64, burst: u64 },
    /// Wakes after exponential gaps and runs exponential bursts (I/O completions).
    Bursty { mean_gap: u64, mean_burst: u64 },
}

#[derive(Clone, Debug)]
pub struct VcpuSpec {
    pub work: Work,
    pub params: Params,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A core's timer (valid while its generation matches) or a kick (`gen` None).
    Core {
        core: usize,
        gen: Option<u64>,
    },
    Wake {
        vcpu: usize,
    },
    Sample,
}

struct SimCore {
    gen: u64,
    running: Option<usize>,
    started: u64,
    halted_since: Option<u64>,
    halted_ns: u64,
}

struct SimVcpu {
    spec: VcpuSpec,
    /// Work left in this burst; `u64::MAX` for a hog.
    remaining: u64,
    woke_at: Option<u64>,
    run_ns: u64,
    next_tick: u64,
}

/// Durations in buckets of `resolution` ns, 100 000 of them (one overflow bucket).
pub struct Histogram {
    resolution: u64,
    buckets: Vec<u64>,
    count: u64,
    total: u64,
    max: u64,
}

impl Histogram {
    fn new(resolution: u64) -> Self {
        Histogram { resolution, buckets: vec![0; 100_001], count: 0, total: 0, max: 0 }
    }

    fn record(&mut self, ns: u64) {
        let bucket = ((ns / self.resolution) as usize).min(self.buckets.len() - 1);
        self.buckets[bucket] += 1;
        self.count += 1;
        self.total += ns;
        self.max = self.max.max(ns);
    }

    pub fn mean(&self) -> u64 {
        self.total.checked_div(self.count).unwrap_or(0)
    }

    pub fn percentile(&self, p: f64) -> u64 {
        let target = (self.count as f64 * p).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target && *n > 0 {
                return ((i as u64 + 1) * self.resolution).min(self.max);
            }
        }
        0
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

#[derive(Clone)]
struct Sample {
    run: Vec<u64>,
    core: Vec<u32>,
    migrations: Vec<u64>,
}

/// What a run measured.
pub struct Report {
    pub decisions: u64,
    pub decision_ns: f64,
    /// Balance calls that searched, and their cost (wall clock, ns).
    pub balances: u64,
    pub balance_time: Histogram,
    pub migrations: u64,
    /// Among the hogs that stayed runnable on one core for a whole 100 ms
    /// window (windows start every 10 ms): the largest gap between a hog's
    /// run time and its weight's part of their run time, in percent of the
    /// window. With the core to themselves, that is |share − weight share|.
    pub fairness_error_pct: f64,
    pub fairness_windows: u64,
    pub latency: Histogram,
    pub affinity_violations: u64,
    /// Share of core time halted, per core.
    pub halted: Vec<f64>,
    /// Run time per vCPU over the whole run.
    pub run_ns: Vec<u64>,
    /// Run time per vCPU in each 100 ms window.
    pub window_run: Vec<Vec<u64>>,
    /// Timer interrupts taken by cores while they had nothing to run.
    pub idle_timer_events: u64,
}

pub struct Sim {
    pub policy: Eevdf,
    now: u64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    cores: Vec<SimCore>,
    vcpus: Vec<SimVcpu>,
    rng: Rng,
    samples: Vec<Sample>,
    report: Report,
    /// Every pick is checked against these, not only counted.
    pub check_affinity: bool,
}

const SAMPLE_EVERY: u64 = 10 * MS;
const WINDOW_SAMPLES: usize = 10;
/// Wake-ups this early are not counted: every vCPU starts at once.
const WARM_UP: u64 = 50 * MS;

impl Sim {
    pub fn new(cores: usize, specs: Vec<VcpuSpec>, tunables: Tunables, seed: u64) -> Self {
        let mut policy = Eevdf::new(cores, tunables);
        let mut rng = Rng::new(seed);
        let mut vcpus = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            policy.add(VcpuId(i as u32), spec.params.clone(), 0).expect("simulated vCPU accepted");
            let next_tick = match spec.work {
                Work::Timer { period, .. } => rng.below(period),
                Work::Bursty { mean_gap, .. } => rng.exp(mean_gap),
                Work::Hog => 0,
            };
            vcpus.push(SimVcpu { spec, remaining: 0, woke_at: None, run_ns: 0, next_tick });
        }
        let n = vcpus.len();
        let mut sim = Sim {
            policy,
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            cores: (0..cores)
                .map(|_| SimCore { gen: 0, running: None, started: 0, halted_since: Some(0), halted_ns: 0 })
                .collect(),
            vcpus,
            rng,
            samples: Vec::new(),
            report: Report {
                decisions: 0,
                decision_ns: 0.0,
                balances: 0,
                balance_time: Histogram::new(10),
                migrations: 0,
                fairness_error_pct: 0.0,
                fairness_windows: 0,
                latency: Histogram::new(US),
                affinity_violations: 0,
                halted: Vec::new(),
                run_ns: vec![0; n],
                window_run: Vec::new(),
                idle_timer_events: 0,
            },
            check_affinity: true,
        };
        for i in 0..n {
            let at = match sim.vcpus[i].spec.work {
                Work::Hog => 0,
                _ => sim.vcpus[i].next_tick,
            };
            sim.push(at, Event::Wake { vcpu: i });
        }
        sim.push(0, Event::Sample);
        sim
    }

    fn push(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }

    /// Runs until `end` and reports; the decision and balance timings are
    /// wall-clock, everything else simulated.
    pub fn run(mut self, end: u64) -> Report {
        let mut decision_time = 0u128;
        while let Some(Reverse((at, _, event))) = self.events.pop() {
            if at > end {
                break;
            }
            self.now = at;
            match event {
                Event::Wake { vcpu } => self.wake(vcpu),
                Event::Sample => {
                    self.sample();
                    self.push(at + SAMPLE_EVERY, Event::Sample);
                }
                Event::Core { core, gen } => {
                    if gen.is_some_and(|g| g != self.cores[core].gen) {
                        continue;
                    }
                    decision_time += self.interrupt(core, gen.is_some());
                }
            }
        }
        for c in &mut self.cores {
            if let Some(since) = c.halted_since {
                c.halted_ns += end.saturating_sub(since);
            }
            if let Some(i) = c.running {
                self.vcpus[i].run_ns += end.saturating_sub(c.started);
            }
        }
        let mut r = self.report;
        r.decision_ns = decision_time as f64 / r.decisions.max(1) as f64;
        r.halted = self.cores.iter().map(|c| c.halted_ns as f64 / end as f64).collect();
        for (i, v) in self.vcpus.iter().enumerate() {
            r.run_ns[i] = v.run_ns;
        }
        r
    }

    fn wake(&mut self, i: usize) {
        let v = &mut self.vcpus[i];
        match v.spec.work {
            Work::Hog => v.remaining = u64::MAX,
            Work::Timer { period, burst } => {
                v.remaining = burst;
                v.next_tick += period;
            }
            Work::Bursty { mean_burst, .. } => v.remaining = self.rng.exp(mean_burst),
        }
        v.woke_at = Some(self.now);
        if let Some(kick) = self.policy.wake(VcpuId(i as u32), self.now) {
            self.push(self.now, Event::Core { core: kick.core.0 as usize, gen: None });
        }
    }

    /// What the kernel does on a core's timer, a kick or a halt: charge the
    /// running vCPU's work, block it if done, balance, pick, arm the timer.
    fn interrupt(&mut self, core: usize, timer: bool) -> u128 {
        let now = self.now;
        self.cores[core].gen += 1;
        if let Some(i) = self.cores[core].running.take() {
            let ran = now - self.cores[core].started;
            let v = &mut self.vcpus[i];
            v.run_ns += ran;
            if v.remaining != u64::MAX {
                v.remaining -= ran.min(v.remaining);
            }
            if v.remaining == 0 {
                self.policy.block(VcpuId(i as u32), NotRunnable::Blocked, now);
                let next = match v.spec.work {
                    Work::Timer { period, .. } => {
                        // A burst that overran its period skips the missed ticks.
                        while v.next_tick <= now {
                            v.next_tick += period;
                        }
                        v.next_tick
                    }
                    Work::Bursty { mean_gap, .. } => now + self.rng.exp(mean_gap),
                    Work::Hog => unreachable!("hogs never finish"),
                };
                self.push(next, Event::Wake { vcpu: i });
            }
        } else if timer {
            self.report.idle_timer_events += 1;
        }
        let searches = self.policy.balance_searches();
        let t = Instant::now();
        let moved = self.policy.balance(CoreId(core as u32), now);
        let ns = t.elapsed().as_nanos() as u64;
        if self.policy.balance_searches() > searches {
            self.report.balances += 1;
            self.report.balance_time.record(ns);
        }
        if moved.is_some() {
            self.report.migrations += 1;
        }
        let t = Instant::now();
        let decision = self.policy.pick(CoreId(core as u32), now);
        let decision_time = t.elapsed().as_nanos();
        self.report.decisions += 1;
        if let Some(kick) = decision.kick {
            self.push(now, Event::Core { core: kick.core.0 as usize, gen: None });
        }
        let c = &mut self.cores[core];
        match (decision.run, c.halted_since) {
            (Some(_), Some(since)) => {
                c.halted_ns += now - since;
                c.halted_since = None;
            }
            (None, None) => c.halted_since = Some(now),
            _ => {}
        }
        let gen = c.gen;
        let mut next = decision.until;
        if let Some(run) = decision.run {
            let i = run.0 as usize;
            c.running = Some(i);
            c.started = now;
            let v = &mut self.vcpus[i];
            if let Some(woke) = v.woke_at.take() {
                // A hog's only wake-up is the start, when every vCPU queues at once.
                if v.spec.work != Work::Hog && woke >= WARM_UP {
                    self.report.latency.record(now - woke);
                }
            }
            if self.check_affinity && !v.spec.params.cpus.contains(CoreId(core as u32)) {
                self.report.affinity_violations += 1;
            }
            if v.remaining != u64::MAX {
                let done = now + v.remaining;
                next = Some(next.map_or(done, |n| n.min(done)));
            }
        }
        if let Some(at) = next {
            self.push(at.max(now), Event::Core { core, gen: Some(gen) });
        }
        decision_time
    }

    fn sample(&mut self) {
        let now = self.now;
        let mut s = Sample { run: Vec::new(), core: Vec::new(), migrations: Vec::new() };
        for (i, v) in self.vcpus.iter().enumerate() {
            let id = VcpuId(i as u32);
            let core = self.policy.core_of(id).expect("simulated vCPU").0;
            let mut run = v.run_ns;
            if self.cores[core as usize].running == Some(i) {
                run += now - self.cores[core as usize].started;
            }
            s.run.push(run);
            s.core.push(core);
            s.migrations.push(self.policy.accounting(id).expect("simulated vCPU").migrations);
        }
        self.samples.push(s);
        if self.samples.len() > WINDOW_SAMPLES {
            let first = self.samples.remove(0);
            let last = self.samples.last().expect("just pushed");
            if self.samples.len() == WINDOW_SAMPLES && (now / SAMPLE_EVERY).is_multiple_of(WINDOW_SAMPLES as u64) {
                self.report.window_run.push(last.run.iter().zip(&first.run).map(|(b, a)| b - a).collect());
            }
            self.fairness(&first);
        }
    }

    /// Among uncapped hogs that spent the whole window on one core, each
    /// one's share of their run time against its share of their weight.
    fn fairness(&mut self, first: &Sample) {
        let last = self.samples.last().expect("samples kept");
        let mut groups: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, v) in self.vcpus.iter().enumerate() {
            let stayed = first.core[i] == last.core[i] && first.migrations[i] == last.migrations[i];
            if v.spec.work == Work::Hog && v.spec.params.cap.is_none() && stayed {
                groups.entry(last.core[i]).or_default().push(i);
            }
        }
        let window = (WINDOW_SAMPLES as u64 * SAMPLE_EVERY) as f64;
        for members in groups.values().filter(|m| m.len() >= 2) {
            let total_run: u64 = members.iter().map(|&i| last.run[i] - first.run[i]).sum();
            let total_weight: u64 = members.iter().map(|&i| self.vcpus[i].spec.params.weight as u64).sum();
            if total_run == 0 {
                continue;
            }
            self.report.fairness_windows += 1;
            for &i in members {
                let due = total_run as f64 * self.vcpus[i].spec.params.weight as f64 / total_weight as f64;
                let error = ((last.run[i] - first.run[i]) as f64 - due).abs() / window * 100.0;
                self.report.fairness_error_pct = self.report.fairness_error_pct.max(error);
            }
        }
    }
}

/// The mixed workload of the scale grid: half CPU hogs of mixed weights
/// (some capped), 1 kHz and 100 Hz timer sleepers, bursty I/O; a quarter of
/// the vCPUs confined to one quarter ("socket") of the cores.
pub fn mixed_workload(vcpus: usize, cores: usize, seed: u64) -> Vec<VcpuSpec> {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let socket = (cores / 4).max(1);
    (0..vcpus)
        .map(|_| {
            let mut params = Params::new(cores);
            params.weight = [128, 256, 256, 512, 1024][rng.below(5) as usize];
            if rng.below(4) == 0 {
                let first = rng.below(cores.div_ceil(socket) as u64) as usize * socket;
                params.cpus = CpuSet::from_cores((first..(first + socket).min(cores)).map(|c| CoreId(c as u32)));
            }
            let work = match rng.below(10) {
                0..=4 => {
                    if rng.below(20) == 0 {
                        params.cap = Some(50);
                    }
                    Work::Hog
                }
                5 | 6 => Work::Timer { period: MS, burst: 20 * US + rng.below(30 * US) },
                7 => Work::Timer { period: 10 * MS, burst: 200 * US + rng.below(800 * US) },
                _ => Work::Bursty { mean_gap: 2 * MS, mean_burst: 300 * US },
            };
            VcpuSpec { work, params }
        })
        .collect()
}

/// The latency target's workload: on every core three equal CPU hogs and one
/// guest with a 1 kHz timer whose handler runs 20 to 50 µs.
pub fn hogs_and_ticker(cores: usize, seed: u64) -> Vec<VcpuSpec> {
    let mut rng = Rng::new(seed ^ 0x71c4);
    (0..cores * 4)
        .map(|i| {
            let work =
                if i % 4 == 3 { Work::Timer { period: MS, burst: 20 * US + rng.below(30 * US) } } else { Work::Hog };
            VcpuSpec { work, params: Params::new(cores) }
        })
        .collect()
}
