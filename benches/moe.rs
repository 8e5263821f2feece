//! Criterion benchmarks of one encrypted MoE token per strategy and number of experts (gated
//! SiLU, d = h = 64, top-1) on the `default` preset (VEILMOE_BENCH_PRESET=test for a quick run;
//! VEILMOE_BENCH_EXPERTS=1,8 to choose E). The JSON twin with op counts and target ratios is
//! `veilmoe bench moe`.

use criterion::{criterion_group, criterion_main, Criterion};
use veilmoe::engine::{ClientKey, Evaluator, Preset};
use veilmoe::model::{
    ExpertCount, FfnKind, Gating, HiddenDim, ModelDim, MoeConfig, QuantParams, QuantizedMoe, TopK,
};
use veilmoe::protocols::{ComputeAll, ExpertStrategy, MoeLayer, Select};

fn moe(c: &mut Criterion) {
    let name = std::env::var("VEILMOE_BENCH_PRESET").unwrap_or_else(|_| "default".into());
    let experts: Vec<usize> = std::env::var("VEILMOE_BENCH_EXPERTS")
        .unwrap_or_else(|_| "1,8".into())
        .split(',')
        .map(|e| e.trim().parse().expect("VEILMOE_BENCH_EXPERTS: numbers"))
        .collect();
    let preset = Preset::load(&name, name == "test").expect("preset");
    let client = ClientKey::generate(&preset);
    let server = client.server_key();
    let mut group = c.benchmark_group(format!("moe_token/{name}"));
    group.sample_size(10);
    for e in experts {
        let config = MoeConfig {
            d: ModelDim(64),
            h: HiddenDim(64),
            experts: ExpertCount(e),
            top_k: TopK(1),
            ffn: FfnKind::GatedSilu,
            gating: Gating::SoftmaxSelected,
        };
        let model = QuantizedMoe::random(
            config,
            QuantParams::for_message_bits(preset.message_bits),
            1000 + e as u64,
            true,
        );
        let ev = Evaluator::new(&server);
        let layer = MoeLayer::new(&ev, model).expect("layer");
        let x: Vec<i64> = (0..64).map(|i| (i % 16) - 8).collect();
        let ct = layer.encrypt(&client, &x).expect("encrypt");
        let strategies: [&dyn ExpertStrategy; 2] = [&Select, &ComputeAll];
        for s in strategies {
            if s.name() == "compute-all" && e > 8 {
                continue; // minutes per token; `veilmoe bench moe` measures it once
            }
            group.bench_function(format!("{}_e{e}", s.name()), |b| {
                b.iter(|| {
                    let ev = Evaluator::new(&server);
                    layer.forward(&ev, &ct, s).expect("forward")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, moe);
criterion_main!(benches);
