//! One ONNX classifier: an ORT session plus what it takes to read its output.
//!
//! A `Model` is one *lane*: it lives on one inference thread (see [`super::Classifier`]) and
//! needs no locking for its own session. A model loaded with several lanes has one `Model` per
//! lane, each with its own session on its share of the cores, all sharing the prepacked weights
//! and the one whole-machine session kept for runs that have the machine to themselves.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::{EngineError, runtime};
use crate::labels::Labels;
use crate::pipeline::PreprocessConfig;

/// Everything needed to load a model.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub path: PathBuf,
    pub labels: Arc<Labels>,
    pub preprocess: PreprocessConfig,
    /// ONNX Runtime intra-op threads for this model.
    pub intra_threads: usize,
    /// When ORT's idle intra-op threads busy-wait for work instead of sleeping.
    pub spin: Spin,
    /// Sessions that run batches side by side when requests queue up, each on
    /// `intra_threads / lanes` threads (1: one session on all of them). A lone request still
    /// gets every thread: with more than one lane a whole-machine session is kept for it.
    pub lanes: usize,
}

/// When a model's idle ONNX Runtime threads may busy-wait (spin) for work instead of sleeping.
///
/// Spinning saves a thread wake-up per parallel operator (MobileNet v2 has about 50), which is
/// most of the gap between a lone request and ORT at its fastest; but a spinning thread holds a
/// core that request handling, decoding and the other tier need when the machine is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Spin {
    /// Never: threads sleep between operators and between runs.
    Off,
    /// Only inside a run that has the engine to itself (one request, nothing waiting behind
    /// it), and never between runs. Costs a second ORT session of the model (no extra
    /// weights: prepacked weights are shared).
    Idle,
    /// ORT's default: inside runs and for a while after each.
    Always,
}

impl Spin {
    pub fn as_str(self) -> &'static str {
        match self {
            Spin::Off => "off",
            Spin::Idle => "idle",
            Spin::Always => "always",
        }
    }
}
impl ModelConfig {
    /// The model's file name, used as its name in answers and metrics.
    pub fn name(&self) -> String {
        self.path.file_name().map_or_else(|| self.path.display().to_string(), |n| n.to_string_lossy().into_owned())
    }
}

pub struct Model {
    /// This lane's session: every run that is not alone (and every run, without `alone_session`).
    session: Session,
    /// With [`Spin::Idle`] or several lanes: the model on every thread (spinning inside the run
    /// unless `--fast-spin off`), for runs that have the machine to themselves. Shared by the
    /// lanes; only a run that is alone takes it, so the lock is not contended.
    alone_session: Option<Arc<Mutex<Session>>>,
    prepacked: PrepackedWeights,
    input_name: String,
    output_name: String,
    num_classes: usize,
    crop: usize,
}

/// How a model's sessions are set up, from its [`ModelConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SessionPlan {
    lanes: usize,
    lane_threads: usize,
    lane_spins: bool,
    /// Threads and "spin, then stop after the run" of the whole-machine session, if there is one.
    alone: Option<(usize, bool, bool)>,
}

impl SessionPlan {
    fn new(config: &ModelConfig) -> Self {
        let threads = config.intra_threads.max(1);
        let lanes = config.lanes.clamp(1, threads);
        let alone = (config.spin == Spin::Idle || lanes > 1).then_some((
            threads,
            config.spin != Spin::Off,
            config.spin == Spin::Idle,
        ));
        Self { lanes, lane_threads: (threads / lanes).max(1), lane_spins: config.spin == Spin::Always, alone }
    }
}

/// One ORT session of the model.
fn build_session(
    config: &ModelConfig,
    threads: usize,
    spinning: bool,
    stop_spinning_after_run: bool,
    prepacked: &PrepackedWeights,
) -> Result<Session, EngineError> {
    let file = config.path.display().to_string();
    let env = runtime::environment()?;
    Session::builder(env)
        .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3).map_err(Into::into))
        .and_then(|b| b.with_intra_threads(threads).map_err(Into::into))
        .and_then(|b| b.with_intra_op_spinning(spinning).map_err(Into::into))
        .and_then(|b| {
            b.with_config_entry("session.force_spinning_stop", if stop_spinning_after_run { "1" } else { "0" })
                .map_err(Into::into)
        })
        .and_then(|b| b.with_prepacked_weights(prepacked).map_err(Into::into))
        .and_then(|mut b| b.commit_from_file(&config.path))
        .map_err(|e| match e.code() {
            // ORT's own "Protobuf parsing failed" does not tell a user that this is the wrong file.
            ort::ErrorCode::InvalidProtobuf => EngineError::NotOnnx { file },
            _ => EngineError::InvalidModel { file, reason: e.to_string() },
        })
}

