//! `nginx-drain inject`: wires the sidecar into Kubernetes manifests, the
//! way `linkerd inject` wires its proxy. Reads a multi-document stream (as
//! `helm template`, `kustomize build` or `kubectl get -o yaml` print it) and
//! writes it back with every workload that runs NGINX wired for the drain:
//! the sidecar (native by default), the NGINX container's preStop hook, a
//! shared process namespace, the grace arithmetic, and NGINX's worker
//! shutdown timeout where the controller's ConfigMap has a key for it.
//!
//! Invariants kept here:
//! - Documents it does not change are written back byte for byte; in the
//!   ones it changes, every field it does not own stays as it was, and lists
//!   are appended to, never replaced.
//! - Idempotent: a workload that already has an `nginx-drain` container is
//!   left as it is, so injecting twice changes nothing.
//! - Deterministic: no clock, no randomness, maps keep their order.
//! - What cannot work is refused with the fix, never half-wired.
//!
//! Knowledge of the controllers (images, UIDs, hooks, ConfigMap keys) is in
//! [`controllers`]; this module knows the Kubernetes objects.

pub(crate) mod controllers;
pub(crate) mod emit;
pub(crate) mod stream;
pub mod yaml;

use std::time::Duration;

use serde_norway::{Mapping, Value};

use crate::budget::max_worker_shutdown_timeout;
use crate::cli::WiringArgs;
use controllers::{Controller, describe_hook, is_client_port};

/// The sidecar's container name: how `inject` recognises its own work.
pub(crate) const SIDECAR: &str = "nginx-drain";

/// Why a stream cannot be injected. Each names the object and the fix.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error(
        "document {index} is not valid YAML ({source}): fix the input (inject reads what `helm template` or `kubectl get -o yaml` print)"
    )]
    Yaml {
        index: usize,
        source: yaml::ParseError,
    },
    #[error("{0}")]
    Refused(String),
}

/// The injected stream and what was done, one line each, for stderr.
#[derive(Debug, Default)]
pub struct Injected {
    pub output: String,
    pub notes: Vec<String>,
}

/// A ConfigMap of the stream, as it was: a controller reads its NGINX
/// settings from one, in its own namespace.
struct ConfigMap {
    namespace: Option<String>,
    name: String,
    data: Value,
}

/// Injects the sidecar into every workload of `input` that runs NGINX.
pub fn inject(input: &str, opts: &WiringArgs) -> Result<Injected, InjectError> {
    let mut docs = stream::split(input);
    let mut trees = Vec::with_capacity(docs.len());
    let mut values: Vec<Option<Value>> = Vec::with_capacity(docs.len());
    for (index, d) in docs.iter().enumerate() {
        let tree = yaml::parse(&d.full()).map_err(|source| InjectError::Yaml { index, source })?;
        values.push(tree.as_ref().map(|t| t.root.value.clone()));
        trees.push(tree);
    }
    let mut changed = vec![false; docs.len()];
    let mut notes = Vec::new();
    let mut configmaps = Vec::new();
    for v in values.iter().flatten() {
        for_each_object(v, &mut |o| {
            if o["kind"].as_str() == Some("ConfigMap")
                && let Some(name) = o["metadata"]["name"].as_str()
            {
                configmaps.push(ConfigMap {
                    namespace: o["metadata"]["namespace"].as_str().map(str::to_string),
                    name: name.to_string(),
                    data: o["data"].clone(),
                });
            }
        });
    }
    let mut ctx = Wiring {
        opts,
        notes: &mut notes,
        configmaps: &configmaps,
        edits: Vec::new(),
        namespace: None,
        container_found: false,
        pod_only: false,
    };
    for (i, v) in values.iter_mut().enumerate() {
        let Some(v) = v else { continue };
        if wire_object(v, &mut ctx)? {
            changed[i] = true;
        }
    }
    if let Some(name) = &opts.container
        && !ctx.container_found
    {
        return Err(InjectError::Refused(format!(
            "--container {name}: no workload in the input has a container of that name: give the name of the NGINX container (see the `containers:` of the Deployment or DaemonSet), or leave --container out to find it by its image"
        )));
    }
    let config_edits = std::mem::take(&mut ctx.edits);
    for edit in config_edits {
        apply_config_edit(&edit, &mut values, &mut changed, &mut notes);
    }
    for (i, d) in docs.iter_mut().enumerate() {
        if !changed[i] {
            continue;
        }
        let v = values[i].as_ref().expect("a changed document has a value");
        let tree = trees[i].as_ref().expect("a changed document has a tree");
        match yaml::splice(&d.full(), tree, v) {
            Ok(text) => {
                d.separator.clear();
                d.text = text;
            }
            Err(why) => {
                // Written anew, as a whole: what it reads as is right,
                // its comments and formatting are lost, and the user told.
                let body = emit::document(v);
                d.text = format!("{}{body}", d.leading_comments());
                notes.push(format!(
                    "document {i} ({}): written anew, without its comments and formatting: {why}",
                    label(v)
                ));
            }
        }
    }
    Ok(Injected {
        output: stream::join(&docs),
        notes,
    })
}

