//! gRPC requests from arbitrary bytes. The first byte picks a method, the rest is decoded as its
//! request message exactly as the server decodes it ([`ember_proto::codec::decode_message`]);
//! what decodes is then handled: ps requests by a real [`PsService`] over an in-memory store
//! holding a sparse table `t` (dim 4) and a dense table `d` (dim 4), scheduler and serving
//! requests by the conversions their handlers start with.

use std::sync::Arc;

use ember_proto::codec::decode_message;
use ember_proto::v1::parameter_server_server::ParameterServer;
use ember_proto::v1::{self};
use ember_ps_server::PsService;
use ember_store::{Store, StoreConfig};
use tokio_stream::StreamExt;
use tonic::Request;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("a fuzz runtime: {e}"));
}

/// Widest table a fuzzed CreateTable may ask for: a real server accepts up to 2^24, but each
/// execution would then allocate hundreds of MB and the fuzzer would find nothing else.
const MAX_FUZZ_DIM: u32 = 1 << 12;

fn service() -> PsService {
    let store = Arc::new(Store::new(StoreConfig { shard_bits: 1, max_batch_keys: 4096, ..StoreConfig::default() }));
    let sgd = ember_core::Optimizer::Sgd { learning_rate: 0.1 };
    let _ = store.create_table(ember_core::TableSpec::sparse("t", 4, sgd), None);
    let _ = store.create_table(ember_core::TableSpec::dense("d", 4, sgd), None);
    PsService::new(store)
}

/// One ps request, handled by a ps-server service.
pub fn ps_request(data: &[u8]) {
    let [which, body @ ..] = data else { return };
    RUNTIME.with(|rt| rt.block_on(handle_ps(*which, body)));
}

async fn handle_ps(which: u8, body: &[u8]) {
    let svc = service();
    macro_rules! call {
        ($method:ident, $ty:ty) => {{
            if let Ok(req) = decode_message::<$ty>(body) {
                let _ = svc.$method(Request::new(req)).await;
            }
        }};
    }
    match which % 16 {
        0 => {
            if let Ok(req) = decode_message::<v1::CreateTableRequest>(body) {
                if req.spec.as_ref().is_some_and(|s| s.dim <= MAX_FUZZ_DIM) {
                    let _ = svc.create_table(Request::new(req)).await;
                }
            }
        }
        1 => call!(list_tables, v1::ListTablesRequest),
        2 => call!(drop_table, v1::DropTableRequest),
        3 => call!(pull, v1::PullRequest),
        4 => call!(lookup, v1::LookupRequest),
        5 => call!(push, v1::PushRequest),
        6 => call!(pull_tables, v1::PullTablesRequest),
        7 => call!(push_tables, v1::PushTablesRequest),
        8 => call!(pull_dense, v1::PullDenseRequest),
        9 => call!(push_dense, v1::PushDenseRequest),
        10 => call!(delete_keys, v1::DeleteKeysRequest),
        11 => call!(stats, v1::StatsRequest),
        12 => call!(checkpoint, v1::CheckpointRequest),
        13 => call!(flush_pending, v1::FlushPendingRequest),
        14 => {
            if let Ok(mut req) = decode_message::<v1::WorkerClockRequest>(body) {
                // A real server may hold the call up to 10 s; the fuzzer must not wait.
                req.wait_for = 0;
                let _ = svc.worker_clock(Request::new(req)).await;
            }
        }
        _ => {
            if let Ok(req) = decode_message::<v1::ExportRequest>(body) {
                if let Ok(stream) = svc.export(Request::new(req)).await {
                    let mut stream = stream.into_inner();
                    while stream.next().await.is_some() {}
                }
            }
        }
    }
}

/// One scheduler request: decoded, then converted as its handler does (a job file parsed and
/// validated, a report's predictions and labels read as f32).
pub fn scheduler_request(data: &[u8]) {
    let [which, body @ ..] = data else { return };
    match which % 4 {
        0 => {
            if let Ok(req) = decode_message::<v1::SubmitJobRequest>(body) {
                let _ = ember_core::JobSpec::from_toml(&req.job_toml);
            }
        }
        1 => {
            if let Ok(req) = decode_message::<v1::ReportWorkRequest>(body) {
                let _ = ember_core::codec::f32s_from_le(&req.predictions);
                let _ = ember_core::codec::f32s_from_le(&req.labels);
            }
        }
        2 => {
            let _ = decode_message::<v1::RegisterRequest>(body);
        }
        _ => {
            let _ = decode_message::<v1::NextWorkRequest>(body);
        }
    }
}

/// One predict request: its samples turned into examples under Criteo's schema, by name and by
/// position, as the predictor does before any lookup.
pub fn serving_request(data: &[u8]) {
    let Ok(req) = decode_message::<v1::PredictRequest>(data) else { return };
    let schema = ember_model::InputSchema::criteo();
    for sample in req.samples {
        let sample = ember_serving::grpc::sample_of(sample);
        let named = sample.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        if let Ok(example) = schema.example(named, &sample.hashed) {
            assert!(example.features.iter().all(|f| f.value.is_finite()));
        }
        if !sample.row.is_empty() {
            let _ = schema.example_from_row(&sample.row, &sample.hashed);
        }
    }
}