impl Model {
    /// Loads and validates the model, then runs it once on a zero image so that the class count
    /// is checked against the labels and the first real request does not pay for warm-up.
    pub fn load(config: &ModelConfig) -> Result<Self, EngineError> {
        runtime::environment()?;
        let file = config.path.display().to_string();
        let invalid = |reason: String| EngineError::InvalidModel { file: file.clone(), reason };
        if !config.path.is_file() {
            return Err(EngineError::ModelMissing { file });
        }
        let plan = SessionPlan::new(config);
        let prepacked = PrepackedWeights::new();
        let session = build_session(config, plan.lane_threads, plan.lane_spins, false, &prepacked)?;
        let alone_session = match plan.alone {
            Some((threads, spinning, stop)) => {
                Some(Arc::new(Mutex::new(build_session(config, threads, spinning, stop, &prepacked)?)))
            }
            None => None,
        };

        let [input] = session.inputs() else {
            return Err(invalid(format!("expected exactly one input, found {}", session.inputs().len())));
        };
        let crop = config.preprocess.crop as i64;
        match input.dtype() {
            ValueType::Tensor { ty: TensorElementType::Float32, shape, .. }
                if shape.len() == 4
                    && (shape[1] == 3 || shape[1] < 0)
                    && [shape[2], shape[3]].iter().all(|&d| d < 0 || d == crop) => {}
            ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } if shape.len() == 4 && shape[1] == 3 => {
                return Err(invalid(format!(
                    "input `{}` is {:?} but the crop size is {crop}: set the tier's --*-crop to the model's input size",
                    input.name(),
                    &shape[..]
                )));
            }
            other => {
                return Err(invalid(format!(
                    "input `{}` must be a float tensor [N,3,H,W], found {other:?}",
                    input.name()
                )));
            }
        }
        let input_name = input.name().to_owned();
        let Some(output) = session.outputs().first() else {
            return Err(invalid("the model has no output".into()));
        };
        let output_name = output.name().to_owned();

        let mut model =
            Self { session, alone_session, prepacked, input_name, output_name, num_classes: 0, crop: crop as usize };
        let zeros = vec![0.0; config.preprocess.tensor_len()];
        if model.alone_session.is_some() {
            model.run_raw(&zeros, 1, true).map_err(|e| invalid(e.to_string()))?;
        }
        let (shape, _) = model.run_raw(&zeros, 1, false).map_err(|e| invalid(e.to_string()))?;
        let num_classes = match shape[..] {
            [1, classes] => classes,
            _ => return Err(invalid(format!("output `{}` must be [N, classes], found {shape:?}", model.output_name))),
        };
        if num_classes != config.labels.len() {
            let labels_file = config.labels.path().map(|p| format!(" {}", p.display())).unwrap_or_default();
            return Err(invalid(format!(
                "the model has {num_classes} classes but the labels file{labels_file} has {} lines",
                config.labels.len()
            )));
        }
        model.num_classes = num_classes;
        Ok(model)
    }

    /// `config.lanes - 1` more lanes of this model (see [`ModelConfig::lanes`]): sessions of
    /// their own, sharing this one's prepacked weights and whole-machine session.
    pub fn more_lanes(&self, config: &ModelConfig) -> Result<Vec<Self>, EngineError> {
        let plan = SessionPlan::new(config);
        let mut lanes = Vec::with_capacity(plan.lanes.saturating_sub(1));
        for _ in 1..plan.lanes {
            let session = build_session(config, plan.lane_threads, plan.lane_spins, false, &self.prepacked)?;
            let mut lane = Self {
                session,
                alone_session: self.alone_session.clone(),
                prepacked: self.prepacked.clone(),
                input_name: self.input_name.clone(),
                output_name: self.output_name.clone(),
                num_classes: self.num_classes,
                crop: self.crop,
            };
            // Warm-up, as for the first lane: the first request must not pay for it.
            lane.run_raw(&vec![0.0; config.preprocess.tensor_len()], 1, false)?;
            lanes.push(lane);
        }
        Ok(lanes)
    }

    /// Runs a batch of `n` preprocessed images laid end to end in `batch`, returning one row of
    /// class probabilities per image (softmax applied unless the model already outputs them).
    /// `alone`: nothing else is waiting for this model, so with [`Spin::Idle`] its threads may
    /// spin for the length of this run.
    pub fn infer(&mut self, batch: &[f32], n: usize, alone: bool) -> Result<Vec<Vec<f32>>, EngineError> {
        let (_, flat) = self.run_raw(batch, n, alone)?;
        let classes = self.num_classes;
        if flat.len() != n * classes {
            return Err(EngineError::Inference(format!("expected {n}x{classes} outputs, got {}", flat.len())));
        }
        Ok(flat.chunks_exact(classes).map(to_probabilities).collect())
    }

    fn run_raw(&mut self, batch: &[f32], n: usize, alone: bool) -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        let shape = [n, 3, self.crop, self.crop];
        let tensor = TensorRef::from_array_view((shape, batch)).map_err(|e| EngineError::Inference(e.to_string()))?;
        // A run that is alone takes the shared whole-machine session, if there is one.
        let mut alone_guard;
        let session: &mut Session = match (&self.alone_session, alone) {
            (Some(shared), true) => {
                alone_guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
                &mut alone_guard
            }
            _ => &mut self.session,
        };
        let outputs = session
            .run(ort::inputs![self.input_name.as_str() => tensor])
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        let Some(value) = outputs.get(&self.output_name) else {
            return Err(EngineError::Inference(format!("output `{}` missing", self.output_name)));
        };
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| EngineError::Inference(e.to_string()))?;
        let dims = shape.iter().map(|&d| d.max(0) as usize).collect();
        Ok((dims, data.to_vec()))
    }
}

