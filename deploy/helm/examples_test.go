package helm

import (
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/caddy-cx/caddy-cx/internal/announce"
)

// TestSidecarExample: examples/app-with-sidecar.yaml is a valid
// Deployment whose `announce` sidecar starts with its settings as
// Kubernetes expands them (downward API values for a sample pod): it
// announces the pod under its own name and IP, checks the app over the
// pod's loopback, and uses the NATS user that nats-values.yaml allows to
// publish that prefix's heartbeats and nothing else.
func TestSidecarExample(t *testing.T) {
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict([]byte(read(t, "examples/app-with-sidecar.yaml")), &d); err != nil {
		t.Fatalf("examples/app-with-sidecar.yaml: %v", err)
	}
	pod := d.Spec.Template.Spec
	i := slices.IndexFunc(pod.Containers, func(c corev1.Container) bool { return slices.Equal(c.Args, []string{"announce"}) })
	if i < 0 || len(pod.Containers) != 2 {
		t.Fatalf("containers %d, want the app and one `announce` sidecar", len(pod.Containers))
	}
	sidecar, app := pod.Containers[i], pod.Containers[1-i]
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("the example pod may run as root")
	}

	sample := map[string]string{"metadata.name": "myapp-7d9f8c-x2k4q", "status.podIP": "10.244.1.7"}
	env, secrets := expandEnv(t, sidecar.Env, sample)
	cfg, err := announce.Parse(nil, func(k string) string { return env[k] }, &strings.Builder{})
	if err != nil {
		t.Fatalf("the sidecar's settings: %v", err)
	}
	if cfg.ID != sample["metadata.name"] {
		t.Errorf("id %q, want the pod's name", cfg.ID)
	}
	appPort := app.Ports[0].ContainerPort
	if u, _ := url.Parse(cfg.URL); u.Hostname() != sample["status.podIP"] || u.Port() != itoa(appPort) {
		t.Errorf("url %q, want the pod IP and the app's port %d (the gateway dials it)", cfg.URL, appPort)
	}
	if u, _ := url.Parse(cfg.Health); u.Hostname() != "127.0.0.1" || u.Port() != itoa(appPort) {
		t.Errorf("health %q, want the app over the pod's loopback", cfg.Health)
	}
	if !slices.Contains(secrets, "CX_PASSWORD") || env["CX_USER"] == "" {
		t.Errorf("NATS user %q with password from a Secret: %v", env["CX_USER"], secrets)
	}

	users := natsChartUsers(t)
	prefix := env["CX_PREFIX"]
	sc, ok := users[env["CX_USER"]]
	if !ok {
		t.Fatalf("nats-values.yaml has no user %s", env["CX_USER"])
	}
	if !slices.Equal(sc.Publish.Allow, []string{prefix + ".hb.*"}) || !slices.Equal(sc.Subscribe.Allow, []string{prefix + ".discover"}) {
		t.Errorf("sidecar user %s may publish %v subscribe %v, want only %s.hb.* and %s.discover", env["CX_USER"], sc.Publish.Allow, sc.Subscribe.Allow, prefix, prefix)
	}
	gw, ok := users["gateway"]
	if !ok || !slices.Equal(gw.Publish.Allow, []string{prefix + ".discover"}) || !slices.Equal(gw.Subscribe.Allow, []string{prefix + ".hb.*"}) {
		t.Errorf("gateway user %+v, want publish %s.discover and subscribe %s.hb.*", gw, prefix, prefix)
	}
}

// expandEnv resolves a container's env as the kubelet does: downward API
// fields from sample, $(NAME) of earlier variables; Secret values become
// placeholders, their names listed.
func expandEnv(t *testing.T, vars []corev1.EnvVar, sample map[string]string) (map[string]string, []string) {
	t.Helper()
	env := map[string]string{}
	var secrets []string
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	for _, e := range vars {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			v, ok := sample[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				t.Fatalf("env %s: field %s has no sample value", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			env[e.Name] = v
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			env[e.Name] = "from-secret"
			secrets = append(secrets, e.Name)
		default:
			env[e.Name] = ref.ReplaceAllStringFunc(e.Value, func(m string) string {
				v, ok := env[m[2:len(m)-1]]
				if !ok {
					t.Errorf("env %s refers to %s before it is defined", e.Name, m)
				}
				return v
			})
		}
	}
	return env, secrets
}

type permissions struct {
	Publish struct {
		Allow []string `json:"allow"`
	} `json:"publish"`
	Subscribe struct {
		Allow []string `json:"allow"`
	} `json:"subscribe"`
}

// natsChartUsers reads the users examples/nats-values.yaml merges into
// the official NATS chart's config, and checks each password is read
// from an environment variable that a Secret sets.
func natsChartUsers(t *testing.T) map[string]permissions {
	t.Helper()
	var v struct {
		Config struct {
			Merge struct {
				Accounts map[string]struct {
					Users []struct {
						User        string      `json:"user"`
						Password    string      `json:"password"`
						Permissions permissions `json:"permissions"`
					} `json:"users"`
				} `json:"accounts"`
			} `json:"merge"`
		} `json:"config"`
		Container struct {
			Env map[string]struct {
				ValueFrom *corev1.EnvVarSource `json:"valueFrom"`
			} `json:"env"`
		} `json:"container"`
	}
	if err := yaml.Unmarshal([]byte(read(t, "examples/nats-values.yaml")), &v); err != nil {
		t.Fatalf("examples/nats-values.yaml: %v", err)
	}
	users := map[string]permissions{}
	raw := regexp.MustCompile(`^<< \$([A-Z0-9_]+) >>$`)
	for _, acc := range v.Config.Merge.Accounts {
		for _, u := range acc.Users {
			users[u.User] = u.Permissions
			m := raw.FindStringSubmatch(u.Password)
			if m == nil {
				t.Errorf("user %s: password %q, want << $VAR >> read from the environment", u.User, u.Password)
				continue
			}
			if src, ok := v.Container.Env[m[1]]; !ok || src.ValueFrom == nil || src.ValueFrom.SecretKeyRef == nil {
				t.Errorf("user %s: $%s is not set from a Secret (container.env)", u.User, m[1])
			}
		}
	}
	return users
}

func itoa(n int32) string {
	return strings.TrimSpace(yamlOf(n))
}
