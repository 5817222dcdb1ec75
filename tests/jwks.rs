//! Keys over TLS, black-box: the gateway fetches its JWKS from a local
//! HTTPS server whose certificate a test CA signed (`auth.jwks.ca_file`),
//! follows a key rotation (refetch on an unknown `kid`), refuses a server
//! with a certificate of another CA with a clear error while keeping the
//! last good keys, and refuses plain `http://` but for loopback.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

/// A CA and a server certificate it signed for 127.0.0.1 and localhost.
struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki(name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let certs: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca_cert.der().clone()];
    let server = rustls::ServerConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

/// A local HTTPS server answering every GET with the current JWKS, under
/// a certificate of the CA in `ca_file`, or (`rogue`) of another CA;
/// counts completed fetches.
struct JwksServer {
    port: u16,
    jwks: Arc<Mutex<String>>,
    rogue: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl JwksServer {
    fn start(jwks: &str) -> JwksServer {
        let (good, rogue) = (pki("good"), pki("rogue"));
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &good.ca_pem).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = JwksServer {
            port,
            jwks: Arc::new(Mutex::new(jwks.to_string())),
            rogue: Arc::new(AtomicBool::new(false)),
            fetches: Arc::new(AtomicUsize::new(0)),
            ca_file,
            _dir: dir,
        };
        let (configs, doc, use_rogue, fetches) = (
            [good.server.clone(), rogue.server.clone()],
            server.jwks.clone(),
            server.rogue.clone(),
            server.fetches.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else { return };
                    let config = configs[usize::from(use_rogue.load(Ordering::SeqCst))].clone();
                    let (doc, fetches) = (doc.clone(), fetches.clone());
                    tokio::spawn(async move {
                        // A client refusing the certificate ends here.
                        let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                            return;
                        };
                        let svc = hyper::service::service_fn(move |_req| {
                            let body = doc.lock().unwrap().clone();
                            fetches.fetch_add(1, Ordering::SeqCst);
                            async move {
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body))))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
        });
        server
    }
}

fn keys_file(name: &str) -> String {
    std::fs::read_to_string(repo().join("tests/keys").join(name)).unwrap()
}

/// An RS256 token signed with `key_file`, naming `kid`.
fn rs256_token(key_file: &str, kid: &str, sub: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(keys_file(key_file).as_bytes()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": now() + 600}), &key).unwrap()
}

fn setup(server: &JwksServer) -> Setup {
    Setup {
        secret: None,
        auth: format!(
            "\n[auth.jwks]\nurl = \"https://127.0.0.1:{}/jwks.json\"\nca_file = {:?}\nmin_refetch_interval = \"50ms\"\n",
            server.port,
            server.ca_file.display().to_string()
        ),
        shipped_routes: false,
        routes: vec![(
            "knowledge.toml".into(),
            "service = \"knowledge-service\"\nupstream = \"http://127.0.0.1:{knowledge-service}\"\n\n[[route]]\nprefix = \"/api/areas\"\nauth = \"required\"\n".into(),
        )],
        ..Setup::default()
    }
}

#[test]
fn jwks_over_https_rotates_and_a_wrong_certificate_keeps_the_last_good_keys() {
    let server = JwksServer::start(&keys_file("jwks.json"));
    let demo = Demo::start();
    let gw = Gateway::start(&demo, setup(&server));
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1, "the keys were fetched at start");

    let first = rs256_token("rs256.key", "rsa-1", "alice");
    assert_eq!(gw.get_as("/api/areas", &first).status, 200);

    // Rotation: a token under a new kid makes the gateway fetch again.
    let second = rs256_token("other-rs256.key", "rsa-2", "bob");
    assert_eq!(gw.get_as("/api/areas", &second).status, 401, "rsa-2 is not published yet");
    *server.jwks.lock().unwrap() = keys_file("jwks-rotated.json");
    std::thread::sleep(Duration::from_millis(100));
    let resp = gw.get_as("/api/areas", &second);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["headers"]["x-user-id"][0], "bob");

    // The server now shows a certificate the CA did not sign: the refetch
    // fails, says why, and both known keys keep working.
    server.rogue.store(true, Ordering::SeqCst);
    let fetched = server.fetches.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    let unknown = rs256_token("other-rs256.key", "rsa-3", "mallory");
    assert_eq!(gw.get_as("/api/areas", &unknown).status, 401);
    let refused = wait_for(Duration::from_secs(5), || {
        gw.proc
            .logs()
            .into_iter()
            .find(|l| l.contains("JWKS refetch failed") && l.to_ascii_lowercase().contains("certificate"))
    });
    assert!(refused.is_some(), "no clear error: {:#?}", gw.proc.logs());
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        fetched,
        "a JWKS came through the rogue certificate"
    );
    assert_eq!(gw.get_as("/api/areas", &first).status, 200);
    assert_eq!(gw.get_as("/api/areas", &second).status, 200);
}

#[test]
fn a_server_the_ca_did_not_sign_is_refused_at_start_with_the_reason() {
    let server = JwksServer::start(&keys_file("jwks.json"));
    server.rogue.store(true, Ordering::SeqCst);
    let demo = Demo::start();
    let (_dir, config) = write_config(&demo, &setup(&server));
    let out = gatehouse_cmd().arg("--config").arg(&config).arg("check").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stderr.to_ascii_lowercase().contains("certificate"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{}", server.port)), "{stderr}");
}

#[test]
fn plain_http_jwks_is_refused_unless_it_is_loopback() {
    let demo = Demo::start();
    for (url, refused) in [
        ("http://idp.example.com/.well-known/jwks.json", true),
        ("http://10.0.0.7/jwks.json", true),
        ("ftp://idp.example.com/jwks.json", true),
        ("http://127.0.0.1:1/jwks.json", false),
        ("http://[::1]:1/jwks.json", false),
        ("http://localhost:1/jwks.json", false),
    ] {
        let setup = Setup {
            secret: None,
            auth: format!("\n[auth.jwks]\nurl = \"{url}\"\n"),
            ..Setup::default()
        };
        let (_dir, config) = write_config(&demo, &setup);
        let out = gatehouse_cmd().arg("--config").arg(&config).arg("check").output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{url}: nothing listens there");
        let config_error = said.contains("auth.jwks.url:") && said.contains("gatehouse.toml:");
        assert_eq!(config_error, refused, "{url}: {said}");
    }
}

#[test]
fn a_ca_file_without_certificates_is_refused_naming_the_line() {
    let demo = Demo::start();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let setup = Setup {
        secret: None,
        auth: format!(
            "\n[auth.jwks]\nurl = \"https://idp.test/jwks.json\"\nca_file = {:?}\n",
            empty.display().to_string()
        ),
        ..Setup::default()
    };
    let (_dir, config) = write_config(&demo, &setup);
    let out = gatehouse_cmd().arg("--config").arg(&config).arg("check").output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(said.contains("auth.jwks.ca_file") && said.contains("no PEM certificate"), "{said}");
}
