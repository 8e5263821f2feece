//! A model pool on disk: one directory holding `pool.toml`, one Mixtral-format directory per
//! pool model (trained models declare their quantization in config.json), and the float router
//! as safetensors (`router.weight [models, d]`, `router.bias [models]`, on the quantized input,
//! `-lambda * cost` already in the bias).
//!
//! ```toml
//! lambda = 0.004
//! router = "router.safetensors"
//!
//! [[models]]            # cheapest first: router ties go to the cheaper model
//! name = "tiny"
//! dir = "tiny"
//! cost = 9.0            # relative cost per input (what lambda trades accuracy against)
//!
//! [capacities]          # public: all the server learns besides the batch size
//! batch = 8
//! slots = [4, 2, 1]     # per model
//! fallback = "tiny"     # takes the inputs whose chosen model was full
//! fallback_slots = 1
//! ```
//!
//! Everything read here is checked before use: the config's size, unknown fields, names,
//! relative paths that stay inside the pool directory, a fallback that names a pool model,
//! capacities that cover the batch, and (in [`PoolFiles::quantize`]) the models' shared input
//! quantization and output count. Each refusal is one line naming the file.

use crate::capacity::Capacities;
use crate::checkpoint::FloatMoeModel;
use crate::checkpoint::{safetensors_bytes, StoredDtype, TensorStore};
use crate::error::{pool_error, ModelError, Result};
use crate::pool::{Pool, PoolCapacities, MAX_POOL};
use crate::quantize::quantize;
use crate::train::pool_router::FloatPoolRouter;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// The config file's name inside a pool directory.
pub const POOL_CONFIG: &str = "pool.toml";
/// Largest accepted `pool.toml` (a pool of 16 models fits in far less).
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// `pool.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The accuracy-cost trade-off the router was trained with (already in its bias).
    pub lambda: f64,
    /// The router's safetensors file, relative to the pool directory.
    pub router: String,
    pub models: Vec<PoolModelEntry>,
    pub capacities: CapacityConfig,
}

/// One pool model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolModelEntry {
    pub name: String,
    /// Mixtral-format directory, relative to the pool directory.
    pub dir: String,
    /// Relative cost per input.
    pub cost: f64,
}

/// The public batch shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityConfig {
    /// Inputs per batch (T).
    pub batch: usize,
    /// Slots per model, in the models' order.
    pub slots: Vec<usize>,
    /// The model (by name) that answers inputs whose chosen model was full.
    pub fallback: String,
    pub fallback_slots: usize,
}

/// A pool directory, read and checked: the float models and router, not yet quantized.
#[derive(Debug, Clone)]
pub struct PoolFiles {
    pub dir: PathBuf,
    pub config: PoolConfig,
    pub models: Vec<FloatMoeModel>,
    pub router: FloatPoolRouter,
}

impl PoolConfig {
    /// Parses and checks a config's text (`origin` names it in errors).
    pub fn parse(origin: &str, text: &str) -> Result<PoolConfig> {
        let c: PoolConfig =
            toml::from_str(text).map_err(|e| pool_error(format!("{origin}: {}", one_line(&e))))?;
        c.check(origin)?;
        Ok(c)
    }

    fn check(&self, origin: &str) -> Result<()> {
        let bad = |m: String| Err(pool_error(format!("{origin}: {m}")));
        let n = self.models.len();
        if !(2..=MAX_POOL).contains(&n) {
            return bad(format!("a pool holds 2 to {MAX_POOL} models, got {n}"));
        }
        for (i, m) in self.models.iter().enumerate() {
            if self.models[..i].iter().any(|o| o.name == m.name) {
                return bad(format!("model name `{}` appears twice", m.name));
            }
            if !(m.cost.is_finite() && m.cost > 0.0) {
                return bad(format!("model `{}`: cost must be positive", m.name));
            }
            inside(&m.dir).map_err(|e| pool_error(format!("{origin}: model `{}`: {e}", m.name)))?;
        }
        inside(&self.router).map_err(|e| pool_error(format!("{origin}: router: {e}")))?;
        if !self.lambda.is_finite() || self.lambda < 0.0 {
            return bad("lambda must be a finite, non-negative number".into());
        }
        self.capacities()
            .and_then(|caps| caps.validate(n, self.capacities.batch))
            .map_err(|e| pool_error(format!("{origin}: {e}")))?;
        Ok(())
    }

