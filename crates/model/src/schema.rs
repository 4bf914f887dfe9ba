//! A model's named input fields, and samples given by name turned into examples.
//!
//! Invariant: for a row of a training file, [`InputSchema::example`] on its (name, cell) pairs
//! yields exactly the features the file reader yields (same ids, values and order), because both
//! go through the per-cell functions of [`crate::features`] in field order. A field absent from a
//! sample is treated as an empty cell (its missing id), as in the files.

use std::collections::HashMap;

use ember_core::job::{CsvSchema, DataFormat, DataSpec};
use serde::{Deserialize, Serialize};

use crate::features::{self, Example, Feature};

/// Criteo: integer columns I1-I13.
pub const CRITEO_INT_COLUMNS: usize = 13;
/// Criteo: categorical columns C1-C26.
pub const CRITEO_CAT_COLUMNS: usize = 26;

/// How a field's raw value becomes a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// Hashed as a string.
    Categorical,
    /// An integer, bucketized (Criteo's I columns).
    Integer,
    /// A number, rounded and bucketized (a CSV schema's numeric columns).
    Numeric,
}

/// One named input field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputField {
    /// Name in requests (the column name).
    pub name: String,
    /// Field number hashed into the feature id.
    pub field: u32,
    /// How its value is read.
    pub kind: FieldKind,
}

/// Why a sample could not be turned into an example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// A name the model does not have.
    #[error("unknown field {0:?}")]
    UnknownField(String),
    /// A field given twice in one sample.
    #[error("field {0:?} given twice")]
    DuplicateField(String),
    /// A value of the wrong type.
    #[error("field {name:?}: {reason}")]
    BadValue {
        /// Field.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A positional row with the wrong number of values.
    #[error("a row has {got} values; the model has {want} fields")]
    RowLength {
        /// Values given.
        got: usize,
        /// Fields of the model.
        want: usize,
    },
    /// A pre-hashed feature whose value is not finite or too large.
    #[error("pre-hashed feature {id} has a value that is not a number in [-{max}, {max}]", max = features::MAX_FEATURE_VALUE)]
    NonFinite {
        /// Feature id.
        id: u64,
    },
}

/// The named fields of a model's input, in field order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<InputField>", into = "Vec<InputField>")]
pub struct InputSchema {
    fields: Vec<InputField>,
    by_name: HashMap<String, usize>,
}

impl From<Vec<InputField>> for InputSchema {
    fn from(fields: Vec<InputField>) -> Self {
        let by_name = fields.iter().enumerate().map(|(i, f)| (f.name.clone(), i)).collect();
        Self { fields, by_name }
    }
}

impl From<InputSchema> for Vec<InputField> {
    fn from(s: InputSchema) -> Self {
        s.fields
    }
}

impl InputSchema {
    /// Criteo's I1-I13 (integers, fields 0-12) and C1-C26 (categorical, fields 13-38).
    pub fn criteo() -> Self {
        let ints = (0..CRITEO_INT_COLUMNS as u32).map(|f| InputField {
            name: format!("I{}", f + 1),
            field: f,
            kind: FieldKind::Integer,
        });
        let cats = (0..CRITEO_CAT_COLUMNS as u32).map(|j| InputField {
            name: format!("C{}", j + 1),
            field: CRITEO_INT_COLUMNS as u32 + j,
            kind: FieldKind::Categorical,
        });
        ints.chain(cats).collect::<Vec<_>>().into()
    }

    /// A CSV schema's feature columns, given the file's column `names` in order: categorical
    /// and numeric columns are fields 0, 1, ... in column order (as the CSV reader numbers them);
    /// label and ignored columns are not inputs.
    pub fn from_csv(schema: &CsvSchema, names: &[String]) -> Self {
        let kind_of = |name: &String| {
            if schema.categorical.contains(name) {
                Some(FieldKind::Categorical)
            } else if schema.numeric.contains(name) {
                Some(FieldKind::Numeric)
            } else {
                None
            }
        };
        names
            .iter()
            .filter_map(|n| kind_of(n).map(|kind| (n, kind)))
            .enumerate()
            .map(|(field, (name, kind))| InputField { name: name.clone(), field: field as u32, kind })
            .collect::<Vec<_>>()
            .into()
    }

    /// The input fields of `data`: Criteo's columns, a CSV schema's feature columns (`header`
    /// gives the column names when the schema does not), none for libsvm and libffm (requests
    /// send hashed features).
    pub fn for_data(data: &DataSpec, header: impl FnOnce() -> Vec<String>) -> Self {
        match (data.format, &data.schema) {
            (DataFormat::Criteo, _) => Self::criteo(),
            (DataFormat::Csv, Some(schema)) => {
                let names = schema.columns.clone().unwrap_or_else(header);
                Self::from_csv(schema, &names)
            }
            _ => Self::default(),
        }
    }

