//! The server's handle: a server key plus the operation log. Every homomorphic operation is a
//! method of [`Evaluator`] (in `linear`, `pbs`, `cbs`, `select` and `packing`), so every one is counted
//! under the current stage tag and appears in the operation trace.

use crate::accounting::OpLog;
use crate::ciphertext::{LweKeyKind, LweVector};
use crate::error::{EngineError, Result};
use crate::format::KeySetId;
use crate::keys::ServerKey;
use crate::preset::Preset;
use std::cell::RefCell;
use tfhe::core_crypto::prelude::*;

/// Server-side evaluator over one server key.
pub struct Evaluator<'k> {
    key: &'k ServerKey,
    pub(crate) ops: OpLog,
}

impl<'k> Evaluator<'k> {
    pub fn new(key: &'k ServerKey) -> Evaluator<'k> {
        Evaluator {
            key,
            ops: OpLog::new(),
        }
    }

    pub fn key(&self) -> &'k ServerKey {
        self.key
    }
    pub fn preset(&self) -> &'k Preset {
        self.key.preset()
    }
    /// The operation log (counts and trace).
    pub fn ops(&self) -> &OpLog {
        &self.ops
    }
    /// Tags the following operations with `stage`.
    pub fn set_stage(&self, stage: &str) {
        self.ops.set_stage(stage);
    }

    pub(crate) fn check_key_set(&self, found: KeySetId) -> Result<()> {
        if found != self.key.key_set() {
            return Err(EngineError::KeySetMismatch {
                what: "ciphertext",
                expected: self.key.key_set().to_string(),
                found: found.to_string(),
            });
        }
        Ok(())
    }

    /// Checks that `x` is under this evaluator's key set and the big LWE key, which every
    /// operation that keyswitches, packs or embeds a vector needs.
    pub(crate) fn check_big_input(&self, x: &LweVector, context: &'static str) -> Result<()> {
        self.check_key_set(x.key_set())?;
        if x.key_kind() != LweKeyKind::Big {
            return Err(EngineError::shape(
                context,
                "big-key input",
                "small-key input",
            ));
        }
        Ok(())
    }
}

/// Per-thread scratch memory of the FFT-based algorithms, reused across calls so that batched
/// operations allocate nothing per ciphertext.
pub(crate) fn with_scratch<R>(req: usize, f: impl FnOnce(&mut PodStack) -> R) -> R {
    thread_local! {
        static BUFFERS: RefCell<ComputationBuffers> = RefCell::new(ComputationBuffers::new());
    }
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        b.resize(req);
        f(b.stack())
    })
}
