package caddymodule

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The status page's actions (drain, maintenance, ready) are POST forms to
// the page's own URL. A request must come from someone the page may act
// for (an authenticated user, or a client on this machine) and carry a
// token bound to that user, from a page of this host (Origin): another
// site cannot make an operator's browser drain instances.

// csrfKey signs the page's tokens; per process, so a restart invalidates
// the tokens of open pages (the page picks up a fresh one on its next poll).
var csrfKey = func() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic(err)
	}
	return k
}()

// csrfWindow is how long a token is valid at least (and at most twice).
const csrfWindow = time.Hour

// csrfHeader carries a fresh token in the page's JSON answers.
const csrfHeader = "X-Cx-Csrf-Token"

// maxActionForm bounds the body of an action POST.
const maxActionForm = 4 << 10

func csrfToken(actor string, window int64) string {
	mac := hmac.New(sha256.New, csrfKey)
	fmt.Fprintf(mac, "cx_status\x00%s\x00%d", actor, window)
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// csrfFor is actor's token as of now.
func csrfFor(actor string, now time.Time) string {
	return csrfToken(actor, now.Unix()/int64(csrfWindow/time.Second))
}

// csrfValid accepts actor's token of this window or the one before.
func csrfValid(actor, token string, now time.Time) bool {
	w := now.Unix() / int64(csrfWindow/time.Second)
	for _, win := range []int64{w, w - 1} {
		if hmac.Equal([]byte(token), []byte(csrfToken(actor, win))) {
			return true
		}
	}
	return false
}

// pageActor is who acts through the page: the authenticated user (set by
// basic_auth, forward_auth...), else a loopback client; "" when neither
// (then the page offers no actions). by is what the control entry says.
func pageActor(r *http.Request) (actor, by string) {
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		if user, _ := repl.GetString("http.auth.user.id"); user != "" {
			if len(user) > 64 {
				user = user[:64]
			}
			return "user:" + user, "status page user " + user
		}
	}
	if loopbackClient(r) {
		return "loopback", "status page (loopback)"
	}
	return "", ""
}

// loopbackClient reports whether the client is on this machine: the TCP
// peer is a loopback address, no proxy forwarded the request (a proxy on
// this machine makes every visitor look local; whatever address Caddy
// resolved from forwarding headers, the client may have written), and
// the request names this machine as its host (a page under another name
// that resolves here is DNS rebinding, a remote site's script).
func loopbackClient(r *http.Request) bool {
	peer, _, _ := net.SplitHostPort(r.RemoteAddr)
	ip, err := netip.ParseAddr(peer)
	if err != nil || !ip.Unmap().IsLoopback() || forwarded(r.Header) {
		return false
	}
	return localHost(r.Host)
}

// localHost reports whether host (with or without a port) is localhost or
// a loopback address.
func localHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// forwarded reports whether a proxy forwarded the request.
func forwarded(h http.Header) bool {
	for _, name := range []string{"Forwarded", "X-Forwarded-For", "X-Real-Ip"} {
		if h.Get(name) != "" {
			return true
		}
	}
	return false
}

// sameOrigin reports whether the request comes from a page of this host:
// its Origin names the host, or (no Origin) the browser says same-origin.
func sameOrigin(r *http.Request) bool {
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
	}
	return r.Header.Get("Sec-Fetch-Site") == "same-origin"
}

// serveAction runs a POSTed action and answers: 303 back to the page for
// a form, the control answer as JSON for a client asking for JSON.
func (p *StatusPage) serveAction(w http.ResponseWriter, r *http.Request) error {
	now := time.Now()
	actor, by := pageActor(r)
	if actor == "" {
		return actionError(w, r, http.StatusForbidden, errors.New("actions on this page need an authenticated user: put cx_status behind basic_auth (or forward_auth), or use it from this machine"))
	}
	if !sameOrigin(r) {
		return actionError(w, r, http.StatusForbidden, errors.New("the action did not come from this page (Origin does not match the host)"))
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxActionForm)
	if err := r.ParseForm(); err != nil {
		return actionError(w, r, http.StatusBadRequest, fmt.Errorf("reading the form: %v", err))
	}
	if !csrfValid(actor, r.PostForm.Get("csrf"), now) {
		return actionError(w, r, http.StatusForbidden, errors.New("the page's token is missing or expired: reload the page and try again"))
	}
	services := slices.DeleteFunc(runningServices(), func(s *Service) bool {
		return len(p.SubjectPrefixes) > 0 && !slices.Contains(p.SubjectPrefixes, s.prefix)
	})
	ans, cerr := runControl(r.Context(), services, r.PostForm.Get("service"), r.PostForm.Get("id"), r.PostForm.Get("action"), by)
	if cerr != nil {
		return actionError(w, r, cerr.status, cerr.err)
	}
	if wantsJSON(r) {
		return writeControlAnswer(w, ans)
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, r.URL.RequestURI(), http.StatusSeeOther)
	return nil
}

// actionError answers a refused action with its reason, as JSON or text.
func actionError(w http.ResponseWriter, r *http.Request, status int, err error) error {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if wantsJSON(r) {
		h.Set("Content-Type", "application/json")
		w.WriteHeader(status)
		return json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, "%d %s: %s\n", status, http.StatusText(status), err)
	return nil
}

// actionsFor is what the page offers r's client: the token for its
// actions, or "" when it may not act.
func (p *StatusPage) actionsFor(r *http.Request) string {
	if p.DisableActions {
		return ""
	}
	actor, _ := pageActor(r)
	if actor == "" {
		return ""
	}
	return csrfFor(actor, time.Now())
}
