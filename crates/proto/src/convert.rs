//! proto <-> domain conversions and the f32 byte encoding.

use bytes::Bytes;
use ember_core::sync::ApplyRule;
use ember_core::{DemotePolicy, FeaturePolicy, Initializer, Optimizer, RowHead, TableKind, TableSpec};

use crate::v1;

/// A wire message that does not describe a valid domain value.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A required field is absent.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// An enum field holds a value this server does not know.
    #[error("field {field}: unknown value {value}")]
    UnknownEnum {
        /// Field name.
        field: &'static str,
        /// The raw value.
        value: i32,
    },
    /// The values parse but make an invalid spec.
    #[error(transparent)]
    Spec(#[from] ember_core::SpecError),
}

/// Wraps a `Vec<f32>` as little-endian bytes without copying it.
pub fn f32s_to_bytes(values: Vec<f32>) -> Bytes {
    struct LeF32(Vec<f32>);
    impl AsRef<[u8]> for LeF32 {
        fn as_ref(&self) -> &[u8] {
            bytemuck::cast_slice(&self.0)
        }
    }
    #[cfg(target_endian = "big")]
    compile_error!("f32s_to_bytes reinterprets f32 in place; big-endian targets are not supported");
    Bytes::from_owner(LeF32(values))
}

impl From<Optimizer> for v1::Optimizer {
    fn from(o: Optimizer) -> Self {
        use v1::optimizer::Kind;
        let kind = match o {
            Optimizer::Sgd { learning_rate } => Kind::Sgd(v1::Sgd { learning_rate }),
            Optimizer::Adagrad { learning_rate, initial_accumulator, epsilon } => {
                Kind::Adagrad(v1::Adagrad { learning_rate, initial_accumulator, epsilon })
            }
            Optimizer::Ftrl { alpha, beta, l1, l2 } => Kind::Ftrl(v1::Ftrl { alpha, beta, l1, l2 }),
            Optimizer::Adam { learning_rate, beta1, beta2, epsilon } => {
                Kind::Adam(v1::Adam { learning_rate, beta1, beta2, epsilon })
            }
        };
        v1::Optimizer { kind: Some(kind) }
    }
}

impl TryFrom<v1::Optimizer> for Optimizer {
    type Error = ConvertError;
    fn try_from(o: v1::Optimizer) -> Result<Self, ConvertError> {
        use v1::optimizer::Kind;
        Ok(match o.kind.ok_or(ConvertError::Missing("optimizer.kind"))? {
            Kind::Sgd(s) => Optimizer::Sgd { learning_rate: s.learning_rate },
            Kind::Adagrad(a) => Optimizer::Adagrad {
                learning_rate: a.learning_rate,
                initial_accumulator: a.initial_accumulator,
                epsilon: a.epsilon,
            },
            Kind::Ftrl(f) => Optimizer::Ftrl { alpha: f.alpha, beta: f.beta, l1: f.l1, l2: f.l2 },
            Kind::Adam(a) => {
                Optimizer::Adam { learning_rate: a.learning_rate, beta1: a.beta1, beta2: a.beta2, epsilon: a.epsilon }
            }
        })
    }
}

impl From<Initializer> for v1::Initializer {
    fn from(i: Initializer) -> Self {
        use v1::initializer::Kind;
        let kind = match i {
            Initializer::Zeros => Kind::Zeros(v1::Zeros {}),
            Initializer::Uniform { low, high } => Kind::Uniform(v1::Uniform { low, high }),
            Initializer::Normal { mean, stddev } => Kind::Normal(v1::Normal { mean, stddev }),
        };
        v1::Initializer { kind: Some(kind) }
    }
}

impl From<v1::Initializer> for Initializer {
    fn from(i: v1::Initializer) -> Self {
        use v1::initializer::Kind;
        match i.kind {
            // An absent initializer means zeros, the proto3 default everyone expects.
            None | Some(Kind::Zeros(_)) => Initializer::Zeros,
            Some(Kind::Uniform(u)) => Initializer::Uniform { low: u.low, high: u.high },
            Some(Kind::Normal(n)) => Initializer::Normal { mean: n.mean, stddev: n.stddev },
        }
    }
}

