//! Primitive benchmark workloads, shared by `veilmoe bench primitives` and `benches/primitives.rs`.
//!
//! Each case is one operation on fresh ciphertexts of the chosen preset. `pbs_bare` is tfhe's own
//! core_crypto keyswitch + PBS (`programmable_bootstrap_lwe_ciphertext_mem_optimized`) on the same
//! keys: the reference the engine's PBS must stay within 10% of.

use super::timing::{machine_name, median_ms};
use serde::Serialize;
use tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use tfhe::core_crypto::prelude::*;
use veilmoe_engine::{
    ClientKey, Cols, Encoding, Evaluator, Lut, PackedWeights, Preset, Result, Rows, ServerKey,
    ValueRange, WeightMatrix,
};

/// Errors of the benchmark harness.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Engine(#[from] veilmoe_engine::EngineError),
    #[error("cannot build a thread pool: {0}")]
    ThreadPool(#[from] rayon::ThreadPoolBuildError),
    #[error("{0}")]
    Setup(String),
}

/// Keys and inputs for the primitive benchmarks.
pub struct PrimitiveBench {
    pub preset: Preset,
    pub client: ClientKey,
    pub server: ServerKey,
}

/// A named operation to time.
pub type Case<'a> = (&'static str, Box<dyn Fn() + Sync + 'a>);

impl PrimitiveBench {
    /// Generates keys for `preset` (seconds to a minute on `default`).
    pub fn new(preset: Preset) -> PrimitiveBench {
        let client = ClientKey::generate(&preset);
        let server = client.server_key();
        PrimitiveBench {
            preset,
            client,
            server,
        }
    }

    /// The single-operation cases (each runs on one thread's worth of work).
    pub fn cases(&self) -> Result<Vec<Case<'_>>> {
        let p = &self.preset;
        let enc = Encoding::unsigned(p.message_bits);
        let lut = Lut::univariate(p, enc, enc, |v| (v * 3) % (1 << p.message_bits))?;
        let one = self.client.encrypt_lwe(&[1], enc)?;
        let n = p.glwe.polynomial_size;
        // 8 dot products of length N/8 from one GLWE x polynomial product (the design's unit).
        let cols = n / 8;
        let w = WeightMatrix::new(
            Rows(8),
            Cols(cols),
            (0..8 * cols).map(|i| (i % 15) as i64 - 7).collect(),
        )?;
        let pw = PackedWeights::new(p, w.clone());
        let range = ValueRange::new(0, 15)?;
        let packed = self
            .client
            .encrypt_packed(&vec![3; cols], Encoding::unsigned(24))?
            .with_range(range)?;
        let wl = WeightMatrix::new(Rows(1), Cols(64), vec![1; 64])?;
        let lwes = self
            .client
            .encrypt_lwe(&[2; 64], Encoding::unsigned(12))?
            .with_range(range)?;
        let bit = self.client.encrypt_bits(&[1], enc)?;
        let cands: Vec<_> = (0..2)
            .map(|i| self.client.encrypt_packed(&[i; 8], enc))
            .collect::<Result<_>>()?;
        let ev = Evaluator::new(&self.server);
        let ggsw = ev.circuit_bootstrap(&bit)?;