/// Wires one Pod as the API server is about to create it (the webhook), by
/// the rules `inject` applies to a workload: true when it changed. `notes`
/// gets what was done, and what needs more than the Pod (a controller's
/// ConfigMap key, which only `inject` can edit). `pod` must carry its
/// namespace in `metadata` (the admission request's).
pub(crate) fn wire_pod_object(
    pod: &mut Value,
    opts: &WiringArgs,
    notes: &mut Vec<String>,
) -> Result<bool, InjectError> {
    let mut ctx = Wiring {
        opts,
        notes,
        configmaps: &[],
        edits: Vec::new(),
        namespace: None,
        container_found: false,
        pod_only: true,
    };
    wire_object(pod, &mut ctx)
}

/// Calls `f` on `v` and, for a `List`, on each of its items.
fn for_each_object(v: &Value, f: &mut impl FnMut(&Value)) {
    f(v);
    if v["kind"].as_str() == Some("List") {
        for item in seq(v, "items") {
            for_each_object(item, f);
        }
    }
}

/// `Kind/namespace/name` for messages.
fn label(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or("object");
    let name = obj["metadata"]["name"].as_str().unwrap_or("?");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// What wiring one object needs besides the object.
struct Wiring<'a> {
    opts: &'a WiringArgs,
    notes: &'a mut Vec<String>,
    /// The stream's ConfigMaps before any edit.
    configmaps: &'a [ConfigMap],
    /// ConfigMap keys to change once every workload is wired.
    edits: Vec<ConfigEdit>,
    /// The namespace of the workload being wired (None: not set, the one
    /// it is applied to).
    namespace: Option<String>,
    /// `--container` named a container of some workload.
    container_found: bool,
    /// Only the object itself can change (the webhook): a ConfigMap is
    /// never in reach.
    pod_only: bool,
}

/// Wires one object (a `List`'s items each); true when it changed.
fn wire_object(obj: &mut Value, ctx: &mut Wiring<'_>) -> Result<bool, InjectError> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let what = label(obj);
    ctx.namespace = obj["metadata"]["namespace"].as_str().map(str::to_string);
    match kind.as_str() {
        "List" => {
            let mut any = false;
            if let Some(items) = obj.get_mut("items").and_then(Value::as_sequence_mut) {
                for item in items {
                    any |= wire_object(item, ctx)?;
                }
            }
            Ok(any)
        }
        // An Argo Rollout with a pod template is rolled like a Deployment;
        // one with a `workloadRef` uses the Deployment it names (wired
        // where it is in the input).
        "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Rollout" => {
            let Some(pod) = obj
                .get_mut("spec")
                .and_then(|s| s.get_mut("template"))
                .and_then(|t| t.get_mut("spec"))
            else {
                if kind == "Rollout" && !obj["spec"]["workloadRef"].is_null() {
                    ctx.notes.push(format!(
                        "{what}: takes its pods from {} {} (workloadRef): that Deployment is wired where it is in the input",
                        obj["spec"]["workloadRef"]["kind"].as_str().unwrap_or("Deployment"),
                        obj["spec"]["workloadRef"]["name"].as_str().unwrap_or("?")
                    ));
                }
                return Ok(false);
            };
            wire_pod(pod, &what, ctx)
        }
        "Pod" => {
            let Some(pod) = obj.get_mut("spec") else {
                return Ok(false);
            };
            wire_pod(pod, &what, ctx)
        }
        "NginxProxy" => wire_nginx_proxy(obj, &what, ctx.opts, ctx.notes),
        // They run to completion and take no traffic: an NGINX image there
        // runs a one-off command (Kong's database migrations).
        "Job" | "CronJob" => Ok(false),
        _ => match runs_nginx(obj, ctx.opts, "") {
            None => Ok(false),
            Some((path, container)) => Err(InjectError::Refused(format!(
                "{what}: runs NGINX (container {container} at {path}), but inject does not know the kind {kind}: wire it by hand (docs/controllers.md: the wiring by hand), or give inject the Deployment, DaemonSet or StatefulSet that it makes, or leave it out of inject's input"
            ))),
        },
    }
}

