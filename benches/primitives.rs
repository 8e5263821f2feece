//! Criterion benchmarks of the engine's primitives on the `default` preset (set
//! VEILMOE_BENCH_PRESET=test for a quick run): PBS through the engine and bare tfhe, keyswitch,
//! packed matvec, LWE matvec, CMUX, circuit bootstrap, packing keyswitch, batched PBS.

use criterion::{criterion_group, criterion_main, Criterion};
use veilmoe::engine::Preset;
use veilmoe_tools::bench::primitives::PrimitiveBench;

fn primitives(c: &mut Criterion) {
    let name = std::env::var("VEILMOE_BENCH_PRESET").unwrap_or_else(|_| "default".into());
    let preset = Preset::load(&name, name == "test").expect("preset");
    let bench = PrimitiveBench::new(preset);
    let mut group = c.benchmark_group(format!("primitives/{name}"));
    group.sample_size(10);
    for (case, f) in bench.cases().expect("cases") {
        group.bench_function(case, |b| b.iter(&f));
    }
    let threads = rayon::current_num_threads();
    let batch = bench.pbs_batch(4 * threads).expect("batch");
    group.bench_function(
        format!("pbs_batch_{}x_{}threads", 4 * threads, threads),
        |b| b.iter(&batch),
    );
    group.finish();
}

criterion_group!(benches, primitives);
criterion_main!(benches);