/// Softmax, unless the row already is a probability distribution (some exports end in Softmax).
fn to_probabilities(row: &[f32]) -> Vec<f32> {
    let sum: f32 = row.iter().sum();
    if row.iter().all(|&p| (0.0..=1.0).contains(&p)) && (sum - 1.0).abs() < 1e-3 {
        return row.to_vec();
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(intra_threads: usize, lanes: usize, spin: Spin) -> SessionPlan {
        let config = ModelConfig {
            path: PathBuf::new(),
            labels: Arc::new(Labels::parse("a\n")),
            preprocess: PreprocessConfig::default(),
            intra_threads,
            spin,
            lanes,
        };
        SessionPlan::new(&config)
    }

    #[test]
    fn one_lane_keeps_one_session_on_every_thread() {
        let expected = |alone| SessionPlan { lanes: 1, lane_threads: 2, lane_spins: false, alone };
        assert_eq!(plan(2, 1, Spin::Off), expected(None));
        assert_eq!(plan(2, 1, Spin::Idle), expected(Some((2, true, true))));
        assert_eq!(plan(2, 1, Spin::Always), SessionPlan { lane_spins: true, ..expected(None) });
    }

    #[test]
    fn lanes_split_the_threads_and_keep_a_whole_machine_session_for_lone_runs() {
        assert_eq!(
            plan(2, 2, Spin::Idle),
            SessionPlan { lanes: 2, lane_threads: 1, lane_spins: false, alone: Some((2, true, true)) }
        );
        assert_eq!(
            plan(16, 4, Spin::Off),
            SessionPlan { lanes: 4, lane_threads: 4, lane_spins: false, alone: Some((16, false, false)) }
        );
        // Never more lanes than threads.
        assert_eq!(plan(2, 8, Spin::Always).lanes, 2);
        assert_eq!(
            plan(1, 4, Spin::Idle),
            SessionPlan { lanes: 1, lane_threads: 1, lane_spins: false, alone: Some((1, true, true)) }
        );
    }

    #[test]
    fn softmax_of_logits_sums_to_one_and_keeps_order() {
        let p = to_probabilities(&[1.0, 3.0, 2.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[2] && p[2] > p[0]);
        assert!((p[1] - 0.665_240_9).abs() < 1e-5);
    }

    #[test]
    fn probabilities_are_passed_through() {
        assert_eq!(to_probabilities(&[0.25, 0.75]), vec![0.25, 0.75]);
    }

    #[test]
    fn huge_logits_do_not_overflow() {
        let p = to_probabilities(&[4000.0, -4000.0, 3990.0]);
        assert!(p.iter().all(|x| x.is_finite()));
        assert!(p[0] > 0.99);
    }
}
