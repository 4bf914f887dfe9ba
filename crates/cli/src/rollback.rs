//! `ember rollback JOB --to LABEL|@UNIX_SECONDS [--skip FIRST..LAST]`: a follow job back to one
//! of its checkpoints, through the scheduler.

use anyhow::Context;
use ember_client::SchedulerClient;
use ember_proto::v1;

use crate::security::ClientSecurityArgs;

/// Arguments of `ember rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The job.
    job: String,
    /// The checkpoint: its label (the rows trained when it was taken, as `ember status --json`
    /// lists them), or `@UNIX_SECONDS` for the newest one taken at or before that time.
    #[arg(long, value_parser = parse_target)]
    to: v1::rollback_request::Target,
    /// Never train the windows of files whose names lie in FIRST..LAST (inclusive, by name),
    /// e.g. `part-000012.tsv..part-000014.tsv`: a poisoned stretch of the stream.
    #[arg(long, value_parser = parse_skip)]
    skip: Option<(String, String)>,
    /// The scheduler's address.
    #[arg(long)]
    scheduler: String,
    #[command(flatten)]
    security: ClientSecurityArgs,
}

fn parse_target(s: &str) -> Result<v1::rollback_request::Target, String> {
    match s.strip_prefix('@') {
        Some(secs) => secs
            .parse::<u64>()
            .map(|s| v1::rollback_request::Target::BeforeUnixMs(s.saturating_mul(1000)))
            .map_err(|_| format!("{s:?}: @ is followed by Unix seconds")),
        None => s
            .parse::<u64>()
            .map(v1::rollback_request::Target::Label)
            .map_err(|_| format!("{s:?} is neither a checkpoint label nor @UNIX_SECONDS")),
    }
}

fn parse_skip(s: &str) -> Result<(String, String), String> {
    match s.split_once("..") {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && a <= b => Ok((a.to_string(), b.to_string())),
        _ => Err(format!("{s:?} is not FIRST..LAST (two file names, FIRST <= LAST)")),
    }
}

/// Runs `ember rollback`.
pub async fn run(args: RollbackArgs) -> anyhow::Result<()> {
    let scheduler = SchedulerClient::connect(&args.scheduler, &args.security.credentials()?).await?;
    let (skip_first, skip_last) = args.skip.unwrap_or_default();
    let req = v1::RollbackRequest { job_id: args.job.clone(), target: Some(args.to), skip_first, skip_last };
    let r = scheduler.rollback(req).await.with_context(|| format!("rolling back {}", args.job))?;
    let serving =
        if r.version > 0 { format!("model version {} is current again", r.version) } else { "no model version".into() };
    println!(
        "{}: back at checkpoint {} (from {} rows trained); {} windows to train again, {} rows skipped; {serving}",
        args.job, r.label, r.from_rows, r.requeued, r.skipped_rows
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_skip_ranges_parse_or_say_why_not() {
        assert_eq!(parse_target("12000"), Ok(v1::rollback_request::Target::Label(12_000)));
        assert_eq!(parse_target("@1800000000"), Ok(v1::rollback_request::Target::BeforeUnixMs(1_800_000_000_000)));
        assert!(parse_target("yesterday").unwrap_err().contains("neither"));
        assert_eq!(parse_skip("part-3.tsv..part-5.tsv"), Ok(("part-3.tsv".into(), "part-5.tsv".into())));
        assert!(parse_skip("part-5..part-3").is_err() && parse_skip("part-5").is_err());
    }
}