        let bare = self.bare_ks_pbs();
        let input = one.as_list().as_ref().to_vec();
        let mut cases: Vec<Case<'_>> = Vec::new();
        cases.push(("pbs_bare", Box::new(move || bare(&input))));
        let server = &self.server;
        let one2 = one.clone();
        let lut2 = lut.clone();
        cases.push((
            "pbs_engine",
            Box::new(move || {
                let ev = Evaluator::new(server);
                std::hint::black_box(ev.pbs(&one2, &lut2).ok());
            }),
        ));
        let one3 = one.clone();
        cases.push((
            "keyswitch",
            Box::new(move || {
                std::hint::black_box(Evaluator::new(server).keyswitch(&one3).ok());
            }),
        ));
        cases.push((
            "packed_matvec_8x",
            Box::new(move || {
                std::hint::black_box(
                    Evaluator::new(server)
                        .packed_matvec(&pw, None, &packed)
                        .ok(),
                );
            }),
        ));
        cases.push((
            "lwe_matvec_64_terms",
            Box::new(move || {
                std::hint::black_box(Evaluator::new(server).lwe_matvec(&wl, None, &lwes).ok());
            }),
        ));
        cases.push((
            "cmux",
            Box::new(move || {
                std::hint::black_box(
                    Evaluator::new(server)
                        .cmux(&ggsw[0], &cands[0], &cands[1])
                        .ok(),
                );
            }),
        ));
        let bit2 = bit.clone();
        cases.push((
            "circuit_bootstrap",
            Box::new(move || {
                std::hint::black_box(Evaluator::new(server).circuit_bootstrap(&bit2).ok());
            }),
        ));
        let one4 = one.clone();
        cases.push((
            "packing_keyswitch",
            Box::new(move || {
                std::hint::black_box(Evaluator::new(server).pack(&one4).ok());
            }),
        ));
        Ok(cases)
    }

    /// tfhe's own keyswitch + PBS of one big-key ciphertext, straight through core_crypto on
    /// the same keys: the baseline the engine's PBS is compared with.
    fn bare_ks_pbs(&self) -> impl Fn(&[u64]) + Sync + '_ {
        let p = &self.preset;
        let bsk = self.server.bootstrap_key();
        let ksk = self.server.keyswitch_key();
        let fft = Fft::new(p.polynomial_size());
        let n = p.glwe.polynomial_size;
        let mut acc = GlweCiphertext::new(
            0u64,
            p.glwe_dimension().to_glwe_size(),
            p.polynomial_size(),
            CiphertextModulus::new_native(),
        );
        let box_size = n >> p.pbs_read_bits();
        for (i, c) in acc.get_mut_body().as_mut().iter_mut().enumerate() {
            *c = ((i / box_size) as u64) << (63 - p.message_bits);
        }
        move |input: &[u64]| {
            let input = LweCiphertext::from_container(input, CiphertextModulus::new_native());
            let mut small = LweCiphertext::new(
                0u64,
                ksk.output_key_lwe_dimension().to_lwe_size(),
                CiphertextModulus::new_native(),
            );
            keyswitch_lwe_ciphertext(ksk, &input, &mut small);
            let mut out = LweCiphertext::new(
                0u64,
                bsk.output_lwe_dimension().to_lwe_size(),
                CiphertextModulus::new_native(),
            );
            thread_local_bare(&fft, bsk, |fft, stack| {
                programmable_bootstrap_lwe_ciphertext_mem_optimized(
                    &small, &mut out, &acc, bsk, fft, stack,
                )
            });
            std::hint::black_box(&out);
        }
    }

    /// A batch of `count` bare tfhe keyswitch + PBS, one ciphertext per rayon task (how a
    /// caller of core_crypto spreads a batch): the baseline of [`PrimitiveBench::pbs_batch`].
    pub fn bare_pbs_batch(&self, count: usize) -> Result<impl Fn() + '_> {
        let p = &self.preset;
        let enc = Encoding::unsigned(p.message_bits);
        let batch = self.client.encrypt_lwe(&vec![1; count], enc)?;
        let bare = self.bare_ks_pbs();
        let size = batch.as_list().lwe_size().0;
        Ok(move || {
            use rayon::prelude::*;
            batch.as_list().as_ref().par_chunks(size).for_each(&bare);
        })
    }

    /// A batch of `count` PBS through the engine (parallel over the current rayon pool).
    pub fn pbs_batch(&self, count: usize) -> Result<impl Fn() + '_> {
        let p = &self.preset;
        let enc = Encoding::unsigned(p.message_bits);
        let lut = Lut::univariate(p, enc, enc, |v| v)?;
        let batch = self.client.encrypt_lwe(&vec![1; count], enc)?;
        Ok(move || {
            let ev = Evaluator::new(&self.server);
            std::hint::black_box(ev.pbs(&batch, &lut).ok());
        })
    }
}

