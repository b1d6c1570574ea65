// Package helm holds the tests of the caddy-cx Helm chart (caddy-cx/) and
// of the Kubernetes examples (examples/): `helm lint` and `helm template`
// through Helm's own packages, then checks of the rendered objects.
package helm

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	_ "github.com/caddy-cx/caddy-cx/caddymodule"
)

const chartDir = "caddy-cx"

// testValues are the values of caddy-cx/ci/test-values.yaml, with
// overrides applied on top.
func testValues(t *testing.T, overrides map[string]any) map[string]any {
	t.Helper()
	v, err := common.ReadValuesFile(filepath.Join(chartDir, "ci", "test-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	vals := v.AsMap()
	for k, o := range overrides {
		if sub, ok := o.(map[string]any); ok {
			if cur, ok := vals[k].(map[string]any); ok {
				merged := maps.Clone(cur)
				maps.Copy(merged, sub)
				vals[k] = merged
				continue
			}
		}
		vals[k] = o
	}
	return vals
}

// helmLint is `helm lint --strict`: the messages at warning or worse.
func helmLint(vals map[string]any) []support.Message {
	var bad []support.Message
	for _, m := range lint.RunAll(chartDir, vals, "default").Messages {
		if m.Severity >= support.WarningSev {
			bad = append(bad, m)
		}
	}
	return bad
}

// TestHelmLint: the chart passes `helm lint --strict`, with its own
// values and with the values an install sets.
func TestHelmLint(t *testing.T) {
	for name, vals := range map[string]map[string]any{"values.yaml": {}, "ci/test-values.yaml": testValues(t, nil)} {
		if bad := helmLint(vals); len(bad) > 0 {
			t.Errorf("helm lint --strict with %s: %v", name, bad)
		}
	}
}

// TestHelmTemplateRefuses: `helm template` (and so install) fails, saying
// which value to set, without the NATS password, without the status
// page's password and with an image tag of latest. (Lint only logs a
// template's fail, so lint cannot be the check.)
func TestHelmTemplateRefuses(t *testing.T) {
	for name, c := range map[string]struct {
		vals map[string]any
		want string
	}{
		"no secrets":   {map[string]any{}, "nats.existingSecret"},
		"no status pw": {testValues(t, map[string]any{"status": map[string]any{"passwordHash": ""}}), "status.existingSecret"},
		"latest image": {testValues(t, map[string]any{"image": map[string]any{"tag": "latest"}}), "pin a version"},
	} {
		if _, err := helmTemplate(t, c.vals); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: helm template: %v, want an error naming %q", name, err, c.want)
		}
	}
}

// rendered is the output of `helm template`: the objects by kind/name,
// each as its YAML.
type rendered map[string]string

// helmTemplate renders the chart as `helm template gw` does (release gw,
// namespace default, install).
func helmTemplate(t *testing.T, vals map[string]any) (rendered, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	rv, err := util.ToRenderValues(ch, vals, common.ReleaseOptions{Name: "gw", Namespace: "default", IsInstall: true}, common.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		return nil, err
	}
	objs := rendered{}
	for name, text := range files {
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		for _, doc := range strings.Split(text, "\n---") {
			var meta struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			if meta.Kind == "" {
				continue
			}
			objs[meta.Kind+"/"+meta.Metadata.Name] = doc
		}
	}
	return objs, nil
}

// decode reads an object strictly into its API type: a misspelled or
// misplaced field is an error, as the API server would refuse it.
func decode[T any](t *testing.T, objs rendered, key string) *T {
	t.Helper()
	doc, ok := objs[key]
	if !ok {
		t.Fatalf("helm template renders no %s (has %v)", key, slices.Sorted(maps.Keys(objs)))
	}
	v := new(T)
	if err := yaml.UnmarshalStrict([]byte(doc), v); err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return v
}

// TestHelmTemplate renders the chart and checks what running it needs:
// two gateways kept at least one by a PodDisruptionBudget, probes on the
// admin API and /healthz, no root and no capabilities, secrets from the
// Secrets the chart (or the user) provides, a Caddyfile that adapts.
func TestHelmTemplate(t *testing.T) {
	objs, err := helmTemplate(t, testValues(t, nil))
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	d := decode[appsv1.Deployment](t, objs, "Deployment/gw-caddy-cx")
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas %s, want 2", yamlOf(d.Spec.Replicas))
	}
	podLabels := d.Spec.Template.Labels
	if !subset(d.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("deployment selector %v does not select its pods %v", d.Spec.Selector.MatchLabels, podLabels)
	}
	pdb := decode[policyv1.PodDisruptionBudget](t, objs, "PodDisruptionBudget/gw-caddy-cx")
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 || !subset(pdb.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("PDB minAvailable %v selector %v: want 1 of the gateway pods %v", pdb.Spec.MinAvailable, pdb.Spec.Selector, podLabels)
	}
	if ru := d.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("rolling update %+v: a rollout must not take a gateway away before its replacement is ready", ru)
	}

	pod := d.Spec.Template.Spec
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and a non-zero runAsUser", psc)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want the gateway", len(pod.Containers))
	}
	c := pod.Containers[0]
	checkContainerSecurity(t, c)
	if c.Image != "caddy-cx:0.1.0" {
		t.Errorf("image %q, want the chart's appVersion tag", c.Image)
	}
	checkProbes(t, c)
	checkSecrets(t, objs, c)
	for _, p := range c.Ports {
		if p.ContainerPort < 1024 {
			t.Errorf("port %s %d: a process without capabilities cannot bind it", p.Name, p.ContainerPort)
		}
	}
	checkServices(t, objs, podLabels)
	checkCaddyfile(t, objs, c)
	if _, ok := objs["ServiceMonitor/gw-caddy-cx"]; ok {
		t.Error("a ServiceMonitor without serviceMonitor.enabled: clusters without the Prometheus Operator would refuse it")
	}
}