/// Where an object of a kind inject does not know runs an NGINX image: the
/// path of the `containers` list and the container's name.
fn runs_nginx(v: &Value, opts: &WiringArgs, path: &str) -> Option<(String, String)> {
    match v {
        Value::Mapping(m) => {
            if let Some(containers) = m.get("containers").and_then(Value::as_sequence) {
                for c in containers {
                    let name = c["name"].as_str().unwrap_or("?");
                    let named = opts.container.as_deref() == Some(name);
                    let image = c["image"].as_str().and_then(Controller::of_image).is_some();
                    if named || (opts.container.is_none() && image) {
                        return Some((format!("{path}.containers"), name.to_string()));
                    }
                }
            }
            m.iter().find_map(|(k, v)| {
                let k = k.as_str()?;
                if k == "metadata" || k == "status" {
                    return None;
                }
                let sub = if path.is_empty() {
                    k.to_string()
                } else {
                    format!("{path}.{k}")
                };
                runs_nginx(v, opts, &sub)
            })
        }
        Value::Sequence(s) => s
            .iter()
            .enumerate()
            .find_map(|(i, v)| runs_nginx(v, opts, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn seq<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_sequence().map_or(&[], Vec::as_slice)
}

/// A mapping from `(key, value)` pairs, in that order.
fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(Value::from(k), v);
    }
    Value::Mapping(m)
}

fn s(text: &str) -> Value {
    Value::from(text)
}

/// The mapping under `key`, created (or replacing a null) when absent.
fn entry<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    if !v.is_mapping() {
        *v = Value::Mapping(Mapping::new());
    }
    let m = v.as_mapping_mut().expect("a mapping");
    let slot = m
        .entry(Value::from(key))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if slot.is_null() {
        *slot = Value::Mapping(Mapping::new());
    }
    slot
}

fn set(v: &mut Value, key: &str, value: Value) {
    if !v.is_mapping() {
        *v = Value::Mapping(Mapping::new());
    }
    v.as_mapping_mut()
        .expect("a mapping")
        .insert(Value::from(key), value);
}

/// Appends to the list under `key`, creating it when absent.
fn push(v: &mut Value, key: &str, item: Value) {
    let slot = entry(v, key);
    if !slot.is_sequence() {
        *slot = Value::Sequence(Vec::new());
    }
    slot.as_sequence_mut().expect("a list").push(item);
}

/// Whether a pod spec already runs the sidecar.
pub(crate) fn has_sidecar(pod: &Value) -> bool {
    seq(pod, "containers")
        .iter()
        .chain(seq(pod, "initContainers"))
        .any(|c| c["name"].as_str() == Some(SIDECAR))
}

/// Which container runs NGINX, and whose NGINX it is; None when the pod
/// runs no NGINX.
fn find_nginx(
    pod: &Value,
    what: &str,
    opts: &WiringArgs,
    notes: &mut Vec<String>,
    found_named: &mut bool,
) -> Result<Option<(usize, Controller)>, InjectError> {
    let containers = seq(pod, "containers");
    if let Some(name) = &opts.container {
        let Some(i) = containers
            .iter()
            .position(|c| c["name"].as_str() == Some(name))
        else {
            if containers
                .iter()
                .any(|c| c["image"].as_str().and_then(Controller::of_image).is_some())
            {
                let names: Vec<&str> = containers
                    .iter()
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                notes.push(format!(
                    "{what}: left as it is: no container named {name} (it has {})",
                    names.join(", ")
                ));
            }
            return Ok(None);
        };
        *found_named = true;
        let image = containers[i]["image"].as_str().unwrap_or_default();
        return Ok(Some((
            i,
            Controller::of_image(image).unwrap_or(Controller::Nginx),
        )));
    }
    let found: Vec<(usize, Controller)> = containers
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Controller::of_image(c["image"].as_str()?).map(|k| (i, k)))
        .collect();
    match found[..] {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => {
            let names: Vec<&str> = found
                .iter()
                .filter_map(|(i, _)| containers[*i]["name"].as_str())
                .collect();
            Err(InjectError::Refused(format!(
                "{what}: containers {} all look like NGINX: name the one to drain with --container",
                names.join(", ")
            )))
        }
    }
}

