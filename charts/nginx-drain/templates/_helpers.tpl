{{/* Names and labels. */}}
{{- define "nginx-drain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nginx-drain.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "nginx-drain.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A ServiceAccount is created when asked, or for drain Events when no
account is named. */}}
{{- define "nginx-drain.createServiceAccount" -}}
{{- if or .Values.serviceAccount.create (and .Values.events.enabled (not .Values.serviceAccount.name)) -}}true{{- end -}}
{{- end -}}

{{- define "nginx-drain.serviceAccountName" -}}
{{- if include "nginx-drain.createServiceAccount" . -}}
{{- default (include "nginx-drain.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The nginx.conf ConfigMap's name: the user's, or the chart's. */}}
{{- define "nginx-drain.configMap" -}}
{{- default (printf "%s-nginx" (include "nginx-drain.fullname" .)) .Values.nginx.existingConfigMap -}}
{{- end -}}

{{/*
A duration value (the schema allows "100ms", "15s", "1m30s", "1.5s") in
milliseconds, for render-time comparisons.
*/}}
{{- define "nginx-drain.ms" -}}
{{- $ms := 0.0 -}}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h)" (toString .) -1 -}}
{{- $n := float64 (regexFind "^[0-9]+(\\.[0-9]+)?" .) -}}
{{- $unit := trimPrefix (regexFind "^[0-9]+(\\.[0-9]+)?" .) . -}}
{{- $scale := get (dict "ns" 0.000001 "us" 0.001 "ms" 1.0 "s" 1000.0 "m" 60000.0 "h" 3600000.0) $unit -}}
{{- $ms = addf $ms (mulf $n $scale) -}}
{{- end -}}
{{- $ms -}}
{{- end -}}

{{- define "nginx-drain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nginx-drain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nginx-drain.labels" -}}
{{ include "nginx-drain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "nginx-drain.tokenSecret" -}}
{{- default (printf "%s-token" (include "nginx-drain.fullname" .)) .Values.token.existingSecret -}}
{{- end -}}

{{/*
The token: token.value when given (the same on every render); else the
existing Secret's (lookup, on upgrades); else a new random one on install.
`helm template` cannot look up, so without token.value it renders a fresh
one each time.
*/}}
{{- define "nginx-drain.token" -}}
{{- if .Values.token.value -}}
{{- if .Values.token.existingSecret -}}
{{- fail "token.value and token.existingSecret are both set: give the token one way (token.value renders it into the pod spec and a Secret; token.existingSecret reads a Secret you made)" -}}
{{- end -}}
{{- .Values.token.value -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "nginx-drain.tokenSecret" .) -}}
{{- if and $existing $existing.data (hasKey $existing.data "token") -}}
{{- index $existing.data "token" | b64dec -}}
{{- else if .Values.token.existingSecret -}}
{{- fail (printf "token.existingSecret %q was not found in namespace %s (or has no key \"token\"): create it first; under `helm template` or a GitOps tool the chart cannot read Secrets, so give token.value instead (or rely on hookAccess and leave token.enabled false)" .Values.token.existingSecret .Release.Namespace) -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Grace math: --drain-timeout = terminationGracePeriodSeconds - marginSeconds,
and it must leave the kubelet at least 2 s (its minimum after the hook).
*/}}
{{- define "nginx-drain.drainTimeout" -}}
{{- $grace := int .Values.terminationGracePeriodSeconds -}}
{{- $margin := int .Values.drain.marginSeconds -}}
{{- $budget := sub $grace $margin -}}
{{- if gt (int .Values.drain.timeoutSeconds) 0 -}}
{{- $budget = int .Values.drain.timeoutSeconds -}}
{{- if gt $budget (sub $grace 2) -}}
{{- fail (printf "drain.timeoutSeconds (%d) must end at least 2s before terminationGracePeriodSeconds (%d), or the kubelet SIGKILLs NGINX mid-drain: lower drain.timeoutSeconds or raise terminationGracePeriodSeconds" $budget $grace) -}}
{{- end -}}
{{- end -}}
{{- range .Values.drain.extraArgs -}}
{{- if hasPrefix "--drain-timeout" . -}}
{{- fail "drain.extraArgs sets --drain-timeout: the chart derives it from terminationGracePeriodSeconds; set drain.timeoutSeconds or drain.marginSeconds instead" -}}
{{- end -}}
{{- end -}}
{{- if lt $budget 3 -}}
{{- fail (printf "the drain budget would be %ds (terminationGracePeriodSeconds %d - drain.marginSeconds %d): it must be at least 3s; raise terminationGracePeriodSeconds" $budget $grace $margin) -}}
{{- end -}}
{{- $budget -}}
{{- end -}}

{{/* Everything that cannot work is refused here, with what to change. */}}
{{- define "nginx-drain.validate" -}}
{{- if not .Values.shareProcessNamespace -}}
{{- fail "shareProcessNamespace is false: nginx-drain finds and signals NGINX through the pod's shared process namespace; set shareProcessNamespace: true" -}}
{{- end -}}
{{- if and .Values.nginx.lifecycle (hasKey .Values.nginx.lifecycle "preStop") -}}
{{- fail "nginx.lifecycle.preStop is set: the chart's preStop httpGet to nginx-drain must be the only preStop hook (each container's preStop runs in parallel, so another hook would stop NGINX behind the drain's back); remove nginx.lifecycle.preStop" -}}
{{- end -}}
{{- if not (or .Values.hookAccess.kubelet .Values.hookAccess.allowCIDRs .Values.token.enabled) -}}
{{- fail "hookAccess.kubelet is false, hookAccess.allowCIDRs is empty and token.enabled is false: any pod could call /prestop and stop NGINX; keep hookAccess.kubelet true (the default), or list the kubelet's addresses in hookAccess.allowCIDRs, or enable token" -}}
{{- end -}}
{{- if gt (float64 (include "nginx-drain.ms" .Values.drain.minDelay)) (float64 (include "nginx-drain.ms" .Values.drain.maxDelay)) -}}
{{- fail (printf "drain.minDelay (%s) is longer than drain.maxDelay (%s): the sidecar would exit 2 at start and, as a native sidecar, keep the pod from starting; make minDelay the shorter one" .Values.drain.minDelay .Values.drain.maxDelay) -}}
{{- end -}}
{{- $ports := list .Values.nginx.containerPort -}}
{{- range .Values.nginx.extraPorts -}}
{{- $ports = append $ports .containerPort -}}
{{- end -}}
{{- range $ports -}}
{{- if eq (int .) (int $.Values.drain.port) -}}
{{- fail (printf "NGINX's port %d is drain.port, the sidecar's own: give the sidecar another drain.port" (int .)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.nginx.config .Values.nginx.existingConfigMap -}}
{{- fail "nginx.config and nginx.existingConfigMap are both set: give NGINX's configuration one way (nginx.config: the chart makes the ConfigMap; nginx.existingConfigMap: yours, with the key nginx.configKey)" -}}
{{- end -}}
{{- if and .Values.sidecar.native (not (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version)) -}}
{{- fail (printf "sidecar.native=true needs Kubernetes 1.29 or newer (native sidecars), and this cluster is %s: set sidecar.native=false for a regular sidecar container" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- $_ := include "nginx-drain.drainTimeout" . -}}
{{- end -}}

{{- define "nginx-drain.sidecar" -}}
- name: nginx-drain
  {{- if .Values.drain.image.digest }}
  image: "{{ .Values.drain.image.repository }}@{{ .Values.drain.image.digest }}"
  {{- else }}
  image: "{{ .Values.drain.image.repository }}:{{ .Values.drain.image.tag | default .Chart.AppVersion }}"
  {{- end }}
  imagePullPolicy: {{ .Values.drain.image.pullPolicy }}
  {{- if .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  args:
    - --listen=[::]:{{ .Values.drain.port }}
    - --drain-timeout={{ include "nginx-drain.drainTimeout" . }}s
    - --grace-period={{ .Values.terminationGracePeriodSeconds }}s
    - --min-delay={{ .Values.drain.minDelay }}
    - --max-delay={{ .Values.drain.maxDelay }}
    {{- range .Values.drain.poolPeers }}
    - --pool-peer={{ . }}
    {{- end }}
    - --on-failure={{ .Values.drain.onFailure }}
    - --log-format={{ .Values.drain.logFormat }}
    - --log-level={{ .Values.drain.logLevel }}
    # NGINX's client ports: connections to other ports in the pod (an
    # exporter, a status page) never hold the drain.
    - --port={{ .Values.nginx.containerPort }}
    {{- range .Values.nginx.extraPorts }}
    - --port={{ .containerPort }}
    {{- end }}
    - --allow-kubelet={{ .Values.hookAccess.kubelet }}
    {{- range .Values.hookAccess.allowCIDRs }}
    - --allow-cidr={{ . }}
    {{- end }}
    {{- if .Values.token.enabled }}
    - --token-file=/var/run/nginx-drain/token
    {{- end }}
    {{- if .Values.drain.reportToTerminationMessage }}
    - --report-file=/dev/termination-log
    {{- end }}
    {{- range .Values.drain.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: POD_NAMESPACE
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    # The node's address, one of those the kubelet calls the hook from
    # (hookAccess.kubelet).
    - name: HOST_IP
      valueFrom: {fieldRef: {fieldPath: status.hostIP}}
    # The pod's uid and node, for the drain Events (events.enabled).
    - name: POD_UID
      valueFrom: {fieldRef: {fieldPath: metadata.uid}}
    - name: NODE_NAME
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    {{- if .Values.events.enabled }}
    - name: NGINX_DRAIN_EVENTS
      value: "true"
    {{- end }}
    {{- with .Values.drain.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  # The kubelet's probes and hook are not client traffic: the sidecar learns
  # their source address from the kubelet's own requests (--ignore-kubelet),
  # which depends on the CNI (often the bridge's, not status.hostIP).
  ports:
    - name: drain
      containerPort: {{ .Values.drain.port }}
      protocol: TCP
  # Readiness is the wiring (/wiring): 503 while a problem keeps the hook
  # from working at all (no shared PID namespace, no permission to signal
  # NGINX, an unreachable listen address), so that a misconfigured pod never
  # turns Ready and a rollout stops at its first new pod, with the fix in
  # `kubectl describe`. Not /readyz: that turns 503 at the hook on purpose
  # (for load balancers' health checks), and as the pod's readiness it would
  # record a "Readiness probe failed" warning on every routine rollout.
  readinessProbe:
    httpGet: {path: /wiring, port: drain}
    periodSeconds: 10
    failureThreshold: 3
  livenessProbe:
    httpGet: {path: /healthz, port: drain}
    periodSeconds: 10
    failureThreshold: 3
  resources:
    {{- toYaml .Values.drain.resources | nindent 4 }}
  terminationMessagePolicy: File
  securityContext:
    runAsUser: {{ .Values.drain.runAsUser }}
    runAsGroup: {{ .Values.drain.runAsUser }}
    runAsNonRoot: {{ ne (int .Values.drain.runAsUser) 0 }}
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    privileged: false
    capabilities:
      drop: [ALL]
    seccompProfile: {type: RuntimeDefault}
  {{- if or .Values.token.enabled .Values.events.enabled }}
  volumeMounts:
    {{- if .Values.token.enabled }}
    - name: drain-token
      mountPath: /var/run/nginx-drain
      readOnly: true
    {{- end }}
    {{- if .Values.events.enabled }}
    # The API token for the Events, in the sidecar only (the pod does not
    # automount it).
    - name: drain-api
      mountPath: /var/run/secrets/kubernetes.io/serviceaccount
      readOnly: true
    {{- end }}
  {{- end }}
{{- end -}}
