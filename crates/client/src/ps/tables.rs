//! Pulls and pushes of several sparse tables at the same keys, one RPC per server (`PullTables`,
//! `PushTables`): the keys travel once and each server handles all tables in one task; per table,
//! the results are exactly those of [`PsClient::pull`] and [`PsClient::push`]. Workers no longer
//! need it (FM and DeepFM keep one joined table); it serves clients with several tables at the
//! same keys.

use ember_proto::v1;

use super::{Clock, PsClient, PulledRows, PushResult};
use crate::ClientError;

/// One table's share of a [`PsClient::push_tables`]: its name, its gradients
/// (`keys.len() * dim` values, key order) and the clock its rows were pulled at.
#[derive(Debug, Clone, Copy)]
pub struct TableGradients<'a> {
    /// Table name.
    pub table: &'a str,
    /// Gradient values.
    pub grads: &'a [f32],
    /// The versions the rows were read at (from that table's pull).
    pub clock: &'a Clock,
}

impl PsClient {
    /// Training read of `tables` at `keys`: one [`PulledRows`] per table, in order, each as
    /// [`Self::pull`] would return it.
    pub async fn pull_tables(&self, tables: &[&str], keys: &[u64]) -> Result<Vec<PulledRows>, ClientError> {
        if tables.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        let parts = self.split(keys);
        let requests = parts
            .iter()
            .map(|part| (part.server, v1::PullTablesRequest { tables: names.clone(), keys: part.keys.clone() }))
            .collect();
        let replies =
            self.call_each(requests, |mut client, request| async move { client.pull_tables(request).await }).await?;
        let mut replies: Vec<Vec<v1::PullResponse>> = replies.into_iter().map(|(_, reply)| reply.tables).collect();
        for (part, reply) in parts.iter().zip(&replies) {
            if reply.len() != tables.len() {
                let reason = format!("{} tables in the reply to a pull of {}", reply.len(), tables.len());
                return Err(self.protocol(part.server, reason));
            }
        }
        let mut pulled = Vec::with_capacity(tables.len());
        for t in 0..tables.len() {
            let table_replies = replies
                .iter_mut()
                .map(|reply| {
                    let r = std::mem::take(&mut reply[t]);
                    (r.dim, r.values, r.version, Vec::new())
                })
                .collect();
            pulled.push(self.assemble(keys.len(), &parts, table_replies, false)?);
        }
        Ok(pulled)
    }

    /// Pushes uncompressed gradients of several tables at the same `keys`: one
    /// [`PushResult`] per table, in order, each as [`Self::push`] would return it.
    pub async fn push_tables(
        &self,
        keys: &[u64],
        tables: &[TableGradients<'_>],
    ) -> Result<Vec<PushResult>, ClientError> {
        if keys.is_empty() || tables.is_empty() {
            return Ok(tables.iter().map(|_| self.no_push()).collect());
        }
        let mut dims = Vec::with_capacity(tables.len());
        for t in tables {
            if !t.grads.len().is_multiple_of(keys.len()) {
                return Err(ClientError::InvalidArgument(format!(
                    "{} gradient values of table {} is not a multiple of {} keys",
                    t.grads.len(),
                    t.table,
                    keys.len()
                )));
            }
            dims.push(t.grads.len() / keys.len());
        }
        let parts = self.split(keys);
        let requests: Vec<(usize, v1::PushTablesRequest)> = parts
            .into_iter()
            .map(|part| {
                let per_table = tables
                    .iter()
                    .zip(&dims)
                    .map(|(t, dim)| v1::TableGradients {
                        table: t.table.to_string(),
                        gradients: part.gather(t.grads, *dim),
                        version: t.clock.of(part.server),
                        encoding: v1::GradientEncoding::F32 as i32,
                    })
                    .collect();
                (part.server, v1::PushTablesRequest { keys: part.keys, tables: per_table })
            })
            .collect();
        let replies =
            self.call_each(requests, |mut client, request| async move { client.push_tables(request).await }).await?;
        let mut results: Vec<PushResult> = tables.iter().map(|_| self.no_push()).collect();
        for (server, reply) in replies {
            if reply.tables.len() != tables.len() {
                let reason = format!("{} tables in the reply to a push of {}", reply.tables.len(), tables.len());
                return Err(self.protocol(server, reason));
            }
            for (result, table_reply) in results.iter_mut().zip(&reply.tables) {
                result.merge(server, table_reply);
            }
        }
        Ok(results)
    }
}
