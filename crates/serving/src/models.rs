//! The models a serving node serves: one [`Predictor`] per model directory, picked by the model
//! name a request gives (TF Serving's `model_spec.name`). An empty name means the node's only
//! model; with several, a request must name one.

use std::sync::Arc;

use crate::predictor::{Prediction, Predictor, SampleIn};
use crate::ServingError;

/// Every model of a node.
pub struct Models {
    predictors: Vec<Arc<Predictor>>,
}

impl Models {
    /// The models of `predictors` (one per model directory).
    pub fn new(predictors: Vec<Arc<Predictor>>) -> Self {
        Self { predictors }
    }

    /// One predictor per model directory, in the order given.
    pub fn predictors(&self) -> &[Arc<Predictor>] {
        &self.predictors
    }

    /// Names of the models loaded so far.
    pub fn names(&self) -> Vec<String> {
        self.predictors.iter().filter_map(|p| p.name()).collect()
    }

    /// Whether every model has a version loaded.
    pub fn all_loaded(&self) -> bool {
        self.predictors.iter().all(|p| p.manager().current().is_some())
    }

    /// The predictor of model `name` (empty: the only one).
    pub fn pick(&self, name: &str) -> Result<&Arc<Predictor>, ServingError> {
        if name.is_empty() {
            return match self.predictors.as_slice() {
                [only] => Ok(only),
                _ => Err(ServingError::InvalidArgument(format!(
                    "this node serves {} models: name one of {:?}",
                    self.predictors.len(),
                    self.names()
                ))),
            };
        }
        if let Some(p) = self.predictors.iter().find(|p| p.name().as_deref() == Some(name)) {
            return Ok(p);
        }
        match self.predictors.as_slice() {
            // One model not loaded yet: say so rather than "unknown".
            [only] if only.name().is_none() => Err(ServingError::NoModel),
            _ => Err(ServingError::UnknownModel { name: name.to_string(), serving: self.names() }),
        }
    }

    /// Predicts `samples` with version `version` (0: current) of model `name`.
    pub async fn predict(&self, name: &str, version: u64, samples: Vec<SampleIn>) -> Result<Prediction, ServingError> {
        self.pick(name)?.predict(version, samples).await
    }
}
