// Package redact removes secrets from text before it is logged or
// returned in an error: the user info of URLs (nats://user:password@host,
// and nats://token@host, where NATS reads a lone user as a token).
package redact

import (
	"regexp"
	"strconv"
	"strings"
)

// Mask replaces a secret.
const Mask = "xxxxx"

// userInfo matches scheme://userinfo@. The user info runs greedily to the
// last @ before a separator, so that an unescaped @ or / in a password
// cannot cut the match short and leave the rest of the password behind;
// redacting too much of a URL is harmless, too little is not.
var userInfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.\-]*://)([^\s,<>]*)@`)

// String returns s with the user info of every URL in it redacted: the
// password becomes xxxxx and the user name stays, or, without a password,
// the whole user info (a NATS token) becomes xxxxx.
func String(s string) string {
	if !strings.Contains(s, "@") || !strings.Contains(s, "://") {
		return s
	}
	return userInfo.ReplaceAllStringFunc(s, func(m string) string {
		sub := userInfo.FindStringSubmatch(m)
		return sub[1] + maskInfo(sub[2]) + "@"
	})
}

// URL returns one URL (or a comma-separated list of them, as nats.go
// takes) with its user info redacted. Unlike String it knows where each
// URL ends, so a password holding spaces or other separators is redacted
// whole: everything between :// and the URL's last @ is user info.
func URL(raw string) string {
	parts := strings.Split(raw, ",")
	for i, u := range parts {
		scheme, rest, ok := strings.Cut(u, "://")
		if !ok {
			continue
		}
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			parts[i] = scheme + "://" + maskInfo(rest[:at]) + rest[at:]
		}
	}
	return strings.Join(parts, ",")
}

// Known returns text with the user info of every URL in it redacted,
// including the URLs of raws (each one URL or a comma-separated list)
// however they appear in text, as themselves or quoted (%q): an error
// about a malformed URL repeats it, separators and all.
func Known(text string, raws ...string) string {
	for _, raw := range raws {
		for _, u := range strings.Split(raw, ",") {
			if red := URL(u); red != u {
				text = strings.ReplaceAll(text, u, red)
				q, rq := strconv.Quote(u), strconv.Quote(red)
				text = strings.ReplaceAll(text, q[1:len(q)-1], rq[1:len(rq)-1])
			}
		}
	}
	return String(text)
}

// maskInfo keeps the user name of user:password and masks the rest; a
// lone user (a NATS token) is masked whole.
func maskInfo(info string) string {
	if user, _, ok := strings.Cut(info, ":"); ok && user != "" && !strings.ContainsAny(user, "/@ ") {
		return user + ":" + Mask
	}
	return Mask
}

// Error returns err's text redacted, or "" for nil.
func Error(err error) string {
	if err == nil {
		return ""
	}
	return String(err.Error())
}

// redactedError keeps the chain of an error (errors.Is, errors.As) while
// its text is redacted.
type redactedError struct{ err error }

func (e redactedError) Error() string { return String(e.err.Error()) }
func (e redactedError) Unwrap() error { return e.err }

// Err wraps err so that its text is redacted; nil stays nil.
func Err(err error) error {
	if err == nil {
		return nil
	}
	return redactedError{err}
}
