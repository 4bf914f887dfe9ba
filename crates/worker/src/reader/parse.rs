//! Parsing one line of each format (Criteo TSV, libsvm, libffm, CSV by a schema) into an
//! example; an unparsable line is an error string that the reader counts and skips.

use std::collections::HashMap;
use std::path::PathBuf;

use ember_core::job::{CsvSchema, DataFormat, DataSpec};
use ember_model::schema::InputSchema;

use super::lines::{read_line, Line};
use super::{open_lines, ReadError, CRITEO_CAT_COLUMNS, CRITEO_INT_COLUMNS};
use crate::features::{self as cell, feature_id, Example, Feature};

/// What each CSV column is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnRole {
    Label,
    Categorical,
    Numeric,
    Ignore,
}

/// Parses one line of a given format into an example.
#[derive(Debug, Clone)]
pub struct LineParser {
    format: DataFormat,
    spec: DataSpec,
    csv: Option<CsvColumns>,
}

#[derive(Debug, Clone)]
struct CsvColumns {
    delimiter: char,
    roles: Vec<ColumnRole>,
    /// Field number of each column: feature columns are numbered 0.. in column order.
    fields: Vec<u32>,
    positive: Vec<String>,
    has_header: bool,
    names: Vec<String>,
}

impl CsvColumns {
    fn new(schema: &CsvSchema, names: &[String]) -> Result<Self, String> {
        let mut role_of: HashMap<&str, ColumnRole> = HashMap::new();
        let named = std::iter::once((schema.label.as_str(), ColumnRole::Label))
            .chain(schema.categorical.iter().map(|c| (c.as_str(), ColumnRole::Categorical)))
            .chain(schema.numeric.iter().map(|c| (c.as_str(), ColumnRole::Numeric)))
            .chain(schema.ignore.iter().map(|c| (c.as_str(), ColumnRole::Ignore)));
        for (name, role) in named {
            if role_of.insert(name, role).is_some() {
                return Err(format!("column {name:?} is named twice in the schema"));
            }
        }
        let mut roles = Vec::with_capacity(names.len());
        for name in names {
            let role = role_of.remove(name.as_str()).ok_or_else(|| {
                format!("column {name:?} is not in the schema (name it under categorical, numeric or ignore)")
            })?;
            roles.push(role);
        }
        if let Some(missing) = role_of.keys().next() {
            return Err(format!("schema column {missing:?} is not in the data"));
        }
        let mut next = 0u32;
        let fields = roles
            .iter()
            .map(|r| {
                let field = next;
                if matches!(r, ColumnRole::Categorical | ColumnRole::Numeric) {
                    next += 1;
                }
                field
            })
            .collect();
        Ok(Self {
            delimiter: schema.delimiter,
            roles,
            fields,
            positive: schema.positive.clone(),
            has_header: schema.columns.is_none(),
            names: names.to_vec(),
        })
    }
}

impl LineParser {
    /// A parser for `spec`. For CSV with a header, the header is read from the first file.
    pub fn new(spec: &DataSpec, files: &[PathBuf]) -> Result<Self, ReadError> {
        let csv = match (&spec.format, &spec.schema) {
            (DataFormat::Csv, Some(schema)) => {
                let first = files.first().cloned().unwrap_or_default();
                let names: Vec<String> = match &schema.columns {
                    Some(cols) => cols.clone(),
                    None => {
                        let mut buf = Vec::new();
                        let mut reader = open_lines(&first)?;
                        let header = read_line(&mut reader, &mut buf)
                            .map_err(|source| ReadError::Io { path: first.clone(), source })?;
                        let bad = |reason: String| ReadError::Header { path: first.clone(), reason };
                        match header {
                            Some(Line::Text(text)) => {
                                text.split(schema.delimiter).map(|s| s.trim().to_string()).collect()
                            }
                            Some(Line::NotUtf8(at)) => {
                                return Err(bad(format!("header is not valid UTF-8 (byte {at})")))
                            }
                            Some(Line::TooLong(len)) => return Err(bad(format!("header of {len} bytes"))),
                            None => return Err(bad("empty file: no header line".into())),
                        }
                    }
                };
                Some(CsvColumns::new(schema, &names).map_err(|reason| ReadError::Header { path: first, reason })?)
            }
            _ => None,
        };
        Ok(Self { format: spec.format, spec: spec.clone(), csv })
    }

    /// The named fields a serving request gives for this format (see [`InputSchema::for_data`]).
    pub fn input_schema(&self) -> InputSchema {
        match (&self.spec.schema, &self.csv) {
            (Some(schema), Some(cols)) => InputSchema::from_csv(schema, &cols.names),
            _ => InputSchema::for_data(&self.spec, Vec::new),
        }
    }

