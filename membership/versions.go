package membership

import (
	"strconv"
	"strings"
	"unicode"
)

// chooseVersion decides which version is routed under ConsistentVersions.
// The served version stays until a newer one has at least as many active
// instances, or until it has none; then the switch happens in one step.
// The lock must be held.
func (r *Registry) chooseVersion(sorted []*Member) {
	counts := map[string]int{}
	for _, m := range sorted {
		if m.routable() {
			counts[m.Version]++
		}
	}
	if len(counts) == 0 {
		return
	}
	next := r.served
	if counts[next] == 0 {
		next = ""
		for v, n := range counts {
			if next == "" || n > counts[next] || (n == counts[next] && compareVersions(v, next) > 0) {
				next = v
			}
		}
	}
	for v, n := range counts {
		if compareVersions(v, next) > 0 && n >= counts[next] {
			next = v
		}
	}
	if next == r.served {
		return
	}
	from := r.served
	r.served = next
	if from != "" || r.generation > 1 {
		r.queue(Event{Kind: EventVersionSwitch, Detail: "routing version " + quoteVersion(next) + " instead of " + quoteVersion(from)})
	}
}

func quoteVersion(v string) string { return strconv.Quote(v) }

// compareVersions orders versions naturally: runs of digits compare as
// numbers ("2026.10" > "2026.9"), the rest as text.
func compareVersions(a, b string) int {
	for a != "" && b != "" {
		ca, ra := chunk(a)
		cb, rb := chunk(b)
		if c := compareChunks(ca, cb); c != 0 {
			return c
		}
		a, b = ra, rb
	}
	return strings.Compare(a, b)
}

func chunk(s string) (string, string) {
	digit := unicode.IsDigit(rune(s[0]))
	i := 1
	for i < len(s) && unicode.IsDigit(rune(s[i])) == digit {
		i++
	}
	return s[:i], s[i:]
}

func compareChunks(a, b string) int {
	na, errA := strconv.ParseUint(a, 10, 64)
	nb, errB := strconv.ParseUint(b, 10, 64)
	if errA == nil && errB == nil {
		switch {
		case na < nb:
			return -1
		case na > nb:
			return 1
		}
		return 0
	}
	return strings.Compare(a, b)
}
