//! The tensors of a checkpoint: every `*.safetensors` file of a model directory (or in-memory
//! copies of them), indexed by tensor name.
//!
//! Only the headers are read up front: a Hugging Face MoE checkpoint is sharded into files of
//! several GiB and veilmoe needs one MoE block of it, so a file is read whole (and validated by
//! the `safetensors` crate) only when a tensor it holds is requested.

use super::error::CheckpointError;
use ndarray::{Array1, Array2};
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The safetensors crate's own limit on header size.
const MAX_HEADER: u64 = 100_000_000;

enum Source<'a> {
    File(PathBuf),
    Bytes(&'a [u8]),
}

struct StoreFile<'a> {
    /// File name as errors show it.
    name: String,
    source: Source<'a>,
    /// The whole file, once a tensor of it was requested.
    data: Option<Cow<'a, [u8]>>,
}

/// Tensors of one checkpoint, by name.
pub(crate) struct TensorStore<'a> {
    /// Where the checkpoint came from (a directory, or a label for in-memory bytes).
    origin: String,
    files: Vec<StoreFile<'a>>,
    /// Tensor name -> (file index, dtype name, shape) from the headers.
    index: BTreeMap<String, (usize, String, Vec<usize>)>,
    /// Tensors read so far (what the block evaluates).
    read: std::collections::BTreeSet<String>,
}

fn bad_file(file: &str, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Safetensors {
        file: file.to_string(),
        reason: reason.into(),
    }
}

/// Parses a safetensors header (JSON object after the 8-byte little-endian length).
fn parse_header(
    file: &str,
    header: &[u8],
) -> Result<Vec<(String, String, Vec<usize>)>, CheckpointError> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| bad_file(file, format!("header is not a JSON object: {e}")))?;
    let mut out = Vec::new();
    for (name, info) in map {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad_file(file, format!("tensor `{name}` has no dtype")))?
            .to_string();
        let shape = info
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| {
                s.iter()
                    .map(|v| v.as_u64().map(|v| v as usize))
                    .collect::<Option<Vec<usize>>>()
            })
            .ok_or_else(|| bad_file(file, format!("tensor `{name}` has no valid shape")))?;
        out.push((name, dtype, shape));
    }
    Ok(out)
}