    /// Index of the model called `name`.
    pub fn model_index(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.name == name)
    }

    /// The capacities with the fallback resolved to its index.
    pub fn capacities(&self) -> Result<PoolCapacities> {
        let c = &self.capacities;
        let fallback_model = self.model_index(&c.fallback).ok_or_else(|| {
            pool_error(format!(
                "capacities: fallback `{}` is not a pool model (models: {})",
                c.fallback,
                self.models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        if c.batch == 0 {
            return Err(pool_error(
                "capacities: the batch must hold at least one input",
            ));
        }
        Ok(PoolCapacities {
            per_model: Capacities::new(c.slots.clone())?,
            fallback_model,
            fallback_slots: c.fallback_slots,
        })
    }

    pub fn costs(&self) -> Vec<f64> {
        self.models.iter().map(|m| m.cost).collect()
    }
}

/// Refuses paths that leave the pool directory (absolute, `..`, empty).
fn inside(rel: &str) -> std::result::Result<(), String> {
    let p = Path::new(rel);
    if rel.is_empty()
        || !p
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "path `{rel}` must be relative and stay inside the pool directory"
        ));
    }
    Ok(())
}

/// A parser's message on one line (toml's messages span a snippet of the file).
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains('|'))
        .collect::<Vec<_>>()
        .join(" ")
}

