//! Models with calibrated ranges (issue 13 item 3) for the encrypted tests: a random model
//! read finer, and with narrower outputs, than its worst case allows, and an input that wraps
//! one of its reads.

use veilmoe::model::QuantizedMoe;

/// `model` with its first-stage shift `finer` bits below the worst-case one and its expert
/// outputs' encoding `narrower` bits below theirs, as the quantizer sets them from calibration
/// data: some inputs of the box now overflow a read or an output.
pub fn calibrated(model: QuantizedMoe, finer: u32, narrower: u32) -> QuantizedMoe {
    let s = model.input_shift();
    let w = model.expert_output_width();
    assert!(s >= finer, "shift {s} cannot be made {finer} bits finer");
    let m = QuantizedMoe {
        calibrated_shift: Some(s - finer),
        calibrated_output_width: Some(w - narrower),
        ..model
    };
    m.validate().expect("a valid calibrated model");
    assert_eq!(m.first_stage_declared().is_some(), finer > 0);
    assert_eq!(m.expert_output_declared().is_some(), narrower > 0);
    m
}

/// An input of the box that drives one first-stage row (router or W1) to its worst case,
/// beyond the calibrated read box.
pub fn overflowing_input(model: &QuantizedMoe) -> Vec<i64> {
    let d = model.config.d.0;
    let (lo, hi) = (model.quant.input_min(), model.quant.input_max());
    let rows = model
        .router
        .chunks(d)
        .chain(model.experts.iter().flat_map(|x| x.w1.chunks(d)));
    for row in rows {
        for sign in [1i64, -1] {
            let x: Vec<i64> = row
                .iter()
                .map(|&w| if w * sign > 0 { hi } else { lo })
                .collect();
            if model.first_stage_overflows(&x) > 0 {
                return x;
            }
        }
    }
    panic!("no input of the box overflows a first-stage read of this model");
}