    /// The fields, in field order.
    pub fn fields(&self) -> &[InputField] {
        &self.fields
    }

    /// The example of one sample given by position: `row` holds one raw value per field, in
    /// field order ("" is missing), plus `hashed` features appended as given.
    pub fn example_from_row(&self, row: &[String], hashed: &[Feature]) -> Result<Example, SchemaError> {
        if row.len() != self.fields.len() {
            return Err(SchemaError::RowLength { got: row.len(), want: self.fields.len() });
        }
        self.hash_cells(row.iter().map(String::as_str), hashed)
    }

    fn hash_cells<'a>(&self, cells: impl Iterator<Item = &'a str>, hashed: &[Feature]) -> Result<Example, SchemaError> {
        let mut out = Vec::with_capacity(self.fields.len() + hashed.len());
        for (f, cell) in self.fields.iter().zip(cells) {
            let bad = |reason| SchemaError::BadValue { name: f.name.clone(), reason };
            out.push(match f.kind {
                FieldKind::Categorical => features::categorical(f.field, cell),
                FieldKind::Integer => features::integer(f.field, cell).map_err(bad)?,
                FieldKind::Numeric => features::numeric(f.field, cell).map_err(bad)?,
            });
        }
        for h in hashed {
            if !(h.value.is_finite() && h.value.abs() <= features::MAX_FEATURE_VALUE) {
                return Err(SchemaError::NonFinite { id: h.id });
            }
            out.push(*h);
        }
        Ok(Example { label: 0.0, features: out })
    }

    /// The example of one sample: `named` (field name, raw value) pairs, plus `hashed` features
    /// that the caller hashed itself (appended as given). The label is 0.
    pub fn example<'a>(
        &self,
        named: impl IntoIterator<Item = (&'a str, &'a str)>,
        hashed: &[Feature],
    ) -> Result<Example, SchemaError> {
        let mut cells: Vec<Option<&str>> = vec![None; self.fields.len()];
        for (name, value) in named {
            let i = *self.by_name.get(name).ok_or_else(|| SchemaError::UnknownField(name.to_string()))?;
            if cells[i].replace(value).is_some() {
                return Err(SchemaError::DuplicateField(name.to_string()));
            }
        }
        self.hash_cells(cells.into_iter().map(|c| c.unwrap_or("")), hashed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteo_sample_by_name_matches_cell_functions() {
        let s = InputSchema::criteo();
        let ex = s.example([("C3", "68fd1e64"), ("I2", "1000")], &[]).unwrap();
        assert_eq!(ex.features.len(), 39);
        assert_eq!(ex.features[1], features::integer(1, "1000").unwrap());
        assert_eq!(ex.features[15], features::categorical(15, "68fd1e64"));
        assert_eq!(ex.features[0].id, features::missing_id(0), "absent fields read as empty cells");
    }

    #[test]
    fn bad_samples_name_the_problem() {
        let s = InputSchema::criteo();
        assert_eq!(s.example([("C99", "x")], &[]), Err(SchemaError::UnknownField("C99".into())));
        assert_eq!(s.example([("C1", "x"), ("C1", "y")], &[]), Err(SchemaError::DuplicateField("C1".into())));
        let err = s.example([("I1", "abc")], &[]).unwrap_err().to_string();
        assert!(err.contains("I1") && err.contains("not an integer"), "{err}");
        let nan = Feature { field: 0, id: 5, value: f32::NAN };
        assert_eq!(s.example([], &[nan]), Err(SchemaError::NonFinite { id: 5 }));
        let huge = Feature { value: 3e38, ..nan };
        assert_eq!(s.example([], &[huge]), Err(SchemaError::NonFinite { id: 5 }));
    }

    #[test]
    fn rows_by_position_hash_as_named_fields_do() {
        let s = InputSchema::criteo();
        let mut row = vec![String::new(); 39];
        row[1] = "1000".into();
        row[15] = "68fd1e64".into();
        let named = s.example([("C3", "68fd1e64"), ("I2", "1000")], &[]).unwrap();
        assert_eq!(s.example_from_row(&row, &[]).unwrap(), named);
        assert_eq!(s.example_from_row(&row[..3], &[]), Err(SchemaError::RowLength { got: 3, want: 39 }));
    }

    #[test]
    fn schema_round_trips_through_json() {
        let s = InputSchema::criteo();
        let back: InputSchema = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(back.example([("C26", "z")], &[]).is_ok(), "the name index is rebuilt");
    }
}
