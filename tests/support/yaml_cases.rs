//! Manifests as people write them, for `inject`'s lossless editing: octal
//! modes and YAML 1.1 booleans, comments everywhere, anchors, aliases and
//! merge keys, tags, a `%YAML` directive, a `List` holding the ConfigMap,
//! one name in several namespaces, an Argo Rollout, CRLF line breaks.
//! `tests/inject.rs` reads each (and inject's output) with the real
//! kubectl; `tests/cluster.rs` has the API server take each output
//! (`--dry-run=server`).

pub struct YamlCase {
    pub name: &'static str,
    pub text: &'static str,
    /// Lines of `text` that inject replaces (all others stay, in order,
    /// byte for byte).
    pub replaced: &'static [&'static str],
    /// Words inject's notes must hold.
    pub says: &'static [&'static str],
    /// What the output must read as, by kubectl, beyond the wiring:
    /// (object index, JSON pointer, value).
    pub reads: &'static [(usize, &'static str, &'static str)],
    /// kubectl reads the stream (not a `%YAML` directive: kubectl's stream
    /// reader splits it from its document and fails).
    pub kubectl: bool,
    /// The API server serves every kind (no CRD needed).
    pub served: bool,
    /// Namespaces its objects name, which must exist for the API server.
    pub namespaces: &'static [&'static str],
}

pub const YAML_CASES: &[YamlCase] = &[
    YamlCase {
        name: "octal modes, YAML 1.1 booleans, comments everywhere",
        text: "# A user's Deployment, commented the way people comment.
apiVersion: apps/v1   # apps, not extensions
kind: Deployment
metadata:
  name: web  # the edge
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels:
        app: web
    spec:
      # NGINX as 101
      securityContext: {runAsNonRoot: yes, seccompProfile: {type: RuntimeDefault}}
      automountServiceAccountToken: no
      containers:
        - name: nginx          # serves
          image: nginxinc/nginx-unprivileged:1.27

          ports:
            - {name: http, containerPort: 8080}   # clients
          securityContext:
            runAsUser: 101
            allowPrivilegeEscalation: off
            capabilities: {drop: [ALL]}
          volumeMounts:
            - name: conf
              mountPath: /etc/nginx/conf.d
              readOnly: True
      volumes:
        - name: conf
          configMap:
            name: web-conf
            defaultMode: 0644   # rw-r--r--
            items:
              - key: default.conf
                path: default.conf
                mode: 0600
        - name: tls
          secret: {secretName: web-tls, defaultMode: 0440}
# the end
",
        replaced: &[],
        says: &["wired NGINX container nginx"],
        reads: &[
            (
                0,
                "/spec/template/spec/volumes/0/configMap/defaultMode",
                "420",
            ),
            (
                0,
                "/spec/template/spec/volumes/0/configMap/items/0/mode",
                "384",
            ),
            (0, "/spec/template/spec/volumes/1/secret/defaultMode", "288"),
            (
                0,
                "/spec/template/spec/automountServiceAccountToken",
                "false",
            ),
            (
                0,
                "/spec/template/spec/securityContext/runAsNonRoot",
                "true",
            ),
            (
                0,
                "/spec/template/spec/containers/0/volumeMounts/0/readOnly",
                "true",
            ),
        ],
        kubectl: true,
        served: true,
        namespaces: &[],
    },
    YamlCase {
        name: "anchors, aliases and merge keys",
        text: "apiVersion: apps/v1
kind: Deployment
metadata:
  name: anchors
  labels: &labels
    app: anchors
    tier: edge
spec:
  selector:
    matchLabels: *labels
  template:
    metadata:
      labels:
        <<: *labels
        version: \"1\"
    spec:
      securityContext: &pod
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}
      containers:
      - &nginx
        name: nginx
        image: nginxinc/nginx-unprivileged:1.27
        ports: [{containerPort: 8080, name: http}]
        securityContext: &sc
          <<: {allowPrivilegeEscalation: false, runAsUser: 0}
          runAsUser: 101
          capabilities: {drop: [ALL]}
        env: &env
        - {name: A, value: \"1\"}
      - name: logger
        image: busybox:1.36
        command: [sh, -c, 'sleep infinity']
        env: *env
        securityContext: *sc
",
        replaced: &[],
        says: &["wired NGINX container nginx (UID 101"],
        reads: &[
            (0, "/spec/template/metadata/labels/tier", "\"edge\""),
            (0, "/spec/template/metadata/labels/version", "\"1\""),
            (
                0,
                "/spec/template/spec/containers/0/securityContext/runAsUser",
                "101",
            ),
            (
                0,
                "/spec/template/spec/containers/1/securityContext/runAsUser",
                "101",
            ),
            (0, "/spec/template/spec/containers/1/env/0/value", "\"1\""),
        ],
        kubectl: true,
        served: true,
        namespaces: &[],
    },
    YamlCase {
        name: "tags",
        text: "apiVersion: v1
kind: ConfigMap
metadata:
  name: tagged
  annotations: !!map {note: !!str 0644, count: !!str 3}
data: !!map
  mode: !!str 0644
  enabled: \"yes\"
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: tagged}
spec:
  serviceName: tagged
  selector: {matchLabels: {app: tagged}}
  template:
    metadata: {labels: {app: tagged}}
    spec: !!map
      terminationGracePeriodSeconds: !!int \"60\"
      containers:
      - name: nginx
        image: !!str nginxinc/nginx-unprivileged:1.27
        securityContext: {runAsUser: !!int 101}
",
        replaced: &[],
        says: &["drain budget 55s of a 60s grace period"],
        reads: &[
            (0, "/data/mode", "\"0644\""),
            (0, "/metadata/annotations/count", "\"3\""),
            (1, "/spec/template/spec/terminationGracePeriodSeconds", "60"),
        ],
        kubectl: true,
        served: true,
        namespaces: &[],
    },
    YamlCase {
        name: "a %YAML directive",
        text: "%YAML 1.1
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: directive}
spec:
  selector: {matchLabels: {app: directive}}
  template:
    metadata: {labels: {app: directive}}
    spec:
      containers:
      - name: nginx
        image: nginxinc/nginx-unprivileged:1.27
        securityContext: {runAsUser: 101}
        volumeMounts: [{name: c, mountPath: /c}]
      volumes: [{name: c, configMap: {name: c, defaultMode: 0755}}]