impl From<TableSpec> for v1::TableSpec {
    fn from(s: TableSpec) -> Self {
        let kind = match s.kind {
            TableKind::Sparse => v1::TableKind::Sparse,
            TableKind::Dense => v1::TableKind::Dense,
        };
        v1::TableSpec {
            name: s.name,
            kind: kind as i32,
            dim: s.dim,
            optimizer: Some(s.optimizer.into()),
            initializer: Some(s.initializer.into()),
            seed: s.seed,
            policy: (!s.policy.is_off()).then_some(v1::FeaturePolicy {
                min_count: s.policy.min_count,
                ttl_steps: s.policy.ttl_steps,
                ttl_seconds: s.policy.ttl_seconds,
                min_l2: s.policy.min_l2,
                demote: match s.policy.demote {
                    DemotePolicy::Lru => v1::DemotePolicy::Lru,
                    DemotePolicy::Lfu => v1::DemotePolicy::Lfu,
                } as i32,
            }),
            sync: match s.sync {
                ApplyRule::Async => None,
                ApplyRule::Staleness { lambda0 } => {
                    Some(v1::ApplyRule { kind: v1::ApplyKind::Staleness as i32, lambda0, s: 0 })
                }
                ApplyRule::Softsync { s, lambda0 } => {
                    Some(v1::ApplyRule { kind: v1::ApplyKind::Softsync as i32, lambda0, s })
                }
                ApplyRule::Sync { s } => Some(v1::ApplyRule { kind: v1::ApplyKind::Sync as i32, lambda0: 1.0, s }),
            },
            head: s.head.map(|h| v1::RowHead {
                dim: h.dim,
                optimizer: Some(h.optimizer.into()),
                initializer: Some(h.initializer.into()),
            }),
        }
    }
}

fn apply_rule(rule: Option<v1::ApplyRule>) -> Result<ApplyRule, ConvertError> {
    let Some(r) = rule else { return Ok(ApplyRule::Async) };
    Ok(match v1::ApplyKind::try_from(r.kind) {
        Ok(v1::ApplyKind::Async) => ApplyRule::Async,
        Ok(v1::ApplyKind::Staleness) => ApplyRule::Staleness { lambda0: r.lambda0 },
        Ok(v1::ApplyKind::Softsync) => ApplyRule::Softsync { s: r.s, lambda0: r.lambda0 },
        Ok(v1::ApplyKind::Sync) => ApplyRule::Sync { s: r.s },
        Err(_) => return Err(ConvertError::UnknownEnum { field: "spec.sync.kind", value: r.kind }),
    })
}

