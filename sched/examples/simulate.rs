//! The scale tables of issue 14: the EEVDF policy driven by the simulator,
//! 4 to 4096 vCPUs on 1 to 256 cores.
//! `cargo run --release -p basalt-sched --example simulate`

#[path = "../tests/sim/mod.rs"]
mod sim;

use basalt_sched::Tunables;
use sim::{hogs_and_ticker, mixed_workload, Report, Sim, VcpuSpec, MS};

const SIMULATED: u64 = 2_000 * MS;
const MIXED: &[(usize, usize)] =
    &[(4, 1), (8, 2), (16, 4), (64, 16), (128, 32), (256, 64), (512, 128), (1024, 256), (2048, 128), (4096, 256)];
const TICKER_CORES: &[usize] = &[1, 4, 16, 64, 128, 256];

fn main() {
    println!("EEVDF policy, {:?}; {} ms simulated per row", Tunables::default(), SIMULATED / MS);
    println!("ns/decide: wall-clock cost of one pick (Instant included); balance: of one balance search");
    println!("fair err: worst gap between a hog's run time and its weight's part, in % of a 100 ms window");
    println!();
    println!("Mixed: 50% hogs (weights 128-1024, 1 in 20 capped at 50%), 20% 1 kHz and 10% 100 Hz timer guests,");
    println!("20% bursty I/O; a quarter of the vCPUs confined to a quarter of the cores");
    header();
    for &(vcpus, cores) in MIXED {
        row(vcpus, cores, mixed_workload(vcpus, cores, 42));
    }
    println!();
    println!("Latency target: per core 3 equal CPU hogs + 1 guest with a 1 kHz timer (4 vCPUs per core)");
    header();
    for &cores in TICKER_CORES {
        row(cores * 4, cores, hogs_and_ticker(cores, 7));
    }
}

fn header() {
    println!(
        "{:>6} {:>5} {:>9} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>8}",
        "vCPUs",
        "cores",
        "ns/decide",
        "fair err",
        "lat mean",
        "lat p99",
        "lat max",
        "balance ns",
        "bal p99 ns",
        "bal/core/ms",
        "migr/s",
    );
}

fn row(vcpus: usize, cores: usize, specs: Vec<VcpuSpec>) {
    let started = std::time::Instant::now();
    let r: Report = Sim::new(cores, specs, Tunables::default(), 42).run(SIMULATED);
    assert_eq!(r.affinity_violations, 0, "affinity violated");
    println!(
        "{:>6} {:>5} {:>9.0} {:>7.2}% {:>7}us {:>7}us {:>7}us {:>10} {:>10} {:>11.2} {:>8.0}   ({:.1} s)",
        vcpus,
        cores,
        r.decision_ns,
        r.fairness_error_pct,
        r.latency.mean() / 1000,
        r.latency.percentile(0.99) / 1000,
        r.latency.max() / 1000,
        r.balance_time.mean(),
        r.balance_time.percentile(0.99),
        r.balances as f64 / cores as f64 / (SIMULATED / MS) as f64,
        r.migrations as f64 / (SIMULATED as f64 / 1e9),
        started.elapsed().as_secs_f64(),
    );
}
