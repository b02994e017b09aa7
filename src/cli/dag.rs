//! `silkie dag`: the plan's stage instances and what each needs, as text, Mermaid or Graphviz.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{Context, Outcome, PipelineFile, pick};

#[derive(Args)]
pub struct DagArgs {
    pub pipeline: Option<PathBuf>,
    #[command(flatten)]
    pub file: PipelineFile,
    #[arg(long, value_enum, default_value_t = DagFormat::Text)]
    pub format: DagFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DagFormat {
    Text,
    Mermaid,
    Dot,
}

pub fn run(ctx: &Context, args: DagArgs) -> Outcome {
    let (_, plan) = ctx.load(pick(args.pipeline.as_ref(), &args.file)?, &args.file.sets)?;
    let g = &plan.graph;
    let id = |n: petgraph::graph::NodeIndex| format!("n{}", n.index());
    match args.format {
        DagFormat::Text => {
            for &n in &plan.order {
                let needs: Vec<&str> = g[n].deps.iter().map(|d| g[*d].name.as_str()).collect();
                let after = if needs.is_empty() { String::new() } else { format!("  ← {}", needs.join(", ")) };
                println!("{} ({}){after}", g[n].name, g[n].kind.name);
            }
        }
        DagFormat::Mermaid => {
            println!("flowchart LR");
            for &n in &plan.order {
                println!("  {}[\"{} ({})\"]", id(n), g[n].name.replace('"', "'"), g[n].kind.name);
            }
            for e in g.edge_indices() {
                if let Some((a, b)) = g.edge_endpoints(e) {
                    println!("  {} --> {}", id(a), id(b));
                }
            }
        }
        DagFormat::Dot => {
            println!("digraph silkie {{\n  rankdir=LR;");
            for &n in &plan.order {
                println!("  {} [label=\"{}\\n({})\"];", id(n), g[n].name.replace('"', "'"), g[n].kind.name);
            }
            for e in g.edge_indices() {
                if let Some((a, b)) = g.edge_endpoints(e) {
                    println!("  {} -> {};", id(a), id(b));
                }
            }
            println!("}}");
        }
    }
    Ok(true)
}