impl TryFrom<v1::TableSpec> for TableSpec {
    type Error = ConvertError;
    fn try_from(s: v1::TableSpec) -> Result<Self, ConvertError> {
        let kind = match v1::TableKind::try_from(s.kind) {
            Ok(v1::TableKind::Sparse) => TableKind::Sparse,
            Ok(v1::TableKind::Dense) => TableKind::Dense,
            Ok(v1::TableKind::Unspecified) => return Err(ConvertError::Missing("spec.kind")),
            Err(_) => return Err(ConvertError::UnknownEnum { field: "spec.kind", value: s.kind }),
        };
        let spec = TableSpec {
            name: s.name,
            kind,
            dim: s.dim,
            optimizer: s.optimizer.ok_or(ConvertError::Missing("spec.optimizer"))?.try_into()?,
            initializer: s.initializer.unwrap_or_default().into(),
            seed: s.seed,
            policy: match s.policy {
                None => FeaturePolicy::default(),
                Some(p) => FeaturePolicy {
                    min_count: p.min_count,
                    ttl_steps: p.ttl_steps,
                    ttl_seconds: p.ttl_seconds,
                    min_l2: p.min_l2,
                    demote: match v1::DemotePolicy::try_from(p.demote) {
                        Ok(v1::DemotePolicy::Lru) => DemotePolicy::Lru,
                        Ok(v1::DemotePolicy::Lfu) => DemotePolicy::Lfu,
                        Err(_) => {
                            return Err(ConvertError::UnknownEnum { field: "spec.policy.demote", value: p.demote })
                        }
                    },
                },
            },
            sync: apply_rule(s.sync)?,
            head: match s.head {
                None => None,
                Some(h) => Some(RowHead {
                    dim: h.dim,
                    optimizer: h.optimizer.ok_or(ConvertError::Missing("spec.head.optimizer"))?.try_into()?,
                    initializer: h.initializer.unwrap_or_default().into(),
                }),
            },
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_and_bad_ones_are_refused() {
        let spec = TableSpec::sparse("emb", 16, Optimizer::Ftrl { alpha: 0.1, beta: 1.0, l1: 0.5, l2: 0.1 })
            .with_initializer(Initializer::Normal { mean: 0.0, stddev: 0.01 }, 77);
        let wire: v1::TableSpec = spec.clone().into();
        assert_eq!(TableSpec::try_from(wire.clone()).unwrap(), spec);
        let policy =
            FeaturePolicy { min_count: 3, ttl_steps: 10, ttl_seconds: 60, min_l2: 1e-3, demote: DemotePolicy::Lfu };
        let with_policy = spec.clone().with_policy(policy);
        assert_eq!(TableSpec::try_from(v1::TableSpec::from(with_policy.clone())).unwrap(), with_policy);
        let rules = [
            ApplyRule::Staleness { lambda0: 2.0 },
            ApplyRule::Softsync { s: 4, lambda0: 1.0 },
            ApplyRule::Sync { s: 3 },
        ];
        for rule in rules {
            let synced = spec.clone().with_sync(rule);
            assert_eq!(TableSpec::try_from(v1::TableSpec::from(synced.clone())).unwrap(), synced);
        }
        let head =
            RowHead { dim: 1, optimizer: Optimizer::Sgd { learning_rate: 0.5 }, initializer: Initializer::Zeros };
        let headed = spec.clone().with_head(head);
        assert_eq!(TableSpec::try_from(v1::TableSpec::from(headed.clone())).unwrap(), headed);
        let whole_row = v1::TableSpec::from(spec.clone().with_head(RowHead { dim: 16, ..head }));
        assert!(matches!(TableSpec::try_from(whole_row), Err(ConvertError::Spec(_))));
        let zero_s = v1::TableSpec::from(spec.clone().with_sync(ApplyRule::Softsync { s: 0, lambda0: 1.0 }));
        assert!(matches!(TableSpec::try_from(zero_s), Err(ConvertError::Spec(_))));
        let too_many = v1::TableSpec::from(spec.clone().with_policy(FeaturePolicy { min_count: 300, ..policy }));
        assert!(matches!(TableSpec::try_from(too_many), Err(ConvertError::Spec(_))));
        let no_opt = v1::TableSpec { optimizer: None, ..wire.clone() };
        assert!(matches!(TableSpec::try_from(no_opt), Err(ConvertError::Missing("spec.optimizer"))));
        let bad_kind = v1::TableSpec { kind: 42, ..wire.clone() };
        assert!(matches!(TableSpec::try_from(bad_kind), Err(ConvertError::UnknownEnum { .. })));
        let zero_dim = v1::TableSpec { dim: 0, ..wire };
        assert!(matches!(TableSpec::try_from(zero_dim), Err(ConvertError::Spec(_))));
    }

    #[test]
    fn f32_bytes_are_little_endian() {
        let b = f32s_to_bytes(vec![1.0, -2.5]);
        let expected: Vec<u8> = [1.0f32, -2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(&b[..], &expected[..]);
    }
}