    /// Lines at the top of each file that are not data.
    pub fn header_lines(&self) -> u64 {
        u64::from(self.csv.as_ref().is_some_and(|c| c.has_header))
    }

    /// Parses one line (without its newline).
    pub fn parse(&self, line: &str) -> Result<Example, String> {
        match self.format {
            DataFormat::Criteo => parse_criteo(line),
            DataFormat::Libsvm => parse_sparse(line, false),
            DataFormat::Libffm => parse_sparse(line, true),
            DataFormat::Csv => match &self.csv {
                Some(cols) => parse_csv(cols, line),
                None => Err("csv without a schema".into()),
            },
        }
    }
}

fn parse_criteo(line: &str) -> Result<Example, String> {
    let mut cols = line.split('\t');
    let label = match cols.next() {
        Some("0") => 0.0,
        Some("1") => 1.0,
        other => return Err(format!("label {:?} is not 0 or 1", other.unwrap_or(""))),
    };
    let mut features = Vec::with_capacity(CRITEO_INT_COLUMNS + CRITEO_CAT_COLUMNS);
    let wrong_count = |n: usize| format!("expected 40 tab-separated columns, found {}", n + 1);
    for field in 0..CRITEO_INT_COLUMNS as u32 {
        let cell = cols.next().ok_or_else(|| wrong_count(field as usize))?;
        features.push(cell::integer(field, cell).map_err(|e| format!("I{}: {e}", field + 1))?);
    }
    for j in 0..CRITEO_CAT_COLUMNS as u32 {
        let field = CRITEO_INT_COLUMNS as u32 + j;
        features.push(cell::categorical(field, cols.next().ok_or_else(|| wrong_count(field as usize))?));
    }
    if cols.next().is_some() {
        return Err(format!("more than 40 columns ({})", line.split('\t').count()));
    }
    Ok(Example { label, features })
}

fn parse_sparse(line: &str, ffm: bool) -> Result<Example, String> {
    let mut tokens = line.split_ascii_whitespace();
    let label_token = tokens.next().ok_or("empty line")?;
    let label: f32 = label_token.parse().map_err(|_| format!("label {label_token:?} is not a number"))?;
    if !label.is_finite() {
        return Err(format!("label {label_token:?} is not finite"));
    }
    let mut features = Vec::new();
    for token in tokens {
        let mut parts = token.split(':');
        let (field, index, value) = match (ffm, parts.next(), parts.next(), parts.next(), parts.next()) {
            (false, Some(i), Some(v), None, _) => (0u32, i, v),
            (true, Some(f), Some(i), Some(v), None) => {
                (f.parse().map_err(|_| format!("field {f:?} in {token:?} is not an integer"))?, i, v)
            }
            _ => {
                let shape = if ffm { "field:index:value" } else { "index:value" };
                return Err(format!("feature {token:?} is not {shape}"));
            }
        };
        let value: f32 = value.parse().map_err(|_| format!("value in {token:?} is not a number"))?;
        if !(value.is_finite() && value.abs() <= cell::MAX_FEATURE_VALUE) {
            return Err(format!("value in {token:?} is not a number in [-{0}, {0}]", cell::MAX_FEATURE_VALUE));
        }
        features.push(Feature { field, id: feature_id(field, index.as_bytes()), value });
    }
    Ok(Example { label: if label > 0.0 { 1.0 } else { 0.0 }, features })
}

fn parse_csv(cols: &CsvColumns, line: &str) -> Result<Example, String> {
    let mut label = None;
    let mut features = Vec::with_capacity(cols.roles.len());
    let mut n = 0;
    for (i, cell) in line.split(cols.delimiter).enumerate() {
        n += 1;
        let Some(role) = cols.roles.get(i) else { continue };
        let cell = cell.trim();
        let field = cols.fields[i];
        match role {
            ColumnRole::Label => label = Some(if cols.positive.iter().any(|p| p == cell) { 1.0 } else { 0.0 }),
            ColumnRole::Categorical => features.push(cell::categorical(field, cell)),
            ColumnRole::Numeric => {
                features.push(cell::numeric(field, cell).map_err(|e| format!("column {}: {e}", i + 1))?)
            }
            ColumnRole::Ignore => {}
        }
    }
    if n != cols.roles.len() {
        return Err(format!("expected {} columns, found {n}", cols.roles.len()));
    }
    Ok(Example { label: label.ok_or("no label column")?, features })
}