fn header_of_bytes(
    file: &str,
    bytes: &[u8],
) -> Result<Vec<(String, String, Vec<usize>)>, CheckpointError> {
    if bytes.len() < 8 {
        return Err(bad_file(file, "shorter than the 8-byte header length"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n > (bytes.len() - 8) as u64 {
        return Err(bad_file(
            file,
            format!("header length {n} exceeds the file ({} bytes)", bytes.len()),
        ));
    }
    parse_header(file, &bytes[8..8 + n as usize])
}

fn header_of_file(
    path: &Path,
    file: &str,
) -> Result<Vec<(String, String, Vec<usize>)>, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    if size < 8 {
        return Err(bad_file(file, "shorter than the 8-byte header length"));
    }
    f.read_exact(&mut len).map_err(io)?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n > size - 8 {
        return Err(bad_file(
            file,
            format!("header length {n} exceeds the file ({size} bytes)"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    parse_header(file, &header)
}

impl<'a> TensorStore<'a> {
    /// Every `*.safetensors` file of `dir` (sorted by name).
    pub(crate) fn from_dir(dir: &Path) -> Result<TensorStore<'static>, CheckpointError> {
        let entries = std::fs::read_dir(dir).map_err(|source| CheckpointError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(CheckpointError::NoWeights {
                dir: dir.display().to_string(),
            });
        }
        let mut store = TensorStore {
            origin: dir.display().to_string(),
            files: Vec::new(),
            index: BTreeMap::new(),
            read: Default::default(),
        };
        for path in paths {
            let name = path.display().to_string();
            let header = header_of_file(&path, &name)?;
            store.add(name, Source::File(path), header)?;
        }
        Ok(store)
    }

    /// In-memory files: `(file name, bytes)`.
    pub(crate) fn from_bytes(
        origin: &str,
        files: &[(&str, &'a [u8])],
    ) -> Result<TensorStore<'a>, CheckpointError> {
        if files.is_empty() {
            return Err(CheckpointError::NoWeights {
                dir: origin.to_string(),
            });
        }
        let mut store = TensorStore {
            origin: origin.to_string(),
            files: Vec::new(),
            index: BTreeMap::new(),
            read: Default::default(),
        };
        for (name, bytes) in files {
            let name = format!("{origin}/{name}");
            let header = header_of_bytes(&name, bytes)?;
            store.add(name, Source::Bytes(bytes), header)?;
        }
        Ok(store)
    }

    fn add(
        &mut self,
        name: String,
        source: Source<'a>,
        header: Vec<(String, String, Vec<usize>)>,
    ) -> Result<(), CheckpointError> {
        let k = self.files.len();
        for (tensor, dtype, shape) in header {
            if let Some((other, _, _)) = self.index.get(&tensor) {
                return Err(CheckpointError::DuplicateTensor {
                    name: tensor,
                    first: self.files[*other].name.clone(),
                    second: name,
                });
            }
            self.index.insert(tensor, (k, dtype, shape));
        }
        self.files.push(StoreFile {
            name,
            source,
            data: None,
        });
        Ok(())
    }

    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// Tensor names, sorted.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    /// Tensor names under `prefix` that nothing has read (sorted).
    pub(crate) fn unread_under<'s>(&'s self, prefix: &'s str) -> impl Iterator<Item = &'s str> {
        self.names()
            .filter(move |n| n.starts_with(prefix) && !self.read.contains(*n))
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Shape of a tensor as its header declares it.
    pub(crate) fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|(_, _, s)| s.as_slice())
    }

    fn missing(&self, name: &str) -> CheckpointError {
        CheckpointError::MissingTensor {
            name: name.to_string(),
            dir: self.origin.clone(),
        }
    }

    /// A tensor of the expected shape, converted to f32.
    pub(crate) fn tensor(
        &mut self,
        name: &str,
        expected: &[usize],
    ) -> Result<Vec<f32>, CheckpointError> {
        let (k, _, shape) = self.index.get(name).ok_or_else(|| self.missing(name))?;
        let k = *k;
        if shape.as_slice() != expected {
            return Err(CheckpointError::Shape {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: shape.clone(),
            });
        }
        let file = &mut self.files[k];
        if file.data.is_none() {
            let data: Cow<'a, [u8]> = match &file.source {
                Source::File(p) => {
                    Cow::Owned(std::fs::read(p).map_err(|source| CheckpointError::Io {
                        path: p.clone(),
                        source,
                    })?)
                }
                Source::Bytes(b) => Cow::Borrowed(b),
            };
            // Full validation (offsets, sizes, header) by the safetensors crate.
            SafeTensors::deserialize(&data).map_err(|e| bad_file(&file.name, e.to_string()))?;
            file.data = Some(data);
        }
        let data = file.data.as_deref().unwrap_or(&[]);
        let st = SafeTensors::deserialize(data).map_err(|e| bad_file(&file.name, e.to_string()))?;
        let view = st
            .tensor(name)
            .map_err(|e| bad_file(&file.name, e.to_string()))?;
        let values = to_f32(name, view.dtype(), view.data())?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(CheckpointError::NonFinite {
                name: name.to_string(),
                index: i,
            });
        }
        self.read.insert(name.to_string());
        Ok(values)
    }

    pub(crate) fn matrix(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Array2<f32>, CheckpointError> {
        let v = self.tensor(name, &[rows, cols])?;
        Array2::from_shape_vec((rows, cols), v).map_err(|e| bad_file(name, e.to_string()))
    }

    pub(crate) fn vector(
        &mut self,
        name: &str,
        len: usize,
    ) -> Result<Array1<f32>, CheckpointError> {
        Ok(Array1::from(self.tensor(name, &[len])?))
    }

    /// A vector that a checkpoint may or may not have (biases).
    pub(crate) fn optional_vector(
        &mut self,
        name: &str,
        len: usize,
    ) -> Result<Option<Array1<f32>>, CheckpointError> {
        if self.contains(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Layer indices `L` of tensors named `{prefix}{L}{suffix}`, ascending.
    pub(crate) fn layers_with(&self, prefix: &str, suffix: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .names()
            .filter_map(|n| n.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Little-endian f32 / f16 / bf16 / f64 data to f32.
fn to_f32(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>, CheckpointError> {
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_le_bytes(b) as f32
            })
            .collect(),
        other => {
            return Err(CheckpointError::Dtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

/// Storage type of the tensors [`safetensors_bytes`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    BF16,
}

/// Serializes named tensors `(name, shape, row-major values)` into one safetensors file.
pub fn safetensors_bytes(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: StoredDtype,
) -> Result<Vec<u8>, CheckpointError> {
    let mut bufs: HashMap<&str, (Vec<usize>, Vec<u8>)> = HashMap::new();
    for (name, shape, values) in tensors {
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(CheckpointError::Shape {
                name: name.clone(),
                expected: shape.clone(),
                found: vec![values.len()],
            });
        }
        let bytes: Vec<u8> = match dtype {
            StoredDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StoredDtype::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            StoredDtype::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        };
        bufs.insert(name.as_str(), (shape.clone(), bytes));
    }
    let st_dtype = match dtype {
        StoredDtype::F32 => Dtype::F32,
        StoredDtype::F16 => Dtype::F16,
        StoredDtype::BF16 => Dtype::BF16,
    };
    let views = bufs
        .iter()
        .map(|(name, (shape, bytes))| {
            safetensors::tensor::TensorView::new(st_dtype, shape.clone(), bytes)
                .map(|v| (name.to_string(), v))
                .map_err(|e| bad_file(name, e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, None).map_err(|e| bad_file("(new file)", e.to_string()))
}
