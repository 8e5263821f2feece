//! Small numeric helpers every stage shares (one copy each): argmax and top-k with ties to the
//! lowest index, the median, the sigmoid, the number of bits of an index.

/// Indices of the `k` largest values, largest first, ties to the lowest index (values that do
/// not compare, NaN, count as ties).
pub fn top_k<T: PartialOrd>(values: &[T], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| {
        values[b]
            .partial_cmp(&values[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

/// Index of the largest value, ties to the lowest index (0 for an empty slice): the predicted
/// class of a classifier, the expert a top-1 router picks.
pub fn argmax<T: PartialOrd>(values: &[T]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// Median of `values` (mean of the middle two for an even count; 0 for none).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Logistic sigmoid.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Bits of an index that takes `n` values (`ceil(log2 n)`; 0 for one value or none): the
/// router's expert index, a dispatch's entry and slot numbers.
pub fn index_bits(n: usize) -> usize {
    (usize::BITS - (n.max(1) - 1).leading_zeros()) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lowest_index() {
        assert_eq!(top_k(&[3, 5, 5, 1], 2), vec![1, 2]);
        assert_eq!(top_k(&[2, 2, 2], 1), vec![0]);
        assert_eq!(top_k(&[0, 4, 1, 4], 2), vec![1, 3]);
        assert_eq!(top_k(&[0.5f32, -1.0, 0.7], 3), vec![2, 0, 1]);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(argmax::<f64>(&[]), 0);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn index_bits_are_ceil_log2() {
        let got: Vec<usize> = [0, 1, 2, 3, 4, 5, 8, 9, 16, 17].map(index_bits).to_vec();
        assert_eq!(got, vec![0, 0, 1, 2, 2, 3, 3, 4, 4, 5]);
    }
}
