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

use std::time::Duration;

use serde_norway::{Mapping, Value};

use crate::drain::budget::max_worker_shutdown_timeout;
use controllers::{Controller, describe_hook, is_client_port};

/// The sidecar's container name: how `inject` recognises its own work.
pub(crate) const SIDECAR: &str = "nginx-drain";

/// What to inject, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// The sidecar's image.
    pub image: String,
    /// The NGINX container, by name (otherwise found by its image).
    pub container: Option<String>,
    /// The UID NGINX's master runs as (otherwise from the pod spec or the
    /// controller's known default).
    pub uid: Option<i64>,
    /// NGINX's client ports (otherwise the NGINX container's ports that are
    /// not metrics, admin, status or webhook ports).
    pub ports: Vec<u16>,
    /// A native sidecar (Kubernetes 1.29+) or a regular container.
    pub native: bool,
    /// The pod's terminationGracePeriodSeconds (otherwise kept, or 30).
    pub grace_period: Option<u32>,
    /// Seconds of the grace period kept back from the drain budget.
    pub margin: u32,
    /// The sidecar's `--max-delay`.
    pub max_delay: Duration,
    /// The sidecar's port (hook, probes, metrics).
    pub hook_port: u16,
    /// The sidecar's `--allow-cidr`s, besides the kubelet's addresses.
    pub allow_cidrs: Vec<ipnet::IpNet>,
}

