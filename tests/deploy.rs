//! The Kubernetes manifests (`deploy/k8s`): rendered with `kubectl
//! kustomize`, validated against the Kubernetes schemas offline, their
//! configuration accepted by `gatehouse check` (all by `scripts/k8s.sh`),
//! and the properties a cluster relies on read back from the rendered
//! objects: only 8080 public, probes on the admin port, a drain that fits
//! the grace period, the services reachable from the gateway alone.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

/// Runs `scripts/k8s.sh` on `overlay`: (success, stdout + stderr, objects).
fn render(overlay: &Path) -> (bool, String, Vec<Value>) {
    plugin("hello"); // the example overlay ships the bundled plugins
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("all.json");
    let out = Command::new(repo().join("scripts/k8s.sh"))
        .arg(overlay)
        .env("JSON", &json)
        .env("GATEHOUSE_BIN", env!("CARGO_BIN_EXE_gatehouse"))
        .current_dir(repo())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let objects = std::fs::read(&json)
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or_default();
    (out.status.success(), text, objects)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"].as_str().unwrap().starts_with(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn seconds(duration: &str) -> u64 {
    duration
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .expect("a duration in seconds")
}

#[test]
fn the_example_overlay_is_valid_and_keeps_the_port_map() {
    let (ok, text, objects) = render(Path::new("deploy/k8s/overlays/example"));
    assert!(ok, "{text}");
    assert!(
        text.contains("valid against Kubernetes") && text.contains("gatehouse check: ok"),
        "{text}"
    );

    let deployment = find(&objects, "Deployment", "gatehouse");
    assert_eq!(deployment["metadata"]["namespace"], "gatehouse");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.example.com/gatehouse:0.1.0");
    let ports: Vec<(String, u64)> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["containerPort"].as_u64().unwrap()))
        .collect();
    assert_eq!(ports, [("http".to_string(), 8080), ("admin".to_string(), 9901)]);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");

    // The grace period covers the preStop pause and the gateway's own drain.
    let config = find(&objects, "ConfigMap", "gatehouse-config")["data"]["gatehouse.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let config: toml::Value = toml::from_str(&config).unwrap();
    assert_eq!(config["server"]["admin"].as_str(), Some("0.0.0.0:9901"));
    let grace = seconds(config["server"]["shutdown_grace"].as_str().unwrap());
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap();
    assert!(pre_stop > 0);
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > pre_stop + grace);

    // Non-root, nothing to escalate, a read-only root; the cache is a volume.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["capabilities"]["drop"][0], "ALL");
    let cache = config["plugins"]["cache_dir"].as_str().unwrap();
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == cache),
        "the compile cache ({cache}) is a writable volume"
    );
    // Secrets come from the Secret, admin actions need its token.
    let env = container["env"].as_array().unwrap();
    for name in ["GATEHOUSE_JWT_SECRET", "GATEHOUSE_ADMIN_TOKEN"] {
        let var = env.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name}"));
        assert!(
            var["valueFrom"]["secretKeyRef"]["name"]
                .as_str()
                .unwrap()
                .starts_with("gatehouse-secrets"),
            "{var}"
        );
    }

    // Only 8080 is public; the admin port is in no Service.
    let services: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Service").collect();
    assert_eq!(services.len(), 1);
    let service_ports = services[0]["spec"]["ports"].as_array().unwrap();
    assert_eq!(service_ports.len(), 1);
    assert_eq!(service_ports[0]["targetPort"], "http");

    // The admin port from the monitoring namespace only; 8080 from anywhere.
    let gateway_policy = &find(&objects, "NetworkPolicy", "gatehouse")["spec"];
    let rules = gateway_policy["ingress"].as_array().unwrap();
    for rule in rules {
        let port = rule["ports"][0]["port"].as_u64().unwrap();
        match port {
            8080 => assert!(rule.get("from").is_none(), "{rule}"),
            9901 => assert_eq!(
                rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                "monitoring"
            ),
            other => panic!("unexpected port {other}"),
        }
    }
    // The services' ports admit the gateway's pods and nothing else.
    let services_policy = &find(&objects, "NetworkPolicy", "services-only-from-gatehouse")["spec"];
    let selected: Vec<&str> = services_policy["podSelector"]["matchExpressions"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        selected,
        [
            "user-service",
            "knowledge-service",
            "gamification-service",
            "payment-service",
            "realtime-service"
        ]
    );
    let ingress = services_policy["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0]["from"].as_array().unwrap().len(), 1);
    assert_eq!(
        ingress[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "gatehouse"
    );
    assert_eq!(ingress[0]["ports"][0]["port"], 8081);
    assert_eq!(ingress[0]["ports"][0]["endPort"], 8085);

    assert_eq!(find(&objects, "PodDisruptionBudget", "gatehouse")["spec"]["minAvailable"], 2);
    assert_eq!(find(&objects, "HorizontalPodAutoscaler", "gatehouse")["spec"]["minReplicas"], 3);

    // Plugins travel byte for byte; route files are the shipped ones with
    // cluster service names for upstreams.
    let plugins = &find(&objects, "ConfigMap", "gatehouse-plugins")["binaryData"];
    for name in ["hello", "tier-gate", "polar-webhook"] {
        use base64::Engine as _;
        let shipped = base64::engine::general_purpose::STANDARD
            .decode(plugins[format!("{name}.wasm")].as_str().unwrap().replace('\n', ""))
            .unwrap();
        assert_eq!(
            shipped,
            std::fs::read(repo().join(format!("plugins/{name}.wasm"))).unwrap(),
            "{name}"
        );
    }
    let routes = &find(&objects, "ConfigMap", "gatehouse-routes")["data"];
    let mut files = 0;
    for entry in std::fs::read_dir(repo().join("routes")).unwrap() {
        let path = entry.unwrap().path();
        let local = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let in_cluster = routes[name].as_str().unwrap_or_else(|| panic!("{name} is not in the ConfigMap"));
        let service = local.lines().find_map(|l| l.strip_prefix("service = ")).unwrap().trim_matches('"');
        let expected = local.replace("http://127.0.0.1:", &format!("http://{service}:"));
        assert_eq!(in_cluster, expected, "deploy/k8s/base/routes/{name} differs from routes/{name}");
        files += 1;
    }
    assert_eq!(routes.as_object().unwrap().len(), files);
}

#[test]
fn a_manifest_the_schemas_refuse_fails_the_check() {
    plugin("hello");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("k8s");
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo().join("deploy/k8s"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    for name in ["hello", "tier-gate", "polar-webhook"] {
        std::fs::copy(
            repo().join(format!("plugins/{name}.wasm")),
            copy.join(format!("overlays/example/plugins/{name}.wasm")),
        )
        .unwrap();
    }
    let overlay = copy.join("overlays/example");
    // Breaks one file of the copy, renders it, puts the file back.
    let broken = |file: &str, from: &str, to: &str| {
        let path = copy.join(file);
        let original = std::fs::read_to_string(&path).unwrap();
        assert!(original.contains(from), "{file} has no {from:?}");
        std::fs::write(&path, original.replace(from, to)).unwrap();
        let (ok, text, _) = render(&overlay);
        std::fs::write(&path, original).unwrap();
        assert!(!ok, "{file} with {to:?} passed:\n{text}");
        text
    };
    let text = broken("base/deployment.yaml", "  replicas: 3\n", "  replicas: 3\n  replica: 4\n");
    assert!(
        text.contains("deployment/gatehouse") && text.contains("'replica' was unexpected"),
        "{text}"
    );
    // A configuration the gateway would refuse is caught here too.
    let text = broken("base/gatehouse.toml", "shutdown_grace = \"30s\"", "shutdown_grace = \"soon\"");
    assert!(
        text.contains("invalid duration \"soon\"") && text.contains("gatehouse check refused"),
        "{text}"
    );
}

/// The production image (`scripts/image.sh`): built when podman is here
/// (Debian's `podman`; it needs root to mount an image), checked by the
/// script (user 65532, entrypoint, only 8080 exposed) and by its own binary
/// loading the shipped routes and bundled plugins inside its filesystem.
#[test]
fn the_image_is_static_non_root_and_checks_itself() {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    if Command::new("podman").arg("--version").output().is_err() || !root {
        eprintln!("skipped: building the image needs podman (apt-get install podman) and root");
        return;
    }
    plugin("hello");
    let out = Command::new(repo().join("scripts/image.sh"))
        .env("TAG", "localhost/gatehouse:test")
        // The profile-guided build `make image` ships takes ~25 minutes of
        // training and building; the image's shape is the same.
        .env("BUILD", "release")
        .current_dir(repo())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("user 65532:65532"), "{text}");
    assert!(text.contains("image: build release (no profile)"), "{text}");
    assert!(text.contains("exposes {\"8080/tcp\":{}}"), "{text}");
    assert!(
        text.contains("inside it, ok:") && text.contains("10 routes") && text.contains("3 plugins"),
        "{text}"
    );
    // Nothing but the binary, its config and the mount points.
    let files = text.lines().find_map(|l| l.strip_prefix("image: files: ")).unwrap();
    let mut files: Vec<&str> = files.split_whitespace().collect();
    files.sort();
    assert_eq!(
        files,
        [
            "./etc",
            "./etc/gatehouse",
            "./etc/gatehouse/config",
            "./etc/gatehouse/config/gatehouse.toml",
            "./etc/gatehouse/plugins",
            "./etc/gatehouse/routes",
            "./gatehouse",
            "./var",
            "./var/cache",
            "./var/cache/gatehouse",
        ],
        "{text}"
    );
    let mib: u64 = text
        .split(", ")
        .find_map(|p| p.strip_suffix(" layers").and_then(|p| p.split(" MiB").next()))
        .and_then(|n| n.rsplit(' ').next().unwrap().parse().ok())
        .expect("a size");
    assert!(mib < 60, "{mib} MiB: {text}");
}