",
        replaced: &[],
        says: &["wired NGINX container nginx"],
        reads: &[],
        kubectl: false,
        served: true,
        namespaces: &[],
    },
    YamlCase {
        name: "a List holding the controller's ConfigMap",
        text: "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: edge-controller, namespace: listed}
  data: {allow-snippet-annotations: \"false\"}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: edge-controller, namespace: listed}
  spec:
    selector: {matchLabels: {app: edge}}
    template:
      metadata: {labels: {app: edge}}
      spec:
        containers:
        - name: controller
          image: registry.k8s.io/ingress-nginx/controller:v1.15.1
          args: [/nginx-ingress-controller, --configmap=$(POD_NAMESPACE)/edge-controller]
          ports: [{name: http, containerPort: 80}]
",
        replaced: &[],
        says: &["ConfigMap listed/edge-controller: set worker-shutdown-timeout to 6s"],
        reads: &[(0, "/data/worker-shutdown-timeout", "\"6s\"")],
        kubectl: true,
        served: true,
        namespaces: &["listed"],
    },
    YamlCase {
        name: "one name in two namespaces",
        text: "apiVersion: v1
kind: ConfigMap
metadata: {name: edge-controller, namespace: team-b}
data:
  worker-shutdown-timeout: 5s
---
apiVersion: v1
kind: ConfigMap
metadata: {name: edge-controller, namespace: team-a}
data:
  use-forwarded-headers: \"true\"
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: edge-controller, namespace: team-a}
spec:
  selector: {matchLabels: {app: edge}}
  template:
    metadata: {labels: {app: edge}}
    spec:
      containers:
      - name: controller
        image: registry.k8s.io/ingress-nginx/controller:v1.15.1
        args: [--configmap=$(POD_NAMESPACE)/edge-controller]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: edge-controller, namespace: team-b}