/// A ConfigMap key to set, once every workload is wired.
#[derive(Debug)]
struct ConfigEdit {
    /// The ConfigMap's namespace (None: not set) and name.
    namespace: Option<String>,
    name: String,
    key: &'static str,
    value: String,
    /// What it held before (for the note).
    was: String,
}

/// The controller's ConfigMap from its args
/// (`--configmap=$(POD_NAMESPACE)/NAME`): its namespace when the arg names
/// one other than the pod's own, and its name.
fn configmap_name(container: &Value, arg: &str) -> Option<(Option<String>, String)> {
    seq(container, "args").iter().find_map(|a| {
        let (flag, value) = a.as_str()?.split_once('=')?;
        if flag != arg {
            return None;
        }
        Some(match value.rsplit_once('/') {
            Some((ns, name)) if !ns.starts_with("$(") => (Some(ns.to_string()), name.to_string()),
            Some((_, name)) => (None, name.to_string()),
            None => (None, value.to_string()),
        })
    })
}

/// Whether two namespaces can be the same: equal, or either not set (the
/// one the stream is applied to).
fn same_namespace(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// The stream's ConfigMap `name` in `namespace`: the one whose namespace
/// is exactly that, else one whose namespace may be.
fn find_configmap<'a>(
    configmaps: &'a [ConfigMap],
    namespace: Option<&str>,
    name: &str,
) -> Option<&'a ConfigMap> {
    let named = || configmaps.iter().filter(|c| c.name == name);
    named()
        .find(|c| c.namespace.as_deref() == namespace)
        .or_else(|| named().find(|c| same_namespace(c.namespace.as_deref(), namespace)))
}

/// Seconds in an NGINX time as the controllers take it (`240s`, `1m30s`,
/// `10`): None when unreadable.
fn seconds(text: &str) -> Option<f64> {
    crate::vocab::parse_nginx_time(text.trim()).map(|d| d.as_secs_f64())
}

fn apply_config_edit(
    edit: &ConfigEdit,
    values: &mut [Option<Value>],
    changed: &mut [bool],
    notes: &mut Vec<String>,
) {
    fn visit(v: &mut Value, edit: &ConfigEdit, done: &mut bool) {
        if v["kind"].as_str() == Some("List") {
            if let Some(items) = v.get_mut("items").and_then(Value::as_sequence_mut) {
                for item in items {
                    visit(item, edit, done);
                }
            }
            return;
        }
        if !*done
            && v["kind"].as_str() == Some("ConfigMap")
            && v["metadata"]["name"].as_str() == Some(edit.name.as_str())
            && v["metadata"]["namespace"].as_str() == edit.namespace.as_deref()
        {
            set(entry(v, "data"), edit.key, s(&edit.value));
            *done = true;
        }
    }
    let mut done = false;
    for (i, v) in values.iter_mut().enumerate() {
        let Some(v) = v else { continue };
        visit(v, edit, &mut done);
        if done {
            changed[i] = true;
            notes.push(format!(
                "ConfigMap {}{}: set {} to {} (was {}): NGINX closes WebSockets and streams by then, inside the drain budget",
                edit.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default(),
                edit.name,
                edit.key,
                edit.value,
                edit.was
            ));
            return;
        }
    }
}