func checkContainerSecurity(t *testing.T, c corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		t.Errorf("container securityContext %+v: want no privilege escalation, a read-only root and every capability dropped", sc)
	}
}

// checkProbes: ready when the admin API (on the pod's loopback, where the
// chart's Caddyfile keeps it) answers; alive while /healthz on the
// metrics port does.
func checkProbes(t *testing.T, c corev1.Container) {
	t.Helper()
	r := c.ReadinessProbe
	if r == nil || r.Exec == nil || !slices.Contains(r.Exec.Command, "http://127.0.0.1:2019/config/") {
		t.Errorf("readiness probe %+v, want the admin API from inside the pod", r)
	}
	l := c.LivenessProbe
	if l == nil || l.HTTPGet == nil || l.HTTPGet.Path != "/healthz" || l.HTTPGet.Port.String() != "metrics" {
		t.Errorf("liveness probe %+v, want GET /healthz on the metrics port", l)
	}
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "metrics" }) {
		t.Error("no container port named metrics")
	}
}

// checkSecrets: the NATS password and the status page's hash come from
// Secrets that exist in the release, under the keys the env reads.
func checkSecrets(t *testing.T, objs rendered, c corev1.Container) {
	t.Helper()
	for _, name := range []string{"CX_GATEWAY_PASSWORD", "CX_HA_PASSWORD_HASH"} {
		i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
		if i < 0 || c.Env[i].ValueFrom == nil || c.Env[i].ValueFrom.SecretKeyRef == nil {
			t.Errorf("env %s not from a Secret", name)
			continue
		}
		ref := c.Env[i].ValueFrom.SecretKeyRef
		s := decode[corev1.Secret](t, objs, "Secret/"+ref.Name)
		if len(s.Data[ref.Key]) == 0 {
			t.Errorf("env %s reads key %s of Secret %s, which has none", name, ref.Key, ref.Name)
		}
	}
}

// checkServices: traffic on port 80 to the http port; metrics on a
// ClusterIP Service of their own, so that exposing the traffic Service
// (LoadBalancer) never exposes them.
func checkServices(t *testing.T, objs rendered, podLabels map[string]string) {
	t.Helper()
	svc := decode[corev1.Service](t, objs, "Service/gw-caddy-cx")
	if !subset(svc.Spec.Selector, podLabels) || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 80 || svc.Spec.Ports[0].TargetPort.String() != "http" {
		t.Errorf("service %+v, want port 80 to the gateways' http port only", svc.Spec)
	}
	m := decode[corev1.Service](t, objs, "Service/gw-caddy-cx-metrics")
	if m.Spec.Type != corev1.ServiceTypeClusterIP || !subset(m.Spec.Selector, podLabels) || len(m.Spec.Ports) != 1 || m.Spec.Ports[0].TargetPort.String() != "metrics" {
		t.Errorf("metrics service %+v, want ClusterIP to the metrics port", m.Spec)
	}
}

