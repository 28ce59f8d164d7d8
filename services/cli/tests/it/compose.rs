//! `docker-compose.yml` checked without a Docker engine: the compose tool
//! validates it against the compose schema, and the services, ports and
//! environment it names are checked against what the binary and
//! `envoy/envoy.yaml` actually accept.

use std::{collections::BTreeMap, path::Path, process::Command};

use serde_yaml_ng::Value;

use crate::support::{BIN, tool};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The compose file as the compose tool resolves it (anchors and merges
/// applied), after it passed schema validation.
fn resolved() -> Value {
    let output = Command::new(tool("TRIBUTARY_COMPOSE"))
        .arg("-f")
        .arg(root().join("docker-compose.yml"))
        .arg("config")
        .output()
        .expect("the compose tool runs");
    assert!(
        output.status.success(),
        "docker-compose.yml is invalid: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_yaml_ng::from_slice(&output.stdout).expect("compose prints YAML")
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .expect("services is a mapping")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Standard (not `TRIBUTARY_*`) variables that tributary reads.
const STANDARD_ENV: &[&str] = &[
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

fn env(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml_ng::to_string(other).unwrap().trim().to_owned(),
                    };
                    (k.as_str().unwrap().to_owned(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The port in `HOST:PORT`.
fn port_of(listen: &str) -> u16 {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{listen:?} has no port"))
}

#[test]
fn every_tributary_service_uses_only_flags_the_binary_has() {
    let compose = resolved();
    let mut checked = 0;
    for (name, service) in services(&compose) {
        if service["image"].as_str() != Some("tributary:latest") {
            continue;
        }
        let command = strings(&service["command"]);
        assert!(!command.is_empty(), "{name} has no command");
        let help = Command::new(BIN)
            .args(&command)
            .arg("--help")
            .output()
            .expect("tributary runs");
        assert!(
            help.status.success(),
            "{name}: `tributary {}` is not a subcommand: {}",
            command.join(" "),
            String::from_utf8_lossy(&help.stderr)
        );
        let help = String::from_utf8_lossy(&help.stdout);
        for key in env(&service).keys().filter(|k| k.starts_with("TRIBUTARY_")) {
            assert!(
                help.contains(&format!("[env: {key}=")),
                "{name} sets {key}, which `tributary {}` does not read",
                command.join(" ")
            );
        }
        // Beyond our own variables, only standard ones the binary honours:
        // RUST_LOG and OpenTelemetry's trace exporter settings.
        for key in env(&service)
            .keys()
            .filter(|k| !k.starts_with("TRIBUTARY_"))
        {
            assert!(
                STANDARD_ENV.contains(&key.as_str()),
                "{name} sets {key}, which is neither a TRIBUTARY_* flag nor a standard variable tributary reads"
            );
        }
        assert_eq!(
            env(&service)
                .get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(String::as_str),
            Some("http://jaeger:4317"),
            "{name} sends its traces to Jaeger's OTLP/gRPC port"
        );
        assert!(
            env(&service).contains_key("OTEL_SERVICE_NAME"),
            "{name} is named in traces"
        );
        // Parser specs parse as the parser service will parse them.
        if command == ["parser"] {
            let spec = env(&service)
                .get("TRIBUTARY_PARSER")
                .cloned()
                .unwrap_or_else(|| panic!("{name} runs a parser without TRIBUTARY_PARSER"));
            if let Err(e) = tributary_parser::parsers::ParserSpec::from_spec(&spec) {
                panic!("{name}: {e}");
            }
        }
        // The health check asks the port the service listens on.
        let test = strings(&service["healthcheck"]["test"]).join(" ");
        if let Some(listen) = env(&service).get("TRIBUTARY_LISTEN") {
            assert!(
                test.contains(&format!("127.0.0.1:{}", port_of(listen))),
                "{name}: health check {test:?} does not ask port of {listen}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} tributary services found");
}

#[test]
fn envoy_clusters_match_the_compose_services_and_ports() {
    let compose = services(&resolved());
    let envoy: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(root().join("envoy/envoy.yaml")).unwrap())
            .unwrap();
    let clusters = envoy["static_resources"]["clusters"].as_sequence().unwrap();
    assert_eq!(clusters.len(), 3);
    for cluster in clusters {
        let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        let host = address["address"].as_str().unwrap();
        let port = address["port_value"].as_u64().unwrap() as u16;
        let service = compose
            .get(host)
            .unwrap_or_else(|| panic!("Envoy routes to {host}, which compose does not define"));
        let listen = env(service)
            .get("TRIBUTARY_LISTEN")
            .cloned()
            .unwrap_or_else(|| panic!("{host} sets no TRIBUTARY_LISTEN"));
        assert_eq!(port_of(&listen), port, "{host}: Envoy and compose disagree");
        assert!(
            listen.starts_with("0.0.0.0:"),
            "{host} must listen beyond loopback"
        );
    }
    let entry =
        envoy["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
            .as_u64()
            .unwrap();
    // The resolved form lists ports as {published, target}.
    let published = compose["envoy"]["ports"]
        .as_sequence()
        .expect("Envoy publishes ports")
        .iter()
        .any(|p| p["target"].as_u64() == Some(entry) && p["published"].as_u64() == Some(entry));
    assert!(
        published,
        "Envoy's entry port {entry} is published as {entry}"
    );
}

#[test]
fn scaled_services_have_no_fixed_names_or_host_ports() {
    let compose = services(&resolved());
    for name in ["server", "parser", "client"] {
        let service = compose
            .get(name)
            .unwrap_or_else(|| panic!("compose defines no {name}"));
        assert!(service["ports"].is_null(), "{name} publishes host ports");
    }
    for (name, service) in &compose {
        assert!(
            service["container_name"].is_null(),
            "{name} sets container_name"
        );
    }
    for (name, service) in &compose {
        let deps = service["depends_on"].as_mapping();
        for (dep, _) in deps.into_iter().flatten() {
            assert!(
                compose.contains_key(dep.as_str().unwrap()),
                "{name} depends on an undefined service {dep:?}"
            );
        }
    }
}
