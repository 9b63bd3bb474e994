//! The Kubernetes manifests under `deploy/kubernetes` are checked here as
//! far as this can be done without a cluster: each object against the
//! Kubernetes API's own schemas (`kubernetes-validate`, which `scripts/test`
//! installs), and every reference between them (a Service's selector and
//! ports, a pod's volumes, the Secrets and keys it reads) against what the
//! manifests define or `deploy/README.md` tells the operator to create.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_norway::Value;

fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every manifest file, in name order.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kubernetes_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

/// Every object of every manifest, with the file it is in.
fn objects() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for file in manifest_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for document in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !value.is_null() {
                out.push((name.clone(), value));
            }
        }
    }
    out
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, key| v.get(*key))?.as_str()
}

fn labels(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

fn items<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value.get(key).and_then(Value::as_sequence).map_or(&[], Vec::as_slice)
}

/// The Secrets `deploy/README.md` has the operator create, with their keys:
/// each `kubectl … create secret generic <name> --from-literal=<key>=…
/// --from-file=[<key>=]<path>` command, its lines joined where they end in
/// a backslash.
fn secrets_the_readme_creates() -> BTreeMap<String, BTreeSet<String>> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/README.md")).unwrap();
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in readme.lines() {
        match line.trim_end().strip_suffix('\\') {
            Some(continued) => current.push_str(continued),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    let mut secrets = BTreeMap::new();
    for command in commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        let Some(at) = words.windows(3).position(|w| w == ["create", "secret", "generic"]) else { continue };
        let options = &words[at + 3..];
        // The name: the first word that is not an option (`-n airlock` may come first).
        let mut rest = options.iter();
        let mut name = None;
        while let Some(word) = rest.next() {
            if *word == "-n" || *word == "--namespace" {
                rest.next();
            } else if !word.starts_with('-') {
                name = Some((*word).to_owned());
                break;
            }
        }
        let name = name.unwrap_or_else(|| panic!("no name in {command:?}"));
        let keys: &mut BTreeSet<String> = secrets.entry(name).or_default();
        for word in options {
            if let Some(literal) = word.strip_prefix("--from-literal=") {
                keys.insert(literal.split('=').next().unwrap().trim_matches('\'').to_owned());
            } else if let Some(file) = word.strip_prefix("--from-file=") {
                let key = match file.split_once('=') {
                    Some((key, _)) => key,
                    None => file.rsplit('/').next().unwrap(),
                };
                keys.insert(key.to_owned());
            }
        }
    }
    secrets
}

/// Whether Secret `secret` has `key` as every way of making it does (the
/// manifests' example and the README's command, where there is each).
fn secret_has(secrets: &[&BTreeMap<String, BTreeSet<String>>], secret: &str, key: &str) -> bool {
    let making: Vec<_> = secrets.iter().filter_map(|s| s.get(secret)).collect();
    !making.is_empty() && making.iter().all(|keys| keys.contains(key))
}