spec:
  selector: {matchLabels: {app: edge}}
  template:
    metadata: {labels: {app: edge}}
    spec:
      containers:
      - name: controller
        image: registry.k8s.io/ingress-nginx/controller:v1.15.1
        args: [--configmap=$(POD_NAMESPACE)/edge-controller]
",
        replaced: &[],
        says: &["ConfigMap team-a/edge-controller: set worker-shutdown-timeout"],
        reads: &[
            (0, "/data/worker-shutdown-timeout", "\"5s\""),
            (1, "/data/worker-shutdown-timeout", "\"6s\""),
            (
                2,
                "/spec/template/spec/initContainers/0/args/3",
                "\"--worker-shutdown-timeout=6s\"",
            ),
            (
                3,
                "/spec/template/spec/initContainers/0/args/3",
                "\"--worker-shutdown-timeout=5s\"",
            ),
        ],
        kubectl: true,
        served: true,
        namespaces: &["team-a", "team-b"],
    },
    YamlCase {
        name: "an Argo Rollout",
        text: "apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata:
  name: rolled
spec:
  replicas: 3
  strategy:
    canary:
      steps: [{setWeight: 20}, {pause: {duration: 60}}]
  selector: {matchLabels: {app: rolled}}
  template:
    metadata: {labels: {app: rolled}}
    spec:
      containers:
      - name: nginx
        image: nginxinc/nginx-unprivileged:1.27
        securityContext: {runAsUser: 101}
        lifecycle:
          preStop:
            exec: {command: [sleep, \"15\"]}
",
        replaced: &["            exec: {command: [sleep, \"15\"]}"],
        says: &[
            "Rollout rolled: wired NGINX container nginx",
            "replaced its preStop hook",
        ],
        reads: &[(
            0,
            "/spec/template/spec/containers/0/lifecycle/preStop/httpGet/path",
            "\"/prestop\"",
        )],
        kubectl: true,
        served: false,
        namespaces: &[],
    },
    YamlCase {
        name: "CRLF line breaks",
        text: "apiVersion: apps/v1\r\nkind: Deployment\r\nmetadata:\r\n  name: crlf\r\nspec:\r\n  selector:\r\n    matchLabels: {app: crlf}\r\n  template:\r\n    metadata:\r\n      labels: {app: crlf}\r\n    spec:\r\n      terminationGracePeriodSeconds: 45\r\n      containers:\r\n      - name: nginx\r\n        image: nginxinc/nginx-unprivileged:1.27\r\n        securityContext:\r\n          runAsUser: 101\r\n",
        replaced: &[],
        says: &["drain budget 40s of a 45s grace period"],
        reads: &[],
        kubectl: true,
        served: true,
        namespaces: &[],
    },
];

/// Whether `text` (less the `replaced` lines) is all in `out`, in order:
/// inject only inserted.
pub fn only_inserted(text: &str, replaced: &[&str], out: &str) -> Result<(), String> {
    let kept: String = text
        .split_inclusive('\n')
        .filter(|l| !replaced.contains(&l.trim_end_matches(['\n', '\r'])))
        .collect();
    let mut rest = out.char_indices();
    for (i, c) in kept.char_indices() {
        if !rest.any(|(_, o)| o == c) {
            return Err(format!(
                "lost or changed from byte {i} of the input on: {:?}",
                &kept[i..(i + 80).min(kept.len())]
            ));
        }
    }
    Ok(())
}