/// Why a stream cannot be injected. Each names the object and the fix.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error(
        "document {index} is not valid YAML ({source}): fix the input (inject reads what `helm template` or `kubectl get -o yaml` print)"
    )]
    Yaml {
        index: usize,
        source: serde_norway::Error,
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

/// Injects the sidecar into every workload of `input` that runs NGINX.
pub fn inject(input: &str, opts: &Options) -> Result<Injected, InjectError> {
    let mut docs = stream::split(input);
    let mut values: Vec<Option<Value>> = Vec::with_capacity(docs.len());
    for (index, d) in docs.iter().enumerate() {
        let v: Value = serde_norway::from_str(&d.text)
            .map_err(|source| InjectError::Yaml { index, source })?;
        values.push((!v.is_null()).then_some(v));
    }
    let mut changed = vec![false; docs.len()];
    let mut notes = Vec::new();
    // The ConfigMaps of the stream, by name, as they were: a workload's
    // controller reads its NGINX settings from one.
    let configmaps: Vec<(String, Value)> = values
        .iter()
        .flatten()
        .filter(|v| v["kind"].as_str() == Some("ConfigMap"))
        .filter_map(|v| {
            Some((
                v["metadata"]["name"].as_str()?.to_string(),
                v["data"].clone(),
            ))
        })
        .collect();
    let mut ctx = Ctx {
        opts,
        notes: &mut notes,
        configmaps: &configmaps,
        edits: Vec::new(),
    };
    for (i, v) in values.iter_mut().enumerate() {
        let Some(v) = v else { continue };
        if wire_object(v, &mut ctx)? {
            changed[i] = true;
        }
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
        let body = emit::document(v);
        d.text = format!("{}{body}", d.leading_comments());
    }
    Ok(Injected {
        output: stream::join(&docs),
        notes,
    })
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
struct Ctx<'a> {
    opts: &'a Options,
    notes: &'a mut Vec<String>,
    /// The stream's ConfigMaps (name, data) before any edit.
    configmaps: &'a [(String, Value)],
    /// ConfigMap keys to change once every workload is wired.
    edits: Vec<ConfigEdit>,
}

/// Wires one object (a `List`'s items each); true when it changed.
fn wire_object(obj: &mut Value, ctx: &mut Ctx<'_>) -> Result<bool, InjectError> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let what = label(obj);
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
        "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" => {
            let Some(pod) = obj
                .get_mut("spec")
                .and_then(|s| s.get_mut("template"))
                .and_then(|t| t.get_mut("spec"))
            else {
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
        _ => Ok(false),
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

/// Whether a pod already runs the sidecar.
fn has_sidecar(pod: &Value) -> bool {
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
    opts: &Options,
) -> Result<Option<(usize, Controller)>, InjectError> {
    let containers = seq(pod, "containers");
    if let Some(name) = &opts.container {
        return Ok(containers
            .iter()
            .position(|c| c["name"].as_str() == Some(name))
            .map(|i| {
                let image = containers[i]["image"].as_str().unwrap_or_default();
                (i, Controller::of_image(image).unwrap_or(Controller::Nginx))
            }));
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
    name: String,
    key: &'static str,
    value: String,
    /// What it held before (for the note).
    was: String,
}

/// The controller's ConfigMap name from its args (`--configmap=$(POD_NAMESPACE)/NAME`).
fn configmap_name(container: &Value, arg: &str) -> Option<String> {
    seq(container, "args").iter().find_map(|a| {
        let (flag, value) = a.as_str()?.split_once('=')?;
        (flag == arg).then(|| value.rsplit('/').next().unwrap_or(value).to_string())
    })
}

/// Seconds in an NGINX/Go duration as the controllers take it (`240s`,
/// `1m30s`, `10`): None when unreadable.
fn seconds(text: &str) -> Option<f64> {
    let t = text.trim();
    if let Ok(n) = t.parse::<f64>() {
        return Some(n);
    }
    humantime::parse_duration(t).ok().map(|d| d.as_secs_f64())
}

fn apply_config_edit(
    edit: &ConfigEdit,
    values: &mut [Option<Value>],
    changed: &mut [bool],
    notes: &mut Vec<String>,
) {
    for (i, v) in values.iter_mut().enumerate() {
        let Some(cm) = v else { continue };
        if cm["kind"].as_str() == Some("ConfigMap")
            && cm["metadata"]["name"].as_str() == Some(edit.name.as_str())
        {
            set(entry(cm, "data"), edit.key, s(&edit.value));
            changed[i] = true;
            notes.push(format!(
                "ConfigMap {}: set {} to {} (was {}): NGINX closes WebSockets and streams by then, inside the drain budget",
                edit.name, edit.key, edit.value, edit.was
            ));
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
    ctx: &mut Ctx<'_>,
) -> Option<u64> {
    let key = controller.shutdown_timeout_key()?;
    let name = configmap_name(nginx, key.arg)?;
    let limit_secs = limit.as_secs();
    let Some((_, data)) = ctx.configmaps.iter().find(|(n, _)| *n == name) else {
        ctx.notes.push(format!(
            "{what}: its ConfigMap {name} is not in the input: make sure its {} is at most {limit_secs}s (the drain budget's limit), or NGINX's timer closes long-lived connections only after the sidecar escalates",
            key.key
        ));
        return None;
    };
    let text = data[key.key].as_str();
    let current = text.and_then(seconds).or(key.default);
    match current {
        Some(c) if c <= limit_secs as f64 && text.is_some() => Some(c.ceil() as u64),
        // Absent: written out, so that the ConfigMap says what the sidecar
        // is told.
        Some(c) if c <= limit_secs as f64 => {
            let value = format!("{}s", c.ceil() as u64);
            ctx.edits.push(ConfigEdit {
                name,
                key: key.key,
                value,
                was: format!("unset, the controller's default {c}s"),
            });
            Some(c.ceil() as u64)
        }
        _ => {
            ctx.edits.push(ConfigEdit {
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
    ctx: &mut Ctx<'_>,
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
fn wire_pod(pod: &mut Value, what: &str, ctx: &mut Ctx<'_>) -> Result<bool, InjectError> {
    let opts = ctx.opts;
    if has_sidecar(pod) {
        ctx.notes
            .push(format!("{what}: already has {SIDECAR}: left as it is"));
        return Ok(false);
    }
    let Some((idx, controller)) = find_nginx(pod, what, opts)? else {
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
    opts: &Options,
    in_spec: Option<i64>,
) -> Result<(i64, i64), InjectError> {
    let grace = opts
        .grace_period
        .map_or_else(|| in_spec.unwrap_or(30), i64::from);
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
    opts: &Options,
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
    // Readiness is the wiring: 503 while miswired (see the README).
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
    opts: &Options,
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
mod tests;