#[test]
fn the_kubernetes_manifests_are_valid_against_the_kubernetes_schemas() {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "--kubernetes-version", "1.31.0"])
        .args(manifest_files())
        .output()
        .expect("kubernetes-validate runs (scripts/test installs it: pip install kubernetes-validate)");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_reference_between_the_kubernetes_manifests_resolves() {
    let objects = objects();
    let of_kind = |kind: &str| -> Vec<&(String, Value)> {
        objects.iter().filter(|(_, o)| str_at(o, &["kind"]) == Some(kind)).collect()
    };
    // The Secrets: the examples' keys, and those the README's commands create.
    let readme = secrets_the_readme_creates();
    let mut examples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, secret) in of_kind("Secret") {
        let name = str_at(secret, &["metadata", "name"]).unwrap().to_owned();
        let keys = examples.entry(name).or_default();
        for field in ["stringData", "data"] {
            keys.extend(labels(secret.get(field)).into_keys());
        }
    }
    assert!(readme.contains_key("airlock") && readme.contains_key("airlock-grpc-tls"), "{readme:?}");
    assert!(examples.contains_key("airlock"), "{examples:?}");
    let secrets = [&readme, &examples];
    // The files the ConfigMap's configuration names (outside comments).
    let config_toml: String = of_kind("ConfigMap")
        .into_iter()
        .filter_map(|(_, c)| c.get("data").and_then(|d| d.get("airlock.toml")).and_then(Value::as_str))
        .collect();
    assert!(config_toml.contains("[worker]"), "{config_toml}");
    let named_files: Vec<&str> = config_toml
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|v| v.starts_with('/'))
        .collect();
    let config_maps: BTreeMap<String, BTreeSet<String>> = of_kind("ConfigMap")
        .into_iter()
        .map(|(_, c)| {
            (str_at(c, &["metadata", "name"]).unwrap().to_owned(), labels(c.get("data")).into_keys().collect())
        })
        .collect();

    let deployments = of_kind("Deployment");
    assert_eq!(deployments.len(), 3, "the control plane, the gateways and the recorder");
    // Each Deployment's pod labels and container port names.
    let mut pods = Vec::new();
    for (file, deployment) in &deployments {
        let name = str_at(deployment, &["metadata", "name"]).unwrap();
        let template = deployment.get("spec").and_then(|s| s.get("template")).unwrap();
        let pod_labels = labels(template.get("metadata").and_then(|m| m.get("labels")));
        let selector =
            labels(deployment.get("spec").and_then(|s| s.get("selector")).and_then(|s| s.get("matchLabels")));
        assert!(!selector.is_empty(), "{file}: {name} selects no pods");
        assert!(
            selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{file}: {name}'s selector misses its pods"
        );
        let spec = template.get("spec").unwrap();
        let volumes: BTreeMap<&str, &Value> =
            items(spec, "volumes").iter().map(|v| (str_at(v, &["name"]).unwrap(), v)).collect();
        let mut port_names = BTreeSet::new();
        let mut mounted_at: Vec<(String, String)> = Vec::new();
        for container in items(spec, "containers") {
            let container_name = str_at(container, &["name"]).unwrap();
            let at = format!("{file}: {name}/{container_name}");
            let ports: BTreeSet<&str> = items(container, "ports").iter().filter_map(|p| str_at(p, &["name"])).collect();
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                if let Some(port) = container.get(probe).and_then(|p| p.get("httpGet")).and_then(|h| h.get("port")) {
                    let port = port.as_str().unwrap_or_else(|| panic!("{at}: {probe} names its port by number"));
                    assert!(ports.contains(port), "{at}: {probe} uses port {port}, which the container does not name");
                }
            }
            let mut mounts = BTreeMap::new();
            for mount in items(container, "volumeMounts") {
                let volume = str_at(mount, &["name"]).unwrap();
                assert!(volumes.contains_key(volume), "{at} mounts volume {volume}, which the pod does not have");
                mounts.insert(str_at(mount, &["mountPath"]).unwrap(), volume);
                mounted_at.push((str_at(mount, &["mountPath"]).unwrap().to_owned(), volume.to_owned()));
            }
            for variable in items(container, "env") {
                if let Some(reference) = variable.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
                    let (secret, key) = (str_at(reference, &["name"]).unwrap(), str_at(reference, &["key"]).unwrap());
                    assert!(
                        secret_has(&secrets, secret, key),
                        "{at} reads key {key} of Secret {secret}, which the manifests' example or the README's command \
                         for it does not make"
                    );
                }
            }
            // `--config <file>`: a key of the ConfigMap mounted at its directory.
            let args: Vec<&str> = items(container, "args").iter().filter_map(Value::as_str).collect();
            let config = args.iter().position(|a| *a == "--config").and_then(|i| args.get(i + 1)).unwrap();
            let (dir, file_name) = config.rsplit_once('/').unwrap();
            let volume = volumes[mounts.get(dir).unwrap_or_else(|| panic!("{at}: nothing is mounted at {dir}"))];
            let map =
                str_at(volume, &["configMap", "name"]).unwrap_or_else(|| panic!("{at}: {dir} is not a ConfigMap"));
            assert!(
                config_maps.get(map).is_some_and(|keys| keys.contains(file_name)),
                "{at}: ConfigMap {map} has no {file_name}"
            );
            port_names.extend(ports);
        }
        for (volume, spec) in &volumes {
            if let Some(map) = str_at(spec, &["configMap", "name"]) {
                assert!(
                    config_maps.contains_key(map),
                    "{file}: volume {volume} uses ConfigMap {map}, which is not defined"
                );
            }
            if let Some(secret) = str_at(spec, &["secret", "secretName"]) {
                assert!(
                    secrets.iter().any(|made| made.contains_key(secret)),
                    "{file}: volume {volume} uses Secret {secret}, which neither the manifests nor the README make"
                );
                let listed = items(spec.get("secret").unwrap(), "items");
                for item in listed {
                    let key = str_at(item, &["key"]).unwrap();
                    let made = secret_has(&secrets, secret, key);
                    assert!(made, "{file}: volume {volume} takes key {key} of Secret {secret}, which is not made");
                }
                // Mounted whole: every file the configuration names there is a key of it.
                if listed.is_empty() {
                    for (dir, _) in mounted_at.iter().filter(|(_, v)| v == volume) {
                        for path in named_files.iter().filter(|p| p.starts_with(&format!("{dir}/"))) {
                            let key = &path[dir.len() + 1..];
                            assert!(
                                secret_has(&secrets, secret, key),
                                "{file}: the configuration reads {path}, but Secret {secret} mounted at {dir} has no {key}"
                            );
                        }
                    }
                }
            }
        }
        pods.push((name, pod_labels, port_names));
    }

    let services = of_kind("Service");
    assert!(services.len() >= 3, "{services:?}");
    for (file, service) in services {
        let name = str_at(service, &["metadata", "name"]).unwrap();
        let selector = labels(service.get("spec").and_then(|s| s.get("selector")));
        let selected: Vec<_> = pods
            .iter()
            .filter(|(_, l, _)| !selector.is_empty() && selector.iter().all(|(k, v)| l.get(k) == Some(v)))
            .collect();
        let [(_, _, ports)] = selected.as_slice() else {
            panic!("{file}: Service {name} selects the pods of {} Deployments, not one", selected.len())
        };
        for port in items(service.get("spec").unwrap(), "ports") {
            let target = port.get("targetPort").unwrap();
            let target = target.as_str().unwrap_or_else(|| panic!("{file}: {name} targets a port by number"));
            assert!(ports.contains(target), "{file}: Service {name} targets port {target}, which its pods do not name");
        }
    }
}