/// Runs `f` with a per-thread FFT scratch buffer for the bare tfhe PBS.
pub(crate) fn thread_local_bare<R>(
    fft: &Fft,
    bsk: &FourierLweBootstrapKeyOwned,
    f: impl FnOnce(FftView<'_>, &mut PodStack) -> R,
) -> R {
    let fft = fft.as_view();
    let req = programmable_bootstrap_lwe_ciphertext_mem_optimized_requirement::<u64>(
        bsk.glwe_size(),
        bsk.polynomial_size(),
        fft,
    )
    .unaligned_bytes_required();
    thread_local! {
        static BUF: std::cell::RefCell<ComputationBuffers> = std::cell::RefCell::new(ComputationBuffers::new());
    }
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.resize(req);
        f(fft, b.stack())
    })
}

/// The JSON report of `veilmoe bench primitives`.
#[derive(Debug, Serialize)]
pub struct PrimitiveReport {
    pub preset: String,
    pub threads: usize,
    pub machine: String,
    pub runs: usize,
    /// Median ms per operation, single operation at a time.
    pub median_ms: std::collections::BTreeMap<String, f64>,
    /// engine PBS / bare tfhe PBS (both keyswitch + PBS).
    pub pbs_engine_over_bare: f64,
    /// Amortized ms per PBS in a batch, on 1 thread and on `threads` threads.
    pub batch_pbs_ms_1_thread: f64,
    pub batch_pbs_ms_n_threads: f64,
    /// Throughput speedup of the batch on `threads` threads over 1 thread (target >= 0.9 x threads).
    pub batch_speedup: f64,
    /// PBS in the engine-against-bare batch comparison (16 per thread).
    pub compared_batch: usize,
    /// Amortized ms per PBS of that batch on `threads` threads: through the engine (blocked
    /// keyswitches) and bare tfhe (one keyswitch + PBS per task), timed alternately.
    pub compared_engine_ms: f64,
    pub compared_bare_ms: f64,
    /// `compared_engine_ms / compared_bare_ms`, the median of the per-pair ratios.
    pub batch_engine_over_bare: f64,
}

/// Measures every primitive on the current machine.
pub fn run_primitives(
    bench: &PrimitiveBench,
    runs: usize,
    threads: usize,
) -> std::result::Result<PrimitiveReport, BenchError> {
    let mut medians = std::collections::BTreeMap::new();
    for (name, f) in bench.cases()? {
        medians.insert(name.to_string(), median_ms(runs, &*f));
    }
    let batch = 4 * threads.max(1);
    let f = bench.pbs_batch(batch)?;
    let pool1 = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let pooln = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let one = pool1.install(|| median_ms(runs.div_ceil(2), &f)) / batch as f64;
    let many = pooln.install(|| median_ms(runs.div_ceil(2), &f)) / batch as f64;
    let ratio = medians["pbs_engine"] / medians["pbs_bare"];
    // The engine's batch against bare tfhe's, alternately in one pool so that drift in the
    // machine's speed falls on both.
    let compared = 16 * threads.max(1);
    let engine = bench.pbs_batch(compared)?;
    let bare = bench.bare_pbs_batch(compared)?;
    let (mut e, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    pooln.install(|| {
        for _ in 0..runs.max(1) {
            let te = median_ms(1, &engine);
            let tb = median_ms(1, &bare);
            e.push(te / compared as f64);
            b.push(tb / compared as f64);
            r.push(te / tb);
        }
    });
    Ok(PrimitiveReport {
        preset: bench.preset.name.clone(),
        threads,
        machine: machine_name(),
        runs,
        median_ms: medians,
        pbs_engine_over_bare: ratio,
        batch_pbs_ms_1_thread: one,
        batch_pbs_ms_n_threads: many,
        batch_speedup: one / many,
        compared_batch: compared,
        compared_engine_ms: veilmoe_model::median(&e),
        compared_bare_ms: veilmoe_model::median(&b),
        batch_engine_over_bare: veilmoe_model::median(&r),
    })
}
