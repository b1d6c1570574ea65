package heartbeat

import (
	"bytes"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// protocolDoc returns the section "## The message" of docs/PROTOCOL.md, so
// that these tests fail when the doc and the code drift apart.
func protocolDoc(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile("../docs/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## The message\n")
	if !ok {
		t.Fatal(`docs/PROTOCOL.md has no "## The message" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	return section
}

// docExample is the fenced json block of the message section.
func docExample(t *testing.T) []byte {
	t.Helper()
	_, block, ok := strings.Cut(protocolDoc(t), "```json\n")
	if !ok {
		t.Fatal("the message section of docs/PROTOCOL.md has no ```json block")
	}
	block, _, ok = strings.Cut(block, "```")
	if !ok {
		t.Fatal("unterminated ```json block in docs/PROTOCOL.md")
	}
	return []byte(block)
}

// docFields returns the field table of the message section: name -> required.
func docFields(t *testing.T) ([]string, map[string]bool) {
	t.Helper()
	row := regexp.MustCompile("^\\| `([a-z_]+)` \\| (yes|no) \\|")
	var names []string
	required := map[string]bool{}
	for _, line := range strings.Split(protocolDoc(t), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			names = append(names, m[1])
			required[m[1]] = m[2] == "yes"
		}
	}
	if len(names) == 0 {
		t.Fatal("no field table in the message section of docs/PROTOCOL.md")
	}
	return names, required
}

func TestProtocolDocExampleDecodes(t *testing.T) {
	m, err := Decode(DefaultPrefix, HeartbeatSubject(DefaultPrefix, "app1"), docExample(t))
	if err != nil {
		t.Fatalf("the example of docs/PROTOCOL.md does not decode: %v", err)
	}
	want := &Message{
		Proto: 1, ID: "app1", URL: "http://10.0.0.11:8080", State: StateReady,
		StartedAt: time.Date(2026, 11, 25, 21, 0, 0, 123456789, time.UTC), Seq: 42, IntervalMS: 1000,
		Version: "2026.4.1", Priority: 0, LeaderRoles: []string{"email-dispatcher"}, Meta: map[string]string{"license": "ok"},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("decoded the doc's example as\n%+v\nwant\n%+v", m, want)
	}
}

func TestProtocolDocFieldTableMatchesMessage(t *testing.T) {
	names, required := docFields(t)
	var tags []string
	typ := reflect.TypeFor[Message]()
	for i := range typ.NumField() {
		tag, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		tags = append(tags, tag)
	}
	if !slices.Equal(names, tags) {
		t.Fatalf("fields in docs/PROTOCOL.md %v, in heartbeat.Message %v", names, tags)
	}
	// "required" in the table is what Decode enforces: the example without
	// a required field is refused, without an optional one accepted.
	example := docExample(t)
	for _, name := range names {
		data := withoutField(t, example, name)
		_, err := Decode(DefaultPrefix, HeartbeatSubject(DefaultPrefix, "app1"), data)
		if required[name] && err == nil {
			t.Errorf("the doc says %s is required, but the example without it decodes", name)
		}
		if !required[name] && err != nil {
			t.Errorf("the doc says %s is optional, but the example without it fails: %v", name, err)
		}
	}
}

// withoutField removes "name":value from the one-line-per-object example
// textually, so that the rest stays exactly as the doc has it.
func withoutField(t *testing.T, example []byte, name string) []byte {
	t.Helper()
	field := regexp.MustCompile(`"` + name + `":("[^"]*"|\[[^\]]*\]|\{[^}]*\}|[^,}]*)(,\s*)?`)
	out := field.ReplaceAll(example, nil)
	if bytes.Equal(out, example) {
		t.Fatalf("field %s not found in the doc's example", name)
	}
	return bytes.TrimSpace(bytes.Replace(out, []byte(",}"), []byte("}"), 1))
}

// gatewayDoc returns the subsection "### name" of "## Gateway messages"
// in docs/PROTOCOL.md.
func gatewayDoc(t *testing.T, name string) string {
	t.Helper()
	doc, err := os.ReadFile("../docs/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Gateway messages\n")
	if !ok {
		t.Fatal(`docs/PROTOCOL.md has no "## Gateway messages" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, sub, ok := strings.Cut(section, "\n### "+name+"\n")
	if !ok {
		t.Fatalf(`the gateway messages section of docs/PROTOCOL.md has no "### %s"`, name)
	}
	sub, _, _ = strings.Cut(sub, "\n### ")
	return sub
}

// sectionExample is the fenced json block of a doc section.
func sectionExample(t *testing.T, section string) []byte {
	t.Helper()
	_, block, ok := strings.Cut(section, "```json\n")
	if !ok {
		t.Fatal("no ```json block")
	}
	block, _, ok = strings.Cut(block, "```")
	if !ok {
		t.Fatal("unterminated ```json block")
	}
	return []byte(block)
}

// sectionFields is the field table of a doc section: names in order, and
// name -> required.
func sectionFields(t *testing.T, section string) ([]string, map[string]bool) {
	t.Helper()
	row := regexp.MustCompile("^\\| `([a-z_]+)` \\| (yes|no) \\|")
	var names []string
	required := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			names = append(names, m[1])
			required[m[1]] = m[2] == "yes"
		}
	}
	if len(names) == 0 {
		t.Fatal("no field table")
	}
	return names, required
}

func jsonTags[T any]() []string {
	var tags []string
	typ := reflect.TypeFor[T]()
	for i := range typ.NumField() {
		tag, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		tags = append(tags, tag)
	}
	return tags
}

func TestProtocolDocGatewayExamplesDecode(t *testing.T) {
	m, err := DecodeGateway(DefaultPrefix, GatewaySubject(DefaultPrefix, "gw1"), sectionExample(t, gatewayDoc(t, "Gateway heartbeat")))
	if err != nil {
		t.Fatalf("the gateway heartbeat example of docs/PROTOCOL.md does not decode: %v", err)
	}
	want, err := DecodeGateway(DefaultPrefix, gwSubject, []byte(gatewayExample))
	if err != nil || !sameGateway(m, want) {
		t.Fatalf("the doc's gateway heartbeat example is\n%+v\nthe tests' is\n%+v (%v)", m, want, err)
	}
	o, err := DecodeObservation(DefaultPrefix, ObservationSubject(DefaultPrefix, "gw1"), sectionExample(t, gatewayDoc(t, "Observation")))
	if err != nil {
		t.Fatalf("the observation example of docs/PROTOCOL.md does not decode: %v", err)
	}
	wantObs, err := DecodeObservation(DefaultPrefix, obsSubject, []byte(observationExample))
	if err != nil || !sameObservation(o, wantObs) {
		t.Fatalf("the doc's observation example is\n%+v\nthe tests' is\n%+v (%v)", o, wantObs, err)
	}
}

func TestProtocolDocGatewayFieldTablesMatchTypes(t *testing.T) {
	for _, c := range []struct {
		section string
		tags    []string
		decode  func([]byte) error
	}{
		{"Gateway heartbeat", jsonTags[GatewayMessage](), func(data []byte) error {
			_, err := DecodeGateway(DefaultPrefix, gwSubject, data)
			return err
		}},
		{"Observation", jsonTags[Observation](), func(data []byte) error {
			_, err := DecodeObservation(DefaultPrefix, obsSubject, data)
			return err
		}},
	} {
		t.Run(c.section, func(t *testing.T) {
			section := gatewayDoc(t, c.section)
			names, required := sectionFields(t, section)
			if !slices.Equal(names, c.tags) {
				t.Fatalf("fields in docs/PROTOCOL.md %v, in the Go type %v", names, c.tags)
			}
			example := sectionExample(t, section)
			for _, name := range names {
				err := c.decode(withoutField(t, example, name))
				if required[name] && err == nil {
					t.Errorf("the doc says %s is required, but the example without it decodes", name)
				}
				if !required[name] && err != nil {
					t.Errorf("the doc says %s is optional, but the example without it fails: %v", name, err)
				}
			}
		})
	}
}

// The limits the doc gives for gateway messages are the code's.
func TestProtocolDocGatewayLimits(t *testing.T) {
	hb, obs := gatewayDoc(t, "Gateway heartbeat"), gatewayDoc(t, "Observation")
	for _, want := range []struct{ section, text string }{
		{hb, fmt.Sprintf("up to %d distinct instance ids", MaxGatewayPrimary)},
		{hb, fmt.Sprintf("up to %d characters: the name of the NATS server", MaxNATSServerLen)},
		{hb, fmt.Sprintf("up to %d characters: the gateway's build", MaxVersionLen)},
		{hb, fmt.Sprintf("%d to %d", MinIntervalMS, MaxIntervalMS)},
		{obs, fmt.Sprintf("1 to %d objects", MaxObservedFailures)},
	} {
		if !strings.Contains(want.section, want.text) {
			t.Errorf("docs/PROTOCOL.md does not say %q", want.text)
		}
	}
}
