//! What a model answers for one image: its best class and the `top_k` best, with labels.
//!
//! Built on the inference thread from one row of class probabilities (see `lane.rs`); the same
//! shape is stored in job records and sent on the wire, hence the serde derives.

use serde::{Deserialize, Serialize};

use crate::labels::Labels;

/// One class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    pub label: String,
    pub class_index: usize,
    pub score: f32,
}

/// A model's answer for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub model: String,
    pub label: String,
    pub class_index: usize,
    pub score: f32,
    pub top_k: Vec<ClassScore>,
    /// Wall time of the model run this image was part of (batch included), in milliseconds.
    pub inference_ms: f64,
    /// Every class's probability, in class order: kept only when the caller asked for them
    /// (the Open Inference Protocol's output tensor), never stored nor sent in a job's JSON.
    #[serde(skip)]
    pub probabilities: Option<Vec<f32>>,
}

impl Prediction {
    pub(super) fn from_probabilities(
        model: &str,
        labels: &Labels,
        probabilities: &[f32],
        k: usize,
        inference_ms: f64,
    ) -> Self {
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        let k = k.clamp(1, probabilities.len().max(1));
        // Only the k best need sorting; total_cmp keeps a NaN from panicking the comparison.
        if k < order.len() {
            order.select_nth_unstable_by(k - 1, |&a, &b| probabilities[b].total_cmp(&probabilities[a]));
            order.truncate(k);
        }
        order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
        let top_k: Vec<ClassScore> = order
            .iter()
            .map(|&i| ClassScore { label: labels.name(i), class_index: i, score: probabilities[i] })
            .collect();
        let best = top_k.first().cloned().unwrap_or(ClassScore { label: String::new(), class_index: 0, score: 0.0 });
        Self {
            model: model.to_owned(),
            label: best.label,
            class_index: best.class_index,
            score: best.score,
            top_k,
            inference_ms,
            probabilities: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_names_labels() {
        let labels = Labels::parse("a\nb\nc\nd\n");
        let p = Prediction::from_probabilities("m", &labels, &[0.1, 0.5, 0.15, 0.25], 3, 1.0);
        assert_eq!(p.class_index, 1);
        assert_eq!(p.label, "b");
        let order: Vec<usize> = p.top_k.iter().map(|c| c.class_index).collect();
        assert_eq!(order, vec![1, 3, 2]);
    }

    #[test]
    fn top_k_larger_than_classes_is_clamped() {
        let labels = Labels::parse("a\nb\n");
        let p = Prediction::from_probabilities("m", &labels, &[0.4, 0.6], 10, 1.0);
        assert_eq!(p.top_k.len(), 2);
    }
}