impl PoolFiles {
    /// Reads and checks a pool directory.
    pub fn load(dir: impl AsRef<Path>) -> Result<PoolFiles> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(POOL_CONFIG);
        let origin = path.display().to_string();
        let io = |e: std::io::Error| pool_error(format!("{origin}: {e}"));
        let size = std::fs::metadata(&path).map_err(io)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(pool_error(format!(
                "{origin}: {size} bytes, a pool config is at most {MAX_CONFIG_BYTES}"
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        let cfg = PoolConfig::parse(&origin, &text)?;
        let models = cfg
            .models
            .iter()
            .map(|m| {
                FloatMoeModel::load(dir.join(&m.dir))
                    .map_err(|e| pool_error(format!("{origin}: model `{}`: {e}", m.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        let d = models[0].config.d.0;
        let router = read_router(&dir.join(&cfg.router), cfg.models.len(), d)?;
        Ok(PoolFiles {
            dir,
            config: cfg,
            models,
            router,
        })
    }

    /// The pool quantized for `message_bits`-bit reads, each model calibrated on raw
    /// `calibration` records with the quantization it declares, checked as a whole, and its
    /// capacities.
    pub fn quantize(
        &self,
        message_bits: u32,
        calibration: &[Vec<f32>],
    ) -> Result<(Pool, PoolCapacities)> {
        let origin = self.dir.display().to_string();
        let models = self
            .models
            .iter()
            .zip(&self.config.models)
            .map(|(m, e)| {
                quantize(m, message_bits, calibration)
                    .map_err(|err| pool_error(format!("{origin}: model `{}`: {err}", e.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        let router = self.router.quantize(message_bits)?;
        let pool = Pool { models, router };
        pool.validate()
            .map_err(|e| pool_error(format!("{origin}: {e}")))?;
        let caps = self.config.capacities()?;
        caps.validate(pool.models.len(), self.config.capacities.batch)?;
        Ok((pool, caps))
    }
}

/// The router file, checked against the pool's model count and input width.
fn read_router(path: &Path, models: usize, d: usize) -> Result<FloatPoolRouter> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| pool_error(format!("{origin}: {e}")))?;
    let mut store = TensorStore::from_bytes(&origin, &[("router", &bytes)])?;
    let weights = store.tensor("router.weight", &[models, d])?;
    let bias = store.tensor("router.bias", &[models])?;
    Ok(FloatPoolRouter {
        weights: Array2::from_shape_vec((models, d), weights)
            .map_err(|e| ModelError::Weights(e.to_string()))?,
        bias: Array1::from(bias),
    })
}

/// Writes a pool directory: the models, the router and `pool.toml` (the models' directories
/// are `config.models[i].dir`).
pub fn save_pool(
    dir: impl AsRef<Path>,
    cfg: &PoolConfig,
    models: &[FloatMoeModel],
    router: &FloatPoolRouter,
) -> Result<()> {
    let dir = dir.as_ref();
    cfg.check(&dir.join(POOL_CONFIG).display().to_string())?;
    if models.len() != cfg.models.len() || router.models() != models.len() {
        return Err(config_err(models.len(), cfg.models.len()));
    }
    for (m, e) in models.iter().zip(&cfg.models) {
        m.save_mixtral(dir.join(&e.dir))?;
    }
    let r = router;
    let tensors = vec![
        (
            "router.weight".to_string(),
            vec![r.weights.nrows(), r.weights.ncols()],
            r.weights.iter().copied().collect(),
        ),
        (
            "router.bias".to_string(),
            vec![r.bias.len()],
            r.bias.to_vec(),
        ),
    ];
    let io = |p: PathBuf| move |e: std::io::Error| pool_error(format!("{}: {e}", p.display()));
    let router_path = dir.join(&cfg.router);
    std::fs::write(&router_path, safetensors_bytes(&tensors, StoredDtype::F32)?)
        .map_err(io(router_path.clone()))?;
    let text = toml::to_string_pretty(cfg).map_err(|e| pool_error(e.to_string()))?;
    let path = dir.join(POOL_CONFIG);
    std::fs::write(&path, text).map_err(io(path.clone()))?;
    Ok(())
}

fn config_err(models: usize, entries: usize) -> ModelError {
    pool_error(format!(
        "a pool of {models} models (and its router) for a config of {entries}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{digits_split, embedded_digits};
    use crate::pool::place;
    use crate::train::pool_router::train_pool_router;
    use crate::train::{train_digits, TrainOptions, TrainShape};

    const GOOD: &str = r#"
lambda = 0.01
router = "router.safetensors"

[[models]]
name = "tiny"
dir = "tiny"
cost = 5.0

[[models]]
name = "small"
dir = "small"
cost = 9.0

[capacities]
batch = 6
slots = [3, 2]
fallback = "tiny"
fallback_slots = 1
"#;

    fn refusal(text: &str) -> String {
        let e = PoolConfig::parse("pool.toml", text)
            .unwrap_err()
            .to_string();
        assert_eq!(e.lines().count(), 1, "not one line: {e}");
        assert!(e.contains("pool.toml"), "{e}");
        e
    }

    #[test]
    fn bad_pool_configs_get_a_one_line_cause() {
        let c = PoolConfig::parse("pool.toml", GOOD).unwrap();
        assert_eq!(c.capacities().unwrap().fallback_model, 0);
        assert_eq!(c.costs(), vec![5.0, 9.0]);
        let cases = [
            (GOOD.replace("batch = 6", "batch = 7"), "cover"),
            (
                GOOD.replace("fallback = \"tiny\"", "fallback = \"huge\""),
                "not a pool model",
            ),
            (GOOD.replace("name = \"small\"", "name = \"tiny\""), "twice"),
            (
                GOOD.replace("dir = \"small\"", "dir = \"../small\""),
                "inside the pool",
            ),
            (GOOD.replace("cost = 9.0", "cost = -1.0"), "cost"),
            (
                GOOD.replace("slots = [3, 2]", "slots = [3, 2, 1]"),
                "capacities for 3 models",
            ),
            (
                GOOD.replace("lambda = 0.01", "lambda = 0.01\nlamda = 2"),
                "unknown field",
            ),
            (
                GOOD.replace("cost = 5.0", "cost = \"cheap\""),
                "invalid type",
            ),
        ];
        for (text, cause) in cases {
            let e = refusal(&text);
            assert!(e.contains(cause), "expected `{cause}` in: {e}");
        }
    }

    /// Two short-trained models and their router, written as a pool directory and read back:
    /// the same floats, a quantized pool that validates, and a missing model refused.
    #[test]
    fn a_pool_directory_round_trips_and_quantizes() {
        let (train, test) = digits_split(&embedded_digits().unwrap());
        let few = |d: &crate::data::Dataset, n: usize| {
            d.subset(&(0..n).collect::<Vec<_>>(), d.origin.clone())
        };
        let (train, test) = (few(&train, 300), few(&test, 60));
        let models: Vec<FloatMoeModel> = [2, 4]
            .iter()
            .map(|&hidden| {
                let opts = TrainOptions {
                    shape: TrainShape {
                        experts: 1,
                        hidden,
                        residual: false,
                    },
                    float_epochs: 6,
                    qat_epochs: 1,
                    quantization: None,
                    agreement_seeds: 1,
                    ..TrainOptions::default()
                };
                train_digits(&opts, &train, &test, &mut |_| {})
                    .unwrap()
                    .model
            })
            .collect();
        let quantized: Vec<_> = models
            .iter()
            .map(|m| quantize(m, 4, &train.features).unwrap())
            .collect();
        let cfg = PoolConfig::parse("pool.toml", GOOD).unwrap();
        let router = train_pool_router(
            &quantized,
            &cfg.costs(),
            cfg.lambda,
            &test,
            Default::default(),
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("veilmoe-pool-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        save_pool(&dir, &cfg, &models, &router).unwrap();
        let files = PoolFiles::load(&dir).unwrap();
        assert_eq!(files.config, cfg);
        assert_eq!(files.router, router);
        for (read, written) in files.models.iter().zip(&models) {
            // the origin names where it was read from
            let read = FloatMoeModel {
                origin: written.origin.clone(),
                ..read.clone()
            };
            assert_eq!(&read, written);
        }
        let (pool, caps) = files.quantize(4, &train.features).unwrap();
        assert_eq!(pool.models, quantized);
        let choices: Vec<usize> = test
            .features
            .iter()
            .take(cfg.capacities.batch)
            .map(|r| {
                pool.choose(
                    &pool.models[0].quantize_input(r).unwrap(),
                    &mut crate::reference::Rounding::Exact,
                )
                .model
            })
            .collect();
        assert_eq!(place(&choices, &caps).unwrap().len(), choices.len());

        std::fs::remove_dir_all(dir.join("small")).unwrap();
        let e = PoolFiles::load(&dir).unwrap_err().to_string();
        assert!(e.contains("model `small`"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