/// NGINX's worker shutdown timeout for a controller that keeps it in its
/// ConfigMap: the value the sidecar is told (whole seconds), after any
/// edit that brings it within `limit`. None when the ConfigMap is not in
/// the stream (with a note saying what to check).
fn worker_shutdown(
    nginx: &Value,
    controller: Controller,
    limit: Duration,
    what: &str,
    ctx: &mut Wiring<'_>,
) -> Option<u64> {
    let key = controller.shutdown_timeout_key()?;
    let (in_arg, name) = configmap_name(nginx, key.arg)?;
    let namespace = in_arg.or_else(|| ctx.namespace.clone());
    let limit_secs = limit.as_secs();
    let Some(cm) = find_configmap(ctx.configmaps, namespace.as_deref(), &name) else {
        let elsewhere: Vec<&str> = ctx
            .configmaps
            .iter()
            .filter(|c| c.name == name)
            .filter_map(|c| c.namespace.as_deref())
            .collect();
        let where_ = if ctx.pod_only {
            "is out of the webhook's reach (it changes only the Pod)".to_string()
        } else if elsewhere.is_empty() {
            "is not in the input".to_string()
        } else {
            format!(
                "is not in the input in namespace {} (only in {})",
                namespace.as_deref().unwrap_or("?"),
                elsewhere.join(", ")
            )
        };
        ctx.notes.push(format!(
            "{what}: its ConfigMap {name} {where_}: make sure its {} is at most {limit_secs}s (the drain budget's limit), or NGINX's timer closes long-lived connections only after the sidecar escalates",
            key.key
        ));
        return None;
    };
    let (name, namespace, data) = (cm.name.clone(), cm.namespace.clone(), &cm.data);
    let text = data[key.key].as_str();
    let current = text.and_then(seconds).or(key.default);
    match current {
        Some(c) if c <= limit_secs as f64 && text.is_some() => Some(c.ceil() as u64),
        // Absent: written out, so that the ConfigMap says what the sidecar
        // is told.
        Some(c) if c <= limit_secs as f64 => {
            let value = format!("{}s", c.ceil() as u64);
            ctx.edits.push(ConfigEdit {
                namespace,
                name,
                key: key.key,
                value,
                was: format!("unset, the controller's default {c}s"),
            });
            Some(c.ceil() as u64)
        }
        _ => {
            ctx.edits.push(ConfigEdit {
                namespace,
                name,
                key: key.key,
                value: format!("{limit_secs}s"),
                was: text.map_or_else(
                    || match key.default {
                        Some(d) => format!("unset, the controller's default {d}s"),
                        None => "unset: no timer".to_string(),
                    },
                    |t| format!("{t:?}"),
                ),
            });
            Some(limit_secs)
        }
    }
}

/// NGINX's worker shutdown timeout for a controller whose image takes it
/// from an environment variable (Kong): the value the sidecar is told, and
/// the value to write into the NGINX container's variable when it is unset
/// (no timer) or longer than `limit`. None when the variable comes from
/// elsewhere (`valueFrom`, `envFrom`: with a note saying what to check).
fn worker_shutdown_env(
    nginx: &Value,
    controller: Controller,
    limit: Duration,
    what: &str,
    ctx: &mut Wiring<'_>,
) -> Option<(u64, Option<String>)> {
    let var = controller.shutdown_timeout_env()?;
    let limit_secs = limit.as_secs();
    let cname = nginx["name"].as_str().unwrap_or("?");
    let found = seq(nginx, "env")
        .iter()
        .find(|e| e["name"].as_str() == Some(var));
    match found {
        Some(e) if e["value"].is_null() => {
            ctx.notes.push(format!(
                "{what}: container {cname}: {var} comes from valueFrom: make sure it is at most {limit_secs}s (the drain budget's limit), or NGINX's timer closes long-lived connections only after the sidecar escalates"
            ));
            None
        }
        Some(e) => {
            let text = e["value"].as_str().unwrap_or_default();
            match seconds(text) {
                Some(c) if c <= limit_secs as f64 => Some((c.ceil() as u64, None)),
                _ => Some((limit_secs, Some(format!("{text:?}")))),
            }
        }
        None if !seq(nginx, "envFrom").is_empty() => {
            ctx.notes.push(format!(
                "{what}: container {cname}: takes variables from envFrom: inject set no {var}; make sure any there is at most {limit_secs}s"
            ));
            None
        }
        None => Some((limit_secs, Some("unset: no timer".to_string()))),
    }
}

/// Sets `name` to `value` in a container's `env` (replacing its entry, or
/// appending one).
fn set_env(container: &mut Value, name: &str, value: &str) {
    let env = entry(container, "env");
    if !env.is_sequence() {
        *env = Value::Sequence(Vec::new());
    }
    let list = env.as_sequence_mut().expect("a sequence");
    match list.iter_mut().find(|e| e["name"].as_str() == Some(name)) {
        Some(e) => set(e, "value", s(value)),
        None => list.push(map([("name", s(name)), ("value", s(value))])),
    }
}

