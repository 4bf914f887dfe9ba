//! TLS and role tokens through real processes: a scheduler and a ps-server with mutual TLS and
//! a token file; every role tried anonymously, with a wrong role and with the right one, over
//! gRPC and over the HTTPS metrics endpoint. Certificates are made here with rcgen.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use ember_client::raw::call_raw;
use ember_client::{Credentials, PsClient, SchedulerClient, ShardMap};
use ember_core::{Optimizer, TableSpec};
use ember_proto::tls::{ClientTls, KeyPair};
use ember_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

mod support;

use support::pki::{pki, write, Pki, TOKENS};
use support::start;

fn creds(pki: &Pki, token: Option<&str>) -> Credentials {
    let identity = KeyPair::load(&pki.cert, &pki.key).unwrap();
    let tls = ClientTls::load(&pki.ca, None, Some(identity)).unwrap();
    Credentials::none().with_tls(Some(tls)).with_token(token).unwrap()
}

fn code<T>(r: Result<T, ember_client::ClientError>) -> Option<Code> {
    match r {
        Ok(_) => None,
        Err(e) => Some(e.code().unwrap_or(Code::Unknown)),
    }
}

/// GET `path` over HTTPS with the test CA; returns the status line.
async fn https_get(addr: &str, pki: &Pki, path: &str, token: Option<&str>) -> String {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&pki.ca).unwrap()).unwrap();
    let chain = vec![CertificateDer::from_pem_file(&pki.cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_anonymous_wrong_and_right_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let tokens = write(dir.path(), "tokens", TOKENS);
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    let tls_flags = |token: &str| -> Vec<String> {
        [
            "--tls-cert",
            &s(&pki.cert),
            "--tls-key",
            &s(&pki.key),
            "--tls-client-ca",
            &s(&pki.ca),
            "--tls-ca",
            &s(&pki.ca),
            "--auth-tokens",
            &s(&tokens),
            "--token",
            token,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let state = dir.path().join("sched");
    let mut args: Vec<String> =
        ["scheduler", "--listen", "127.0.0.1:0", "--state-dir", &s(&state)].iter().map(|x| x.to_string()).collect();
    args.extend(tls_flags("admin-token-0123456789"));
    let (_sched, sched_addr) = {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (p, found) = start(&refs, &["ember scheduler listening on "]);
        (p, found[0].clone())
    };
    let mut args: Vec<String> = ["ps", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--data-dir"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    args.extend([s(&dir.path().join("ps0")), "--scheduler".into(), sched_addr.clone()]);
    args.extend(tls_flags("admin-token-0123456789"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // The ps-server registers with the admin token, over mTLS, and the scheduler checks its
    // health over TLS before it enters the map.
    let (_ps, found) = start(&refs, &["ember ps listening on ", "ember ps metrics on https://"]);
    let (ps_addr, metrics) = (found[0].clone(), found[1].trim_end_matches("/metrics").to_string());

    let map = || ShardMap::single(ps_addr.clone());
    let as_role = |token: Option<&str>| creds(&pki, token);
    let spec = TableSpec::sparse("emb", 4, Optimizer::Sgd { learning_rate: 0.1 });
    let grads = [0.1f32; 8];

    // Anonymous: every call but health is Unauthenticated.
    let anonymous = PsClient::connect(map(), &as_role(None)).await.unwrap();
    assert_eq!(code(anonymous.create_table(&spec, None).await), Some(Code::Unauthenticated));
    assert_eq!(code(anonymous.list_tables().await), Some(Code::Unauthenticated));
    let wrong_token = PsClient::connect(map(), &as_role(Some("not-a-token-at-all-0000"))).await.unwrap();
    assert_eq!(code(wrong_token.list_tables().await), Some(Code::Unauthenticated));

    // Worker: trains; may not drop tables or delete rows.
    let worker = PsClient::connect(map(), &as_role(Some("worker-token-0123456789"))).await.unwrap();
    assert_eq!(code(worker.create_table(&spec, None).await), None);
    let pulled = worker.pull("emb", &[1, 2]).await.unwrap();
    assert_eq!(code(worker.push("emb", &[1, 2], &grads, &pulled.clock).await), None);
    assert_eq!(code(worker.drop_table("emb").await), Some(Code::PermissionDenied));
    assert_eq!(code(worker.delete_keys("emb", &[1]).await), Some(Code::PermissionDenied));
    assert_eq!(code(worker.checkpoint(true, 0).await), Some(Code::PermissionDenied));

    // Serving: reads; a push or a drop is PermissionDenied.
    let serving = PsClient::connect(map(), &as_role(Some("serving-token-0123456789"))).await.unwrap();
    assert_eq!(code(serving.lookup("emb", &[1, 2]).await), None);
    assert_eq!(code(serving.push("emb", &[1, 2], &grads, &pulled.clock).await), Some(Code::PermissionDenied));
    assert_eq!(code(serving.pull("emb", &[1]).await), Some(Code::PermissionDenied), "a pull creates rows");
    assert_eq!(code(serving.drop_table("emb").await), Some(Code::PermissionDenied));

    // Reader: stats and lookups only.
    let reader = PsClient::connect(map(), &as_role(Some("reader-token-0123456789"))).await.unwrap();
    assert_eq!(code(reader.stats().await), None);
    assert_eq!(code(reader.create_table(&spec, None).await), Some(Code::PermissionDenied));

    // Scheduler: a worker token cannot register a ps-server; an admin's registration must be an
    // address that answers as one.
    let as_worker = SchedulerClient::connect(&sched_addr, &as_role(Some("worker-token-0123456789"))).await.unwrap();
    let denied = as_worker.register(v1::Role::Ps, &ps_addr).await;
    assert_eq!(code(denied), Some(Code::PermissionDenied));
    assert_eq!(code(as_worker.register(v1::Role::Worker, "w1").await), None, "a worker registers as a worker");
    let as_admin = SchedulerClient::connect(&sched_addr, &as_role(Some("admin-token-0123456789"))).await.unwrap();
    assert_eq!(code(as_admin.register(v1::Role::Ps, "not an address").await), Some(Code::InvalidArgument));
    assert_eq!(code(as_admin.register(v1::Role::Ps, "127.0.0.1:1").await), Some(Code::FailedPrecondition));
    let (_, shard_map) = as_admin.shard_map().await.unwrap();
    assert_eq!(shard_map.endpoints(), std::slice::from_ref(&ps_addr), "only the real ps-server is in the map");
    let anonymous_sched = SchedulerClient::connect(&sched_addr, &as_role(None)).await.unwrap();
    assert_eq!(code(anonymous_sched.status(None).await), Some(Code::Unauthenticated));
    assert_eq!(code(as_worker.submit("version = 1".into()).await), Some(Code::PermissionDenied));

    // Admin: everything.
    let admin = PsClient::connect(map(), &as_role(Some("admin-token-0123456789"))).await.unwrap();
    assert_eq!(code(admin.drop_table("emb").await), None);

    // Bytes that are no message: InvalidArgument on the scheduler too (issue 21, item 8).
    let admin_creds = as_role(Some("admin-token-0123456789"));
    for path in ["/ember.v1.Scheduler/SubmitJob", "/ember.v1.Scheduler/ReportWork", "/ember.v1.Scheduler/Register"] {
        let status = call_raw(&sched_addr, &admin_creds, path, vec![0x0a, 0xff, 0x7f]).await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
    }

    // TLS itself: plaintext to a TLS port fails; a certificate from another CA is refused
    // (mTLS), and so is none.
    let plain = PsClient::connect(map(), &Credentials::none()).await;
    let plain_failed = match plain {
        Err(_) => true,
        Ok(c) => c.list_tables().await.is_err(),
    };
    assert!(plain_failed, "plaintext to a TLS port must fail");
    let rogue = KeyPair::load(&pki.rogue_cert, &pki.rogue_key).unwrap();
    let rogue = Credentials::none()
        .with_tls(Some(ClientTls::load(&pki.ca, None, Some(rogue)).unwrap()))
        .with_token(Some("admin-token-0123456789"))
        .unwrap();
    for stranger in [rogue, Credentials::none().with_tls(Some(ClientTls::load(&pki.ca, None, None).unwrap()))] {
        let refused = match PsClient::connect(map(), &stranger).await {
            Err(_) => true,
            Ok(c) => c.list_tables().await.is_err(),
        };
        assert!(refused, "a client without a certificate from the CA must be refused");
    }

    // HTTPS metrics: a token is needed, any role will do.
    assert!(https_get(&metrics, &pki, "/metrics", None).await.contains("401"));
    assert!(https_get(&metrics, &pki, "/metrics", Some("reader-token-0123456789")).await.contains("200"));
}