// checkCaddyfile adapts the ConfigMap's Caddyfile with this build's
// modules: it reads the secrets from the env the Deployment sets, keeps
// the admin API where the readiness probe asks, and serves /metrics and
// /healthz on the metrics port.
func checkCaddyfile(t *testing.T, objs rendered, c corev1.Container) {
	t.Helper()
	cm := decode[corev1.ConfigMap](t, objs, "ConfigMap/gw-caddy-cx")
	text := cm.Data["Caddyfile"]
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("the chart's Caddyfile: %v\n%s", err, text)
	}
	var parsed struct {
		Admin struct {
			Listen string `json:"listen"`
		} `json:"admin"`
		Apps struct {
			CX struct {
				NATS     []string `json:"nats"`
				Password string   `json:"password"`
			} `json:"cx"`
			HTTP struct {
				Servers map[string]struct {
					Listen []string          `json:"listen"`
					Routes []json.RawMessage `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &parsed); err != nil {
		t.Fatal(err)
	}
	if parsed.Admin.Listen != "localhost:2019" {
		t.Errorf("admin API on %q, want localhost:2019 (the readiness probe; never beyond the pod)", parsed.Admin.Listen)
	}
	if parsed.Apps.CX.Password != "{env.CX_GATEWAY_PASSWORD}" {
		t.Errorf("NATS password %q, want the placeholder of the env the Secret sets", parsed.Apps.CX.Password)
	}
	if !strings.Contains(text, "{env.CX_HA_PASSWORD_HASH}") {
		t.Error("the status page's hash is not read from the env the Secret sets")
	}
	ports := map[string]string{}
	for _, p := range c.Ports {
		ports[fmt.Sprint(p.ContainerPort)] = p.Name
	}
	var metrics, status bool
	for _, srv := range parsed.Apps.HTTP.Servers {
		routes, _ := json.Marshal(srv.Routes)
		for _, l := range srv.Listen {
			port := l[strings.LastIndex(l, ":")+1:]
			switch {
			case strings.Contains(string(routes), `"handler":"metrics"`):
				metrics = ports[port] == "metrics" && strings.Contains(string(routes), `"/healthz"`)
			case strings.Contains(string(routes), `"handler":"cx_status"`):
				status = ports[port] == "http" && strings.Contains(string(routes), `"handler":"authentication"`)
			}
		}
	}
	if !metrics || !status {
		t.Errorf("the Caddyfile's sites (metrics+healthz on the metrics port: %v; status page behind basic_auth on the http port: %v)\n%s", metrics, status, text)
	}
}

// TestHelmServiceMonitor: with serviceMonitor.enabled the chart asks the
// Prometheus Operator to scrape the metrics Service's port.
func TestHelmServiceMonitor(t *testing.T) {
	objs, err := helmTemplate(t, testValues(t, map[string]any{"serviceMonitor": map[string]any{"enabled": true}}))
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	var sm struct {
		APIVersion string `json:"apiVersion"`
		Spec       struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			Endpoints []struct {
				Port string `json:"port"`
				Path string `json:"path"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	doc, ok := objs["ServiceMonitor/gw-caddy-cx"]
	if !ok {
		t.Fatal("no ServiceMonitor")
	}
	if err := yaml.Unmarshal([]byte(doc), &sm); err != nil {
		t.Fatal(err)
	}
	metrics := decode[corev1.Service](t, objs, "Service/gw-caddy-cx-metrics")
	traffic := decode[corev1.Service](t, objs, "Service/gw-caddy-cx")
	if sm.APIVersion != "monitoring.coreos.com/v1" || !subset(sm.Spec.Selector.MatchLabels, metrics.Labels) || subset(sm.Spec.Selector.MatchLabels, traffic.Labels) {
		t.Errorf("ServiceMonitor %s selects %v: want the metrics Service only", sm.APIVersion, sm.Spec.Selector.MatchLabels)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != metrics.Spec.Ports[0].Name || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v, want /metrics on the metrics port", sm.Spec.Endpoints)
	}
}

// TestHelmExistingSecrets: with existing Secrets named, the chart creates
// none and the gateway reads those.
func TestHelmExistingSecrets(t *testing.T) {
	objs, err := helmTemplate(t, testValues(t, map[string]any{
		"nats":   map[string]any{"password": "", "existingSecret": "gw-nats"},
		"status": map[string]any{"passwordHash": "", "existingSecret": "gw-status"},
	}))
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	for k := range objs {
		if strings.HasPrefix(k, "Secret/") {
			t.Errorf("chart creates %s although existing Secrets are named", k)
		}
	}
	d := decode[appsv1.Deployment](t, objs, "Deployment/gw-caddy-cx")
	var refs []string
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			refs = append(refs, e.ValueFrom.SecretKeyRef.Name)
		}
	}
	if !slices.Equal(refs, []string{"gw-nats", "gw-status"}) {
		t.Errorf("env reads Secrets %v, want gw-nats and gw-status", refs)
	}
}

func yamlOf(v any) string {
	b, _ := yaml.Marshal(v)
	return strings.TrimSpace(string(b))
}

func subset(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
