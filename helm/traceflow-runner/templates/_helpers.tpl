{{/* Names and labels. */}}
{{- define "traceflow-runner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Pod names (the Runner's id) get up to 11 characters of suffix: keep this at most 52. */}}
{{- define "traceflow-runner.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "traceflow-runner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "traceflow-runner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "traceflow-runner.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "traceflow-runner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: traceflow
traceflow.io/mode: {{ .Values.mode }}
{{- end }}

{{- define "traceflow-runner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "traceflow-runner.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "traceflow-runner.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "traceflow-runner.secretName" -}}
{{- default (include "traceflow-runner.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "traceflow-runner.certSecretName" -}}
{{- default (printf "%s-certs" (include "traceflow-runner.fullname" .)) .Values.certificates.existingSecret }}
{{- end }}

{{/* "true" when the workload is a StatefulSet: persistence gives every replica its volume. */}}
{{- define "traceflow-runner.stateful" -}}
{{- if .Values.persistence.enabled }}true{{ end }}
{{- end }}

{{- define "traceflow-runner.replicas" -}}
{{- if eq .Values.mode "embedded" }}1{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/*
Seconds a drain may spend spilling after the forward deadline: config.forward.spill_deadline_s
(the Runner's default 60) when config.forward.drain_spill is on (preStop and SIGTERM drains
follow it), else 0.
*/}}
{{- define "traceflow-runner.spillSeconds" -}}
{{- $fwd := get .Values.config "forward" }}
{{- $s := 0 }}
{{- if and (kindIs "map" $fwd) (eq (get $fwd "drain_spill" | toString) "true") }}
{{- $s = 60 }}
{{- if hasKey $fwd "spill_deadline_s" }}{{ $s = get $fwd "spill_deadline_s" | ceil | int }}{{ end }}
{{- end }}
{{- $s }}
{{- end }}

{{/* The drain deadline, plus the spill deadline when drains spill, plus 30 s to stop. */}}
{{- define "traceflow-runner.gracePeriod" -}}
{{- $deadline := int .Values.runner.drainDeadlineSeconds }}
{{- if kindIs "invalid" .Values.runner.terminationGracePeriodSeconds }}
{{- add $deadline (include "traceflow-runner.spillSeconds" . | int) 30 }}
{{- else }}
{{- int .Values.runner.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{- define "traceflow-runner.webrtcPorts" -}}
{{- $r := .Values.webrtc.udpPortRange }}
{{- untilStep (int $r.start) (add1 (int $r.end) | int) 1 | toJson }}
{{- end }}

{{/* Whether the PII keys are given (inline or in an existing Secret). */}}
{{- define "traceflow-runner.piiKeysGiven" -}}
{{- if or .Values.secrets.existingSecret (and .Values.secrets.piiTokenKey .Values.secrets.piiVaultKey) }}true{{ end }}
{{- end }}

{{- define "traceflow-runner.generateDevKeys" -}}
{{- if kindIs "bool" .Values.pii.generateDevKeys }}
{{- .Values.pii.generateDevKeys }}
{{- else if and (eq .Values.mode "embedded") (not (include "traceflow-runner.piiKeysGiven" .)) }}
{{- true }}
{{- else }}
{{- false }}
{{- end }}
{{- end }}

{{/*
Cross-field checks that values.schema.json cannot express. Each fails the render with a
message naming the values to change.
*/}}
{{- define "traceflow-runner.validate" -}}
{{- $v := .Values }}
{{- $grace := include "traceflow-runner.gracePeriod" . | int }}
{{- $spill := include "traceflow-runner.spillSeconds" . | int }}
{{- if le $grace (int $v.runner.drainDeadlineSeconds) }}
{{- fail (printf "runner.terminationGracePeriodSeconds (%d) must be above runner.drainDeadlineSeconds (%d): the kubelet would kill the Runner mid-drain" $grace (int $v.runner.drainDeadlineSeconds)) }}
{{- end }}
{{- if and $spill (le $grace (add (int $v.runner.drainDeadlineSeconds) $spill)) }}
{{- fail (printf "runner.terminationGracePeriodSeconds (%d) must be above runner.drainDeadlineSeconds plus config.forward.spill_deadline_s (%d): with config.forward.drain_spill every drain spills after the deadline, and the kubelet would kill the Runner mid-spill" $grace (add (int $v.runner.drainDeadlineSeconds) $spill)) }}
{{- end }}
{{- /* runner.toml keys the chart derives from its values (Service, NetworkPolicy, probes, volumes and the mode checks use the same values): config must not override them. */}}
{{- $managed := dict "runner" (dict "data_dir" "it is fixed to the data volume's mount path") "ingest" (dict "listen" "set ingest.port instead") "admin" (dict "listen" "set admin.port instead") "buffer" (dict "redis_url" "set mode and buffer.redisUrl (or secrets.redisUrl) instead") "pii" (dict "generate_dev_keys" "set pii.generateDevKeys instead") "forward" (dict "drain_deadline_s" "set runner.drainDeadlineSeconds instead") "webrtc" (dict "enabled" "set webrtc.enabled instead" "udp_ports" "set webrtc.udpPortRange instead" "remote_networks" "set webrtc.remoteNetworks instead") "dlq" (dict "url" "set dlq.url instead" "s3_endpoint" "set dlq.s3Endpoint instead") "cloud" (dict "endpoint" "set cloud.endpoint instead") "control_plane" (dict "endpoint" "set controlPlane.endpoint instead") }}
{{- range $section, $keys := $managed }}
{{- $table := get $v.config $section }}
{{- if kindIs "map" $table }}
{{- range $key, $instead := $keys }}
{{- if hasKey $table $key }}
{{- fail (printf "config.%s.%s is rendered by the chart, which keeps the Services, NetworkPolicy, probes and volumes in step with it: %s" $section $key $instead) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if eq $v.mode "embedded" }}
{{- if not $v.persistence.enabled }}
{{- fail "mode embedded needs persistence.enabled: the embedded Redis AOF behind every ack must survive the pod" }}
{{- end }}
{{- if $v.autoscaling.enabled }}
{{- fail "mode embedded runs exactly one replica: autoscaling.enabled needs mode ha" }}
{{- end }}
{{- if or $v.buffer.redisUrl $v.secrets.redisUrl }}
{{- fail "mode embedded starts its own Redis: buffer.redisUrl / secrets.redisUrl need mode ha" }}
{{- end }}
{{- else }}
{{- if not (or $v.buffer.redisUrl $v.secrets.redisUrl $v.secrets.existingSecret) }}
{{- fail "mode ha needs an external Redis: buffer.redisUrl, secrets.redisUrl or RUNNER_BUFFER_REDIS_URL in secrets.existingSecret" }}
{{- end }}
{{- if not (hasPrefix "s3://" $v.dlq.url) }}
{{- fail "mode ha needs a shared dead-letter store: dlq.url = s3://bucket/prefix (MinIO or S3)" }}
{{- end }}
{{- if not (include "traceflow-runner.piiKeysGiven" .) }}
{{- fail "mode ha needs secrets.piiTokenKey and secrets.piiVaultKey (or secrets.existingSecret): replicas must share one token key so equal values get equal tokens" }}
{{- end }}
{{- if eq (include "traceflow-runner.generateDevKeys" .) "true" }}
{{- fail "mode ha can not use pii.generateDevKeys: each replica would make its own keys" }}
{{- end }}
{{- end }}
{{- if $v.webrtc.enabled }}
{{- $r := $v.webrtc.udpPortRange }}
{{- if lt (int $r.end) (int $r.start) }}
{{- fail "webrtc.udpPortRange.end must not be below webrtc.udpPortRange.start" }}
{{- end }}
{{- if gt (sub (int $r.end) (int $r.start)) 1023 }}
{{- fail "webrtc.udpPortRange spans more than 1024 ports (a Service lists each port)" }}
{{- end }}
{{- end }}
{{- if $v.networkPolicy.enabled }}
{{- $e := $v.networkPolicy.egress }}
{{- if and (eq $v.mode "ha") (not $e.redis.to) }}
{{- fail "networkPolicy.egress.redis.to is empty: mode ha must reach its Redis (or set networkPolicy.enabled=false)" }}
{{- end }}
{{- if and (hasPrefix "s3://" $v.dlq.url) (not $e.s3.to) }}
{{- fail "networkPolicy.egress.s3.to is empty but dlq.url is an s3:// store" }}
{{- end }}
{{- if and $v.cloud.endpoint (not $e.cloud.to) }}
{{- fail "networkPolicy.egress.cloud.to is empty but cloud.endpoint is set" }}
{{- end }}
{{- if and $v.controlPlane.endpoint (not $e.controlPlane.to) }}
{{- fail "networkPolicy.egress.controlPlane.to is empty but controlPlane.endpoint is set" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
runner.toml as a dict: what the values say, then .Values.config merged over it.
Numbers the chart sets are cast to int so the file reads `8080`, not `8080.0`.
*/}}
{{- define "traceflow-runner.config" -}}
{{- $v := .Values }}
{{- $cfg := dict }}
{{- $_ := set $cfg "runner" (dict "data_dir" "/var/lib/traceflow" "log_level" $v.runner.logLevel "log_format" $v.runner.logFormat) }}
{{- $_ := set $cfg "ingest" (dict "listen" (printf "0.0.0.0:%d" (int $v.ingest.port))) }}
{{- $_ := set $cfg "admin" (dict "listen" (printf "0.0.0.0:%d" (int $v.admin.port))) }}
{{- $buffer := dict "redis_url" "embedded" }}
{{- if eq $v.mode "ha" }}
{{- /* With the URL only in the Secret (RUNNER_BUFFER_REDIS_URL wins), a host that never resolves: a missing variable fails loudly instead of starting an embedded Redis. */}}
{{- $_ := set $buffer "redis_url" (default "redis://runner-buffer-redis-url.from-secret.invalid:6379/0" $v.buffer.redisUrl) }}
{{- end }}
{{- if $v.buffer.acceptWeakerDurability }}
{{- $_ := set $buffer "accept_weaker_durability" true }}
{{- end }}
{{- $_ := set $cfg "buffer" $buffer }}
{{- /* SIGTERM's drain (a preStop hook that failed, a plain kill) keeps the preStop deadline. */}}
{{- $_ := set $cfg "forward" (dict "drain_deadline_s" (int $v.runner.drainDeadlineSeconds)) }}
{{- $_ := set $cfg "pii" (dict "workers" (int $v.pii.workers) "generate_dev_keys" (eq (include "traceflow-runner.generateDevKeys" .) "true")) }}
{{- if $v.cloud.endpoint }}
{{- $_ := set $cfg "cloud" (dict "endpoint" $v.cloud.endpoint) }}
{{- end }}
{{- $dlq := dict }}
{{- if $v.dlq.url }}
{{- $_ := set $dlq "url" $v.dlq.url }}
{{- if $v.dlq.s3Endpoint }}{{ $_ := set $dlq "s3_endpoint" $v.dlq.s3Endpoint }}{{ end }}
{{- end }}
{{- if eq $v.mode "ha" }}
{{- /* Replicas share the dead-letter store: one keyring from the Secret, never a key per pod. */}}
{{- $_ := set $dlq "at_rest" (dict "generate_dev_key" false) }}
{{- end }}
{{- if $dlq }}{{ $_ := set $cfg "dlq" $dlq }}{{ end }}
{{- $cp := dict }}
{{- if $v.controlPlane.endpoint }}{{ $_ := set $cp "endpoint" $v.controlPlane.endpoint }}{{ end }}
{{- if $v.controlPlane.keys }}{{ $_ := set $cp "keys" $v.controlPlane.keys }}{{ end }}
{{- if $v.policies }}{{ $_ := set $cp "policies_dir" "/etc/traceflow/policies" }}{{ end }}
{{- if $cp }}{{ $_ := set $cfg "control_plane" $cp }}{{ end }}
{{- $rtc := dict "enabled" (ternary true false $v.webrtc.enabled) }}
{{- if $v.webrtc.enabled }}
{{- $r := $v.webrtc.udpPortRange }}
{{- $_ := set $rtc "udp_ports" (list (int $r.start) (int $r.end)) }}
{{- $_ := set $rtc "max_peers" (add1 (sub (int $r.end) (int $r.start)) | int) }}
{{- $_ := set $rtc "remote_networks" (default $v.networkPolicy.sdkCidrs $v.webrtc.remoteNetworks) }}
{{- $_ := set $rtc "allowed_origins" $v.webrtc.allowedOrigins }}
{{- end }}
{{- $_ := set $cfg "webrtc" $rtc }}
{{- $cfg = mergeOverwrite $cfg (deepCopy $v.config) }}
{{- toToml $cfg }}
{{- end }}

{{/*
Checkov findings this chart accepts, each with its reason (checkov reads these
annotations; tests/deploy runs checkov on every rendered example).
*/}}
{{- define "traceflow-runner.checkovSkips" -}}
checkov.io/skip1: "CKV_K8S_35=The Runner reads its secrets from RUNNER_* environment variables (PROTOCOL section 5); they come from secretKeyRef, never from the pod spec in clear"
{{- if not .Values.image.digest }}
checkov.io/skip2: "CKV_K8S_43=image.digest pins the image by digest; without it the tag is the chart appVersion, an immutable release tag"
checkov.io/skip3: "CKV_K8S_15=With an immutable release tag IfNotPresent lets a pod restart without the registry (air-gapped sites); set image.digest to pin the image"
{{- end }}
{{- end }}
