{{/* The pod template shared by the StatefulSet and the Deployment. */}}
{{- define "traceflow-runner.podTemplate" -}}
{{- $v := .Values }}
{{- $secret := include "traceflow-runner.secretName" . }}
{{- $optional := ternary true false (not (empty $v.secrets.existingSecret)) }}
metadata:
  labels:
    {{- include "traceflow-runner.selectorLabels" . | nindent 4 }}
    app.kubernetes.io/component: runner
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include "traceflow-runner.config" . | sha256sum }}
    checksum/policies: {{ toJson $v.policies | sha256sum }}
    checksum/secrets: {{ toJson (omit $v.secrets "adminToken") | sha256sum }}
    checksum/projects: {{ toJson $v.projects | sha256sum }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "traceflow-runner.serviceAccountName" . }}
  automountServiceAccountToken: false
  # No Service env vars: a release named "runner…" would inject RUNNER_* variables, which
  # the Runner reads as configuration overrides.
  enableServiceLinks: false
  # Above the drain deadline: preStop runs `runner drain`, which waits for the Runner to exit.
  terminationGracePeriodSeconds: {{ include "traceflow-runner.gracePeriod" . }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    fsGroup: 10001
    fsGroupChangePolicy: OnRootMismatch
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: runner
      image: {{ include "traceflow-runner.image" . | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      ports:
        - name: ingest
          containerPort: {{ $v.ingest.port }}
          protocol: TCP
        - name: admin
          containerPort: {{ $v.admin.port }}
          protocol: TCP
      env:
        - name: RUNNER_CONFIG
          value: /etc/traceflow/config/runner.toml
        # Each replica is its own Runner: its id (to the cloud, the control plane and as
        # the Redis consumer name) is the pod name, stable under a StatefulSet.
        - name: RUNNER_RUNNER_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: RUNNER_ADMIN_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ $secret }}
              key: RUNNER_ADMIN_TOKEN
        {{- range $key := list "RUNNER_PROJECTS" "TRACEFLOW_PII_TOKEN_KEY" "TRACEFLOW_PII_VAULT_KEY" "TRACEFLOW_AT_REST_KEYS" "RUNNER_CLOUD_TOKEN" "RUNNER_CONTROL_PLANE_TOKEN" "RUNNER_BUFFER_REDIS_URL" "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" "TRACEFLOW_DLQ_SSE_C_KEY" }}
        {{- if or $optional (include "traceflow-runner.secretHasKey" (list $ $key)) }}
        - name: {{ $key }}
          valueFrom:
            secretKeyRef:
              name: {{ $secret }}
              key: {{ $key }}
              {{- if $optional }}
              optional: true
              {{- end }}
        {{- end }}
        {{- end }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      lifecycle:
        preStop:
          exec:
            command: ["runner", "drain", "--deadline", {{ $v.runner.drainDeadlineSeconds | int | quote }}, "--no-wait-stop"]
      startupProbe:
        httpGet:
          path: /healthz
          port: admin
        periodSeconds: {{ $v.probes.startup.periodSeconds }}
        failureThreshold: {{ $v.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: admin
        periodSeconds: {{ $v.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ $v.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: admin
        periodSeconds: {{ $v.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ $v.probes.readiness.failureThreshold }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        privileged: false
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: [ALL]
        seccompProfile:
          type: RuntimeDefault
      volumeMounts:
        - name: data
          mountPath: /var/lib/traceflow
        - name: tmp
          mountPath: /var/lib/traceflow/tmp
        - name: config
          mountPath: /etc/traceflow/config
          readOnly: true
        {{- if $v.policies }}
        - name: policies
          mountPath: /etc/traceflow/policies
          readOnly: true
        {{- end }}
        {{- if or $v.certificates.files $v.certificates.existingSecret }}
        - name: certs
          mountPath: /etc/traceflow/certs
          readOnly: true
        {{- end }}
  volumes:
    {{- if not (include "traceflow-runner.stateful" .) }}
    - name: data
      emptyDir:
        sizeLimit: {{ $v.persistence.emptyDirSizeLimit }}
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ $v.tmpSizeLimit }}
    - name: config
      configMap:
        name: {{ include "traceflow-runner.fullname" . }}
    {{- if $v.policies }}
    - name: policies
      configMap:
        name: {{ include "traceflow-runner.fullname" . }}-policies
    {{- end }}
    {{- if or $v.certificates.files $v.certificates.existingSecret }}
    - name: certs
      secret:
        secretName: {{ include "traceflow-runner.certSecretName" . }}
        defaultMode: 0440
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $v.affinity }}
  affinity:
    {{- toYaml $v.affinity | nindent 4 }}
  {{- else if eq $v.mode "ha" }}
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- include "traceflow-runner.selectorLabels" . | nindent 18 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Whether the chart's own Secret holds a key: (list $ "KEY"). */}}
{{- define "traceflow-runner.secretHasKey" -}}
{{- $ := index . 0 }}
{{- $key := index . 1 }}
{{- $s := $.Values.secrets }}
{{- $map := dict "RUNNER_PROJECTS" "always" "TRACEFLOW_PII_TOKEN_KEY" $s.piiTokenKey "TRACEFLOW_PII_VAULT_KEY" $s.piiVaultKey "TRACEFLOW_AT_REST_KEYS" $s.atRestKeys "RUNNER_CLOUD_TOKEN" $s.cloudToken "RUNNER_CONTROL_PLANE_TOKEN" $s.controlPlaneToken "RUNNER_BUFFER_REDIS_URL" $s.redisUrl "AWS_ACCESS_KEY_ID" $s.s3AccessKey "AWS_SECRET_ACCESS_KEY" $s.s3SecretKey "TRACEFLOW_DLQ_SSE_C_KEY" $s.dlqSseCKey }}
{{- if index $map $key }}true{{ end }}
{{- end }}
