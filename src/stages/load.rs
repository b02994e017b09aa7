//! `load`: reads a data file from the workspace into a table. The file's bytes are in the key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, parse_params, table_format};
use crate::dsl::Issue;
use crate::store::OutputRef;
use crate::table::{self, TableFormat};

pub const KIND: Kind = Kind { name: "load", version: 1, model_params: &[], configure };

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    path: String,
    /// Inferred from the file extension when absent.
    #[serde(default)]
    format: Option<TableFormat>,
}

struct Load {
    params: Params,
    format: TableFormat,
}

fn configure(params: &Value) -> Result<Box<dyn Stage>, Issue> {
    let mut params: Params = parse_params(params)?;
    let format = table_format(&params.path, params.format)?;
    params.format = Some(format);
    Ok(Box::new(Load { params, format }))
}

impl Stage for Load {
    fn canonical_params(&self) -> Value {
        canonical(&self.params)
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![OutputDecl { name: "table".into(), table: true }]
    }

    fn roles(&self) -> Roles {
        Roles::Named(&[])
    }

    fn key_files(&self) -> Vec<PathBuf> {
        vec![PathBuf::from(&self.params.path)]
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let path = ctx.workspace.join(&self.params.path);
        let mut df = table::read(&path, self.format)?;
        if df.height() == 0 {
            return Err(StageError::Failed(format!("{}: the table has no rows", self.params.path)));
        }
        Ok(BTreeMap::from([("table".to_string(), ctx.put_table(&mut df)?)]))
    }
}