/// Wires one pod spec; true when it changed.
fn wire_pod(pod: &mut Value, what: &str, ctx: &mut Wiring<'_>) -> Result<bool, InjectError> {
    let opts = ctx.opts;
    if has_sidecar(pod) {
        ctx.notes
            .push(format!("{what}: already has {SIDECAR}: left as it is"));
        return Ok(false);
    }
    let Some((idx, controller)) = find_nginx(pod, what, opts, ctx.notes, &mut ctx.container_found)?
    else {
        return Ok(false);
    };
    let nginx = &seq(pod, "containers")[idx];
    let cname = nginx["name"].as_str().unwrap_or("?").to_string();
    let taken = seq(pod, "containers")
        .iter()
        .chain(seq(pod, "initContainers"))
        .find(|c| {
            seq(c, "ports")
                .iter()
                .any(|p| p["containerPort"].as_u64() == Some(u64::from(opts.hook_port)))
        });
    if let Some(c) = taken {
        return Err(InjectError::Refused(format!(
            "{what}: port {} is taken by container {}: give the sidecar another with --hook-port",
            opts.hook_port,
            c["name"].as_str().unwrap_or("?")
        )));
    }
    let in_spec = nginx["securityContext"]["runAsUser"]
        .as_i64()
        .or_else(|| pod["securityContext"]["runAsUser"].as_i64());
    let uid = opts.uid.or(in_spec).or_else(|| controller.default_uid());
    let Some(uid) = uid else {
        return Err(InjectError::Refused(format!(
            "{what}: cannot tell which UID the NGINX master in container {cname} runs as (no runAsUser in its securityContext or the pod's): give --uid (0 for the official nginx image, whose master runs as root; 101 for nginx-unprivileged), since the sidecar must run as that UID to signal it"
        )));
    };
    let gid = nginx["securityContext"]["runAsGroup"]
        .as_i64()
        .or_else(|| pod["securityContext"]["runAsGroup"].as_i64());
    let (grace, budget) =
        grace_and_budget(what, opts, pod["terminationGracePeriodSeconds"].as_i64())?;
    let ports: Vec<u16> = if opts.ports.is_empty() {
        seq(nginx, "ports")
            .iter()
            .filter(|p| p["protocol"].as_str().is_none_or(|p| p == "TCP"))
            .filter(|p| p["name"].as_str().is_none_or(is_client_port))
            .filter_map(|p| p["containerPort"].as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .collect()
    } else {
        opts.ports.clone()
    };
    let budget_d = Duration::from_secs(budget.unsigned_abs());
    let limit = max_worker_shutdown_timeout(budget_d, opts.max_delay);
    let (worker_shutdown, env_edit) = match worker_shutdown_env(nginx, controller, limit, what, ctx)
    {
        Some((w, edit)) => (Some(w), edit),
        None => (worker_shutdown(nginx, controller, limit, what, ctx), None),
    };
    if let Some(hint) = controller.shutdown_timeout_hint(limit.as_secs()) {
        ctx.notes.push(format!("{what}: {hint}"));
    }

    // The NGINX container: the drain's hook replaces any other preStop.
    let containers = pod["containers"].as_sequence_mut().expect("containers");
    let nginx = &mut containers[idx];
    if in_spec.is_none() {
        // The UID came from what inject knows of the image (its USER):
        // written on the container, so that the pod says which UID the
        // sidecar must match, and a new image with another USER fails to
        // start instead of leaving the sidecar unable to signal.
        set(
            entry(nginx, "securityContext"),
            "runAsUser",
            Value::from(uid),
        );
        ctx.notes.push(format!(
            "{what}: container {cname}: set runAsUser {uid} (the {} image's user), which the sidecar matches",
            controller.as_str()
        ));
    }
    if let (Some(was), Some(var), Some(w)) =
        (env_edit, controller.shutdown_timeout_env(), worker_shutdown)
    {
        set_env(nginx, var, &format!("{w}s"));
        ctx.notes.push(format!(
            "{what}: container {cname}: set {var} to {w}s (was {was}): NGINX closes WebSockets and streams by then, inside the drain budget"
        ));
    }
    if let Some((flag, arg)) = controller.extra_arg() {
        let has = seq(nginx, "args")
            .iter()
            .any(|a| a.as_str().is_some_and(|a| a.starts_with(flag)));
        if !has && nginx["args"].is_sequence() {
            push(nginx, "args", s(arg));
            ctx.notes.push(format!(
                "{what}: container {cname}: added {arg} (the controller would wait that long after the drained NGINX has exited)"
            ));
        }
    }
    if let Some(old) = set_drain_hook(entry(nginx, "lifecycle"), opts.hook_port) {
        ctx.notes.push(format!(
            "{what}: container {cname}: replaced its preStop hook, {old}, with nginx-drain's: every container's preStop runs at once, so it would stop NGINX behind the drain's back"
        ));
    }

    if pod["shareProcessNamespace"].as_bool() != Some(true) {
        set(pod, "shareProcessNamespace", Value::from(true));
    }
    if pod["terminationGracePeriodSeconds"].as_i64() != Some(grace) {
        set(pod, "terminationGracePeriodSeconds", Value::from(grace));
    }
    let sidecar = sidecar(opts, budget, grace, &ports, worker_shutdown, uid, gid);
    if opts.native {
        push(pod, "initContainers", sidecar);
    } else {
        push(pod, "containers", sidecar);
    }
    let ports_text: Vec<String> = ports.iter().map(u16::to_string).collect();
    ctx.notes.push(format!(
        "{what}: wired {} container {cname} (UID {uid}, client ports [{}]): drain budget {budget}s of a {grace}s grace period",
        controller.as_str(),
        ports_text.join(", ")
    ));
    Ok(true)
}

/// The pod's grace period (`--grace-period`, else the workload's, else
/// Kubernetes' 30 s) and the drain budget it leaves; refused under 3 s.
fn grace_and_budget(
    what: &str,
    opts: &WiringArgs,
    in_spec: Option<i64>,
) -> Result<(i64, i64), InjectError> {
    let grace = match (opts.grace_period, in_spec) {
        (Some(g), _) => i64::from(g),
        (None, Some(g)) if g < 0 => {
            return Err(InjectError::Refused(format!(
                "{what}: terminationGracePeriodSeconds {g} is negative (the API server takes it as 1 s): give --grace-period with the seconds the pod may take to stop"
            )));
        }
        (None, Some(g)) => g,
        (None, None) => 30,
    };
    // The sidecar refuses durations over a day (a typo, not a plan).
    if grace > 86_400 {
        return Err(InjectError::Refused(format!(
            "{what}: a grace period of {grace} s is over a day, longer than the sidecar accepts: give --grace-period with at most 86400"
        )));
    }
    let budget = grace - i64::from(opts.margin);
    if budget < 3 {
        return Err(InjectError::Refused(format!(
            "{what}: terminationGracePeriodSeconds {grace} leaves a drain budget of {budget}s after the {}s margin: give --grace-period {} or more",
            opts.margin,
            opts.margin + 3
        )));
    }
    Ok((grace, budget))
}

/// Makes `lifecycle`'s preStop the drain's hook (GET /prestop on `port`);
/// what it replaced, in words, if anything.
fn set_drain_hook(lifecycle: &mut Value, port: u16) -> Option<String> {
    let old = lifecycle
        .get("preStop")
        .filter(|h| !h.is_null())
        .map(describe_hook);
    set(
        lifecycle,
        "preStop",
        map([(
            "httpGet",
            map([("path", s("/prestop")), ("port", Value::from(port))]),
        )]),
    );
    old
}

/// The sidecar container.
fn sidecar(
    opts: &WiringArgs,
    budget: i64,
    grace: i64,
    ports: &[u16],
    worker_shutdown: Option<u64>,
    uid: i64,
    gid: Option<i64>,
) -> Value {
    let mut args = Vec::new();
    if opts.hook_port != 10266 {
        args.push(format!("--listen=[::]:{}", opts.hook_port));
    }
    args.push(format!("--drain-timeout={budget}s"));
    args.push(format!("--grace-period={grace}s"));
    args.push(format!(
        "--max-delay={}",
        humantime::format_duration(opts.max_delay)
    ));
    args.extend(ports.iter().map(|p| format!("--port={p}")));
    if let Some(w) = worker_shutdown {
        args.push(format!("--worker-shutdown-timeout={w}s"));
    }
    args.push("--allow-kubelet=true".into());
    args.extend(opts.allow_cidrs.iter().map(|c| format!("--allow-cidr={c}")));
    args.push("--log-format=json".into());
    args.push("--report-file=/dev/termination-log".into());
    let field = |name: &str, path: &str| {
        map([
            ("name", s(name)),
            (
                "valueFrom",
                map([("fieldRef", map([("fieldPath", s(path))]))]),
            ),
        ])
    };
    let probe = |path: &str| {
        map([
            (
                "httpGet",
                map([("path", s(path)), ("port", Value::from(opts.hook_port))]),
            ),
            ("periodSeconds", Value::from(10)),
        ])
    };
    let mut security = map([
        ("runAsUser", Value::from(uid)),
        ("runAsNonRoot", Value::from(uid != 0)),
        ("allowPrivilegeEscalation", Value::from(false)),
        ("readOnlyRootFilesystem", Value::from(true)),
        (
            "capabilities",
            map([("drop", Value::Sequence(vec![s("ALL")]))]),
        ),
        ("seccompProfile", map([("type", s("RuntimeDefault"))])),
    ]);
    if let Some(g) = gid {
        set(&mut security, "runAsGroup", Value::from(g));
    }
    let mut c = map([("name", s(SIDECAR)), ("image", s(&opts.image))]);
    if opts.native {
        set(&mut c, "restartPolicy", s("Always"));
    }
    set(
        &mut c,
        "args",
        Value::Sequence(args.iter().map(|a| s(a)).collect()),
    );
    set(
        &mut c,
        "env",
        Value::Sequence(vec![
            field("POD_NAME", "metadata.name"),
            field("POD_NAMESPACE", "metadata.namespace"),
            field("POD_IP", "status.podIP"),
            field("HOST_IP", "status.hostIP"),
        ]),
    );
    set(
        &mut c,
        "ports",
        Value::Sequence(vec![map([
            ("name", s(SIDECAR)),
            ("containerPort", Value::from(opts.hook_port)),
        ])]),
    );
    // Readiness is the wiring: 503 while miswired (docs/operations.md).
    set(&mut c, "readinessProbe", probe("/wiring"));
    set(&mut c, "livenessProbe", probe("/healthz"));
    set(
        &mut c,
        "resources",
        map([
            ("requests", map([("cpu", s("10m")), ("memory", s("16Mi"))])),
            ("limits", map([("memory", s("64Mi"))])),
        ]),
    );
    set(&mut c, "securityContext", security);
    set(&mut c, "terminationMessagePolicy", s("File"));
    c
}

/// NGINX Gateway Fabric: the data plane's Deployment (or DaemonSet) is made
/// by its control plane from an `NginxProxy`, so the sidecar goes in
/// through the NginxProxy's fields: the pod's grace period, the nginx
/// container's lifecycle, and a strategic-merge patch that adds the sidecar
/// and the shared process namespace (appended to `patches`).
fn wire_nginx_proxy(
    obj: &mut Value,
    what: &str,
    opts: &WiringArgs,
    notes: &mut Vec<String>,
) -> Result<bool, InjectError> {
    let Some(k8s) = obj.get_mut("spec").and_then(|s| s.get_mut("kubernetes")) else {
        return Ok(false);
    };
    let workload = if k8s.get("daemonSet").is_some_and(|d| !d.is_null()) {
        "daemonSet"
    } else {
        "deployment"
    };
    let w = entry(k8s, workload);
    let already = seq(w, "patches").iter().any(|p| {
        seq(&p["value"]["spec"]["template"]["spec"], "initContainers")
            .iter()
            .chain(seq(&p["value"]["spec"]["template"]["spec"], "containers"))
            .any(|c| c["name"].as_str() == Some(SIDECAR))
    });
    if already {
        notes.push(format!("{what}: already has {SIDECAR}: left as it is"));
        return Ok(false);
    }
    let controller = Controller::GatewayFabric;
    let uid = opts
        .uid
        .or_else(|| controller.default_uid())
        .expect("NGF has a UID");
    let (grace, budget) = grace_and_budget(
        what,
        opts,
        w["pod"]["terminationGracePeriodSeconds"].as_i64(),
    )?;
    set(
        entry(w, "pod"),
        "terminationGracePeriodSeconds",
        Value::from(grace),
    );
    let lifecycle = entry(entry(w, "container"), "lifecycle");
    if let Some(old) = set_drain_hook(lifecycle, opts.hook_port) {
        notes.push(format!(
            "{what}: replaced the nginx container's preStop hook, {old}, with nginx-drain's"
        ));
    }
    let limit =
        max_worker_shutdown_timeout(Duration::from_secs(budget.unsigned_abs()), opts.max_delay);
    if let Some(hint) = controller.shutdown_timeout_hint(limit.as_secs()) {
        notes.push(format!("{what}: {hint}"));
    }
    // NGF's nginx container runs as 101:1001 (its image's USER).
    let sidecar = sidecar(opts, budget, grace, &opts.ports, None, uid, Some(1001));
    let key = if opts.native {
        "initContainers"
    } else {
        "containers"
    };
    let mut spec = map([("shareProcessNamespace", Value::from(true))]);
    set(&mut spec, key, Value::Sequence(vec![sidecar]));
    let patch = map([
        ("type", s("StrategicMerge")),
        (
            "value",
            map([("spec", map([("template", map([("spec", spec)]))]))]),
        ),
    ]);
    push(w, "patches", patch);
    notes.push(format!(
        "{what}: wired NGINX Gateway Fabric's data plane ({workload}: grace {grace}s, the nginx container's preStop, and a StrategicMerge patch with the sidecar); NGF applies no patch if any fails: check the control plane's log after the first rollout"
    ));
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests;
