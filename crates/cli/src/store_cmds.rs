//! `ember checkpoint` and `ember export`: operator commands against running ps-servers.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use ember_client::{Credentials, PsClient, SchedulerClient, ShardMap};

use crate::security::ClientSecurityArgs;

/// Which ps-servers a command talks to.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct Targets {
    /// ps-server addresses, comma-separated (a standalone server, or every server of a cluster).
    #[arg(long, value_delimiter = ',')]
    ps: Vec<String>,
    /// Ask this scheduler for the registered ps-servers instead.
    #[arg(long)]
    scheduler: Option<String>,
}

impl Targets {
    /// A client of the target servers, calling with `credentials`.
    pub(crate) async fn client(&self, credentials: &Credentials) -> anyhow::Result<PsClient> {
        let map = match &self.scheduler {
            Some(addr) => SchedulerClient::connect(addr, credentials).await?.shard_map().await?.1,
            None => ShardMap::round_robin(self.ps.clone(), 1024).context("--ps needs at least one address")?,
        };
        anyhow::ensure!(!map.endpoints().is_empty(), "the scheduler knows no ps-servers yet");
        Ok(PsClient::connect(map, credentials).await?)
    }

    /// Where the servers come from, for `--check-config`.
    pub(crate) fn describe(&self) -> String {
        match &self.scheduler {
            Some(addr) => format!("ps-servers from scheduler {addr}"),
            None => format!("ps-servers {}", self.ps.join(",")),
        }
    }
}

/// Arguments of `ember checkpoint`.
#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    targets: Targets,
    /// Full checkpoint (every row) instead of incremental (rows changed since the last one).
    #[arg(long)]
    full: bool,
    /// Label stored with the checkpoint (e.g. the job step).
    #[arg(long, default_value_t = 0)]
    label: u64,
    /// Print one JSON object per server instead of a line each.
    #[arg(long)]
    json: bool,
    /// With --scheduler: record the checkpoint with this job, labeled with its rows trained.
    #[arg(long, requires = "scheduler")]
    job: Option<String>,
    #[command(flatten)]
    security: ClientSecurityArgs,
}

/// Checkpoints every target server; fails if any server fails (the others' checkpoints stand).
/// Through a scheduler, the scheduler does it and records it (with the job, if named).
pub async fn checkpoint(args: CheckpointArgs) -> anyhow::Result<()> {
    let credentials = args.security.credentials()?;
    if let Some(addr) = &args.targets.scheduler {
        let scheduler = SchedulerClient::connect(addr, &credentials).await?;
        let c = scheduler.checkpoint(args.full, args.job.as_deref().unwrap_or("")).await?;
        let kind = if c.full { "full" } else { "incremental" };
        if args.json {
            println!("{}", serde_json::json!({ "label": c.label, "full": c.full, "ids": c.ids, "unix_ms": c.unix_ms }));
        } else {
            println!("cluster checkpoint ({kind}) labeled {}: server checkpoint ids {:?}", c.label, c.ids);
        }
        return Ok(());
    }
    let client = args.targets.client(&credentials).await?;
    let replies = client.checkpoint(args.full, args.label).await?;
    for (endpoint, r) in client.endpoints().iter().zip(&replies) {
        if args.json {
            let line = serde_json::json!({
                "server": endpoint, "id": r.id, "kind": r.kind, "parent": r.parent, "label": r.label,
                "file": r.file, "bytes": r.bytes, "rows": r.rows, "deleted": r.deleted, "seconds": r.seconds,
            });
            println!("{line}");
        } else {
            println!(
                "{endpoint}: checkpoint {} ({}, parent {}) {} rows, {} deleted keys, {} bytes in {:.3}s -> {}",
                r.id, r.kind, r.parent, r.rows, r.deleted, r.bytes, r.seconds, r.file
            );
        }
    }
    Ok(())
}

/// Arguments of `ember export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    targets: Targets,
    /// The sparse table to export.
    #[arg(long)]
    table: String,
    /// Output file: one row per line, `key<TAB>v1,v2,...`, sorted by key.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    security: ClientSecurityArgs,
}

/// Writes every row of a table, sorted by key, so two stores can be compared byte for byte.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let client = args.targets.client(&args.security.credentials()?).await?;
    let (dim, keys, values) = client.export(&args.table).await?;
    let tmp = args.out.with_extension("tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for (i, key) in keys.iter().enumerate() {
        write!(out, "{key}\t")?;
        for (j, v) in values[i * dim..(i + 1) * dim].iter().enumerate() {
            // `{}` on f32 prints the shortest text that reads back to the same value.
            write!(out, "{}{v}", if j == 0 { "" } else { "," })?;
        }
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("renaming to {}", args.out.display()))?;
    eprintln!("exported {} rows of {} (dim {dim}) to {}", keys.len(), args.table, args.out.display());
    Ok(())
}
